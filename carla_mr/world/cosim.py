"""SUMO co-simulation for the CARLA backend: SUMO drives the background traffic, CARLA follows.

The bridge pattern of CARLA's own SUMO co-simulation: every background vehicle lives in SUMO;
its CARLA twin is a tagged actor with physics off that is teleported (``ApplyTransform``, one
batch per tick) to the SUMO pose before each ``world.tick()``. New SUMO vehicles get a CARLA
actor (retried on a later tick if their spawn point is blocked); vehicles that leave SUMO lose
theirs. The AVs stay CARLA vehicles on Traffic Manager autopilot.

SUMO runs through the embedded backend (:class:`~carla_mr.world.embedded.EmbeddedWorld`) on a
net built from the server's own map (``Map.to_opendrive()``), so routes, the population rule,
the net offset and the SUMO -> CARLA conversion (:mod:`carla_mr.world.coords`) are the ones the
embedded backend uses. SUMO reports the front bumper; the CARLA actor's origin is the
vehicle's centre, so poses are moved back half a vehicle length along the heading.

Limitation: SUMO's vehicles do not see the CARLA-driven AVs (the AVs' Traffic Manager does see
the mirrored vehicles, which are ordinary actors).
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from carla_mr.world.base import ROLE_BACKGROUND

if TYPE_CHECKING:  # pragma: no cover
    from carla_mr.world.carla_backend import CarlaWorld

log = logging.getLogger(__name__)

#: SUMO's default passenger car length (m); the pose is moved back by half of it.
SUMO_VEHICLE_LENGTH_M = 5.0
#: Height above SUMO's z at which the CARLA twin is placed (m).
Z_LIFT_M = 0.05


def bumper_to_centre(x, y, yaw_deg, length_m: float = SUMO_VEHICLE_LENGTH_M):
    """SUMO front-bumper positions (already in CARLA's frame) -> vehicle centres (CARLA frame)."""
    a = np.radians(np.asarray(yaw_deg, dtype=np.float64))
    half = length_m / 2.0
    return np.asarray(x, dtype=np.float64) - half * np.cos(a), np.asarray(y, dtype=np.float64) - half * np.sin(a)


class SumoCosim:
    """The SUMO side of a co-simulated CarlaWorld (made by CarlaWorld when ``carla.cosim_sumo``)."""

    def __init__(self, world: "CarlaWorld"):
        self.world = world
        self.sumo = None  # the EmbeddedWorld driving SUMO
        self.carla_of: dict[int, int] = {}  # SUMO vehicle id -> CARLA actor id
        self.spawn_failures = 0
        self._last = None

    # -- lifecycle ----------------------------------------------------------------------------
    def _xodr_path(self):
        from carla_mr.io import atomic_write_text
        from carla_mr.world.sumo_net import cache_dir

        text = self.world.map.to_opendrive()
        key = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
        path = cache_dir() / "maps" / f"{self.world.town or 'carla'}-server-{key}.xodr"
        if not path.is_file():
            atomic_write_text(path, text)
        return path

    def start(self) -> None:
        """Start SUMO on the server's map with the scenario's background vehicles, mirror frame 0."""
        from carla_mr.config import SignsConfig, VehiclesConfig
        from carla_mr.world.embedded import EmbeddedWorld

        sc = self.world.scenario
        sub = sc.model_copy(update={
            "map": str(self._xodr_path()), "backend": "embedded", "source_path": None,
            "vehicles": VehiclesConfig(avs=0, background=int(sc.vehicles.background)),
            "signs": SignsConfig(),  # the server's map already carries the scenario's signs
        })
        self.sumo = EmbeddedWorld(sub, seed=self.world.seed)
        self._mirror(self.sumo.reset())

    def before_tick(self) -> None:
        """Step SUMO once and move the CARLA twins to SUMO's poses (before ``world.tick()``)."""
        if self.sumo is not None:
            self._mirror(self.sumo.tick())

    def stop(self) -> None:
        """Close SUMO. The twins are ordinary tagged actors of the world: its teardown destroys them."""
        s, self.sumo = self.sumo, None
        self.carla_of = {}
        if s is not None:
            s.close()

    # -- mirroring ----------------------------------------------------------------------------
    def _mirror(self, snap) -> None:
        w = self.world
        api = w.api
        cmd = api.command
        self._last = snap
        sumo_ids = [int(i) for i in snap.ids]
        cx, cy = bumper_to_centre(snap.x, snap.y, snap.yaw)
        # vehicles that left SUMO
        gone = [s for s in self.carla_of if s not in set(sumo_ids)]
        if gone:
            ids = [self.carla_of.pop(s) for s in gone]
            for i in ids:
                w._actor_ids.pop(i, None)
            w.client.apply_batch_sync([cmd.DestroyActor(int(i)) for i in ids], False)
        # new SUMO vehicles: spawn twins with physics off
        new = [k for k, s in enumerate(sumo_ids) if s not in self.carla_of]
        if new:
            from carla_mr.world.carla_backend import BACKGROUND_BLUEPRINTS, pick_blueprint

            lib = w.world.get_blueprint_library()
            rng = np.random.default_rng(w.seed + len(self.carla_of))
            items = []
            for k in new:
                bp = pick_blueprint(lib, BACKGROUND_BLUEPRINTS, rng)
                tf = api.Transform(api.Location(float(cx[k]), float(cy[k]), float(snap.z[k]) + Z_LIFT_M),
                                   api.Rotation(0.0, float(snap.yaw[k]), 0.0))
                items.append((bp, tf, "bg"))
            done, collided = w._spawn_batch(items, "bg", autopilot=False, physics=False)
            for k, aid in done:
                self.carla_of[sumo_ids[new[k]]] = aid
            self.spawn_failures += len(new) - len(done)
        # everyone else follows SUMO
        moves = []
        for k, s in enumerate(sumo_ids):
            aid = self.carla_of.get(s)
            if aid is None:
                continue
            tf = api.Transform(api.Location(float(cx[k]), float(cy[k]), float(snap.z[k]) + Z_LIFT_M),
                               api.Rotation(0.0, float(snap.yaw[k]), 0.0))
            moves.append(cmd.ApplyTransform(int(aid), tf))
        if moves:
            w.client.apply_batch_sync(moves, False)

    def vehicles(self, av_ids: np.ndarray, av_role: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The CARLA ids and roles of every vehicle: the AVs, then the mirrored background."""
        bg = np.array(sorted(self.carla_of.values()), dtype=np.int64)
        ids = np.concatenate([np.asarray(av_ids, np.int64), bg])
        role = np.concatenate([np.asarray(av_role, np.uint8), np.full(bg.size, ROLE_BACKGROUND, np.uint8)])
        return ids, role

    def summary(self) -> dict[str, Any]:
        return {"mirrored": len(self.carla_of), "spawn_failures": self.spawn_failures}

"""SUMO co-simulation for the CARLA backend: SUMO drives the background traffic, CARLA follows.

The bridge pattern of CARLA's own SUMO co-simulation, in step with the server:

- SUMO advances exactly once per ``World.tick()``, before ``world.tick()``; nothing here ticks
  the server (spawns and moves are ``apply_batch_sync(..., False)``), so CARLA's time equals
  SUMO's after every tick.
- A vehicle that departs in SUMO gets a CARLA twin with physics off, spawned
  :data:`SPAWN_LIFT_M` metres above its pose (where nothing can block it) and put on SUMO's
  pose by the same tick's ``ApplyTransform`` batch. A spawn that still fails is retried with
  exponential backoff (1, 2, 4, ... ticks, at most :data:`MAX_SPAWN_ATTEMPTS` attempts), never
  every tick; attempts, retries and give-ups are counted. A vehicle that arrives (leaves
  SUMO) loses its twin.
- The twin's blueprint comes from the SUMO vehicle's class and length
  (:func:`carla_mr.world.carla_api.pick_vehicle_for`): a 5 m passenger car never becomes a bus.
- Poses: SUMO reports the front bumper; the twin's origin is moved back half the SUMO
  length along the heading and the slope (``pitch`` = SUMO's slope, degrees, nose up).
- Optionally (``carla.cosim_traffic_lights``) SUMO's signal states drive CARLA's traffic
  lights: each OpenDRIVE signal takes the most restrictive state of the SUMO links it
  controls (red > yellow > green > off), set only when it changes; the lights are frozen
  while synchronised and unfrozen on close.

SUMO runs through the embedded backend (:class:`~carla_mr.world.embedded.EmbeddedWorld`) on
a net built from the server's own map (``Map.to_opendrive()``), so routes, the population
rule, the net offset and the SUMO -> CARLA conversion are the embedded backend's. The CARLA
side is reached only through the narrow :class:`~carla_mr.world.carla_actors.Spawner`.

Limitation: SUMO's vehicles do not see the CARLA-driven AVs (the AVs' Traffic Manager does
see the twins, which are ordinary actors).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from carla_mr.world.base import ROLE_BACKGROUND
from carla_mr.world.carla_actors import SpawnItem, Spawner, TrafficLights
from carla_mr.world.carla_api import BACKGROUND_BLUEPRINTS, pick_blueprint, pick_vehicle_for

if TYPE_CHECKING:  # pragma: no cover
    from carla_mr.config import Scenario
    from carla_mr.world.embedded import EmbeddedWorld

log = logging.getLogger(__name__)

#: A twin is spawned this high above its SUMO pose (m), where no other actor can block it.
SPAWN_LIFT_M = 25.0
#: A twin whose spawn failed is retried after 1, 2, 4, ... ticks, at most this many attempts.
MAX_SPAWN_ATTEMPTS = 6
#: SUMO link-state characters -> CARLA traffic-light states.
SUMO_TO_CARLA_STATE = {"r": "Red", "R": "Red", "u": "Red", "y": "Yellow", "Y": "Yellow", "g": "Green",
                       "G": "Green", "s": "Green", "o": "Off", "O": "Off"}
_RESTRICTIVE = ("Red", "Yellow", "Green", "Off")


def bumper_to_centre(x, y, z, yaw_deg, pitch_deg, length_m):
    """SUMO front-bumper positions (already in CARLA's frame, metres) -> vehicle centres: back
    by half of ``length_m`` along the heading ``yaw_deg`` and the slope ``pitch_deg``."""
    a = np.radians(np.asarray(yaw_deg, dtype=np.float64))
    p = np.radians(np.asarray(pitch_deg, dtype=np.float64))
    half = np.asarray(length_m, dtype=np.float64) / 2.0
    return (np.asarray(x, dtype=np.float64) - half * np.cos(p) * np.cos(a),
            np.asarray(y, dtype=np.float64) - half * np.cos(p) * np.sin(a),
            np.asarray(z, dtype=np.float64) - half * np.sin(p))


def carla_signal_state(link_states: str) -> str:
    """The CARLA state of a signal from the SUMO states of the links it controls (the most
    restrictive: Red > Yellow > Green > Off; unknown characters count as Off)."""
    got = {SUMO_TO_CARLA_STATE.get(c, "Off") for c in link_states}
    return next((s for s in _RESTRICTIVE if s in got), "Off")


@dataclass
class _Waiting:
    due: int  # SUMO frame of the next attempt
    attempts: int = 0


class SumoCosim:
    """The SUMO side of a co-simulated CarlaWorld (made by it when ``carla.cosim_sumo``).

    ``spawner``: the CARLA world's narrow spawning interface; ``seed``: the run's seed;
    ``traffic_lights``: the server's lights to drive from SUMO, or None.
    """

    def __init__(self, spawner: Spawner, seed: int, *, traffic_lights: Optional[TrafficLights] = None):
        self.spawner = spawner
        self.seed = int(seed)
        self.traffic_lights = traffic_lights
        self.sumo: Optional["EmbeddedWorld"] = None
        self.carla_of: dict[int, int] = {}  # SUMO vehicle id -> CARLA actor id
        self.last = None  # the latest SUMO Snapshot
        self._waiting: dict[int, _Waiting] = {}
        self._given_up: set[int] = set()
        self._length: dict[int, float] = {}
        self._rng = np.random.default_rng(self.seed)
        self.counts = {"spawned": 0, "spawn_attempts": 0, "spawn_retries": 0, "spawn_gave_up": 0, "arrived": 0,
                       "blueprint_fallbacks": 0, "traffic_light_sets": 0}

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, scenario: "Scenario", opendrive: str, town: str) -> None:
        """Start SUMO on the server's map (OpenDRIVE text ``opendrive``) with the scenario's
        background vehicles, and mirror its first step."""
        from carla_mr.config import SignsConfig, VehiclesConfig
        from carla_mr.io import atomic_write_text
        from carla_mr.world.embedded import EmbeddedWorld
        from carla_mr.world.sumo_net import cache_dir

        key = hashlib.sha256(opendrive.encode("utf-8")).hexdigest()[:16]
        path = cache_dir() / "maps" / f"{town or 'carla'}-server-{key}.xodr"
        if not path.is_file():
            atomic_write_text(path, opendrive)
        sub = scenario.model_copy(update={
            "map": str(path), "backend": "embedded", "source_path": None,
            "vehicles": VehiclesConfig(avs=0, background=int(scenario.vehicles.background)),
            "signs": SignsConfig(),  # the server's map already carries the scenario's signs
        })
        self.sumo = EmbeddedWorld(sub, seed=self.seed, traffic_mix=False)
        self._mirror(self.sumo.reset())

    def before_tick(self) -> None:
        """Step SUMO once and move the CARLA twins to SUMO's poses (before ``world.tick()``)."""
        if self.sumo is not None:
            self._mirror(self.sumo.tick())

    def stop(self) -> None:
        """Close SUMO. The twins are ordinary tagged actors of the world: its teardown destroys them."""
        s, self.sumo = self.sumo, None
        self.carla_of = {}
        self._waiting = {}
        if s is not None:
            s.close()

    # -- mirroring ----------------------------------------------------------------------------
    def _mirror(self, snap) -> None:
        self.last = snap
        present = {int(i) for i in snap.ids}
        gone = [s for s in self.carla_of if s not in present]
        if gone:
            self.spawner.destroy([self.carla_of.pop(s) for s in gone])
            self.counts["arrived"] += len(gone)
        for s in [s for s in self._waiting if s not in present]:
            del self._waiting[s]
        for s in present:
            if s not in self.carla_of and s not in self._waiting and s not in self._given_up:
                self._waiting[s] = _Waiting(due=snap.frame)
        self._given_up &= present
        index = {int(v): k for k, v in enumerate(snap.ids)}
        pitch = self.sumo.slopes(snap.ids) if len(snap) else np.zeros(0)
        due = sorted(s for s, w in self._waiting.items() if w.due <= snap.frame)
        if due:
            self._spawn(due, snap, index, pitch)
        self._move(snap, pitch)
        if self.traffic_lights is not None:
            states = {sig: carla_signal_state(chars) for sig, chars in self.sumo.signal_link_states().items()}
            self.counts["traffic_light_sets"] += self.traffic_lights.set_states(states)

    def _spawn(self, due: list[int], snap, index: dict[int, int], pitch: np.ndarray) -> None:
        api = self.spawner.api
        lib = self.spawner.blueprints()
        have = self.spawner.blueprint_ids()
        items = []
        for s in due:
            vclass, length = self.sumo.vehicle_class(s)
            self._length[s] = length
            bp = pick_vehicle_for(lib, vclass, length, self._rng, have)
            if bp is None:
                self.counts["blueprint_fallbacks"] += 1
                bp = pick_blueprint(lib, BACKGROUND_BLUEPRINTS, self._rng)
            k = index[s]
            tf = api.Transform(api.Location(float(snap.x[k]), float(snap.y[k]), float(snap.z[k]) + SPAWN_LIFT_M),
                               api.Rotation(float(pitch[k]), float(snap.yaw[k]), 0.0))
            items.append(SpawnItem(bp, tf, "bg"))
        res = self.spawner.spawn_batch(items, physics=False)
        self.counts["spawn_attempts"] += len(items)
        for k, aid in res.spawned:
            self.carla_of[due[k]] = aid
            del self._waiting[due[k]]
        self.counts["spawned"] += len(res.spawned)
        for k in res.collided + sorted(res.failed):
            w = self._waiting[due[k]]
            w.attempts += 1
            if w.attempts >= MAX_SPAWN_ATTEMPTS:
                del self._waiting[due[k]]
                self._given_up.add(due[k])
                self.counts["spawn_gave_up"] += 1
                log.warning("SUMO vehicle %s got no CARLA twin after %d attempts", due[k], w.attempts)
            else:
                w.due = snap.frame + 2 ** (w.attempts - 1)
                self.counts["spawn_retries"] += 1

    def _move(self, snap, pitch: np.ndarray) -> None:
        if not self.carla_of or not len(snap):
            return
        api = self.spawner.api
        length = np.array([self._length.get(int(s), 5.0) for s in snap.ids])
        cx, cy, cz = bumper_to_centre(snap.x, snap.y, snap.z, snap.yaw, pitch, length)
        moves = []
        for k, s in enumerate(snap.ids.tolist()):
            aid = self.carla_of.get(s)
            if aid is not None:
                moves.append((aid, api.Transform(api.Location(float(cx[k]), float(cy[k]), float(cz[k])),
                                                 api.Rotation(float(pitch[k]), float(snap.yaw[k]), 0.0))))
        self.spawner.move(moves)

    def vehicles(self, av_ids: np.ndarray, av_role: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The CARLA ids and roles of every vehicle: the AVs, then the mirrored background."""
        bg = np.array(sorted(self.carla_of.values()), dtype=np.int64)
        ids = np.concatenate([np.asarray(av_ids, np.int64), bg])
        role = np.concatenate([np.asarray(av_role, np.uint8), np.full(bg.size, ROLE_BACKGROUND, np.uint8)])
        return ids, role

    def summary(self) -> dict[str, Any]:
        return {"mirrored": len(self.carla_of), "waiting": len(self._waiting), **self.counts,
                "traffic_lights": None if self.traffic_lights is None else len(self.traffic_lights.lights)}

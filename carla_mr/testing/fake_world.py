"""The shared fake worlds of the tests and benchmarks: no SUMO, no server, deterministic.

- :class:`FakeWorld`: snapshots from a script (a function of the frame number), with any
  SignTable and RsuTable; texture pushes are recorded in ``pushed`` and ``closed`` tells
  whether close() ran. The default script is an empty world.
- :class:`KinematicWorld`: a FakeWorld whose vehicles follow a ``carla.Map``'s lanes at
  constant speed (``wp.next``), branching at junctions by a seeded generator; cameras use the
  embedded renderer. Unlike EmbeddedWorld it can run many times in one process (no libsumo),
  which is what tests of resuming and benchmarks need.

Both declare the whole :class:`~carla_mr.world.base.World` surface.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np

from carla_mr.errors import RunError
from carla_mr.world.base import ROLE_AV, ROLE_BACKGROUND, RsuTable, SignTable, SignTexture, Snapshot, World


class FakeWorld(World):
    """A world whose Snapshot at frame ``f`` is ``script(f)`` (``tick_s`` seconds a frame).

    ``signs``/``rsus`` default to empty tables. ``pushed`` collects the textures each
    :meth:`apply_sign_textures` call pushed; ``closed`` becomes True on close().
    """

    def __init__(self, script: Optional[Callable[[int], Snapshot]] = None, *, signs: Optional[SignTable] = None,
                 rsus: Optional[RsuTable] = None, tick_s: float = 0.05):
        super().__init__(tick_s)
        self.signs = signs if signs is not None else SignTable.empty()
        self.rsus = rsus if rsus is not None else RsuTable.empty()
        self._script = script if script is not None else (lambda f: Snapshot.empty(f, f * self.tick_s))
        self.frame = -1
        self.last: Optional[Snapshot] = None
        self.pushed: list[dict[str, SignTexture]] = []
        self.closed = False

    def reset(self) -> Snapshot:
        self.frame = 0
        self.last = self._script(0)
        return self.last

    def tick(self) -> Snapshot:
        if self.frame < 0:
            raise RunError("tick() before reset()")
        self.frame += 1
        self.last = self._script(self.frame)
        return self.last

    def close(self) -> None:
        self.closed = True

    def _push_textures(self, textures: dict[str, SignTexture]) -> None:
        self.pushed.append(dict(textures))


def sign_table(ids: Sequence[str], kinds: Sequence[str], *, x: Sequence[float] | None = None,
               y: Sequence[float] | None = None, z: float = 2.0, size_m: float = 0.8,
               values: Sequence[float] | None = None) -> SignTable:
    """A SignTable of ``ids`` and ``kinds`` (positions in metres, default all at the origin;
    faces ``size_m`` square at height ``z``; OpenDRIVE types from the kinds; ``values`` in km/h
    for speed limits, default all NaN)."""
    from carla_mr.world.opendrive import SIGN_KINDS

    n = len(ids)
    odr = [SIGN_KINDS[k]["type"] if k in SIGN_KINDS else "1000001" for k in kinds]
    f = np.zeros(n)
    return SignTable(np.array(list(ids), dtype=object), np.array(list(kinds), dtype=object),
                     np.asarray(values, np.float64) if values is not None else np.full(n, np.nan),
                     np.array(odr, dtype=object), np.asarray(x if x is not None else f, np.float64),
                     np.asarray(y if y is not None else f, np.float64), np.full(n, float(z)), f.copy(),
                     np.full(n, float(size_m)), np.full(n, float(size_m)), np.zeros(n, np.int64))


class KinematicWorld(FakeWorld):
    """``n_avs`` AVs and ``n_background`` vehicles driving a map's lanes at ``speed`` m/s."""

    def __init__(self, carla_map, signs: Optional[SignTable] = None, *, n_avs: int = 1, n_background: int = 10,
                 seed: int = 0, tick_s: float = 0.05, speed: float = 8.0, start: Optional[list] = None):
        from carla_mr.world.maps import landmarks_to_signs

        super().__init__(self._advance, signs=signs if signs is not None else landmarks_to_signs(carla_map),
                         tick_s=tick_s)
        self.map = carla_map
        self.seed = int(seed)
        self.speed = float(speed)
        self.n = int(n_avs) + int(n_background)
        self.n_avs = int(n_avs)
        self._start = start
        self._wps: list = []
        self._rig = None

    def _advance(self, frame: int) -> Snapshot:
        if frame == 0:
            self._place()
        else:
            step = self.speed * self.tick_s
            for i, wp in enumerate(self._wps):
                nxt = wp.next(step)
                if nxt:
                    self._wps[i] = nxt[int(self._rng.integers(len(nxt)))] if len(nxt) > 1 else nxt[0]
        n = len(self._wps)
        x = np.array([w.transform.location.x for w in self._wps])
        y = np.array([w.transform.location.y for w in self._wps])
        z = np.array([w.transform.location.z for w in self._wps])
        yaw = np.array([w.transform.rotation.yaw for w in self._wps])
        role = np.array([ROLE_AV if i < self.n_avs else ROLE_BACKGROUND for i in range(n)], np.uint8)
        return Snapshot(frame, frame * self.tick_s, np.arange(n, dtype=np.int64), role, x, y, z, yaw,
                        np.full(n, self.speed), np.full(n, -1, np.int32))

    def _place(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        if self._start is not None:
            self._wps = list(self._start)[: self.n]
        else:
            pool = self.map.generate_waypoints(6.0)
            idx = self._rng.choice(len(pool), size=min(self.n, len(pool)), replace=False)
            self._wps = [pool[int(i)] for i in sorted(idx)]

    def attach_camera(self, name: str, spec: Any, vehicle_id: int) -> None:
        if self._rig is None:
            from carla_mr.world.render import EmbeddedCameraRig

            self._rig = EmbeddedCameraRig(self.map, self.signs)
        self._rig.attach(name, spec, vehicle_id)

    def read_camera(self, name: str):
        if self._rig is None or self.last is None:
            raise RunError("read_camera() needs attach_camera() and reset() first")
        return self._rig.render(name, self.last, self.texture_store)


def start_before_sign(cmap, signs: SignTable, *, kind: str = "speed_limit", back_m: float = 35.0,
                      n_background: int = 6, index: int = 0) -> list:
    """Start waypoints: an AV ``back_m`` metres before the ``index``-th sign of ``kind`` on its
    lane (facing it), then ``n_background`` waypoints spread over the map."""
    import carla

    hits = np.nonzero(np.asarray(signs.kind).astype(str) == kind)[0]
    if len(hits) == 0:
        raise RunError(f"the map has no sign of kind {kind!r}")
    i = int(hits[index % len(hits)])
    wp = cmap.get_waypoint(carla.Location(float(signs.x[i]), float(signs.y[i]), 0.0))
    back = wp.previous(back_m)
    ego = back[0] if back else wp
    pool = cmap.generate_waypoints(15.0)
    step = max(1, len(pool) // max(1, n_background))
    return [ego] + pool[::step][:n_background]

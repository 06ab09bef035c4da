"""KinematicWorld: a deterministic, SUMO-free World on a ``carla.Map`` (tests, benchmarks).

Vehicles follow their lanes at constant speed (``wp.next``), branching at junctions by a
seeded generator; cameras use the embedded renderer. Unlike EmbeddedWorld it can run many
times in one process (no libsumo), which is what tests of resuming and benchmarks need.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from carla_mr.errors import RunError
from carla_mr.world.base import ROLE_AV, ROLE_BACKGROUND, RsuTable, SignTable, Snapshot, World


def _empty_rsus() -> RsuTable:
    z = np.zeros(0)
    return RsuTable(z, z.copy(), z.copy(), z.copy(), z.copy(), z.copy(), z.copy(), z.copy())


class KinematicWorld(World):
    """``n_avs`` AVs and ``n_background`` vehicles driving their lanes at ``speed`` m/s."""

    def __init__(self, carla_map, signs: Optional[SignTable] = None, *, n_avs: int = 1, n_background: int = 10,
                 seed: int = 0, tick_s: float = 0.05, speed: float = 8.0, start: Optional[list] = None):
        from carla_mr.world.maps import landmarks_to_signs

        self.map = carla_map
        self.signs = signs if signs is not None else landmarks_to_signs(carla_map)
        self.rsus = _empty_rsus()
        self.tick_s = float(tick_s)
        self.seed = int(seed)
        self.speed = float(speed)
        self.n = int(n_avs) + int(n_background)
        self.n_avs = int(n_avs)
        self._start = start
        self._wps: list = []
        self.last: Optional[Snapshot] = None
        self._frame = -1
        self._rig = None

    def reset(self) -> Snapshot:
        self._rng = np.random.default_rng(self.seed)
        if self._start is not None:
            self._wps = list(self._start)[: self.n]
        else:
            pool = self.map.generate_waypoints(6.0)
            idx = self._rng.choice(len(pool), size=min(self.n, len(pool)), replace=False)
            self._wps = [pool[int(i)] for i in sorted(idx)]
        self._frame = 0
        return self._snap()

    def tick(self) -> Snapshot:
        if not self._wps and self.n:
            raise RunError("tick() before reset()")
        step = self.speed * self.tick_s
        for i, wp in enumerate(self._wps):
            nxt = wp.next(step)
            if nxt:
                self._wps[i] = nxt[int(self._rng.integers(len(nxt)))] if len(nxt) > 1 else nxt[0]
        self._frame += 1
        return self._snap()

    def _snap(self) -> Snapshot:
        n = len(self._wps)
        x = np.array([w.transform.location.x for w in self._wps])
        y = np.array([w.transform.location.y for w in self._wps])
        z = np.array([w.transform.location.z for w in self._wps])
        yaw = np.array([w.transform.rotation.yaw for w in self._wps])
        role = np.array([ROLE_AV if i < self.n_avs else ROLE_BACKGROUND for i in range(n)], np.uint8)
        self.last = Snapshot(self._frame, self._frame * self.tick_s, np.arange(n, dtype=np.int64), role, x, y, z,
                             yaw, np.full(n, self.speed), np.full(n, -1, np.int32))
        return self.last

    def close(self) -> None:
        pass

    def attach_camera(self, name: str, spec: Any, vehicle_id: int) -> None:
        if self._rig is None:
            from carla_mr.world.render import EmbeddedCameraRig

            self._rig = EmbeddedCameraRig(self.map, self.signs)
        self._rig.attach(name, spec, vehicle_id)

    def read_camera(self, name: str):
        if self._rig is None or self.last is None:
            raise RunError("read_camera() needs attach_camera() and reset() first")
        return self._rig.render(name, self.last, self.sign_textures())


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

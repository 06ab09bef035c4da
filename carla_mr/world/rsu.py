"""Roadside units: placement along the map's roads and vectorised vehicle -> RSU association.

``auto`` placement covers the road network with RSUs about ``spacing_m`` apart: the map's lane
centres are sampled every few metres, binned into a square grid of cell size ``spacing_m``,
and each occupied cell gets one RSU at its road point nearest the cell centre. With
``count`` set, ``count`` RSUs are chosen by farthest-point sampling of those road points
(deterministic). Every RSU carries the scenario's radio range and resources.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from carla_mr.world.base import RsuTable

if TYPE_CHECKING:  # pragma: no cover
    import carla

    from carla_mr.config import RsusConfig


def road_points(cmap: "carla.Map", step_m: float = 5.0) -> np.ndarray:
    """(P, 2) lane-centre points of the map every ``step_m`` metres (CARLA frame, metres)."""
    wps = cmap.generate_waypoints(step_m)
    pts = np.array([(w.transform.location.x, w.transform.location.y) for w in wps], dtype=np.float64)
    return pts.reshape(-1, 2)


def grid_placement(points: np.ndarray, spacing_m: float) -> np.ndarray:
    """One point per occupied ``spacing_m`` grid cell: the road point nearest the cell centre."""
    if len(points) == 0:
        return np.zeros((0, 2))
    origin = points.min(axis=0)
    cell = np.floor((points - origin) / spacing_m).astype(np.int64)
    centre = origin + (cell + 0.5) * spacing_m
    d2 = ((points - centre) ** 2).sum(axis=1)
    order = np.lexsort((d2, cell[:, 1], cell[:, 0]))
    c_sorted = cell[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = np.any(c_sorted[1:] != c_sorted[:-1], axis=1)
    return points[order[first]]


def farthest_points(points: np.ndarray, count: int) -> np.ndarray:
    """``count`` points by farthest-point sampling, starting from the point nearest the centroid."""
    if len(points) == 0:
        return np.zeros((0, 2))
    count = min(count, len(points))
    start = int(np.argmin(((points - points.mean(axis=0)) ** 2).sum(axis=1)))
    chosen = [start]
    d2 = ((points - points[start]) ** 2).sum(axis=1)
    for _ in range(count - 1):
        nxt = int(np.argmax(d2))
        chosen.append(nxt)
        d2 = np.minimum(d2, ((points - points[nxt]) ** 2).sum(axis=1))
    return points[chosen]


def make_rsus(cfg: "RsusConfig", cmap: "carla.Map | None" = None, points: np.ndarray | None = None) -> RsuTable:
    """The RSU table for a scenario's ``rsus`` section (auto placement needs the map or points)."""
    if cfg.mode == "explicit":
        xy = np.array([(p.x, p.y) for p in cfg.positions], dtype=np.float64).reshape(-1, 2)
        z = np.array([p.z for p in cfg.positions], dtype=np.float64)
        rng = np.array([p.range_m or cfg.range_m for p in cfg.positions], dtype=np.float64)
    else:
        if points is None:
            if cmap is None:
                raise ValueError("auto RSU placement needs the map or road points")
            points = road_points(cmap)
        xy = farthest_points(points, cfg.count) if cfg.count else grid_placement(points, cfg.spacing_m)
        z = np.full(len(xy), cfg.height_m)
        rng = np.full(len(xy), cfg.range_m)
    j = len(xy)
    return RsuTable(x=xy[:, 0].copy(), y=xy[:, 1].copy(), z=z, range_m=rng,
                    bandwidth_up_hz=np.full(j, cfg.bandwidth_up_hz), bandwidth_down_hz=np.full(j, cfg.bandwidth_down_hz),
                    cpu_hz=np.full(j, cfg.cpu_hz), gpu_hz=np.full(j, cfg.gpu_hz))


class RsuAssociator:
    """Nearest RSU in range for many vehicles at once (2-D distance, metres).

    ``assign(x, y)`` returns int32 RSU indices, -1 where no RSU's range covers the vehicle.
    Ties go to the lower RSU index. Works in chunks so memory stays O(chunk * J).
    """

    def __init__(self, rsus: RsuTable, chunk: int = 4096):
        self.rx = np.ascontiguousarray(rsus.x, dtype=np.float64)
        self.ry = np.ascontiguousarray(rsus.y, dtype=np.float64)
        self.r2 = np.ascontiguousarray(rsus.range_m, dtype=np.float64) ** 2
        self.chunk = chunk
        # with one common range, the nearest RSU covers the vehicle iff any RSU does
        self.uniform = bool(len(self.r2) == 0 or np.all(self.r2 == self.r2[0]))
        # (n, J) scratch reused while the vehicle count stays the same (called every tick)
        self._d2 = self._dy = np.zeros((0, len(self.rx)))

    def _assign_block(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if self._d2.shape[0] != len(x):
            self._d2, self._dy = np.empty((len(x), len(self.rx))), np.empty((len(x), len(self.rx)))
        d2, dy = self._d2, self._dy
        np.subtract(x[:, None], self.rx, out=d2)
        d2 *= d2
        np.subtract(y[:, None], self.ry, out=dy)
        dy *= dy
        d2 += dy
        if self.uniform:
            out = d2.argmin(axis=1).astype(np.int32)
            out[d2.min(axis=1) > self.r2[0]] = -1
            return out
        d2[d2 > self.r2] = np.inf
        best = d2.argmin(axis=1)
        return np.where(np.isfinite(d2.min(axis=1)), best, -1).astype(np.int32)

    def assign(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        n = len(x)
        if n == 0 or len(self.rx) == 0:
            return np.full(n, -1, dtype=np.int32)
        if n <= self.chunk:
            return self._assign_block(x, y)
        out = np.empty(n, dtype=np.int32)
        for a in range(0, n, self.chunk):
            b = min(n, a + self.chunk)
            out[a:b] = self._assign_block(x[a:b], y[a:b])
        return out


def assign_rsu(rsus: RsuTable, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """One-shot :meth:`RsuAssociator.assign`."""
    return RsuAssociator(rsus).assign(np.asarray(x, np.float64), np.asarray(y, np.float64))

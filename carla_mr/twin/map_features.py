"""Lane geometry ahead of each vehicle from an offline ``carla.Map``: the twin's map inputs.

Constant velocity knows nothing of the road; these features tell the residual model where the
lane goes. Given the vehicles' last positions (CARLA frame, metres, left-handed) and headings
(radians, the residual frame's: ``carla_mr.twin.frames.heading_from_past``), :meth:`MapFeatures.compute`
returns ``(M, N_MAP)`` floats, all relative to the vehicle's own frame (x forward, y to the
side, the same sign as the residual model's local frame: in CARLA's left-handed frame a
positive y is to the vehicle's RIGHT, so a left turn ahead gives negative values):

====  ==============================================================================
 0    map present (1; 0 = no map: every feature is 0)
 1    on a lane: an aligned driving-lane point lies within ``MAX_OFFSET_M`` (else 2-12 are 0)
 2    lateral offset from the lane centre, metres / 2 (signed, + = vehicle right of centre)
 3    lane heading here minus the vehicle's heading, wrapped, / (pi/2)
 4-9  for d = 10, 20, 30 m ahead along the lane: the lane-centre point's side offset in the
      vehicle frame / d, and the lane heading there minus the vehicle's heading / (pi/2)
 10   a branch within 30 m ahead (the lane splits: at a junction entry; the straightest branch is followed)
 11   distance to the next junction along the lane, min(d, 30 m) / 30 (0 = in a junction, 1 = none within 30 m)
 12   in a junction
====  ==============================================================================

The lane is the nearest point of a dense table of driving-lane waypoints (every
``SPACING_M`` metres, ``carla.Map.generate_waypoints``) whose direction is within 90 degrees
of the vehicle's heading (so a vehicle picks its own direction's lane, also where junction
lanes overlap); a KD-tree finds it, vectorised. The look-ahead of a table point (``next(d)``
in ``STEP_M`` steps, taking the branch closest to straight) is computed once and cached per
point (:attr:`MapFeatures.cached`), so a batch of 200 vehicles costs well under a millisecond
once warm (:meth:`MapFeatures.warm` fills the whole table, a fraction of a second per map).
Everything here is CARLA-frame geometry from libcarla; without a map, :func:`absent` gives
zeros (flag 0) and the model still serves.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from carla_mr.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import carla

AHEAD_M = (10.0, 20.0, 30.0)
STEP_M = 5.0
JUNCTION_HORIZON_M = 30.0
SPACING_M = 2.0
MAX_OFFSET_M = 5.0
N_MAP = 13
NAMES = ("map_present", "on_lane", "lateral_offset", "lane_heading", "ahead10_side", "ahead10_heading",
         "ahead20_side", "ahead20_heading", "ahead30_side", "ahead30_heading", "branch_ahead",
         "junction_distance", "in_junction")
_HALF_PI = 0.5 * math.pi
_AHEAD = np.asarray(AHEAD_M)


def _wrap(a):
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def absent(m: int) -> np.ndarray:
    """The features of ``m`` vehicles with no map: all zeros (flag 0)."""
    return np.zeros((m, N_MAP))


def load(path: str | Path) -> "MapFeatures":
    """A :class:`MapFeatures` from an .xodr file; InputError (field ``--map``) if it is not OpenDRIVE."""
    from carla_mr.world.maps import load_map

    p = Path(path)
    try:
        return MapFeatures(load_map(p), name=p.stem)
    except InputError as exc:
        raise InputError(f"--map must be an OpenDRIVE .xodr file: {exc}", field="--map", source=str(p)) from exc


class MapFeatures:
    """The map features of one ``carla.Map`` (see the module docstring)."""

    def __init__(self, cmap: "carla.Map", *, name: str = "", cache: bool = True):
        import carla
        from scipy.spatial import cKDTree

        self.map = cmap
        self.name = name
        self.use_cache = bool(cache)
        wps = [w for w in cmap.generate_waypoints(SPACING_M) if w.lane_type == carla.LaneType.Driving]
        if not wps:
            raise InputError("the map has no driving lanes", field="--map", source=name)
        self._wps = wps
        self.xy = np.array([[w.transform.location.x, w.transform.location.y] for w in wps])
        self.yaw = np.radians([w.transform.rotation.yaw for w in wps])
        self._tree = cKDTree(self.xy)
        #: per table point: the look-ahead part (features 4-12 before the vehicle-frame rotation,
        #: as absolute quantities): (side/heading are filled per vehicle from these)
        self._ahead_xy = np.full((len(wps), len(AHEAD_M), 2), np.nan)
        self._ahead_yaw = np.full((len(wps), len(AHEAD_M)), np.nan)
        self._misc = np.full((len(wps), 3), np.nan)  # branch, junction distance (norm), in junction
        self.cached = np.zeros(len(wps), bool)

    # -- the look-ahead of one table point ----------------------------------------------------------
    def _lookahead(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        w = self._wps[i]
        yaw0 = math.radians(w.transform.rotation.yaw)
        n_steps = int(round(max(max(AHEAD_M), JUNCTION_HORIZON_M) / STEP_M))
        axy = np.zeros((len(AHEAD_M), 2))
        ayaw = np.zeros(len(AHEAD_M))
        branch, jdist = 0.0, (0.0 if w.is_junction else JUNCTION_HORIZON_M)
        cur, cur_yaw, end = w, yaw0, False
        for k in range(1, n_steps + 1):
            d = k * STEP_M
            if not end:
                nxt = cur.next(STEP_M)
                if not nxt:  # a dead end: hold the last point
                    end = True
                else:
                    if len(nxt) > 1:
                        branch = 1.0
                    yaws = np.radians([n.transform.rotation.yaw for n in nxt])
                    j = int(np.argmin(np.abs(_wrap(yaws - cur_yaw))))
                    cur, cur_yaw = nxt[j], float(yaws[j])
                    if cur.is_junction and jdist >= JUNCTION_HORIZON_M:
                        jdist = min(d, JUNCTION_HORIZON_M)
            for a, da in enumerate(AHEAD_M):
                if abs(da - d) < 1e-6:
                    loc = cur.transform.location
                    axy[a] = (loc.x, loc.y)
                    ayaw[a] = cur_yaw
        misc = np.array([branch, jdist / JUNCTION_HORIZON_M, 1.0 if w.is_junction else 0.0])
        return axy, ayaw, misc

    def _fill(self, idx: np.ndarray) -> None:
        miss = idx[~self.cached[idx]]
        if miss.size == 0:
            return
        for i in np.unique(miss).tolist():
            self._ahead_xy[i], self._ahead_yaw[i], self._misc[i] = self._lookahead(i)
            self.cached[i] = True

    def warm(self) -> "MapFeatures":
        """Compute the look-ahead of every table point now (so no later batch pays for it)."""
        self._fill(np.arange(len(self._wps)))
        return self

    # -- the features ---------------------------------------------------------------------------------
    def nearest(self, x: np.ndarray, y: np.ndarray, heading: np.ndarray, k: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """Per vehicle: the table index of its lane point and whether it is on a lane."""
        pts = np.stack([x, y], axis=-1)
        k = min(k, len(self._wps))
        dist, idx = self._tree.query(pts, k=k)
        dist, idx = dist.reshape(len(pts), k), idx.reshape(len(pts), k)
        aligned = np.cos(self.yaw[idx] - heading[:, None]) > 0.0
        pick = np.where(aligned.any(1), np.argmax(aligned, axis=1), 0)
        rows = np.arange(len(pts))
        on = aligned[rows, pick] & (dist[rows, pick] <= MAX_OFFSET_M)
        return idx[rows, pick], on

    def compute(self, x, y, heading) -> np.ndarray:
        """(M,) x, y (m, CARLA frame), heading (rad) -> (M, N_MAP) features."""
        x, y, heading = (np.asarray(v, np.float64).reshape(-1) for v in (x, y, heading))
        m = x.size
        if m == 0:
            return np.zeros((0, N_MAP))
        idx, on = self.nearest(x, y, heading)
        if self.use_cache:
            self._fill(idx[on])
            axy, ayaw, misc = self._ahead_xy[idx], self._ahead_yaw[idx], self._misc[idx]
        else:
            parts = [self._lookahead(int(i)) for i in idx.tolist()]
            axy = np.stack([p[0] for p in parts])
            ayaw = np.stack([p[1] for p in parts])
            misc = np.stack([p[2] for p in parts])
        c, s = np.cos(heading)[:, None], np.sin(heading)[:, None]
        pos = np.stack([x, y], axis=-1)
        lyaw = self.yaw[idx]
        d = pos - self.xy[idx]
        out = np.empty((m, N_MAP))
        out[:, 0] = 1.0
        out[:, 1] = 1.0
        out[:, 2] = (np.cos(lyaw) * d[:, 1] - np.sin(lyaw) * d[:, 0]) / 2.0  # + = right of the lane (CARLA frame)
        out[:, 3] = _wrap(lyaw - heading) / _HALF_PI
        e = axy - pos[:, None, :]  # (M, A, 2) to the lane points ahead
        out[:, 4:10:2] = (c * e[..., 1] - s * e[..., 0]) / _AHEAD
        out[:, 5:10:2] = _wrap(ayaw - heading[:, None]) / _HALF_PI
        out[:, 10:13] = misc
        out[~on, 1:] = 0.0  # (the only rows whose look-ahead may be uncomputed, NaN)
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "table_points": int(len(self._wps)), "cached": int(self.cached.sum())}

"""Procedural, seeded props off the road for the OpenGL camera: buildings, trees, street lamps,
bins and benches, plus zebra crossings where lanes enter junctions.

Placement works on a 1 m raster of the map's road surfaces (lanes, shoulders and sidewalks
of :class:`~carla_mr.world.scene.RoadScene`): its distance transform says how far each cell
lies from the nearest road surface, and its gradient which way the road is. Buildings stand
:data:`BUILDING_SETBACK_M` or more from any road surface, facing the road; trees and
street furniture stand on the verge beside the sidewalks; nothing overlaps a road or another
prop. The same map and seed give the same town (metres, CARLA's world frame).

With a ``carla.Map``, the map's own OpenDRIVE ``<object>``s (poles, street lamps, buildings,
trees, barriers, crosswalks, road marks, ...; :mod:`carla_mr.world.xodr_objects`) are drawn
first, by type (:mod:`carla_mr.world.gl_objects`, :func:`map_objects`), and the seeded props
keep clear of them; objects that are signs of the sign table are not drawn again. When the
map draws crosswalks of its own, the procedural zebra crossings are left out.
"""

from __future__ import annotations

import math

import numpy as np

from carla_mr.world.gl_objects import (BARRIER_HEIGHT_M, BARRIER_THICKNESS_M, COLOURS, FLAT_LIFT_M, LAMP_HEIGHT_M,
                                       POLE_HEIGHT_M, POLE_RADIUS_M, add_cap, add_pole, add_prism, add_stripes,
                                       add_walls, category, circle, counter_clockwise, rectangle, sign_like,
                                       signed_area)
from carla_mr.world.gl_scene import Mesh, add_quads, box_tris, merged, road_mesh, terrain_mesh
from carla_mr.world.xodr_objects import XodrObjects, read_objects

#: The nearest a building wall stands to a road surface (metres).
BUILDING_SETBACK_M = 3.0
#: Facades carry this ``aa`` value: the fragment shader draws windows on them.
FACADE_AA = 5.0
#: Colours above 1.0 glow at dusk and night (emissive lamp heads).
LAMP_GLOW = (2.0, 1.8, 1.2)
WALLS = np.array([(0.62, 0.36, 0.28), (0.75, 0.72, 0.66), (0.86, 0.80, 0.66), (0.55, 0.55, 0.57),
                  (0.70, 0.58, 0.45), (0.80, 0.78, 0.76), (0.45, 0.42, 0.40), (0.66, 0.48, 0.40)])
CELL_M = 1.0


class RoadRaster:
    """A 1 m raster of the road surfaces with each cell's distance to the nearest one (metres)
    and the ground height there (the nearest road's, metres)."""

    def __init__(self, road: np.ndarray, extent: tuple[float, float, float, float], margin_m: float = 60.0):
        import cv2

        x0, y0, x1, y1 = extent
        self.x0, self.y0 = x0 - margin_m, y0 - margin_m
        self.w = int(math.ceil((x1 - x0 + 2 * margin_m) / CELL_M)) + 1
        self.h = int(math.ceil((y1 - y0 + 2 * margin_m) / CELL_M)) + 1
        occ = np.zeros((self.h, self.w), np.uint8)
        for q in road:
            pts = np.round((q[:, :2] - (self.x0, self.y0)) / CELL_M * 4).astype(np.int32)
            cv2.fillConvexPoly(occ, pts, 1, cv2.LINE_8, 2)
        self.road = occ
        self.dist = cv2.distanceTransform((1 - occ).astype(np.uint8), cv2.DIST_L2, 5) * CELL_M
        self.free = np.zeros_like(occ)
        from scipy.spatial import cKDTree

        pts = road.reshape(-1, 3) if len(road) else np.zeros((1, 3))
        self._tree = cKDTree(pts[:, :2])
        self._z = pts[:, 2]

    def cell(self, x: float, y: float) -> tuple[int, int]:
        return int((y - self.y0) / CELL_M), int((x - self.x0) / CELL_M)

    def world(self, r: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.x0 + (c + 0.5) * CELL_M, self.y0 + (r + 0.5) * CELL_M

    def ground(self, x: float, y: float) -> float:
        return float(self._z[self._tree.query((x, y))[1]])

    def toward_road(self, r: int, c: int) -> float:
        """Heading (radians, CARLA yaw) from cell (r, c) toward the nearest road (distance gradient)."""
        r0, r1 = max(r - 2, 0), min(r + 2, self.h - 1)
        c0, c1 = max(c - 2, 0), min(c + 2, self.w - 1)
        gy = self.dist[r1, c] - self.dist[r0, c]
        gx = self.dist[r, c1] - self.dist[r, c0]
        return math.atan2(-gy, -gx)

    def clear(self, corners: np.ndarray, min_dist: float) -> bool:
        """Whether a footprint (K, 2) stays ``min_dist`` m from the roads and off other props."""
        import cv2

        pts = np.round((corners - (self.x0, self.y0)) / CELL_M).astype(np.int32)
        if (pts < 0).any() or (pts[:, 0] >= self.w).any() or (pts[:, 1] >= self.h).any():
            return False
        m = np.zeros((self.h, self.w), np.uint8)
        x0, y0 = pts.min(axis=0)
        x1, y1 = pts.max(axis=0) + 1
        sub = m[y0:y1 + 1, x0:x1 + 1]
        cv2.fillConvexPoly(sub, pts - (x0, y0), 1)
        inside = sub > 0
        return bool((self.dist[y0:y1 + 1, x0:x1 + 1][inside] >= min_dist).all()
                    and not self.free[y0:y1 + 1, x0:x1 + 1][inside].any())

    def take(self, corners: np.ndarray, pad_m: float = 1.0) -> None:
        import cv2

        c = corners.mean(axis=0)
        grown = c + (corners - c) * (1.0 + pad_m / max(np.linalg.norm(corners - c, axis=1).min(), 0.5))
        pts = np.round((grown - (self.x0, self.y0)) / CELL_M).astype(np.int32)
        cv2.fillConvexPoly(self.free, pts, 1)


def _footprint(x: float, y: float, yaw: float, length: float, width: float) -> np.ndarray:
    """Rectangle corners (4, 2): ``length`` along ``yaw``, ``width`` across, centred at (x, y)."""
    c, s = math.cos(yaw), math.sin(yaw)
    u, v = np.array([c, s]) * length / 2, np.array([-s, c]) * width / 2
    p = np.array([x, y])
    return np.stack([p + u + v, p - u + v, p - u - v, p + u - v])


def _prism(mesh: Mesh, foot: np.ndarray, z0: float, z1: float, wall, roof, facade: bool = False) -> None:
    """A vertical prism on a convex footprint (K, 2): walls and a flat roof."""
    k = len(foot)
    lo = np.column_stack([foot, np.full(k, z0)])
    hi = np.column_stack([foot, np.full(k, z1)])
    walls = np.stack([np.stack([lo[i], lo[(i + 1) % k], hi[(i + 1) % k], hi[i]]) for i in range(k)])
    centre = foot.mean(axis=0)
    mids = (foot + np.roll(foot, -1, axis=0)) / 2 - centre
    d = np.roll(foot, -1, axis=0) - foot
    nrm = np.column_stack([d[:, 1], -d[:, 0], np.zeros(k)])
    nrm *= np.where((nrm[:, :2] * mids).sum(axis=1) < 0, -1.0, 1.0)[:, None]
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-9)
    tri = walls[:, [0, 1, 2, 0, 2, 3]].reshape(-1, 3)
    mesh.add(tri, np.repeat(nrm, 6, axis=0), np.tile(np.asarray(wall, float), (len(tri), 1)),
             np.full(len(tri), FACADE_AA if facade else 2.0, np.float32))
    roof_tris = np.concatenate([[hi[0], hi[i], hi[i + 1]] for i in range(1, k - 1)])
    mesh.add(roof_tris, np.tile((0, 0, 1.0), (len(roof_tris), 1)), np.tile(np.asarray(roof, float), (len(roof_tris), 1)))


def _candidates(rr: RoadRaster, lo: float, hi: float, step: int, rng) -> np.ndarray:
    """Cells (N, 2) whose road distance is within [lo, hi) metres, on a ``step`` grid, shuffled."""
    sub = rr.dist[::step, ::step]
    r, c = np.nonzero((sub >= lo) & (sub < hi))
    cells = np.stack([r * step, c * step], axis=1)
    rng.shuffle(cells)
    return cells


def buildings(rr: RoadRaster, rng, mesh: Mesh, max_count: int = 900) -> int:
    """Seeded blocks facing the roads; returns how many stand."""
    n = 0
    for r, c in _candidates(rr, BUILDING_SETBACK_M + 4.0, BUILDING_SETBACK_M + 9.0, 3, rng):
        if n >= max_count:
            break
        x, y = rr.world(r, c)
        yaw = rr.toward_road(int(r), int(c))
        front, depth = rng.uniform(9.0, 20.0), rng.uniform(8.0, 16.0)
        # The facade (length ``front``) runs across the direction to the road.
        foot = _footprint(float(x), float(y), yaw + math.pi / 2, front, depth)
        if not rr.clear(foot, BUILDING_SETBACK_M):
            continue
        rr.take(foot, 1.5)
        z0 = rr.ground(float(x), float(y)) - 0.5
        height = float(rng.choice([rng.uniform(4.0, 8.0), rng.uniform(8.0, 16.0), rng.uniform(16.0, 30.0)],
                                  p=[0.35, 0.45, 0.2]))
        wall = WALLS[int(rng.integers(len(WALLS)))] * rng.uniform(0.9, 1.08)
        _prism(mesh, foot, z0, z0 + 0.5 + height, np.clip(wall, 0, 1), (0.32, 0.30, 0.30), facade=True)
        n += 1
    return n


def _tree(mesh: Mesh, x: float, y: float, z: float, rng, min_crown_m: float = 0.0) -> None:
    """A low-poly tree: a trunk and a 7-sided double-cone crown (bottom at ``min_crown_m`` or higher)."""
    h = rng.uniform(4.0, 8.5)
    trunk = rng.uniform(0.12, 0.2)
    p, nrm = box_tris((x - trunk, y - trunk, z), (x + trunk, y + trunk, z + h * 0.45))
    mesh.add(p, nrm, np.tile((0.33, 0.24, 0.16), (len(p), 1)))
    rad = rng.uniform(1.3, 2.2) if min_crown_m > 0 else rng.uniform(1.6, 3.0)
    green = np.array((0.22, 0.40, 0.16)) * rng.uniform(0.8, 1.2)
    k = 7
    ang = np.linspace(0, 2 * np.pi, k, endpoint=False) + rng.uniform(0, 1)
    ring = np.column_stack([x + rad * np.cos(ang), y + rad * np.sin(ang),
                            np.full(k, z + max(h * 0.55, min_crown_m + 0.6))])
    top, bot = np.array([x, y, z + max(h, min_crown_m + 3.0)]), np.array([x, y, z + max(h * 0.25, min_crown_m)])
    tris, nrms = [], []
    for i in range(k):
        a, b = ring[i], ring[(i + 1) % k]
        for apex in (top, bot):
            t = np.array([apex, a, b])
            n = np.cross(t[1] - t[0], t[2] - t[0])
            n = n / (np.linalg.norm(n) or 1.0)
            if np.dot(n, (a + b) / 2 - np.array([x, y, (top[2] + bot[2]) / 2])) < 0:
                n = -n
            tris.append(t)
            nrms.append(np.tile(n, (3, 1)))
    mesh.add(np.concatenate(tris), np.concatenate(nrms), np.tile(np.clip(green, 0, 1), (3 * len(tris), 1)))


def trees(rr: RoadRaster, rng, mesh: Mesh, verge: int = 600, park: int = 500) -> int:
    """Street trees on the verges (0.8-2.5 m from the road surfaces: their crowns overhang the
    sidewalks) and trees scattered in the open."""
    n = 0
    for (lo, hi, step, count) in ((0.8, 2.5, 3, verge), (14.0, 1e9, 7, park)):
        k = 0
        for r, c in _candidates(rr, lo, hi, step, rng):
            if k >= count:
                break
            x, y = rr.world(r, c)
            foot = _footprint(float(x), float(y), 0.0, 1.2, 1.2)
            if not rr.clear(foot, 0.2):
                continue
            rr.take(foot, 2.5)
            _tree(mesh, float(x), float(y), rr.ground(float(x), float(y)) - 0.1, rng,
                  min_crown_m=2.6 if hi < 10 else 0.0)  # verge crowns clear the traffic
            k += 1
        n += k
    return n


def sidewalk_trees(scene, rr: RoadRaster, rng, mesh: Mesh, spacing_m: float = 12.0, from_curb_m: float = 1.0) -> int:
    """Street trees in tree pits on sidewalks 1.8 m wide or more, ``from_curb_m`` from the curb,
    at least ``spacing_m`` apart (seeded order), crowns from 2.6 m up (over the sidewalk and
    the kerb lane, in the sight lines to the signs on the sidewalk)."""
    from carla_mr.world.gl_scene import CURB_M, SIDEWALK

    import cv2

    side = (scene.road_color == SIDEWALK).all(axis=1) if len(scene.road) else np.zeros(0, bool)
    walk = scene.road[side] if len(scene.road) else np.zeros((0, 4, 3))
    lanes = np.zeros((rr.h, rr.w), np.uint8)  # where sidewalks overlap a lane (corners), no tree
    for q in scene.road[~side] if len(scene.road) else ():
        pts = np.round((q[:, :2] - (rr.x0, rr.y0)) / CELL_M * 4).astype(np.int32)
        cv2.fillConvexPoly(lanes, pts, 1, cv2.LINE_8, 2)
    cands = []
    for q in walk:
        edge = q[1] - q[0]
        across = q[3] - q[0]
        width, length = np.linalg.norm(across[:2]), np.linalg.norm(edge[:2])
        if width < 1.8 or length < 0.5:
            continue
        for t in np.arange(0.0, length, 2.0) / length:
            cands.append(q[0] + edge * t + across / width * from_curb_m)
    if not cands:
        return 0
    cands = np.asarray(cands)
    cands = cands[rng.permutation(len(cands))]
    n = 0
    for x, y, z in cands:
        foot = _footprint(float(x), float(y), 0.0, 0.6, 0.6)
        r0, c0 = rr.cell(float(x), float(y))
        if not (0 <= r0 < rr.h and 0 <= c0 < rr.w) or lanes[r0, c0]:
            continue
        k = int(spacing_m / 2 / CELL_M)
        if rr.free[max(r0 - k, 0):r0 + k + 1, max(c0 - k, 0):c0 + k + 1].any():
            continue
        rr.take(foot, spacing_m / 2)
        _tree(mesh, float(x), float(y), float(z) + CURB_M, rng, min_crown_m=2.6)
        n += 1
    return n


def furniture(rr: RoadRaster, rng, mesh: Mesh, lamps: int = 500, small: int = 300) -> int:
    """Street lamps (6 m poles with a glowing head) and bins/benches 0.5-1.5 m off the road surfaces."""
    n = 0
    for r, c in _candidates(rr, 0.6, 1.6, 13, rng)[:lamps]:
        x, y = rr.world(r, c)
        x, y = float(x), float(y)
        foot = _footprint(x, y, 0.0, 0.3, 0.3)
        if not rr.clear(foot, 0.5):
            continue
        rr.take(foot, 4.0)
        z = rr.ground(x, y)
        yaw = rr.toward_road(int(r), int(c))
        p, nrm = box_tris((x - 0.07, y - 0.07, z), (x + 0.07, y + 0.07, z + 6.0))
        mesh.add(p, nrm, np.tile((0.3, 0.31, 0.33), (len(p), 1)))
        hx, hy = x + 0.9 * math.cos(yaw), y + 0.9 * math.sin(yaw)
        p, nrm = box_tris((min(x, hx) - 0.12, min(y, hy) - 0.12, z + 5.85), (max(x, hx) + 0.12, max(y, hy) + 0.12, z + 6.05))
        mesh.add(p, nrm, np.tile((0.3, 0.31, 0.33), (len(p), 1)))
        p, nrm = box_tris((hx - 0.2, hy - 0.2, z + 5.75), (hx + 0.2, hy + 0.2, z + 5.86))
        mesh.add(p, nrm, np.tile(LAMP_GLOW, (len(p), 1)))
        n += 1
    for r, c in _candidates(rr, 0.8, 2.0, 11, rng)[:small]:
        x, y = (float(v) for v in rr.world(r, c))
        foot = _footprint(x, y, 0.0, 1.6, 1.6)
        if not rr.clear(foot, 0.5):
            continue
        rr.take(foot, 1.0)
        z = rr.ground(x, y)
        if rng.random() < 0.5:  # a bin
            p, nrm = box_tris((x - 0.3, y - 0.3, z), (x + 0.3, y + 0.3, z + 1.0))
            mesh.add(p, nrm, np.tile((0.15, 0.35, 0.2), (len(p), 1)))
        else:  # a bench
            yaw = rr.toward_road(int(r), int(c))
            foot = _footprint(x, y, yaw + math.pi / 2, 1.8, 0.5)
            _prism(mesh, foot, z, z + 0.5, (0.45, 0.3, 0.18), (0.5, 0.34, 0.2))
        n += 1
    return n


def crosswalks(carla_map, step_m: float = 2.0) -> np.ndarray:
    """Zebra stripes (N, 4, 3) across every driving lane where it meets a junction: 0.5 m
    stripes with 0.5 m gaps, 3 m long along the lane, 1.5 m before the junction."""
    quads = []
    seen = set()
    for wp in carla_map.generate_waypoints(step_m):
        if wp.is_junction or str(getattr(wp.lane_type, "name", wp.lane_type)) != "Driving":
            continue
        for ends, sign in ((wp.next(step_m), 1.0), (wp.previous(step_m), -1.0)):
            if not any(e.is_junction for e in ends):
                continue
            key = (wp.road_id, wp.section_id, wp.lane_id, sign)
            if key in seen:
                continue
            seen.add(key)
            tf = wp.transform
            f = tf.get_forward_vector()
            fwd = np.array([f.x, f.y, 0.0]) * sign
            fwd /= np.linalg.norm(fwd) or 1.0
            right = np.array([-fwd[1], fwd[0], 0.0])
            loc = tf.location
            c = np.array([loc.x, loc.y, loc.z + 0.012]) + fwd * (step_m - 1.5 - 1.5)
            hw = wp.lane_width / 2.0
            k = int(hw * 2 // 1.0)
            for j in range(k):
                off = -hw + 0.25 + j * 1.0 + 0.25
                m = c + right * off
                quads.append([m - fwd * 1.5 - right * 0.25, m + fwd * 1.5 - right * 0.25,
                              m + fwd * 1.5 + right * 0.25, m - fwd * 1.5 + right * 0.25])
    return np.asarray(quads, np.float64).reshape(-1, 4, 3)


# -- the map's own <object>s (carla_mr.world.gl_objects says how each type is drawn) -----------

def _object_footprint(objs: XodrObjects, i: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Object ``i``'s footprint: counter-clockwise corners (K, 3) metres and their heights (K,)
    metres (the outline's, else the object's height), from its outline, else its
    length x width, else its radius; None without one (or with no area)."""
    corners, heights = objs.outline(i)
    if len(corners) >= 3:
        h = heights if (heights > 0).any() else np.full(len(corners), objs.height[i])
        rows = counter_clockwise(np.column_stack([corners, h]))  # heights stay with their corners
        foot, h = rows[:, :3], rows[:, 3]
    elif objs.length[i] > 0 and objs.width[i] > 0:
        foot = np.column_stack([rectangle(objs.x[i], objs.y[i], objs.yaw[i], objs.length[i], objs.width[i]),
                                np.full(4, objs.z[i])])
        h = np.full(4, objs.height[i])
    elif objs.radius[i] > 0:
        foot = np.column_stack([circle(objs.x[i], objs.y[i], objs.radius[i]), np.full(8, objs.z[i])])
        h = np.full(8, objs.height[i])
    else:
        return None
    return (foot, h) if abs(signed_area(foot)) > 1e-4 else None


def _draw_pole(mesh: Mesh, objs: XodrObjects, i: int, rng, lamp: bool = False) -> np.ndarray | None:
    """A pole (or street lamp) at the object (its outline's centre when it has one). Returns the
    footprint it takes (K, 2) metres, 0.3 m or more across."""
    corners, _ = objs.outline(i)
    x, y = (corners[:, :2].mean(axis=0) if len(corners) else (objs.x[i], objs.y[i]))
    sized = objs.length[i] > 0 and objs.width[i] > 0
    r = objs.radius[i] or (min(objs.length[i], objs.width[i]) / 2 if sized else 0.0)
    r = float(np.clip(r or POLE_RADIUS_M, 0.03, 0.5))
    h = float(objs.height[i] or (LAMP_HEIGHT_M if lamp else POLE_HEIGHT_M))
    add_pole(mesh, float(x), float(y), float(objs.z[i]), r, h, COLOURS["street_lamp" if lamp else "pole"],
             glow=LAMP_GLOW if lamp else None)
    return circle(float(x), float(y), max(r, 0.3))


def _draw_building(mesh: Mesh, objs: XodrObjects, i: int, rng) -> np.ndarray | None:
    """A prism on the footprint with facade windows, wall colour from :data:`WALLS`.
    Returns the footprint (K, 2) metres, None when unsized."""
    fp = _object_footprint(objs, i)
    if fp is None or fp[1].max() <= 0:
        return None
    wall = np.clip(WALLS[int(rng.integers(len(WALLS)))] * rng.uniform(0.9, 1.08), 0, 1)
    add_prism(mesh, fp[0], np.maximum(fp[1], 0.0), wall, COLOURS["roof"], aa=FACADE_AA)
    return fp[0][:, :2]


def _draw_tree(mesh: Mesh, objs: XodrObjects, i: int, rng) -> np.ndarray | None:
    """The procedural tree at the object (its outline's centre when it has one).
    Returns the footprint (K, 2) metres, None when unsized."""
    corners, _ = objs.outline(i)
    x, y = (corners[:, :2].mean(axis=0) if len(corners) else (objs.x[i], objs.y[i]))
    _tree(mesh, float(x), float(y), float(objs.z[i]), rng)
    return _footprint(float(x), float(y), 0.0, 1.2, 1.2)


def _draw_barrier(mesh: Mesh, objs: XodrObjects, i: int, rng) -> np.ndarray | None:
    """Walls along the outline's edges, else a thin box ``length`` metres along the object's yaw.
    Returns the footprint (K, 2) metres, None without an outline or a length."""
    corners, heights = objs.outline(i)
    height = objs.height[i] or BARRIER_HEIGHT_M
    if len(corners) >= 2:
        rows = np.column_stack([corners, np.where(heights > 0, heights, height)])
        rows = counter_clockwise(rows) if len(rows) >= 3 else rows
        add_walls(mesh, rows[:, :3], rows[:, 3], COLOURS["barrier"], closed=len(rows) >= 3)
        return rows[:, :2]
    if objs.length[i] <= 0:
        return None
    thick = float(np.clip(objs.width[i], *BARRIER_THICKNESS_M))
    foot = np.column_stack([rectangle(objs.x[i], objs.y[i], objs.yaw[i], objs.length[i], thick),
                            np.full(4, objs.z[i])])
    add_prism(mesh, foot, np.full(4, height), COLOURS["barrier"], COLOURS["barrier"])
    return foot[:, :2]


def _draw_crosswalk(mesh: Mesh, objs: XodrObjects, i: int, rng) -> np.ndarray | None:
    """Zebra stripes on the footprint, :data:`FLAT_LIFT_M` metres above it.
    Returns the footprint (K, 2) metres, None when unsized."""
    fp = _object_footprint(objs, i)
    if fp is None or not add_stripes(mesh, fp[0], COLOURS["crosswalk"]):
        return None
    return fp[0][:, :2]


def _draw_road_mark(mesh: Mesh, objs: XodrObjects, i: int, rng) -> np.ndarray | None:
    """The footprint filled white, :data:`FLAT_LIFT_M` metres above it.
    Returns the footprint (K, 2) metres, None when unsized."""
    fp = _object_footprint(objs, i)
    if fp is None:
        return None
    add_cap(mesh, fp[0], COLOURS["road_mark"], FLAT_LIFT_M)
    return fp[0][:, :2]


def _draw_other(mesh: Mesh, objs: XodrObjects, i: int, rng) -> np.ndarray | None:
    """A grey prism on the footprint (it needs a height). Returns the footprint (K, 2) metres, None when unsized."""
    fp = _object_footprint(objs, i)
    if fp is None or fp[1].max() <= 0:
        return None
    add_prism(mesh, fp[0], np.maximum(fp[1], 0.0), COLOURS["other"], COLOURS["other"])
    return fp[0][:, :2]


_DRAW = {"pole": _draw_pole, "street_lamp": lambda m, o, i, r: _draw_pole(m, o, i, r, lamp=True),
         "building": _draw_building, "tree": _draw_tree, "barrier": _draw_barrier, "crosswalk": _draw_crosswalk,
         "road_mark": _draw_road_mark, "other": _draw_other}
#: Categories drawn flat on the road: they take no room from the procedural props.
FLAT = ("crosswalk", "road_mark")


def map_objects(objs: XodrObjects, mesh: Mesh, sign_xy: np.ndarray | None = None, rng=None,
                rr: RoadRaster | None = None) -> dict:
    """Draw the map's ``<object>``s into ``mesh`` by type (:mod:`carla_mr.world.gl_objects`),
    skipping those that are signs already (``sign_xy`` (S, 2) metres: the sign table's
    positions) and those without a size. With ``rr`` the drawn footprints are taken, so the
    procedural props placed afterwards keep clear of them. Returns the counts: ``parsed``,
    ``drawn`` (category -> count), ``skipped_signs``, ``skipped_unsized``, ``references``
    (``<objectReference>`` elements, not drawn)."""
    rng = np.random.default_rng(0) if rng is None else rng
    skip = sign_like(objs.name, np.column_stack([objs.x, objs.y]), sign_xy)
    drawn: dict[str, int] = {}
    unsized = 0
    for i in np.nonzero(~skip)[0]:
        cat = category(objs.type[i], objs.name[i])
        foot = _DRAW[cat](mesh, objs, int(i), rng)
        if foot is None:
            unsized += 1
            continue
        drawn[cat] = drawn.get(cat, 0) + 1
        if rr is not None and cat not in FLAT and len(foot) >= 3:
            rr.take(np.asarray(foot, float), 0.5)
    return {"parsed": len(objs), "drawn": dict(sorted(drawn.items())), "skipped_signs": int(skip.sum()),
            "skipped_unsized": unsized, "references": int(objs.references)}


def map_sign_xy(carla_map) -> np.ndarray:
    """(S, 2) positions (metres, CARLA frame) of the map's landmarks: the signs of the sign table."""
    pts = [(lm.transform.location.x, lm.transform.location.y) for lm in carla_map.get_all_landmarks()]
    return np.asarray(pts, float).reshape(-1, 2)


def props_mesh(scene, carla_map=None, seed: int = 0) -> tuple[Mesh, dict]:
    """Every prop of a town (see the module notes) and their counts: with ``carla_map``, its
    own ``<object>``s first (:func:`map_objects`, counts under ``map_objects``), then the
    seeded props around them, and zebra crossings at the junctions unless the map draws its
    own crosswalks."""
    rng = np.random.default_rng(seed)
    rr = RoadRaster(scene.road, scene.extent)
    mesh = Mesh()
    obj_counts = None
    if carla_map is not None:
        objs = read_objects(carla_map.to_opendrive(), source=str(getattr(carla_map, "name", "map")))
        obj_counts = map_objects(objs, mesh, map_sign_xy(carla_map), np.random.default_rng(seed + 1), rr)
    counts = {"street_trees": sidewalk_trees(scene, rr, rng, mesh), "furniture": furniture(rr, rng, mesh), "verge_trees": trees(rr, rng, mesh, verge=700, park=0),
              "buildings": buildings(rr, rng, mesh), "park_trees": trees(rr, rng, mesh, verge=0, park=500)}
    if carla_map is not None:
        zebra = crosswalks(carla_map) if not obj_counts["drawn"].get("crosswalk") else np.zeros((0, 4, 3))
        add_quads(mesh, zebra, np.tile((235, 235, 235), (len(zebra), 1)), aa=True)
        counts["crosswalk_stripes"] = len(zebra)
        counts["map_objects"] = obj_counts
    return mesh, counts


def town_mesh(scene: RoadScene, carla_map=None, seed: int = 0, counts: dict | None = None) -> Mesh:
    """The static town of a map: terrain, roads (sidewalks, curbs, markings, crossings), the
    map's objects and the seeded props of :mod:`carla_mr.world.gl_props`. A ``counts`` dict
    is filled with :func:`props_mesh`'s counts."""
    props, prop_counts = props_mesh(scene, carla_map, seed)
    if counts is not None:
        counts.update(prop_counts)
    # Roads and props before the terrain below them: their pixels reject the terrain's early.
    return merged(road_mesh(scene), props, terrain_mesh(scene, seed=seed))

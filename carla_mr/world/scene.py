"""Static scene geometry for the embedded renderer, computed once per map.

Road surfaces are quads between consecutive waypoints of every driving lane (left and right
lane edges at half the lane width), plus the shoulders and sidewalks beside the outermost
driving lanes (other colours); lane markings are thin quads along the lane edges whose
OpenDRIVE road mark is solid or broken (broken marks drawn 3 m on, 3 m off). All arrays are
metres in CARLA's world frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: RGB colours of the scene.
ASPHALT = (70, 70, 74)
JUNCTION_ASPHALT = (78, 78, 82)
GRASS = (84, 112, 60)
MARK_WHITE = (235, 235, 235)
MARK_YELLOW = (235, 190, 40)
SKY_TOP = (95, 145, 215)
SKY_HORIZON = (190, 215, 240)
POST = (120, 120, 125)
SIDE_LANE_COLOURS = {"Sidewalk": (150, 148, 142), "Shoulder": (88, 88, 90), "Parking": (80, 80, 84),
                     "Biking": (120, 70, 60)}
SIDE_LANE_DEFAULT = (105, 105, 100)
SIGN_BACK = (150, 150, 155)

_BROKEN_ON_M = 3.0


@dataclass(frozen=True)
class RoadScene:
    """Road quads (N, 4, 3) with per-quad RGB colours (N, 3) uint8, marking quads (M, 4, 3)
    with colours (M, 3), and the map's extent (xmin, ymin, xmax, ymax) in metres."""

    road: np.ndarray
    road_color: np.ndarray
    marks: np.ndarray
    mark_color: np.ndarray
    extent: tuple[float, float, float, float]
    lane_lines: list[np.ndarray]  # centre polylines (K, 2) per lane piece, for the bird's-eye viewer

    @property
    def ground_z(self) -> float:
        return float(np.median(self.road[:, :, 2])) if len(self.road) else 0.0


def _mark_kind(marking) -> tuple[str, tuple[int, int, int], float]:
    """('solid'|'broken'|'none', colour, width m) of a carla.LaneMarking (None: a lane the
    map gives no ``<roadMark>``, which libcarla returns as no marking: drawn as none)."""
    if marking is None:
        return "none", MARK_WHITE, 0.15
    name = str(getattr(marking.type, "name", marking.type))
    width = float(getattr(marking, "width", 0.0) or 0.0)
    width = width if 0.05 <= width <= 0.5 else 0.15
    col_name = str(getattr(marking.color, "name", marking.color))
    colour = MARK_YELLOW if col_name == "Yellow" else MARK_WHITE
    if name in ("Solid", "SolidSolid", "SolidBroken", "BrokenSolid", "Curb"):
        return ("solid" if name != "Curb" else "none"), colour, width
    if name in ("Broken", "BrokenBroken", "BottsDots"):
        return "broken", colour, width
    return "none", colour, width


def _merge_strips(road: np.ndarray, colours: list, chains: dict, tol: float, max_len: float = 60.0):
    """Merge consecutive quads of one lane into one quad where the lane is straight: same
    heading (lateral drift over the merged length below ``tol`` metres) and the same width,
    each quad starting where the previous one ends (fewer polygons, the same pixels)."""
    left = road[:, 1, :2] - road[:, 0, :2]
    heading = np.arctan2(left[:, 1], left[:, 0])
    seg = np.hypot(left[:, 0], left[:, 1])
    width0 = np.linalg.norm(road[:, 3] - road[:, 0], axis=1)
    width1 = np.linalg.norm(road[:, 2] - road[:, 1], axis=1)
    keep = np.ones(len(road), bool)
    out = road.copy()
    for items in chains.values():
        items.sort()
        idx = [i for _, i in items]
        a = 0
        while a < len(idx):
            ia = idx[a]
            length = seg[ia]
            b = a
            while b + 1 < len(idx):
                ip, inx = idx[b], idx[b + 1]
                if np.abs(road[inx, 0] - road[ip, 1]).max() > 0.02 or np.abs(road[inx, 3] - road[ip, 2]).max() > 0.02:
                    break
                new_len = length + seg[inx]
                dh = abs((heading[inx] - heading[ia] + math.pi) % (2 * math.pi) - math.pi)
                if (new_len > max_len or dh * new_len > tol or abs(width0[inx] - width0[ia]) > 0.005
                        or abs(width1[inx] - width0[ia]) > 0.005):
                    break
                length = new_len
                b += 1
            if b > a:
                last = road[idx[b]]
                out[ia] = [road[ia, 0], last[1], last[2], road[ia, 3]]
                keep[idx[a + 1:b + 1]] = False
            a = b + 1
    return out[keep], [c for c, k in zip(colours, keep) if k]


def _lane_frame(wp) -> tuple[np.ndarray, np.ndarray, float]:
    """A waypoint's lane centre (3,) metres, unit right vector (3,) (horizontal) and half width (m)."""
    tf = wp.transform
    rv = tf.get_right_vector()
    r = np.array([rv.x, rv.y, 0.0])
    r /= (math.hypot(r[0], r[1]) or 1.0)
    loc = tf.location
    return np.array([loc.x, loc.y, loc.z]), r, wp.lane_width / 2.0


def _quad(f0, f1) -> list[np.ndarray]:
    """The quad between two lane frames: (left0, left1, right1, right0)."""
    (p0, r0, h0), (p1, r1, h1) = f0, f1
    return [p0 - r0 * h0, p1 - r1 * h1, p1 + r1 * h1, p0 + r0 * h0]


def _lane_quad(a, b, max_gap_m: float = 10.0) -> list[np.ndarray] | None:
    """The quad of a lane between two of its waypoints, None when they lie more than
    ``max_gap_m`` metres apart."""
    f0, f1 = _lane_frame(a), _lane_frame(b)
    if np.linalg.norm(f1[0] - f0[0]) > max_gap_m:
        return None
    return _quad(f0, f1)


def _side_lanes(wp, nxt, road: list, colours: list, chains: dict) -> None:
    """Shoulders, sidewalks and other non-driving lanes right of the outermost driving lane."""
    a, b = wp.get_right_lane(), nxt.get_right_lane()
    depth = 0
    while a is not None and b is not None and depth < 4:
        name = str(getattr(a.lane_type, "name", a.lane_type))
        if name == "Driving" or a.lane_width < 0.05:
            return
        q = _lane_quad(a, b)
        if q is not None:
            road.append(q)
            colours.append(SIDE_LANE_COLOURS.get(name, SIDE_LANE_DEFAULT))
            chains.setdefault(("side", a.road_id, a.section_id, a.lane_id), []).append(
                (wp.s if wp.lane_id < 0 else -wp.s, len(road) - 1))
        a, b = a.get_right_lane(), b.get_right_lane()
        depth += 1


def build_road_scene(carla_map, step_m: float = 2.0, merge_tol_m: float = 0.02) -> RoadScene:
    """Precompute road and marking quads from a ``carla.Map`` (done once per map).

    Consecutive road quads of a lane are merged where the lane is straight to within
    ``merge_tol_m`` metres (0 disables merging)."""
    wps = carla_map.generate_waypoints(step_m)
    road, road_col, marks, mark_col = [], [], [], []
    chains: dict[tuple, list[tuple[float, int]]] = {}
    pieces: dict[tuple[int, int, int], list[tuple[float, float, float]]] = {}
    for wp in wps:
        f0 = _lane_frame(wp)
        p0, r, hw0 = f0
        loc = wp.transform.location
        pieces.setdefault((wp.road_id, wp.section_id, wp.lane_id), []).append((wp.s, loc.x, loc.y))
        for nxt in wp.next(step_m):
            f1 = _lane_frame(nxt)
            p1, r1, hw1 = f1
            if np.linalg.norm(p1 - p0) > 3.0 * step_m:
                continue
            road.append(_quad(f0, f1))
            road_col.append(JUNCTION_ASPHALT if wp.is_junction else ASPHALT)
            chains.setdefault((wp.road_id, wp.section_id, wp.lane_id, bool(wp.is_junction)), []).append(
                (wp.s if wp.lane_id < 0 else -wp.s, len(road) - 1))
            if wp.is_junction:
                continue
            _side_lanes(wp, nxt, road, road_col, chains)
            for side, marking in ((-1.0, wp.left_lane_marking), (1.0, wp.right_lane_marking)):
                kind, colour, mw = _mark_kind(marking)
                if kind == "none":
                    continue
                if kind == "broken":
                    s_mid = wp.s + step_m / 2.0 if wp.lane_id < 0 else wp.s - step_m / 2.0
                    if int(math.floor(s_mid / _BROKEN_ON_M)) % 2:
                        continue
                e0 = p0 + side * r * hw0
                e1 = p1 + side * r1 * hw1
                marks.append([e0 - r * mw / 2, e1 - r1 * mw / 2, e1 + r1 * mw / 2, e0 + r * mw / 2])
                mark_col.append(colour)
    road_a = np.asarray(road, np.float64).reshape(-1, 4, 3)
    if merge_tol_m > 0 and len(road_a):
        road_a, road_col = _merge_strips(road_a, road_col, chains, merge_tol_m)
    marks_a = np.asarray(marks, np.float64).reshape(-1, 4, 3)
    if len(road_a):
        xy = road_a[:, :, :2].reshape(-1, 2)
        extent = (float(xy[:, 0].min()), float(xy[:, 1].min()), float(xy[:, 0].max()), float(xy[:, 1].max()))
    else:
        extent = (-100.0, -100.0, 100.0, 100.0)
    lines = []
    for pts in pieces.values():
        pts.sort()
        a = np.asarray([(x, y) for _, x, y in pts], np.float64)
        if len(a) >= 2:
            lines.append(a)
    return RoadScene(road_a, np.asarray(road_col, np.uint8).reshape(-1, 3), marks_a,
                     np.asarray(mark_col, np.uint8).reshape(-1, 3), extent, lines)


def ground_height_under(carla_map, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Road height (metres) at the nearest lane to each (x, y); 0 where the map has none."""
    import carla

    out = np.zeros(len(x))
    for i in range(len(x)):
        try:
            wp = carla_map.get_waypoint(carla.Location(x=float(x[i]), y=float(y[i]), z=0.0), project_to_road=True)
            out[i] = wp.transform.location.z if wp is not None else 0.0
        except RuntimeError:  # pragma: no cover - libcarla raises on degenerate maps
            out[i] = 0.0
    return out


# -- vehicles -----------------------------------------------------------------------------

#: Default box of a car: length, width, height (metres).
CAR_SIZE = (4.6, 1.9, 1.5)

# Corner index layout of a box: bottom 0..3 (front-left, front-right, rear-right, rear-left), top 4..7.
BOX_FACES = np.array([
    [4, 5, 6, 7],  # top
    [0, 1, 5, 4],  # front (+x)
    [2, 3, 7, 6],  # rear (-x)
    [1, 2, 6, 5],  # right (+y)
    [3, 0, 4, 7],  # left (-y)
], np.int64)
BOX_NORMALS = np.array([[0, 0, 1], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]], np.float64)
FACE_SHADE = np.array([1.0, 0.85, 0.7, 0.78, 0.62])


def vehicle_boxes(x, y, z, yaw, size=CAR_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """World corners (N, 8, 3) and world face normals (N, 5, 3) of vehicle boxes whose
    origin is the centre of the bottom face, heading ``yaw`` degrees."""
    length, width, height = size
    hl, hw = length / 2.0, width / 2.0
    # x forward, y right (CARLA): bottom fl, fr... chosen so BOX_FACES match BOX_NORMALS.
    local = np.array([[hl, -hw, 0], [hl, hw, 0], [-hl, hw, 0], [-hl, -hw, 0],
                      [hl, -hw, height], [hl, hw, height], [-hl, hw, height], [-hl, -hw, height]], np.float64)
    t = np.deg2rad(np.asarray(yaw, np.float64))
    c, s = np.cos(t), np.sin(t)
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)  # (N, 2, 2)
    xy = np.einsum("nij,kj->nki", rot, local[:, :2])
    corners = np.empty((len(t), 8, 3))
    corners[:, :, 0] = xy[:, :, 0] + np.asarray(x)[:, None]
    corners[:, :, 1] = xy[:, :, 1] + np.asarray(y)[:, None]
    corners[:, :, 2] = local[None, :, 2] + np.asarray(z)[:, None]
    normals = np.zeros((len(t), 5, 3))
    normals[:, :, :2] = np.einsum("nij,kj->nki", rot, BOX_NORMALS[:, :2])
    normals[:, :, 2] = BOX_NORMALS[None, :, 2]
    return corners, normals


def vehicle_colour(vid: int, av: bool) -> tuple[int, int, int]:
    """A stable colour per vehicle id; AVs are a saturated orange family."""
    h = (int(vid) * 2654435761) & 0xFFFFFFFF
    if av:
        return (230, 120 + (h & 0x3F), 20 + ((h >> 8) & 0x1F))
    return (60 + (h & 0x7F), 60 + ((h >> 8) & 0x7F), 70 + ((h >> 16) & 0x7F))


def signs_as_rendered(carla_map, signs):
    """The SignTable with each face's centre height, width and height as the embedded camera
    draws them (:func:`~carla_mr.world.sign_geometry.build_sign_geometry` on the road height
    under each sign), so ``world.json`` and the rendered pose are one."""
    import dataclasses

    from carla_mr.world.sign_geometry import build_sign_geometry

    if not len(signs):
        return signs
    gz = ground_height_under(carla_map, np.asarray(signs.x, float), np.asarray(signs.y, float))
    geom = build_sign_geometry(signs, gz)
    return dataclasses.replace(signs, z=geom.center[:, 2].copy(), width=geom.width.copy(), height=geom.height.copy())

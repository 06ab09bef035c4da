"""Meshes for the OpenDRIVE ``<object>`` elements of a map (:mod:`carla_mr.world.xodr_objects`).

An object's ``type`` (or, for ``type="-1"``/empty, its ``name``) picks how it is drawn
(:func:`category`):

- ``pole``: a grey octagonal prism (``radius``, else half the smaller of length/width, else
  :data:`POLE_RADIUS_M`; ``height``, else :data:`POLE_HEIGHT_M`);
- ``street_lamp``: a pole (else :data:`LAMP_HEIGHT_M` high) with a glowing head on top;
- ``building``: a prism on the footprint (outline, else length x width, else radius), walls
  carry the facade windows of the procedural buildings;
- ``tree``: the procedural low-poly tree (:func:`carla_mr.world.gl_props._tree`) at the object;
- ``barrier`` (barrier, railing, guardRail, soundBarrier, fence, wall): a thin wall, length
  along the object's heading (or walls along its outline's edges), ``height`` else 1 m;
- ``crosswalk``: white zebra stripes (0.5 m, 0.5 m gaps) on its footprint, parallel to the
  footprint's shorter axis, :data:`FLAT_LIFT_M` above the corners;
- ``road_mark`` (roadMark, patch, stopLine, arrows): the footprint filled white, lifted as above;
- ``other``: any other type with a footprint and a height: a grey prism.

Objects without a footprint (or, for prisms, without a height) are skipped and counted; so
are objects that are already signs of the world's sign table: names starting with one of
:data:`SIGN_NAME_PREFIXES` or within :data:`SIGN_RADIUS_M` of a sign. Footprints are
triangulated by ear clipping, so concave outlines are drawn as they are. Metres, CARLA's
world frame.
"""

from __future__ import annotations

import math

import numpy as np

from carla_mr.world.gl_scene import Mesh

#: Names of objects that are signs the sign table already draws (lower case prefixes).
SIGN_NAME_PREFIXES = ("speed_",)
#: An object this close (metres, horizontally) to a sign of the sign table is that sign.
SIGN_RADIUS_M = 1.0
POLE_RADIUS_M = 0.1
POLE_HEIGHT_M = 4.0
LAMP_HEIGHT_M = 8.0
BARRIER_HEIGHT_M = 1.0
#: Thickness of a barrier drawn from length x width (metres): the width, clamped to this range.
BARRIER_THICKNESS_M = (0.1, 0.4)
#: Flat markings (crosswalks, road marks) sit this far above their corners (metres): above
#: the lane markings (1 cm) and the procedural zebra crossings (1.2 cm).
FLAT_LIFT_M = 0.015
STRIPE_M = 0.5
STRIPE_GAP_M = 0.5
COLOURS = {"pole": (0.42, 0.43, 0.45), "street_lamp": (0.30, 0.31, 0.33), "building": (0.72, 0.66, 0.58),
           "roof": (0.32, 0.30, 0.30), "barrier": (0.62, 0.62, 0.60), "crosswalk": (0.92, 0.92, 0.92),
           "road_mark": (0.92, 0.92, 0.92), "other": (0.50, 0.50, 0.50)}
_TYPES = {"pole": "pole", "streetlamp": "street_lamp", "building": "building", "tree": "tree",
          "vegetation": "tree", "barrier": "barrier", "railing": "barrier", "guardrail": "barrier",
          "soundbarrier": "barrier", "fence": "barrier", "wall": "barrier", "crosswalk": "crosswalk",
          "roadmark": "road_mark", "patch": "road_mark", "stopline": "road_mark", "arrow": "road_mark"}


def category(odr_type: str, name: str = "") -> str:
    """How an object is drawn (see the module notes) from its OpenDRIVE ``type``; for an
    unknown type (``"-1"``, empty, ``"none"``), from the start of its ``name``."""
    key = str(odr_type or "").replace("_", "").lower()
    if key in _TYPES:
        return _TYPES[key]
    low = str(name or "").replace("_", "").lower()
    for word, cat in _TYPES.items():
        if low.startswith(word):
            return cat
    return "other"


def sign_like(names: np.ndarray, xy: np.ndarray, sign_xy: np.ndarray | None) -> np.ndarray:
    """(N,) bool: objects that are signs already (name prefix, or within :data:`SIGN_RADIUS_M`
    metres of one of ``sign_xy`` (S, 2), metres)."""
    by_name = np.array([str(n).lower().startswith(SIGN_NAME_PREFIXES) for n in names], bool).reshape(len(xy))
    if sign_xy is None or not len(sign_xy) or not len(xy):
        return by_name
    from scipy.spatial import cKDTree

    d, _ = cKDTree(np.asarray(sign_xy, float)[:, :2]).query(np.asarray(xy, float)[:, :2])
    return by_name | (d <= SIGN_RADIUS_M)


# -- footprints --------------------------------------------------------------------------------

def signed_area(poly: np.ndarray) -> float:
    """Signed area (m^2) of a polygon (K, >=2): positive when its corners run counter-clockwise
    in the (x, y) plane."""
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def counter_clockwise(poly: np.ndarray) -> np.ndarray:
    """The polygon with its corners counter-clockwise in (x, y) and repeated corners dropped."""
    keep = np.linalg.norm(poly[:, :2] - np.roll(poly[:, :2], -1, axis=0), axis=1) > 1e-6
    poly = poly[keep] if keep.any() else poly[:1]
    return poly[::-1].copy() if signed_area(poly) < 0 else poly


def rectangle(x: float, y: float, yaw_deg: float, length: float, width: float) -> np.ndarray:
    """Corners (4, 2) of a ``length`` x ``width`` rectangle (metres) centred at (x, y), length
    along ``yaw_deg`` (CARLA degrees)."""
    a = math.radians(yaw_deg)
    u = np.array([math.cos(a), math.sin(a)]) * length / 2
    v = np.array([-math.sin(a), math.cos(a)]) * width / 2
    p = np.array([x, y])
    return np.stack([p - u - v, p + u - v, p + u + v, p - u + v])


def circle(x: float, y: float, radius: float, sides: int = 8) -> np.ndarray:
    """Corners (sides, 2) of a regular polygon of circumradius ``radius`` metres at (x, y)."""
    a = np.linspace(0.0, 2 * np.pi, sides, endpoint=False)
    return np.column_stack([x + radius * np.cos(a), y + radius * np.sin(a)])


def ear_clip(poly: np.ndarray) -> np.ndarray:
    """Triangle corner indices (T, 3) of a simple counter-clockwise polygon (K, >=2)."""
    idx = list(range(len(poly)))
    out = []
    p = poly[:, :2]

    def cross(a, b, c) -> float:
        return float((p[b, 0] - p[a, 0]) * (p[c, 1] - p[a, 1]) - (p[b, 1] - p[a, 1]) * (p[c, 0] - p[a, 0]))

    guard = 0
    while len(idx) > 3 and guard < 4 * len(poly) ** 2:
        guard += 1
        for k in range(len(idx)):
            a, b, c = idx[k - 1], idx[k], idx[(k + 1) % len(idx)]
            if cross(a, b, c) <= 1e-12:
                continue
            others = [j for j in idx if j not in (a, b, c)]
            if any(cross(a, b, j) >= 0 and cross(b, c, j) >= 0 and cross(c, a, j) >= 0 for j in others):
                continue
            out.append((a, b, c))
            idx.pop(k)
            break
        else:  # degenerate (collinear or self-touching) rest: fan it
            break
    out += [(idx[0], idx[j], idx[j + 1]) for j in range(1, len(idx) - 1)]
    return np.array(out, np.int64).reshape(-1, 3)


# -- meshes ------------------------------------------------------------------------------------

def _tile(colour, n: int) -> np.ndarray:
    return np.tile(np.asarray(colour, float), (n, 1))


def add_walls(mesh: Mesh, base: np.ndarray, height: np.ndarray, colour, aa: float = 2.0,
              closed: bool = True) -> None:
    """Vertical quads up from each edge of a counter-clockwise polyline ``base`` (K, 3) metres,
    ``height`` (K,) metres at each corner; normals point out of the polygon (right of the edges)."""
    k = len(base)
    top = base + np.column_stack([np.zeros((k, 2)), height])
    j = np.arange(k if closed else k - 1)
    j1 = (j + 1) % k
    quads = np.stack([base[j], base[j1], top[j1], top[j]], axis=1)
    d = base[j1, :2] - base[j, :2]
    nrm = np.column_stack([d[:, 1], -d[:, 0], np.zeros(len(j))])
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-9)
    tri = quads[:, [0, 1, 2, 0, 2, 3]].reshape(-1, 3)
    mesh.add(tri, np.repeat(nrm, 6, axis=0), _tile(colour, len(tri)), np.full(len(tri), aa, np.float32))


def add_cap(mesh: Mesh, poly: np.ndarray, colour, lift: float = 0.0) -> None:
    """The counter-clockwise polygon ``poly`` (K, 3) filled (ear clipping), ``lift`` metres up, normal up."""
    tris = poly[ear_clip(poly)].reshape(-1, 3) + (0.0, 0.0, lift)
    mesh.add(tris, _tile((0.0, 0.0, 1.0), len(tris)), _tile(colour, len(tris)))


def add_prism(mesh: Mesh, base: np.ndarray, height: np.ndarray, wall, roof, aa: float = 2.0) -> None:
    """Walls and a flat-topped roof over a counter-clockwise footprint ``base`` (K, 3), heights (K,) metres."""
    add_walls(mesh, base, height, wall, aa)
    add_cap(mesh, base + np.column_stack([np.zeros((len(base), 2)), height]), roof)


def _clip(poly: np.ndarray, n: np.ndarray, c: float) -> np.ndarray:
    """Sutherland-Hodgman: the part of convex ``poly`` (K, 3) where ``poly[:, :2] @ n >= c``."""
    if not len(poly):
        return poly
    d = poly[:, :2] @ n - c
    out = []
    for i in range(len(poly)):
        j = (i + 1) % len(poly)
        if d[i] >= 0:
            out.append(poly[i])
        if (d[i] >= 0) != (d[j] >= 0):
            out.append(poly[i] + (poly[j] - poly[i]) * (d[i] / (d[i] - d[j])))
    return np.array(out).reshape(-1, 3)


def stripe_polygons(poly: np.ndarray) -> list[np.ndarray]:
    """Zebra stripes (convex polygons (K, 3), metres) of a counter-clockwise footprint (K, 3):
    :data:`STRIPE_M` wide with :data:`STRIPE_GAP_M` gaps, spaced along the footprint's longer
    principal axis (across the road), centred on it."""
    xy = poly[:, :2] - poly[:, :2].mean(axis=0)
    _, vecs = np.linalg.eigh(xy.T @ xy)
    axis = vecs[:, -1]
    proj = poly[:, :2] @ axis
    lo, hi = float(proj.min()), float(proj.max())
    n = int((hi - lo + STRIPE_GAP_M) // (STRIPE_M + STRIPE_GAP_M))
    start = lo + (hi - lo - (n * STRIPE_M + (n - 1) * STRIPE_GAP_M)) / 2
    out = []
    tris = poly[ear_clip(poly)]
    for k in range(n):
        a = start + k * (STRIPE_M + STRIPE_GAP_M)
        for tri in tris:
            piece = _clip(_clip(tri, axis, a), -axis, -(a + STRIPE_M))
            if len(piece) >= 3:
                out.append(piece)
    return out


def add_stripes(mesh: Mesh, poly: np.ndarray, colour, lift: float = FLAT_LIFT_M) -> int:
    """Zebra stripes of :func:`stripe_polygons` on ``poly``, ``lift`` metres up; returns how many pieces."""
    pieces = stripe_polygons(poly)
    for piece in pieces:
        add_cap(mesh, piece, colour, lift)
    return len(pieces)


def add_pole(mesh: Mesh, x: float, y: float, z: float, radius: float, height: float, colour,
             glow=None) -> None:
    """An octagonal pole ``radius`` x ``height`` metres standing at (x, y, z); with ``glow`` (RGB,
    may exceed 1) a lamp head 0.6 m across at its top."""
    base = np.column_stack([circle(x, y, radius), np.full(8, z)])
    add_prism(mesh, base, np.full(8, height), colour, colour)
    if glow is not None:
        head = np.column_stack([circle(x, y, 0.3), np.full(8, z + height - 0.15)])
        add_prism(mesh, head, np.full(8, 0.15), glow, glow)

"""Static triangle meshes of a town for the OpenGL camera, built once per map.

Everything is metres in CARLA's world frame (x east, y south, z up). A :class:`Mesh` is a
plain triangle list: positions (N, 3), normals (N, 3), RGB colours (N, 3) in 0..1 and an
``aa`` coordinate (N,) that runs -1..1 across a lane marking (its edges are smoothed in the
fragment shader) and is 2 elsewhere.

- terrain: a height field on a grid around the roads whose heights follow the nearest road
  heights (inverse-distance weights), a little below the road surface, so hilly towns sit on
  their ground;
- roads: the lane quads of :func:`carla_mr.world.scene.build_road_scene`; sidewalks are lifted
  by :data:`CURB_M` with a vertical curb on the road side and a skirt on the outer side;
- lane markings: thin quads just above the road, anti-aliased across.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from carla_mr.world.scene import GRASS, SIDE_LANE_COLOURS, RoadScene

#: Height of a sidewalk's curb above the road (metres).
CURB_M = 0.15
#: The terrain sits this far below the nearest road surface (metres).
TERRAIN_DROP_M = 0.12
#: Terrain grid cell (metres) and how far it reaches past the roads' extent (metres).
TERRAIN_CELL_M = 6.0
TERRAIN_MARGIN_M = 200.0
SIDEWALK = np.array(SIDE_LANE_COLOURS["Sidewalk"], np.uint8)
CURB_COLOUR = (175, 172, 165)
NO_AA = 2.0


@dataclass
class Mesh:
    """A triangle list (3 consecutive vertices per triangle); see the module notes."""

    pos: list = field(default_factory=list)
    nrm: list = field(default_factory=list)
    col: list = field(default_factory=list)
    aa: list = field(default_factory=list)

    def add(self, pos: np.ndarray, nrm: np.ndarray, col: np.ndarray, aa: np.ndarray | None = None) -> None:
        """Append triangles: ``pos``/``nrm`` (T*3, 3), ``col`` (T*3, 3) in 0..1, ``aa`` (T*3,)."""
        if len(pos) == 0:
            return
        self.pos.append(np.asarray(pos, np.float32).reshape(-1, 3))
        self.nrm.append(np.asarray(nrm, np.float32).reshape(-1, 3))
        self.col.append(np.asarray(col, np.float32).reshape(-1, 3))
        self.aa.append(np.full(len(self.pos[-1]), NO_AA, np.float32) if aa is None else np.asarray(aa, np.float32))

    def interleaved(self) -> np.ndarray:
        """(N, 10) float32 rows: position, normal, colour, aa."""
        if not self.pos:
            return np.zeros((0, 10), np.float32)
        return np.concatenate([np.concatenate(a) if a[0].ndim > 1 else np.concatenate(a)[:, None]
                               for a in (self.pos, self.nrm, self.col, self.aa)], axis=1).astype(np.float32)

    def __len__(self) -> int:
        return sum(len(p) for p in self.pos)


def quad_tris(quads: np.ndarray) -> np.ndarray:
    """(N, 4, 3) convex quads -> (N*6, 3) triangle vertices (0,1,2), (0,2,3)."""
    return quads[:, [0, 1, 2, 0, 2, 3]].reshape(-1, 3)


def quad_normals(quads: np.ndarray, up: bool = True) -> np.ndarray:
    """Unit normals (N, 3) of quads; with ``up`` flipped to point upwards."""
    n = np.cross(quads[:, 1] - quads[:, 0], quads[:, 3] - quads[:, 0])
    n2 = np.cross(quads[:, 2] - quads[:, 0], quads[:, 3] - quads[:, 1])
    n = np.where((np.linalg.norm(n, axis=1) > 1e-9)[:, None], n, n2)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9)
    if up:
        n *= np.where(n[:, 2:3] < 0, -1.0, 1.0)
    return n


def add_quads(mesh: Mesh, quads: np.ndarray, colours: np.ndarray, *, up: bool = True,
              normals: np.ndarray | None = None, aa: bool = False) -> None:
    """Append quads (N, 4, 3) with per-quad colours (N, 3) uint8 (or 0..1 floats)."""
    if len(quads) == 0:
        return
    quads = np.asarray(quads, np.float64)
    col = np.asarray(colours, np.float64)
    col = col / 255.0 if col.max(initial=0) > 1.0 else col
    nrm = quad_normals(quads, up) if normals is None else normals
    a = np.tile(np.array([-1, -1, 1, -1, 1, 1], np.float32), len(quads)) if aa else None
    mesh.add(quad_tris(quads), np.repeat(nrm, 6, axis=0), np.repeat(col, 6, axis=0), a)


def _sidewalk_mask(scene: RoadScene) -> np.ndarray:
    return (scene.road_color == SIDEWALK).all(axis=1) if len(scene.road) else np.zeros(0, bool)


def _curbs(quads: np.ndarray, edge: tuple[int, int], h_top: float, h_bottom: float) -> np.ndarray:
    """Vertical quads (N, 4, 3) under edge (i, j) of each quad, from ``h_top`` above to
    ``h_bottom`` above the edge's vertices (metres; negative goes down)."""
    a, b = quads[:, edge[0]], quads[:, edge[1]]
    up = np.array([0.0, 0.0, 1.0])
    return np.stack([a + up * h_top, b + up * h_top, b + up * h_bottom, a + up * h_bottom], axis=1)


def _outward(quads: np.ndarray, edge: tuple[int, int], other: tuple[int, int]) -> np.ndarray:
    """Horizontal unit normals (N, 3) of the vertical faces under ``edge``, pointing away from ``other``."""
    d = quads[:, edge[1]] - quads[:, edge[0]]
    n = np.stack([-d[:, 1], d[:, 0], np.zeros(len(d))], axis=1)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9)
    away = quads[:, edge[0]] - quads[:, other[0]]
    return n * np.where((n * away).sum(axis=1, keepdims=True) < 0, -1.0, 1.0)


def road_mesh(scene: RoadScene) -> Mesh:
    """Road surfaces, sidewalks lifted by a curb, curbs, outer skirts and lane markings."""
    mesh = Mesh()
    if not len(scene.road):
        return mesh
    side = _sidewalk_mask(scene)
    road = scene.road.copy()
    add_quads(mesh, road[~side], scene.road_color[~side])
    walk = road[side].copy()
    if len(walk):
        walk[:, :, 2] += CURB_M
        add_quads(mesh, walk, scene.road_color[side])
        # Quads run (left0, left1, right1, right0): the left edge faces the road.
        inner = _curbs(road[side], (0, 1), CURB_M, -0.02)
        add_quads(mesh, inner, np.tile(CURB_COLOUR, (len(inner), 1)), up=False,
                  normals=_outward(road[side], (0, 1), (3, 2)))
        outer = _curbs(road[side], (2, 3), CURB_M, -0.6)
        add_quads(mesh, outer, np.tile(CURB_COLOUR, (len(outer), 1)), up=False,
                  normals=_outward(road[side], (2, 3), (1, 0)))
    if len(scene.marks):
        marks = scene.marks.copy()
        marks[:, :, 2] += 0.01
        add_quads(mesh, marks, scene.mark_color, aa=True)
    return mesh


def terrain_mesh(scene: RoadScene, cell_m: float = TERRAIN_CELL_M, margin_m: float = TERRAIN_MARGIN_M,
                 seed: int = 0) -> Mesh:
    """The ground: a grid whose heights follow the nearest roads (see the module notes)."""
    from scipy.spatial import cKDTree

    mesh = Mesh()
    x0, y0, x1, y1 = scene.extent
    xs = np.arange(x0 - margin_m, x1 + margin_m + cell_m, cell_m)
    ys = np.arange(y0 - margin_m, y1 + margin_m + cell_m, cell_m)
    gx, gy = np.meshgrid(xs, ys, indexing="xy")
    if len(scene.road):
        pts = scene.road.reshape(-1, 3)
        tree = cKDTree(pts[:, :2])
        k = min(8, len(pts))
        d, idx = tree.query(np.stack([gx.ravel(), gy.ravel()], 1), k=k)
        d = d.reshape(len(d), -1)
        idx = idx.reshape(len(idx), -1)
        w = 1.0 / np.maximum(d, 0.5) ** 2
        gz = ((pts[idx, 2] * w).sum(1) / w.sum(1)).reshape(gx.shape) - TERRAIN_DROP_M
    else:
        gz = np.zeros_like(gx)
    rng = np.random.default_rng(seed)
    tint = rng.uniform(0.88, 1.08, size=gx.shape)
    p = np.stack([gx, gy, gz], -1)
    quads = np.stack([p[:-1, :-1], p[:-1, 1:], p[1:, 1:], p[1:, :-1]], axis=2).reshape(-1, 4, 3)
    base = np.array(GRASS, np.float64) / 255.0
    col = base[None, :] * tint[:-1, :-1].reshape(-1, 1)
    add_quads(mesh, quads, np.clip(col, 0, 1))
    return mesh


# -- vehicles -------------------------------------------------------------------------------

#: Vehicle types: length, width, height (metres) and profile (1 car with a cabin, 0 box), after
#: SUMO's default vehicle classes (passenger, delivery, truck, bus, motorcycle).
VEHICLE_TYPES: dict[str, tuple[float, float, float, float]] = {
    "car": (4.6, 1.9, 1.5, 1.0),
    "van": (5.4, 2.05, 2.3, 0.45),
    "truck": (8.5, 2.5, 3.4, 0.0),
    "bus": (12.0, 2.55, 3.1, 0.0),
    "motorcycle": (2.2, 0.8, 1.45, 1.0),
}
_FACES = (  # (axis, sign) of the five drawn faces of a box (no bottom)
    (2, 1.0), (0, 1.0), (0, -1.0), (1, 1.0), (1, -1.0))


def box_tris(lo, hi) -> tuple[np.ndarray, np.ndarray]:
    """Triangles (30, 3) and normals (30, 3) of an axis-aligned box's five faces (no bottom)."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    pos, nrm = [], []
    for axis, sgn in _FACES:
        u, v = [a for a in range(3) if a != axis]
        c = np.zeros((4, 3))
        c[:, axis] = hi[axis] if sgn > 0 else lo[axis]
        for k, (a, b) in enumerate(((0, 0), (1, 0), (1, 1), (0, 1))):
            c[k, u] = (lo[u], hi[u])[a]
            c[k, v] = (lo[v], hi[v])[b]
        pos.append(c[[0, 1, 2, 0, 2, 3]])
        n = np.zeros(3)
        n[axis] = sgn
        nrm.append(np.tile(n, (6, 1)))
    return np.concatenate(pos), np.concatenate(nrm)


def vehicle_unit_mesh() -> np.ndarray:
    """(N, 10) float32 rows of the unit vehicle: car-profile position, box-profile position,
    normal, part (0 body, 1 glass/upper, 2 dark trim, 3 front lamp, 4 rear lamp). Unit length,
    width and height; x forward, y right, z up from the ground."""
    parts = [  # (car lo, car hi, box lo, box hi, part)
        ((-.46, -.47, 0.0), (.46, .47, .2), (-.47, -.48, 0.0), (.47, .48, .12), 2),
        ((-.5, -.5, .18), (.5, .5, .56), (-.5, -.5, .1), (.5, .5, .62), 0),
        ((-.3, -.44, .56), (.2, .44, 1.0), (-.5, -.5, .62), (.5, .5, 1.0), 1),
        ((.49, -.44, .38), (.505, -.3, .48), (.49, -.44, .2), (.505, -.3, .28), 3),
        ((.49, .3, .38), (.505, .44, .48), (.49, .3, .2), (.505, .44, .28), 3),
        ((-.505, -.44, .38), (-.49, -.3, .48), (-.505, -.44, .2), (-.49, -.3, .28), 4),
        ((-.505, .3, .38), (-.49, .44, .48), (-.505, .3, .2), (-.49, .44, .28), 4),
    ]
    rows = []
    for clo, chi, blo, bhi, part in parts:
        p, n = box_tris(clo, chi)
        b, _ = box_tris(blo, bhi)
        rows.append(np.concatenate([p, b, n, np.full((len(p), 1), part)], axis=1))
    return np.concatenate(rows).astype(np.float32)


def vehicle_colours(ids: np.ndarray, av: np.ndarray) -> np.ndarray:
    """(N, 3) 0..1 body colours: a seeded pick per vehicle id from common car paints; AVs orange."""
    paints = np.array([(0.92, 0.92, 0.92), (0.08, 0.08, 0.09), (0.55, 0.56, 0.58), (0.72, 0.73, 0.75),
                       (0.55, 0.07, 0.07), (0.08, 0.18, 0.45), (0.15, 0.32, 0.2), (0.85, 0.75, 0.55),
                       (0.3, 0.55, 0.8), (0.95, 0.8, 0.1), (0.4, 0.25, 0.15), (0.7, 0.1, 0.15)])
    h = (np.asarray(ids, np.int64) * 2654435761) & 0xFFFFFFFF
    out = paints[h % len(paints)]
    out[np.asarray(av, bool)] = (0.95, 0.5, 0.1)
    return out


def post_mesh(geom, width_m: float = 0.08) -> Mesh:
    """Each sign's post: a thin grey box from the ground to the face centre (traffic lights:
    a thicker pole)."""
    mesh = Mesh()
    grey = np.array([0.47, 0.47, 0.49])
    for i in range(len(geom)):
        hw = (0.09 if geom.kind[i] == "traffic_light" else width_m / 2.0)
        # The post stands behind the face (never in front of it).
        back = geom.normal[i] * (hw + 0.01)
        base, top = geom.post_base[i] - back, geom.post_top[i] - back
        top[2] = min(top[2], geom.center[i, 2])
        if top[2] - base[2] <= 0.05:
            continue
        p, n = box_tris((base[0] - hw, base[1] - hw, base[2]), (base[0] + hw, base[1] + hw, top[2]))
        mesh.add(p, n, np.tile(grey, (len(p), 1)))
    return mesh


def merged(*meshes: Mesh) -> Mesh:
    """One mesh holding every triangle of ``meshes``."""
    out = Mesh()
    for m in meshes:
        out.pos += m.pos
        out.nrm += m.nrm
        out.col += m.col
        out.aa += m.aa
    return out

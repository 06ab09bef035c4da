"""The embedded camera through OpenGL (moderngl, headless EGL): a z-buffered town with exact labels.

One frame is three draws into an off-screen framebuffer with two colour attachments (RGB and
``(instance, depth)``) and a depth buffer: the sky, the static town (terrain, roads, curbs,
markings, buildings, trees, props and sign posts: one vertex buffer built once per map), the
vehicles (one instanced draw of a unit vehicle scaled to each vehicle's type) and the sign
faces (one draw; each face samples its layer of a texture array, alpha-tested on the face's
silhouette; traffic-light heads pick the layer of their live state). Everything drawn
occludes.

Labels (the :class:`~carla_mr.world.base.CameraFrame` contract): a second draw of the sign
faces with the depth test off counts, per sign, the face's fragments in the image and their
bounds (an SSBO with atomics; the same rasterisation and the same alpha test as the colour
draw), so ``visible`` = visible pixels / face pixels is exact, ``box`` (= ``amodal_bbox``)
bounds the whole projected face (clipped to the image) and ``visible_box`` bounds the
pixels that carry the sign's instance id in the id pass. ``depth`` is metres along the
camera's forward axis (0 where the sky is).

Camera model: CARLA's pinhole (``u = cx + f Y / X``, ``v = cy - f Z / X``; camera x forward,
y right, z up; pixel i spans [i, i+1)), so labels match the CPU renderer's within the
rasterisers' edge rules.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from carla_mr.config.camera import WEATHER_PRESETS, CameraSpec
from carla_mr.world.base import SignTexture, Snapshot
from carla_mr.world.gl_context import gl_context
from carla_mr.world import gl_shaders as sh
from carla_mr.world.gl_scene import VEHICLE_TYPES, Mesh, vehicle_colours, vehicle_unit_mesh
from carla_mr.world.scene import CAR_SIZE, SIGN_BACK
from carla_mr.world.sign_art import PALETTE
from carla_mr.world.sign_geometry import SignGeometry, fit_to_shape, original_face, sign_label, visible_box

NEAR_M = 0.1
FAR_M = 1500.0
#: Traffic-light states and the texture layer each shows (0: every lamp lit, unknown state).
TL_STATES = ("unknown", "red", "yellow", "green")


def gl_projection(spec: CameraSpec, cam_to_world: np.ndarray, near: float = NEAR_M, far: float = FAR_M) -> np.ndarray:
    """4x4 world -> clip matrix of CARLA's pinhole camera (OpenGL conventions, float64)."""
    rot = cam_to_world[:3, :3].T
    view = np.eye(4)
    view[:3, :3] = rot
    view[:3, 3] = -rot @ cam_to_world[:3, 3]
    # camera (x fwd, y right, z up) -> GL eye (x right, y up, -z fwd)
    axes = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [-1, 0, 0, 0], [0, 0, 0, 1]], float)
    f = spec.focal_px
    w, h = spec.width, spec.height
    proj = np.zeros((4, 4))
    proj[0, 0] = 2.0 * f / w
    proj[1, 1] = 2.0 * f / h
    proj[2, 2] = -(far + near) / (far - near)
    proj[2, 3] = -2.0 * far * near / (far - near)
    proj[3, 2] = -1.0
    return proj @ axes @ view


def _tl_variants(size: int) -> list[np.ndarray]:
    """The traffic-light face with every lamp lit, then red, yellow, green only."""
    full = original_face("traffic_light", None, size)
    out = [full]
    lamps = [np.array(PALETTE[k], float) for k in ("lamp_red", "lamp_amber", "lamp_green")]
    rgb = full[..., :3].astype(float)
    near = [np.linalg.norm(rgb - c, axis=-1) < 90 for c in lamps]
    for keep in range(3):
        img = full.copy()
        for j, m in enumerate(near):
            if j != keep:
                img[..., :3][m] = (img[..., :3][m] * 0.22).astype(np.uint8)
        out.append(img)
    return out


def tl_state_of(chars: str | None) -> str:
    """``red`` / ``yellow`` / ``green`` / ``unknown`` of a SUMO link-state string: the state
    most of the signal's links show (ties go to the more restrictive one)."""
    if not chars:
        return "unknown"
    n = {"green": sum(c in "gG" for c in chars), "yellow": sum(c in "yYuU" for c in chars),
         "red": sum(c in "rRsS" for c in chars)}
    best = max(("red", "yellow", "green"), key=lambda k: n[k])  # max keeps the first of ties
    return best if n[best] else "unknown"


class _SignAtlas:
    """Every sign face as a layer of one RGBA texture array (traffic lights: 4 layers)."""

    def __init__(self, ctx, geom: SignGeometry, size: int):
        n = len(geom)
        self.size = size if n <= 256 else 64
        self.base = np.zeros(n, np.int64)
        layers = 0
        for i in range(n):
            self.base[i] = layers
            layers += 4 if geom.kind[i] == "traffic_light" else 1
        self.tex = ctx.texture_array((self.size, self.size, max(layers, 1)), 4)
        self.tex.filter = (ctx.LINEAR_MIPMAP_LINEAR, ctx.LINEAR)
        self.tex.repeat_x = self.tex.repeat_y = False
        self.geom = geom
        self.src: list[Any] = [None] * n
        self._originals: dict[tuple, np.ndarray] = {}
        for i in range(n):
            self._write_original(i)
        self.tex.build_mipmaps()
        self.dirty = False

    def _layer(self, k: int, img: np.ndarray) -> None:
        s = self.size
        self.tex.write(np.ascontiguousarray(img, np.uint8).tobytes(), viewport=(0, 0, k, s, s, 1))

    def _write_original(self, i: int) -> None:
        kind = str(self.geom.kind[i])
        if kind == "traffic_light":
            key = ("tl",)
            faces = self._originals.get(key)
            if faces is None:
                faces = self._originals[key] = np.stack(_tl_variants(self.size))
            for j in range(4):
                self._layer(int(self.base[i]) + j, faces[j])
            return
        v = float(self.geom.value[i])
        key = (kind, v if math.isfinite(v) else None)
        img = self._originals.get(key)
        if img is None:
            img = self._originals[key] = original_face(kind, key[1], self.size)
        self._layer(int(self.base[i]), img)

    def update(self, textures: Mapping[str, SignTexture]) -> None:
        """Write the layers whose texture changed (generated images swapped in or out)."""
        for i, sid in enumerate(self.geom.ids):
            tex = textures.get(str(sid))
            img = tex.image if (tex is not None and tex.image is not None) else None
            if img is self.src[i]:
                continue
            self.src[i] = img
            if img is None or self.geom.kind[i] == "traffic_light":
                self._write_original(i)
            else:
                self._layer(int(self.base[i]), fit_to_shape(np.asarray(img), str(self.geom.kind[i]), self.size))
            self.dirty = True
        if self.dirty:
            self.tex.build_mipmaps()
            self.dirty = False


def sign_vertices(geom: SignGeometry, base_layer: np.ndarray) -> np.ndarray:
    """(S*6, 10) float32 rows of the sign faces: position, uv, normal, layer, sign index."""
    n = len(geom)
    if n == 0:
        return np.zeros((0, 10), np.float32)
    order = [0, 1, 2, 0, 2, 3]  # TL, TR, BR, BL
    uv = np.array([(0, 0), (1, 0), (1, 1), (0, 1)], float)[order]
    pos = geom.corners[:, order].reshape(-1, 3)
    rows = np.concatenate([pos, np.tile(uv, (n, 1)), np.repeat(geom.normal, 6, axis=0),
                           np.repeat(base_layer.astype(float), 6)[:, None], np.repeat(np.arange(n, dtype=float), 6)[:, None]],
                          axis=1)
    return rows.astype(np.float32)


#: Static triangles are grouped in square tiles of this size (metres) and culled per tile.
TILE_M = 64.0
#: Tiles farther than this from the camera (metres) are not drawn (fog hides the cut).
CULL_DISTANCE_M = 700.0


def tile_triangles(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort triangle rows (N*3, C) by the tile of their centroid (stable: the order within a
    tile is kept). Returns (rows, tiles) with tiles (T, 8): first vertex, vertex count,
    bounds x0, y0, z0, x1, y1, z1 (metres)."""
    if len(rows) == 0:
        return rows, np.zeros((0, 8))
    tri = rows.reshape(-1, 3, rows.shape[1])
    key = np.floor(tri[:, :, :2].mean(axis=1) / TILE_M).astype(np.int64)
    k = key[:, 0] * 1_000_003 + key[:, 1]
    order = np.argsort(k, kind="stable")
    tri, k = tri[order], k[order]
    _, start, count = np.unique(k, return_index=True, return_counts=True)
    tiles = np.zeros((len(start), 8))
    for j, (a, n) in enumerate(zip(start, count)):
        p = tri[a:a + n, :, :3].reshape(-1, 3)
        tiles[j] = (a * 3, n * 3, *p.min(axis=0), *p.max(axis=0))
    return np.ascontiguousarray(tri.reshape(-1, rows.shape[1])), tiles


def visible_ranges(tiles: np.ndarray, spec: CameraSpec, pose: np.ndarray) -> list[tuple[int, int]]:
    """(first vertex, count) ranges of the tiles whose bounds meet the camera's frustum and lie
    within :data:`CULL_DISTANCE_M`, nearest first."""
    if not len(tiles):
        return []
    lo, hi = tiles[:, 2:5], tiles[:, 5:8]
    corners = np.stack([np.where(np.array(m)[None, :], hi, lo) for m in np.ndindex(2, 2, 2)], axis=1)  # (T, 8, 3)
    rot = pose[:3, :3].T
    cam = (corners - pose[:3, 3]) @ rot.T
    f = spec.focal_px
    gu, gv = (spec.width / 2.0 + 2) / f, (spec.height / 2.0 + 2) / f
    planes = np.array([[1.0, 0, 0], [gu, -1.0, 0], [gu, 1.0, 0], [gv, 0, -1.0], [gv, 0, 1.0]])
    side = np.einsum("pj,tkj->tkp", planes, cam) >= np.array([NEAR_M, 0, 0, 0, 0])
    seen = ~(~side).all(axis=1).any(axis=1)
    near = np.clip(pose[:3, 3], lo, hi)
    seen &= np.linalg.norm(near - pose[:3, 3], axis=1) <= CULL_DISTANCE_M
    idx = np.nonzero(seen)[0]
    idx = idx[np.argsort(np.linalg.norm(near[idx] - pose[:3, 3], axis=1), kind="stable")]
    return [(int(tiles[j, 0]), int(tiles[j, 1])) for j in idx]


class GLSceneRenderer:
    """Renders a town's static mesh, vehicles and signs from any camera pose with OpenGL.

    ``static`` is the town's :class:`~carla_mr.world.gl_scene.Mesh` (built once per map),
    ``geom`` the signs' placement. Same ``render`` contract as the CPU
    :class:`~carla_mr.world.render.SceneRenderer`; the last frame's depth (metres) is kept in
    :attr:`depth`.
    """

    def __init__(self, static: Mesh, geom: SignGeometry, *, face_size: int = 128, sign_range_m: float = 150.0,
                 weather: str = "clear", ctx=None):
        self.ctx = ctx if ctx is not None else gl_context()
        self.geom = geom
        self.sign_range_m = float(sign_range_m)
        self.weather = weather
        self.depth: np.ndarray | None = None
        ctx = self.ctx
        self.p_static = ctx.program(vertex_shader=sh.STATIC_VS, fragment_shader=sh.STATIC_FS)
        self.p_vehicle = ctx.program(vertex_shader=sh.VEHICLE_VS, fragment_shader=sh.VEHICLE_FS)
        self.p_sign = ctx.program(vertex_shader=sh.SIGN_VS, fragment_shader=sh.SIGN_FS)
        self.p_amodal = ctx.program(vertex_shader=sh.SIGN_VS, fragment_shader=sh.AMODAL_FS)
        self.p_sky = ctx.program(vertex_shader=sh.SKY_VS, fragment_shader=sh.SKY_FS)
        rows, self.tiles = tile_triangles(static.interleaved())
        self.n_static = len(rows)
        self.vao_static = None
        if len(rows):
            self.vbo_static = ctx.buffer(rows.tobytes())
            self.vao_static = ctx.vertex_array(self.p_static, [(self.vbo_static, "3f 3f 3f 1f",
                                                                 "in_pos", "in_nrm", "in_col", "in_aa")])
        unit = vehicle_unit_mesh()
        self.vbo_unit = ctx.buffer(unit.tobytes())
        self.vbo_inst = ctx.buffer(reserve=64 * 12 * 4, dynamic=True)
        self._inst_cap = 64
        self._make_vehicle_vao()
        self.atlas = _SignAtlas(ctx, geom, face_size)
        self.vao_sign = self.vao_amodal = None
        if len(geom):
            self.vbo_sign = ctx.buffer(sign_vertices(geom, self.atlas.base).tobytes())
            fmt = (self.vbo_sign, "3f 2f 3f 1f 1f", "in_pos", "in_uv", "in_nrm", "in_layer", "in_idx")
            self.vao_sign = ctx.vertex_array(self.p_sign, [fmt])
            self.vao_amodal = ctx.vertex_array(self.p_amodal, [fmt])
            self.state_tex = ctx.texture((len(geom), 1), 2, dtype="f4")
            self.state_tex.filter = (ctx.NEAREST, ctx.NEAREST)
            self.ssbo = ctx.buffer(reserve=len(geom) * 5 * 4)
        ndc = np.array([(-1, -1), (3, -1), (-1, 3)], np.float32)
        self.vao_sky = ctx.vertex_array(self.p_sky, [(ctx.buffer(ndc.tobytes()), "2f", "in_ndc")])
        self._fbos: dict[tuple[int, int], Any] = {}
        self.tl_states = np.zeros(len(geom), np.int64)

    def _make_vehicle_vao(self) -> None:
        self.vao_vehicle = self.ctx.vertex_array(self.p_vehicle, [
            (self.vbo_unit, "3f 3f 3f 1f", "in_pos", "in_box", "in_nrm", "in_part"),
            (self.vbo_inst, "4f 3f 3f 1f 1x4/i", "i_pose", "i_size", "i_col", "i_shape")])

    def _fbo(self, w: int, h: int):
        fbo = self._fbos.get((w, h))
        if fbo is None:
            ctx = self.ctx
            fbo = ctx.framebuffer(color_attachments=[ctx.renderbuffer((w, h), 4), ctx.renderbuffer((w, h), 2, dtype="f4")],
                                  depth_attachment=ctx.depth_renderbuffer((w, h)))
            self._fbos[(w, h)] = fbo
        return fbo

    # -- uniforms -------------------------------------------------------------------------
    def _set(self, prog, name: str, value) -> None:
        if name in prog:
            u = prog[name]
            if isinstance(value, np.ndarray):
                u.write(value.astype(np.float32).tobytes())
            else:
                u.value = value

    def _uniforms(self, spec: CameraSpec, pose: np.ndarray) -> None:
        wx = WEATHER_PRESETS.get(getattr(spec, "weather", None) or self.weather, WEATHER_PRESETS["clear"])
        vp = gl_projection(spec, pose)
        az, el = math.radians(wx["sun_az"]), math.radians(wx["sun_el"])
        sun = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        vals = {"u_vp": vp.T.copy(), "u_cam": tuple(pose[:3, 3]), "u_cam_pos": tuple(pose[:3, 3]),
                "u_fwd": tuple(pose[:3, 0]), "u_sun": tuple(sun), "u_sun_col": tuple(wx["sun"]),
                "u_amb": tuple(wx["ambient"]), "u_fog_col": tuple(np.array(wx["fog"]) / 255.0),
                "u_fog_density": float(wx["fog_density"]), "u_emissive": 1.0 if wx["lamps"] else 0.0,
                "u_back": tuple(np.array(SIGN_BACK) / 255.0), "u_h": int(spec.height),
                "u_top": tuple(np.array(wx["sky_top"]) / 255.0), "u_horizon": tuple(np.array(wx["sky_horizon"]) / 255.0)}
        inv = np.linalg.inv(vp)
        # (ndc x, ndc y, 1) -> direction: unproject two depths and subtract.
        ray = np.zeros((3, 3))
        for j, e in enumerate(np.eye(3)):
            a = inv @ np.array([e[0], e[1], e[2], 1.0]) if j < 2 else inv @ np.array([0, 0, 1.0, 1.0])
            ray[:, j] = a[:3] / a[3] - pose[:3, 3]
        vals["u_ray"] = ray.T.copy()
        for prog in (self.p_static, self.p_vehicle, self.p_sign, self.p_amodal, self.p_sky):
            for k, v in vals.items():
                self._set(prog, k, v)

    def _vehicles(self, vehicles: Snapshot | None, exclude_id: int | None, pos: np.ndarray,
                  dims: Mapping[int, str] | None) -> int:
        """Upload the vehicle instances within draw range; returns their count."""
        if vehicles is None or not len(vehicles):
            return 0
        sel = (vehicles.x - pos[0]) ** 2 + (vehicles.y - pos[1]) ** 2 <= 400.0 ** 2
        if exclude_id is not None:
            sel &= vehicles.ids != exclude_id
        idx = np.nonzero(sel)[0]
        if not len(idx):
            return 0
        n = len(idx)
        inst = np.zeros((n, 12), np.float32)
        inst[:, 0], inst[:, 1], inst[:, 2] = vehicles.x[idx], vehicles.y[idx], vehicles.z[idx]
        inst[:, 3] = np.deg2rad(vehicles.yaw[idx])
        ids = vehicles.ids[idx]
        size = np.tile(np.array(CAR_SIZE + (1.0,)), (n, 1))
        if dims:
            for k, vid in enumerate(ids.tolist()):
                t = dims.get(int(vid))
                if t is not None:
                    size[k] = VEHICLE_TYPES.get(t, VEHICLE_TYPES["car"])
        inst[:, 4:7] = size[:, :3]
        inst[:, 7:10] = vehicle_colours(ids, vehicles.role[idx] == 1)
        inst[:, 10] = size[:, 3]
        if n > self._inst_cap:
            self._inst_cap = int(2 ** math.ceil(math.log2(n)))
            self.vbo_inst.orphan(self._inst_cap * 12 * 4)
            self._make_vehicle_vao()
        self.vbo_inst.write(inst.tobytes())
        return n

    def _sign_state(self, pos: np.ndarray, tl_state: Mapping[str, str] | None) -> np.ndarray:
        """Upload each sign's (extra layer, in range) and return the in-range mask."""
        geom = self.geom
        dist = np.sqrt(((geom.center - pos) ** 2).sum(axis=1))
        in_range = dist <= self.sign_range_m
        extra = np.zeros(len(geom))
        if tl_state:
            for i in np.nonzero(geom.kind == "traffic_light")[0]:
                st = tl_state.get(str(geom.ids[i]), "unknown")
                self.tl_states[i] = TL_STATES.index(st) if st in TL_STATES else 0
        else:
            self.tl_states[:] = 0
        tl = geom.kind == "traffic_light"
        extra[tl] = self.tl_states[tl]
        self.state_tex.write(np.stack([extra, in_range.astype(float)], 1).astype(np.float32).tobytes())
        return dist

    # -- the frame ----------------------------------------------------------------------
    def render(self, spec: CameraSpec, cam_to_world: np.ndarray, vehicles: Snapshot | None = None,
               textures: Mapping[str, SignTexture] | None = None, *, exclude_id: int | None = None,
               vehicle_types: Mapping[int, str] | None = None, tl_state: Mapping[str, str] | None = None
               ) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        """Render one frame. Returns (RGB uint8 (H, W, 3), instance ids int32 (H, W), labels);
        the depth (float32 (H, W), metres, 0 = sky) is left in :attr:`depth`.

        ``vehicle_types`` maps vehicle ids to a :data:`~carla_mr.world.gl_scene.VEHICLE_TYPES`
        name (default car); ``tl_state`` sign ids of traffic lights to ``red``/``yellow``/``green``.
        """
        ctx = self.ctx
        pose = np.asarray(cam_to_world, np.float64)
        w, h = spec.width, spec.height
        fbo = self._fbo(w, h)
        fbo.use()
        fbo.clear(0.0, 0.0, 0.0, 1.0, depth=1.0)
        self._uniforms(spec, pose)
        ctx.disable(ctx.CULL_FACE)
        ctx.enable(ctx.DEPTH_TEST | ctx.BLEND)
        ctx.blend_func = ctx.SRC_ALPHA, ctx.ONE_MINUS_SRC_ALPHA
        nveh = self._vehicles(vehicles, exclude_id, pose[:3, 3], vehicle_types)
        if nveh:
            self.vao_vehicle.render(instances=nveh)
        labels_in: tuple | None = None
        if self.vao_sign is not None:
            if textures is not None:
                self.atlas.update(textures)
            self.atlas.tex.use(0)
            self.state_tex.use(1)
            for p in (self.p_sign, self.p_amodal):
                self._set(p, "u_faces", 0)
                self._set(p, "u_state", 1)
            dist = self._sign_state(pose[:3, 3], tl_state)
            self.vao_sign.render()
            labels_in = (dist, self._amodal(fbo))
        # The town after the near objects, nearest tiles first (hidden fragments fail the depth test early).
        ctx.enable(ctx.DEPTH_TEST | ctx.BLEND)
        if self.vao_static is not None:
            for first, count in visible_ranges(self.tiles, spec, pose):
                self.vao_static.render(vertices=count, first=first)
        # The sky last, only where nothing was drawn (its depth is the far plane).
        ctx.disable(ctx.BLEND)
        ctx.enable(ctx.DEPTH_TEST)
        ctx.depth_func = "<="
        fbo.depth_mask = False
        self.vao_sky.render(vertices=3)
        fbo.depth_mask = True
        ctx.depth_func = "<"
        img = np.frombuffer(fbo.read(components=3, attachment=0), np.uint8).reshape(h, w, 3)[::-1]
        aux = np.frombuffer(fbo.read(components=2, attachment=1, dtype="f4"), np.float32).reshape(h, w, 2)[::-1]
        ids = aux[:, :, 0].astype(np.int32)
        self.depth = np.ascontiguousarray(aux[:, :, 1])
        labels = self._labels(ids, labels_in, textures or {}, w, h) if labels_in is not None else []
        return np.ascontiguousarray(img), ids, labels

    def _amodal(self, fbo) -> np.ndarray:
        """(S, 5) int: per sign, face fragments in the image and their x0, y0, x1, y1 (inclusive)."""
        ctx = self.ctx
        n = len(self.geom)
        init = np.zeros((n, 5), np.int32)
        init[:, 1:3] = 2 ** 30
        init[:, 3:5] = -1
        self.ssbo.write(init.tobytes())
        self.ssbo.bind_to_storage_buffer(0)
        ctx.disable(ctx.DEPTH_TEST | ctx.BLEND)
        fbo.color_mask = ((False,) * 4,) * 2
        fbo.depth_mask = False
        self.vao_amodal.render()
        fbo.color_mask = ((True,) * 4,) * 2
        fbo.depth_mask = True
        ctx.memory_barrier()
        return np.frombuffer(self.ssbo.read(), np.int32).reshape(n, 5)

    def _labels(self, ids: np.ndarray, inp: tuple, textures: Mapping[str, SignTexture], w: int, h: int) -> list[dict]:
        """One label per sign whose front face has visible pixels, nearest first."""
        dist, stats = inp
        geom = self.geom
        counts = np.bincount(ids.ravel(), minlength=len(geom) + 1)
        labels = []
        for k in sorted(np.nonzero((stats[:, 0] > 0) & (counts[1:len(geom) + 1] > 0))[0], key=lambda j: dist[j]):
            n, x0, y0, x1, y1 = (int(v) for v in stats[k])
            x1, y1 = x1 + 1, y1 + 1
            vis = int(min(counts[k + 1], n))
            tex = textures.get(str(geom.ids[k])) or SignTexture()
            lab = {**sign_label(geom.ids[k], geom.kind[k], geom.value[k], tex),
                   "box": [x0, y0, x1, y1], "amodal_bbox": [x0, y0, x1, y1], "visible": vis / n,
                   "distance": float(dist[k]), "pixels": vis, "face_pixels": n, "instance": int(k + 1),
                   "visible_box": visible_box(ids, (x0, y0, x1, y1), k + 1),
                   "position": [float(c) for c in geom.center[k]]}
            if lab["kind"] == "traffic_light":
                lab["state"] = TL_STATES[int(self.tl_states[k])]
            labels.append(lab)
        return labels

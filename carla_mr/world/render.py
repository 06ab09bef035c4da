"""The embedded camera: a small CPU rasteriser (numpy + OpenCV) with exact sign labels.

What it draws, back to front: a sky gradient, the ground plane, the map's road surfaces and
lane markings (:mod:`carla_mr.world.scene`), then every object (vehicles as shaded boxes,
signs as textured quads on posts) in painter's order by distance from the camera. Polygons
are clipped in camera space against the near plane (and a wide guard band, so no projected
coordinate overflows the rasteriser), then projected with CARLA's pinhole model:
``u = cx + f * Y / X``, ``v = cy - f * Z / X`` with camera axes x forward, y right, z up and
``f = w / (2 tan(fov / 2))``.

Labels are exact with respect to the pixels: every primitive is drawn into the RGB image and
into an integer ID buffer with the same polygon, and a sign's face is the set of pixels where
its texture's alpha is opaque. A label's ``box`` is the bounding box of the face's pixels in
the image (as if nothing occluded it; clipped to the image; x1/y1 exclusive), ``visible`` is
the share of those pixels that survive in the ID buffer after everything nearer is drawn,
and ``visible_box`` bounds the surviving pixels.

Limits: the ground is drawn as the bottom layer (hills never hide objects); objects are
painted farthest centre first, with every nearby sign-vehicle pair ordered exactly by
separating planes (:func:`_painter_order`), and nearby vehicle pairs by their face planes
when one lies entirely in front of a visible face of the other; not a general depth buffer
(interpenetrating or cyclically overlapping objects); per-face shading only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import cv2
import numpy as np

from carla_mr.errors import InputError, RunError
from carla_mr.world.base import CameraFrame, SignTexture, Snapshot
from carla_mr.config.camera import CameraSpec
from carla_mr.world.scene import (FACE_SHADE, GRASS, POST, SIGN_BACK, SKY_HORIZON, SKY_TOP, BOX_FACES, RoadScene,
                                  build_road_scene, ground_height_under, vehicle_boxes, vehicle_colour, CAR_SIZE)
from carla_mr.world.sign_geometry import (POST_WIDTH_M, SignGeometry, build_sign_geometry, fit_to_shape, original_face,
                                          sign_label, visible_box)

NEAR_M = 0.1
GUARD_PX = 4000.0
_SHIFT = 2
_SCALE = 1 << _SHIFT


def carla_matrix(x: float, y: float, z: float, pitch: float = 0.0, yaw: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """4x4 local-to-world matrix of a CARLA transform (same as ``carla.Transform.get_matrix()``)."""
    cy, sy = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
    cr, sr = math.cos(math.radians(roll)), math.sin(math.radians(roll))
    cp, sp = math.cos(math.radians(pitch)), math.sin(math.radians(pitch))
    return np.array([
        [cp * cy, cy * sp * sr - sy * cr, -cy * sp * cr - sy * sr, x],
        [cp * sy, sy * sp * sr + cy * cr, -sy * sp * cr + cy * sr, y],
        [sp, -cp * sr, cp * cr, z],
        [0.0, 0.0, 0.0, 1.0],
    ])


def camera_pose(spec: CameraSpec, x: float, y: float, z: float, yaw: float) -> np.ndarray:
    """Camera-to-world 4x4 of a camera mounted by ``spec`` on a vehicle at (x, y, z, yaw)."""
    return carla_matrix(x, y, z, 0.0, yaw, 0.0) @ carla_matrix(spec.x, spec.y, spec.z, spec.pitch, spec.yaw, spec.roll)


@dataclass
class _View:
    """Per-frame camera constants."""

    w: int
    h: int
    f: float
    cx: float
    cy: float
    rot: np.ndarray  # (3, 3) world -> camera
    t: np.ndarray  # (3,) world -> camera
    pos: np.ndarray  # (3,) camera position (world)
    planes: np.ndarray  # (5, 3) inside iff planes @ p >= offsets (camera coordinates): near + guard band
    offsets: np.ndarray  # (5,)
    cull_planes: np.ndarray  # (5, 3) the image's own frustum (2 px margin), for culling whole objects
    cull_offsets: np.ndarray  # (5,)

    def to_cam(self, pts: np.ndarray) -> np.ndarray:
        return pts @ self.rot.T + self.t

    def project(self, cam: np.ndarray) -> np.ndarray:
        """Continuous pixel coordinates (pixel i spans [i, i+1)) of camera-frame points."""
        x = cam[..., 0]
        return np.stack([self.cx + self.f * cam[..., 1] / x, self.cy - self.f * cam[..., 2] / x], -1)


def _make_view(spec: CameraSpec, cam_to_world: np.ndarray) -> _View:
    w, h = spec.width, spec.height
    f = spec.focal_px
    rot = cam_to_world[:3, :3].T
    t = -rot @ cam_to_world[:3, 3]
    gu = (w / 2.0 + GUARD_PX) / f
    gv = (h / 2.0 + GUARD_PX) / f
    planes = np.array([[1.0, 0, 0], [gu, -1.0, 0], [gu, 1.0, 0], [gv, 0, -1.0], [gv, 0, 1.0]])
    offsets = np.array([NEAR_M, 0, 0, 0, 0])
    cu = (w / 2.0 + 2.0) / f
    cv_ = (h / 2.0 + 2.0) / f
    cull = np.array([[1.0, 0, 0], [cu, -1.0, 0], [cu, 1.0, 0], [cv_, 0, -1.0], [cv_, 0, 1.0]])
    return _View(w, h, f, w / 2.0, h / 2.0, rot, t, cam_to_world[:3, 3].copy(), planes, offsets, cull, offsets.copy())


def clip_polygon(poly: np.ndarray, planes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman clip of a convex polygon (k, 3) to ``planes @ p >= offsets``."""
    out = poly
    for n, d in zip(planes, offsets):
        if len(out) == 0:
            break
        dist = out @ n - d
        if (dist >= 0).all():
            continue
        res = []
        k = len(out)
        for i in range(k):
            a, b = out[i], out[(i + 1) % k]
            da, db = dist[i], dist[(i + 1) % k]
            if da >= 0:
                res.append(a)
            if (da >= 0) != (db >= 0):
                res.append(a + (b - a) * (da / (da - db)))
        out = np.asarray(res).reshape(-1, 3)
    return out


def _pts(uv: np.ndarray) -> np.ndarray:
    """Fixed-point vertices for cv2 (pixel centres at integer + 0.5)."""
    return np.round((uv - 0.5) * _SCALE).astype(np.int32)


#: Sign-vehicle pairs closer than this (centre to centre, metres) get an exact order constraint.
PAIR_RADIUS_M = 12.0
#: Vehicle pairs closer than this (centre to centre, metres) are ordered by face planes.
CAR_PAIR_RADIUS_M = 8.0


def _painter_order(objects, pos, geom: SignGeometry, vbox, vnorm, fc, facing):
    """Back-to-front order: farthest centre first, except that every sign-vehicle pair near
    each other is ordered by separating planes (exact for a flat face and a convex box), and
    so is every nearby vehicle pair where one box lies in front of a visible face of the other:

    - the box entirely behind the sign's plane (seen from the camera): box first;
    - entirely in front of it: sign first;
    - straddling it: sign first iff the sign lies behind a camera-facing face plane of the box.

    ``objects`` are (distance, kind 1 sign / 0 vehicle, index, ...) tuples; ``vbox`` (K, 8, 3)
    the vehicles' box corners, ``vnorm``/``fc`` (K, 6, 3) their face normals and centres,
    ``facing`` (K, 6) which faces the camera sees.
    """
    n = len(objects)
    if n == 0:
        return objects
    signs = [j for j, o in enumerate(objects) if o[1] == 1]
    cars = [j for j, o in enumerate(objects) if o[1] == 0]
    after: list[list[int]] = [[] for _ in range(n)]  # after[a] = objects drawn after a
    indeg = [0] * n

    def draw_before(a: int, b: int) -> None:
        after[a].append(b)
        indeg[b] += 1

    if signs and cars:
        _order_sign_car_pairs(objects, signs, cars, pos, geom, vbox, vnorm, fc, facing, draw_before)
    if len(cars) > 1:
        _order_car_pairs(objects, cars, vbox, vnorm, fc, facing, draw_before)
    return _far_first_topological(objects, after, indeg)


def _order_sign_car_pairs(objects, signs, cars, pos, geom: SignGeometry, vbox, vnorm, fc, facing, draw_before) -> None:
    """``draw_before(a, b)`` for every sign and vehicle within PAIR_RADIUS_M (the rules of
    :func:`_painter_order`)."""
    ci = np.array([objects[j][2] for j in cars])
    ccent = vbox[ci].mean(axis=1)  # (C, 3)
    for js in signs:
        i = objects[js][2]
        near = np.nonzero(((ccent - geom.center[i]) ** 2).sum(axis=1) <= PAIR_RADIUS_M ** 2)[0]
        if len(near) == 0:
            continue
        nrm, c = geom.normal[i], geom.center[i]
        cam_side = 1.0 if float(np.dot(nrm, pos - c)) >= 0 else -1.0
        side = ((vbox[ci[near]] - c) @ nrm) * cam_side  # (M, 8): > 0 on the camera's side
        corners = geom.corners[i]
        for q, (m, k) in enumerate(zip(near, ci[near])):
            if (side[q] <= 1e-9).all():
                sign_first = False  # box behind the sign's plane
            elif (side[q] >= -1e-9).all():
                sign_first = True  # box between the camera and the sign's plane
            else:
                sign_first = False
                for f in np.nonzero(facing[k])[0]:
                    if (((corners - fc[k, f]) @ vnorm[k, f]) <= 1e-9).all():
                        sign_first = True  # the sign is behind a visible face of the box
                        break
            draw_before(*((js, cars[m]) if sign_first else (cars[m], js)))


def _order_car_pairs(objects, cars, vbox, vnorm, fc, facing, draw_before) -> None:
    """Vehicle pairs within CAR_PAIR_RADIUS_M: a box entirely on the camera's side of one of the
    other's visible face planes cannot be hidden by it, so it is drawn after it."""
    ci = np.array([objects[j][2] for j in cars])
    cc = vbox[ci].mean(axis=1)
    d2 = ((cc[:, None, :] - cc[None, :, :]) ** 2).sum(axis=2)
    pa, pb = np.nonzero(np.triu(d2 <= CAR_PAIR_RADIUS_M ** 2, k=1))
    if not len(pa):
        return
    ka, kb = ci[pa], ci[pb]

    def in_front(kp, kq):
        """(P,) whether box kq lies entirely in front of a camera-facing face of kp."""
        off = np.einsum("pfk,pfk->pf", vnorm[kp], fc[kp])
        val = np.einsum("pfk,pck->pfc", vnorm[kp], vbox[kq]) - off[:, :, None]
        return ((val >= -1e-9).all(axis=2) & facing[kp]).any(axis=1)

    b_front, a_front = in_front(ka, kb), in_front(kb, ka)
    for x_, y_, bf, af in zip(pa, pb, b_front, a_front):
        if bf:
            draw_before(cars[x_], cars[y_])  # y in front of x: x first
        elif af:
            draw_before(cars[y_], cars[x_])


def _far_first_topological(objects, after: list[list[int]], indeg: list[int]) -> list:
    """``objects`` in an order that keeps every ``after`` constraint, farthest first among the
    objects free to go next (a cycle, not expected, is broken at its farthest object)."""
    import heapq

    n = len(objects)
    heap = [(-objects[j][0], j) for j in range(n) if indeg[j] == 0]
    heapq.heapify(heap)
    out, done = [], [False] * n
    while len(out) < n:
        if not heap:  # a cycle (not expected): release the farthest remaining object
            j = max((j for j in range(n) if not done[j]), key=lambda q: objects[q][0])
            indeg[j] = 0
            heap.append((-objects[j][0], j))
        _, j = heapq.heappop(heap)
        if done[j]:
            continue
        done[j] = True
        out.append(objects[j])
        for b in after[j]:
            indeg[b] -= 1
            if indeg[b] == 0 and not done[b]:
                heapq.heappush(heap, (-objects[b][0], b))
    return out


class _Pyramid:
    """A texture and its halvings, to pick a level near the projected size (less aliasing)."""

    def __init__(self, rgba: np.ndarray):
        self.levels = [rgba]
        cur = rgba
        while cur.shape[0] > 8:
            cur = cv2.resize(cur, (cur.shape[1] // 2, cur.shape[0] // 2), interpolation=cv2.INTER_AREA)
            self.levels.append(cur)

    def pick(self, px: float) -> np.ndarray:
        for lvl in reversed(self.levels):
            if lvl.shape[0] >= px:
                return lvl
        return self.levels[0]


@dataclass
class _VehicleView:
    """The vehicles within draw distance of one frame, as boxes in world and camera space.

    Index k runs over the selected vehicles: ``box`` (V, 8, 3) and ``normal`` (V, 5, 3) world
    corners and face normals, ``cam`` the corners in camera space, ``uv`` their pixels where
    the whole box is ``inside`` the clip volume, ``face_centre`` (V, 5, 3), ``facing`` (V, 5)
    faces turned to the camera, ``dist`` (V,) metres, ``visible`` the indices in the image's
    frustum.
    """

    ids: np.ndarray
    av: np.ndarray
    box: np.ndarray
    normal: np.ndarray
    cam: np.ndarray
    uv: np.ndarray
    inside: np.ndarray
    face_centre: np.ndarray
    facing: np.ndarray
    dist: np.ndarray
    visible: np.ndarray

    @staticmethod
    def of(vehicles: Snapshot | None, view: _View, draw_distance_m: float, size: tuple[float, float, float],
           exclude_id: int | None) -> "_VehicleView | None":
        """The view of ``vehicles`` (None when no vehicle is within ``draw_distance_m``)."""
        if vehicles is None or not len(vehicles):
            return None
        px, py = view.pos[0], view.pos[1]
        sel = (vehicles.x - px) ** 2 + (vehicles.y - py) ** 2 <= draw_distance_m ** 2
        if exclude_id is not None:
            sel &= vehicles.ids != exclude_id
        vidx = np.nonzero(sel)[0]
        if not len(vidx):
            return None
        box, normal = vehicle_boxes(vehicles.x[vidx], vehicles.y[vidx], vehicles.z[vidx], vehicles.yaw[vidx], size)
        cam = view.to_cam(box)  # (V, 8, 3)
        side = np.einsum("pj,vkj->vkp", view.cull_planes, cam) >= view.cull_offsets  # (V, 8, 5)
        in_view = ~(~side).all(axis=1).any(axis=1)
        inside = (np.einsum("pj,vkj->vkp", view.planes, cam) >= view.offsets).all(axis=(1, 2))
        uv = np.zeros(cam.shape[:2] + (2,))
        if inside.any():
            uv[inside] = view.project(cam[inside])
        fc = box[:, BOX_FACES].mean(axis=2)  # (V, 5, 3)
        facing = np.einsum("vfk,vfk->vf", normal, view.pos[None, None, :] - fc) > 0
        dist = np.sqrt(((box.mean(axis=1) - view.pos) ** 2).sum(axis=1))
        return _VehicleView(vehicles.ids[vidx], vehicles.role[vidx] == 1, box, normal, cam, uv, inside, fc, facing,
                            dist, np.nonzero(in_view)[0])


class SceneRenderer:
    """Renders a map's roads, vehicles and signs from any camera pose.

    ``scene`` comes from :func:`~carla_mr.world.scene.build_road_scene` and ``geom`` from
    :func:`~carla_mr.world.sign_geometry.build_sign_geometry`; both are computed once.
    ``sign_range_m`` culls signs farther than that; ``draw_distance_m`` culls road quads.
    """

    def __init__(self, scene: RoadScene, geom: SignGeometry, *, face_size: int = 128, sign_range_m: float = 150.0,
                 draw_distance_m: float = 350.0, vehicle_size: tuple[float, float, float] = CAR_SIZE):
        self.scene = scene
        self.geom = geom
        self.face_size = int(face_size)
        self.sign_range_m = float(sign_range_m)
        self.draw_distance_m = float(draw_distance_m)
        self.vehicle_size = vehicle_size
        self.ground_z = scene.ground_z
        self._road_centre = scene.road.mean(axis=1) if len(scene.road) else np.zeros((0, 3))
        self._mark_centre = scene.marks.mean(axis=1) if len(scene.marks) else np.zeros((0, 3))
        self._road_col = [tuple(int(c) for c in col) for col in scene.road_color]
        self._mark_col = [tuple(int(c) for c in col) for col in scene.mark_color]
        self._sky: dict[tuple[int, int], np.ndarray] = {}
        self._originals: dict[tuple[str, float], _Pyramid] = {}
        self._generated: dict[str, tuple[Any, _Pyramid]] = {}

    # -- textures -----------------------------------------------------------------------
    def _face(self, i: int, tex: SignTexture | None) -> _Pyramid:
        kind = str(self.geom.kind[i])
        if tex is not None and tex.image is not None:
            sid = str(self.geom.ids[i])
            hit = self._generated.get(sid)
            if hit is not None and hit[0] is tex.image:
                return hit[1]
            pyr = _Pyramid(fit_to_shape(np.asarray(tex.image), kind, self.face_size))
            self._generated[sid] = (tex.image, pyr)
            return pyr
        v = float(self.geom.value[i])
        key = (kind, v if math.isfinite(v) else float("nan"))
        pyr = self._originals.get(key) if math.isfinite(v) else self._originals.get((kind, -1.0))
        if pyr is None:
            pyr = _Pyramid(original_face(kind, v if math.isfinite(v) else None, self.face_size))
            self._originals[key if math.isfinite(v) else (kind, -1.0)] = pyr
        return pyr

    def _sky_image(self, w: int, h: int) -> np.ndarray:
        sky = self._sky.get((w, h))
        if sky is None:
            t = np.linspace(0.0, 1.0, h)[:, None]
            col = (1 - t) * np.array(SKY_TOP) + t * np.array(SKY_HORIZON)
            sky = np.ascontiguousarray(np.broadcast_to(col[:, None, :], (h, w, 3)).astype(np.uint8))
            self._sky[(w, h)] = sky
        return sky

    # -- drawing helpers ----------------------------------------------------------------
    def _fill_world_polys(self, img: np.ndarray, view: _View, quads: np.ndarray, centres: np.ndarray,
                          colours: list[tuple[int, int, int]]) -> None:
        """Fill world-space convex quads (N, 4, 3) (ground layer: no ID buffer)."""
        if len(quads) == 0:
            return
        near = np.einsum("nk,nk->n", centres[:, :2] - view.pos[None, :2], centres[:, :2] - view.pos[None, :2])
        keep = np.nonzero(near <= self.draw_distance_m ** 2)[0]
        if len(keep) == 0:
            return
        cam = view.to_cam(quads[keep])  # (K, 4, 3)
        inside = np.einsum("pj,nkj->nkp", view.planes, cam) >= view.offsets  # (K, 4, 5)
        # Culled when all vertices are outside one plane of the image's frustum.
        seen = np.einsum("pj,nkj->nkp", view.cull_planes, cam) >= view.cull_offsets
        culled = (~seen).all(axis=1).any(axis=1)
        full = inside.all(axis=(1, 2)) & ~culled
        partial = ~full & ~culled
        fi = np.nonzero(full)[0]
        if len(fi):
            pts = _pts(view.project(cam[fi]))
            for j, p in zip(fi, pts):
                cv2.fillConvexPoly(img, p, colours[keep[j]], cv2.LINE_8, _SHIFT)
        for j in np.nonzero(partial)[0]:
            poly = clip_polygon(cam[j], view.planes, view.offsets)
            if len(poly) >= 3:
                cv2.fillConvexPoly(img, _pts(view.project(poly)), colours[keep[j]], cv2.LINE_8, _SHIFT)

    @staticmethod
    def _fill(img, ids, view: _View, cam_poly: np.ndarray, colour, idval: int) -> None:
        poly = clip_polygon(cam_poly, view.planes, view.offsets)
        if len(poly) < 3:
            return
        p = _pts(view.project(poly))
        cv2.fillConvexPoly(img, p, colour, cv2.LINE_8, _SHIFT)
        cv2.fillConvexPoly(ids, p, idval, cv2.LINE_8, _SHIFT)

    def _draw_face(self, img, ids, view: _View, i: int, cam_corners: np.ndarray, tex: SignTexture | None,
                   idval: int) -> tuple[int, tuple[int, int, int, int] | None]:
        """Texture sign ``i``'s face; returns (face pixel count, box) in the image."""
        poly = clip_polygon(cam_corners, view.planes, view.offsets)
        if len(poly) < 3:
            return 0, None
        uv = view.project(poly)
        x0 = max(0, int(math.floor(uv[:, 0].min())))
        y0 = max(0, int(math.floor(uv[:, 1].min())))
        x1 = min(view.w, int(math.ceil(uv[:, 0].max())) + 1)
        y1 = min(view.h, int(math.ceil(uv[:, 1].max())) + 1)
        if x1 <= x0 or y1 <= y0:
            return 0, None
        rw, rh = x1 - x0, y1 - y0
        polymask = np.zeros((rh, rw), np.uint8)
        cv2.fillConvexPoly(polymask, _pts(uv - (x0, y0)), 1, cv2.LINE_8, _SHIFT)
        # Projected size of the full face, to pick a texture level.
        pyr = self._face(i, tex)
        dist = float(np.linalg.norm(cam_corners.mean(axis=0)))
        px = view.f * max(float(self.geom.width[i]), float(self.geom.height[i])) / max(dist, NEAR_M)
        tex_img = pyr.pick(px)
        th, tw = tex_img.shape[:2]
        # Analytic plane-to-image homography (valid even when corners lie behind the camera).
        tl, tr, bl = cam_corners[0], cam_corners[1], cam_corners[3]
        a = (tr - tl) / tw
        b = (bl - tl) / th
        c = tl + 0.5 * a + 0.5 * b

        def m(v):
            return np.array([v[1], -v[2], v[0]])

        K = np.array([[view.f, 0, view.cx - 0.5 - x0], [0, view.f, view.cy - 0.5 - y0], [0, 0, 1.0]])
        H = K @ np.stack([m(a), m(b), m(c)], axis=1)
        # Replicated borders: edge pixels take the texture's own edge colour (the quad's outline
        # comes from the polygon mask, its silhouette from the alpha channel).
        warped = cv2.warpPerspective(tex_img, H, (rw, rh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        mask = (warped[:, :, 3] >= 128) & (polymask > 0)
        n = int(mask.sum())
        if n == 0:
            return 0, None
        roi = img[y0:y1, x0:x1]
        roi[mask] = warped[:, :, :3][mask]
        ids[y0:y1, x0:x1][mask] = idval
        rows = np.nonzero(mask.any(axis=1))[0]
        cols = np.nonzero(mask.any(axis=0))[0]
        return n, (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1)

    # -- the frame ----------------------------------------------------------------------
    def render(self, spec: CameraSpec, cam_to_world: np.ndarray, vehicles: Snapshot | None = None,
               textures: Mapping[str, SignTexture] | None = None, *, exclude_id: int | None = None
               ) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        """Render one frame. Returns (RGB uint8 (H, W, 3), ID buffer int32 (H, W), labels).

        The ID buffer holds ``sign index + 1`` where a sign face is visible, else 0.
        ``exclude_id`` is a vehicle not drawn (the ego vehicle carrying the camera).
        """
        view = _make_view(spec, np.asarray(cam_to_world, np.float64))
        img = self._sky_image(view.w, view.h).copy()
        ids = np.zeros((view.h, view.w), np.int32)
        textures = textures or {}
        self._draw_ground(img, view)
        cars = _VehicleView.of(vehicles, view, self.draw_distance_m, self.vehicle_size, exclude_id)
        objects = [(float(cars.dist[k]), 0, int(k)) for k in cars.visible] if cars is not None else []
        sign_dist = self._signs_in_range(view, objects)
        if cars is not None:
            objects = _painter_order(objects, view.pos, self.geom, cars.box, cars.normal, cars.face_centre,
                                     cars.facing)
        else:
            objects.sort(key=lambda o: -o[0])
        faces = self._draw_objects(img, ids, view, objects, cars, sign_dist, textures)
        return img, ids, self._labels(ids, faces, textures)

    def _draw_ground(self, img: np.ndarray, view: _View) -> None:
        """The bottom layer: grass (a big square around the camera), road quads, lane markings."""
        px, py = view.pos[0], view.pos[1]
        gz = self.ground_z
        big = 2000.0
        ground = np.array([[px - big, py - big, gz], [px + big, py - big, gz], [px + big, py + big, gz],
                           [px - big, py + big, gz]])
        poly = clip_polygon(view.to_cam(ground), view.planes, view.offsets)
        if len(poly) >= 3:
            cv2.fillConvexPoly(img, _pts(view.project(poly)), GRASS, cv2.LINE_8, _SHIFT)
        self._fill_world_polys(img, view, self.scene.road, self._road_centre, self._road_col)
        self._fill_world_polys(img, view, self.scene.marks, self._mark_centre, self._mark_col)

    def _signs_in_range(self, view: _View, objects: list[tuple[float, int, int]]) -> np.ndarray:
        """Append (distance, 1, sign index) for every sign within range and not far behind the
        camera to ``objects``; returns every sign's distance from the camera (metres)."""
        geom = self.geom
        if not len(geom):
            return np.zeros(0)
        dist = np.sqrt(((geom.center - view.pos) ** 2).sum(axis=1))
        camc = view.to_cam(geom.center)
        for i in np.nonzero((dist <= self.sign_range_m) & (camc[:, 0] > -2.0))[0]:
            objects.append((float(dist[i]), 1, int(i)))
        return dist

    def _draw_objects(self, img, ids, view: _View, objects, cars: "_VehicleView | None", sign_dist: np.ndarray,
                      textures: Mapping[str, SignTexture]) -> dict[int, tuple[int, tuple[int, int, int, int], float]]:
        """Paint vehicles and signs in ``objects`` order; returns, per sign whose face was drawn,
        (face pixels, face box, distance)."""
        geom = self.geom
        faces: dict[int, tuple[int, tuple[int, int, int, int], float]] = {}
        for _key, typ, k in objects:
            if typ == 0:
                self._draw_vehicle(img, ids, view, cars, k)
                continue
            front = float(np.dot(geom.normal[k], view.pos - geom.center[k])) > 0
            post = self._post_quad(view, k)
            cam_corners = view.to_cam(geom.corners[k])
            if front:
                if post is not None:
                    self._fill(img, ids, view, post, POST, 0)
                n, box = self._draw_face(img, ids, view, k, cam_corners, textures.get(str(geom.ids[k])), k + 1)
                if n:
                    faces[k] = (n, box, float(sign_dist[k]))
            else:
                self._fill(img, ids, view, cam_corners, SIGN_BACK, 0)
                if post is not None:
                    self._fill(img, ids, view, post, POST, 0)
        return faces

    def _draw_vehicle(self, img, ids, view: _View, cars: "_VehicleView", k: int) -> None:
        """Vehicle ``k`` of ``cars``: its camera-facing box faces, shaded, hiding what is behind."""
        col = np.array(vehicle_colour(int(cars.ids[k]), bool(cars.av[k])))
        for fi in np.nonzero(cars.facing[k])[0]:
            face = BOX_FACES[fi]
            shade = tuple(int(c) for c in np.clip(col * FACE_SHADE[fi], 0, 255))
            if cars.inside[k]:
                p = _pts(cars.uv[k, face])
                cv2.fillConvexPoly(img, p, shade, cv2.LINE_8, _SHIFT)
                cv2.fillConvexPoly(ids, p, 0, cv2.LINE_8, _SHIFT)
            else:
                self._fill(img, ids, view, cars.cam[k, face], shade, 0)

    def _labels(self, ids: np.ndarray, faces: dict[int, tuple[int, tuple[int, int, int, int], float]],
                textures: Mapping[str, SignTexture]) -> list[dict]:
        """One label per drawn face with visible pixels left in the ID buffer, nearest first."""
        geom = self.geom
        labels: list[dict] = []
        if not faces:
            return labels
        counts = np.bincount(ids.ravel(), minlength=len(geom) + 1)
        for k in sorted(faces, key=lambda j: faces[j][2]):
            n, box, dist_o = faces[k]
            vis = int(counts[k + 1])
            if vis == 0:
                continue
            tex = textures.get(str(geom.ids[k])) or SignTexture()
            labels.append({**sign_label(geom.ids[k], geom.kind[k], geom.value[k], tex),
                           "box": [int(v) for v in box], "visible": vis / n, "distance": dist_o, "pixels": vis,
                           "face_pixels": n, "visible_box": visible_box(ids, box, k + 1)})
        return labels

    def _post_quad(self, view: _View, k: int) -> np.ndarray | None:
        """A camera-facing quad for sign ``k``'s post (camera coordinates), or None."""
        base, top = self.geom.post_base[k], self.geom.post_top[k]
        top = top.copy()
        top[2] = min(top[2], self.geom.center[k, 2])
        if top[2] - base[2] <= 0.05:
            return None
        d = base[:2] - view.pos[:2]
        nd = math.hypot(d[0], d[1])
        if nd < 1e-6:
            return None
        side = np.array([-d[1] / nd, d[0] / nd, 0.0]) * (0.5 * POST_WIDTH_M)
        quad = np.stack([top - side, top + side, base + side, base - side])
        return view.to_cam(quad)


_SCENES: list[tuple[Any, RoadScene]] = []


def cached_road_scene(carla_map) -> RoadScene:
    """build_road_scene(carla_map), remembered for the last few map objects (maps are immutable)."""
    for m, sc in _SCENES:
        if m is carla_map:
            return sc
    sc = build_road_scene(carla_map)
    _SCENES.append((carla_map, sc))
    del _SCENES[:-4]
    return sc


_TOWNS: list[tuple[Any, Any, dict]] = []


def cached_town_mesh(carla_map, scene: RoadScene, counts: dict | None = None):
    """gl_props.town_mesh(scene), remembered for the last few map objects; ``counts`` is
    filled with the props' counts (gl_props.props_mesh)."""
    from carla_mr.world.gl_props import town_mesh

    for m, mesh, made in _TOWNS:
        if m is carla_map:
            if counts is not None:
                counts.update(made)
            return mesh
    made: dict = {}
    mesh = town_mesh(scene, carla_map, counts=made)
    if counts is not None:
        counts.update(made)
    if carla_map is not None:
        _TOWNS.append((carla_map, mesh, made))
        del _TOWNS[:-2]
    return mesh


def make_renderer(scene: RoadScene, geom: SignGeometry, *, carla_map=None, face_size: int = 128,
                  sign_range_m: float = 150.0, draw_distance_m: float = 350.0, renderer: str | None = None,
                  counts: dict | None = None):
    """The OpenGL renderer when a context can be made (``renderer``/``CARLA_MR_RENDERER``:
    ``auto``, ``gl`` or ``cpu``), else the CPU :class:`SceneRenderer` with a RuntimeWarning
    naming what to install. ``counts`` is filled with the OpenGL town's prop counts."""
    import warnings

    from carla_mr.world.gl_context import INSTALL_HINT, gl_available, renderer_choice

    choice = renderer or renderer_choice()
    if choice != "cpu":
        ok, why = gl_available()
        if ok:
            from carla_mr.world.gl_render import GLSceneRenderer
            from carla_mr.world.gl_scene import merged, post_mesh

            static = merged(cached_town_mesh(carla_map, scene, counts), post_mesh(geom))
            return GLSceneRenderer(static, geom, face_size=face_size, sign_range_m=sign_range_m)
        if choice == "gl":
            raise RunError(why)
        warnings.warn(f"embedded camera: {why}. Using the CPU renderer (no terrain, buildings, depth or "
                      f"masks from an id pass); to get the OpenGL camera install {INSTALL_HINT}",
                      RuntimeWarning, stacklevel=3)
    return SceneRenderer(scene, geom, face_size=face_size, sign_range_m=sign_range_m,
                         draw_distance_m=draw_distance_m)


class EmbeddedCameraRig:
    """Cameras attached to vehicles of an embedded world.

    ``carla_map`` is the world's ``carla.Map`` (its lanes give the road geometry, computed
    once here); ``signs`` the world's SignTable. ``render(name, snapshot, textures)`` gives
    the :class:`~carla_mr.world.base.CameraFrame` for one tick. The renderer is OpenGL
    (:mod:`carla_mr.world.gl_render`) where a context can be created, else the CPU
    :class:`SceneRenderer` (see :func:`make_renderer`).
    """

    def __init__(self, carla_map, signs, *, scene: RoadScene | None = None, face_size: int = 128,
                 sign_range_m: float = 150.0, draw_distance_m: float = 350.0, renderer: str | None = None):
        self.scene = scene if scene is not None else cached_road_scene(carla_map)
        gz = ground_height_under(carla_map, np.asarray(signs.x, float), np.asarray(signs.y, float)) \
            if (carla_map is not None and len(signs)) else None
        self.geom = build_sign_geometry(signs, gz)
        #: The OpenGL town's prop counts (gl_props.props_mesh; the map's objects under
        #: ``map_objects``); empty for the CPU renderer.
        self.scene_counts: dict = {}
        self.renderer = make_renderer(self.scene, self.geom, carla_map=carla_map, face_size=face_size,
                                      sign_range_m=sign_range_m, draw_distance_m=draw_distance_m, renderer=renderer,
                                      counts=self.scene_counts)
        self.is_gl = not isinstance(self.renderer, SceneRenderer)
        self.cameras: dict[str, tuple[CameraSpec, int]] = {}
        #: vehicle id -> vehicle type name (gl_scene.VEHICLE_TYPES); set by the world.
        self.vehicle_types: dict[int, str] = {}

    def attach(self, name: str, spec: CameraSpec | Mapping[str, Any] | None, vehicle_id: int) -> None:
        if not isinstance(name, str) or not name:
            raise InputError("camera name must be a non-empty string", field="name")
        if spec is None:
            spec = CameraSpec()
        elif not isinstance(spec, CameraSpec):
            try:
                spec = CameraSpec.model_validate(dict(spec))
            except Exception as exc:  # pydantic ValidationError
                raise InputError(f"invalid camera spec: {exc}", field="camera") from None
        self.cameras[name] = (spec, int(vehicle_id))

    def detach(self, name: str) -> None:
        self.cameras.pop(name, None)

    def render(self, name: str, snapshot: Snapshot, textures: Mapping[str, SignTexture] | None = None,
               tl_state: Mapping[str, str] | None = None) -> CameraFrame:
        """The named camera's frame; ``tl_state`` maps traffic-light sign ids to red/yellow/green."""
        if name not in self.cameras:
            raise KeyError(f"no camera named {name!r}; attached: {sorted(self.cameras)}")
        spec, vid = self.cameras[name]
        hit = np.nonzero(snapshot.ids == vid)[0]
        if len(hit) == 0:
            raise RunError(f"camera {name!r}: vehicle {vid} is not in the world at frame {snapshot.frame} "
                           f"(it left the simulation); attach the camera to another vehicle")
        j = int(hit[0])
        ego = (float(snapshot.x[j]), float(snapshot.y[j]), float(snapshot.z[j]), float(snapshot.yaw[j]))
        pose = camera_pose(spec, *ego)
        if self.is_gl:
            img, ids, labels = self.renderer.render(spec, pose, snapshot, textures, exclude_id=vid,
                                                    vehicle_types=self.vehicle_types, tl_state=tl_state)
            depth = self.renderer.depth
        else:
            img, ids, labels = self.renderer.render(spec, pose, snapshot, textures, exclude_id=vid)
            depth = None
            for lab in labels:
                lab.setdefault("amodal_bbox", list(lab["box"]))
                lab.setdefault("instance", int(np.nonzero(self.geom.ids == lab["id"])[0][0]) + 1)
                lab.setdefault("position", [float(c) for c in self.geom.center[lab["instance"] - 1]])
        return CameraFrame(frame=int(snapshot.frame), time=float(snapshot.time), image=img,
                           intrinsics=spec.intrinsics(), cam_to_world=pose, ego=ego, labels=labels, depth=depth,
                           instance=ids)

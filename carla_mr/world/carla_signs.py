"""Sign geometry for the CARLA backend: boxes joined to landmarks, projection, facing, occlusion.

Pure numpy (no server, no ``carla`` import), so every law here is tested offline.

Frames: CARLA's world frame (left-handed; x forward/east, y right/south, z up; metres) and
CARLA's rotation convention (pitch, yaw, roll in degrees, the matrix of
``carla.Transform.get_matrix``). A camera looks along its +x axis, +y is image right and +z
image up; pixels follow CARLA's intrinsics (focal ``w / (2 tan(fov/2))``, centre principal point).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: CARLA's depth camera encodes metres as (R + 256 G + 65536 B) / (2^24 - 1) * 1000.
DEPTH_FAR_M = 1000.0
NEAR_M = 0.05

# the 12 edges of a box whose corners are ordered by the sign pattern below
_CORNER_SIGNS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
_EDGES = np.array([(a, b) for a in range(8) for b in range(a + 1, 8)
                   if int(np.abs(_CORNER_SIGNS[a] - _CORNER_SIGNS[b]).sum()) == 2])


def rotation_matrix(pitch, yaw, roll) -> np.ndarray:
    """(..., 3, 3) rotation matrices in CARLA's convention (degrees), equal to the upper-left
    3x3 block of ``carla.Transform(loc, carla.Rotation(pitch, yaw, roll)).get_matrix()``."""
    p, y, r = (np.radians(np.asarray(a, dtype=np.float64)) for a in (pitch, yaw, roll))
    p, y, r = np.broadcast_arrays(p, y, r)
    cp, sp, cy, sy, cr, sr = np.cos(p), np.sin(p), np.cos(y), np.sin(y), np.cos(r), np.sin(r)
    m = np.empty(p.shape + (3, 3))
    m[..., 0, 0] = cp * cy
    m[..., 0, 1] = cy * sp * sr - sy * cr
    m[..., 0, 2] = -cy * sp * cr - sy * sr
    m[..., 1, 0] = sy * cp
    m[..., 1, 1] = sy * sp * sr + cy * cr
    m[..., 1, 2] = -sy * sp * cr + cy * sr
    m[..., 2, 0] = sp
    m[..., 2, 1] = -cp * sr
    m[..., 2, 2] = cp * cr
    return m


def pose_matrix(x, y, z, pitch, yaw, roll) -> np.ndarray:
    """4x4 homogeneous pose (local -> world), CARLA convention."""
    m = np.eye(4)
    m[:3, :3] = rotation_matrix(pitch, yaw, roll)
    m[:3, 3] = (x, y, z)
    return m


def yaw_vectors(yaw_deg) -> np.ndarray:
    """(..., 3) horizontal unit vectors pointing along ``yaw`` (degrees, CARLA convention)."""
    a = np.radians(np.asarray(yaw_deg, dtype=np.float64))
    return np.stack([np.cos(a), np.sin(a), np.zeros_like(a)], axis=-1)


def box_corners(center, extent, rotation) -> np.ndarray:
    """(K, 8, 3) world corners of K boxes: centre (K,3), half-extent (K,3), rotation (K,3) as
    (pitch, yaw, roll) degrees."""
    c = np.asarray(center, dtype=np.float64).reshape(-1, 3)
    e = np.asarray(extent, dtype=np.float64).reshape(-1, 3)
    rot = np.asarray(rotation, dtype=np.float64).reshape(-1, 3)
    R = rotation_matrix(rot[:, 0], rot[:, 1], rot[:, 2])  # (K,3,3)
    local = _CORNER_SIGNS[None, :, :] * e[:, None, :]  # (K,8,3)
    return c[:, None, :] + np.einsum("kij,knj->kni", R, local)


def sign_face_corners(x, y, z, yaw, width, height) -> np.ndarray:
    """(S, 4, 3) corners of flat sign faces: centre (x, y, z), face pointing along ``yaw``,
    ``width`` x ``height`` metres (a zero-thickness box, for signs without a level box)."""
    x, y, z, yaw, w, h = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (x, y, z, yaw, width, height))
    right = yaw_vectors(yaw + 90.0)  # along the face
    up = np.array([0.0, 0.0, 1.0])
    c = np.stack([x, y, z], axis=-1)
    out = np.empty((c.shape[0], 4, 3))
    for i, (sr, su) in enumerate(((-1, -1), (1, -1), (1, 1), (-1, 1))):
        out[:, i] = c + sr * (w / 2)[:, None] * right + su * (h / 2)[:, None] * up
    return out


# -- joining level boxes to landmarks ---------------------------------------------------------

def join_boxes_to_signs(sign_xyz, box_xyz, *, max_dist_m: float = 6.0, z_weight: float = 0.25) -> np.ndarray:
    """Match each sign (S,3) to at most one level box (K,3) by nearest distance.

    One-to-one assignment minimising the total distance (Hungarian), on the horizontal
    distance plus ``z_weight`` times the vertical one (a landmark's pose is at road level
    while the box centre is up on its post). Pairs further than ``max_dist_m`` are rejected.
    Returns (S,) int64: the box index for each sign, or -1.
    """
    s = np.asarray(sign_xyz, dtype=np.float64).reshape(-1, 3)
    b = np.asarray(box_xyz, dtype=np.float64).reshape(-1, 3)
    out = np.full(s.shape[0], -1, dtype=np.int64)
    if s.shape[0] == 0 or b.shape[0] == 0:
        return out
    d = s[:, None, :] - b[None, :, :]
    cost = np.hypot(d[..., 0], d[..., 1]) + z_weight * np.abs(d[..., 2])
    big = 1e6
    masked = np.where(cost <= max_dist_m, cost, big)
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(masked)
    ok = masked[rows, cols] < big
    out[rows[ok]] = cols[ok]
    return out


# -- cameras ----------------------------------------------------------------------------------

def world_to_camera(cam_to_world: np.ndarray) -> np.ndarray:
    return np.linalg.inv(np.asarray(cam_to_world, dtype=np.float64))


def camera_points(points_world, w2c: np.ndarray) -> np.ndarray:
    """(..., 3) world points -> camera frame (x forward, y right, z up)."""
    p = np.asarray(points_world, dtype=np.float64)
    return p @ w2c[:3, :3].T + w2c[:3, 3]


def project_camera_points(pc: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(..., 3) camera-frame points with x > 0 -> (..., 2) pixel coordinates (u right, v down)."""
    x = pc[..., 0]
    u = K[0, 0] * pc[..., 1] / x + K[0, 2]
    v = -K[1, 1] * pc[..., 2] / x + K[1, 2]
    return np.stack([u, v], axis=-1)


def project_points(points_world, cam_to_world: np.ndarray, K: np.ndarray):
    """World points -> (pixels (..., 2), depth along the optical axis (...)) ; depth <= 0 is behind."""
    pc = camera_points(points_world, world_to_camera(cam_to_world))
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = project_camera_points(pc, K)
    return uv, pc[..., 0]


def _clip_near(pc_corners: np.ndarray, edges: np.ndarray, near: float) -> np.ndarray:
    """Points of a convex solid in front of the near plane: corners with x >= near plus the
    intersections of edges that cross it. (N, 3) for one solid."""
    keep = pc_corners[pc_corners[:, 0] >= near]
    a, b = pc_corners[edges[:, 0]], pc_corners[edges[:, 1]]
    cross = (a[:, 0] - near) * (b[:, 0] - near) < 0
    if np.any(cross):
        a, b = a[cross], b[cross]
        t = (near - a[:, 0]) / (b[:, 0] - a[:, 0])
        keep = np.concatenate([keep, a + t[:, None] * (b - a)], axis=0)
    return keep


_QUAD_EDGES = np.array([(0, 1), (1, 2), (2, 3), (3, 0)])


def boxes_2d(corners_world, cam_to_world: np.ndarray, K: np.ndarray, width: int, height: int, *,
             near: float = NEAR_M):
    """Pixel boxes of solids given by their world corners (K, 8, 3) (boxes) or (K, 4, 3) (faces).

    Near-plane clipping is exact for convex solids (edges crossing the plane are cut there).
    Returns (boxes (K,4) float [x0, y0, x1, y1] clipped to the image, valid (K,) bool: some
    part is in front of the camera and inside the image, depth (K,2) min/max along the axis).
    """
    corners = np.asarray(corners_world, dtype=np.float64)
    n = corners.shape[0]
    edges = _EDGES if corners.shape[1] == 8 else _QUAD_EDGES
    w2c = world_to_camera(cam_to_world)
    boxes = np.zeros((n, 4))
    valid = np.zeros(n, dtype=bool)
    depth = np.full((n, 2), np.nan)
    for k in range(n):
        pc = camera_points(corners[k], w2c)
        pts = _clip_near(pc, edges, near)
        if pts.shape[0] == 0:
            continue
        uv = project_camera_points(pts, K)
        x0, y0 = uv.min(axis=0)
        x1, y1 = uv.max(axis=0)
        x0, x1 = np.clip([x0, x1], 0.0, float(width))
        y0, y1 = np.clip([y0, y1], 0.0, float(height))
        boxes[k] = (x0, y0, x1, y1)
        valid[k] = (x1 - x0) > 0 and (y1 - y0) > 0
        depth[k] = (pts[:, 0].min(), pts[:, 0].max())
    return boxes, valid, depth


def facing_mask(face_yaw_deg, sign_xyz, cam_xyz, cam_forward, *, min_cos: float = 0.0) -> np.ndarray:
    """Signs whose face is turned towards the camera and that lie in front of it.

    A face points along ``face_yaw``; it faces the camera when its normal opposes the
    camera's forward vector (``n . f < -min_cos``) and the camera is on the face's side
    (``n . (cam - sign) > 0``); the sign must also be ahead (``f . (sign - cam) > 0``).
    """
    n = yaw_vectors(face_yaw_deg).reshape(-1, 3)
    s = np.asarray(sign_xyz, dtype=np.float64).reshape(-1, 3)
    c = np.asarray(cam_xyz, dtype=np.float64).reshape(3)
    f = np.asarray(cam_forward, dtype=np.float64).reshape(3)
    f = f / (np.linalg.norm(f) or 1.0)
    to_cam = c[None, :] - s
    return ((n @ f) < -min_cos) & (np.einsum("ij,ij->i", n, to_cam) > 0) & ((s - c[None, :]) @ f > 0)


# -- occlusion --------------------------------------------------------------------------------

def decode_depth_bgra(bgra: np.ndarray) -> np.ndarray:
    """CARLA depth camera image (H, W, 4) uint8 BGRA -> (H, W) float32 metres."""
    a = np.asarray(bgra)
    b = a[..., 0].astype(np.float64)
    g = a[..., 1].astype(np.float64)
    r = a[..., 2].astype(np.float64)
    return ((r + g * 256.0 + b * 65536.0) / (256.0 ** 3 - 1.0) * DEPTH_FAR_M).astype(np.float32)


def encode_depth_bgra(depth_m: np.ndarray) -> np.ndarray:
    """Inverse of :func:`decode_depth_bgra` (used by the stand-in server), alpha 255."""
    d = np.clip(np.asarray(depth_m, dtype=np.float64) / DEPTH_FAR_M, 0.0, 1.0)
    v = np.round(d * (256.0 ** 3 - 1.0)).astype(np.int64)
    out = np.empty(d.shape + (4,), dtype=np.uint8)
    out[..., 2] = v & 255
    out[..., 1] = (v >> 8) & 255
    out[..., 0] = (v >> 16) & 255
    out[..., 3] = 255
    return out


def visible_share_depth(depth_img: np.ndarray, box, near_depth_m: float, *, tol_m: float = 0.5) -> float:
    """Share of the box's pixels where the depth camera sees nothing nearer than the sign.

    ``depth_img`` is (H, W) metres along the optical axis, ``box`` [x0, y0, x1, y1] pixels,
    ``near_depth_m`` the sign's nearest depth. A pixel counts as occluded when the depth there
    is below ``near_depth_m - tol_m``.
    """
    h, w = depth_img.shape[:2]
    x0, y0 = int(np.floor(max(0, box[0]))), int(np.floor(max(0, box[1])))
    x1, y1 = int(np.ceil(min(w, box[2]))), int(np.ceil(min(h, box[3])))
    if x1 <= x0 or y1 <= y0:
        return 0.0
    patch = depth_img[y0:y1, x0:x1]
    return float(np.mean(patch >= near_depth_m - tol_m))


def visible_region_depth(depth_img: np.ndarray, box, near_depth_m: float, *, tol_m: float = 0.5):
    """(share, visible_box, pixels): like :func:`visible_share_depth`, plus the pixel bounds
    [x0, y0, x1, y1] (x1/y1 exclusive) of the unoccluded pixels (None when none) and their count."""
    h, w = depth_img.shape[:2]
    x0, y0 = int(np.floor(max(0, box[0]))), int(np.floor(max(0, box[1])))
    x1, y1 = int(np.ceil(min(w, box[2]))), int(np.ceil(min(h, box[3])))
    if x1 <= x0 or y1 <= y0:
        return 0.0, None, 0
    mask = depth_img[y0:y1, x0:x1] >= near_depth_m - tol_m
    n = int(mask.sum())
    if n == 0:
        return 0.0, None, 0
    ys, xs = np.nonzero(mask)
    vbox = [x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1]
    return n / mask.size, vbox, n


def visible_share_semantic(labels: np.ndarray, box, sign_label: int) -> float:
    """Share of the box's pixels a semantic camera labels as a traffic sign (red channel tag)."""
    h, w = labels.shape[:2]
    x0, y0 = int(np.floor(max(0, box[0]))), int(np.floor(max(0, box[1])))
    x1, y1 = int(np.ceil(min(w, box[2]))), int(np.ceil(min(h, box[3])))
    if x1 <= x0 or y1 <= y0:
        return 0.0
    return float(np.mean(labels[y0:y1, x0:x1] == sign_label))


@dataclass(frozen=True)
class SignGeometry:
    """Per-sign solids for labelling: corners (S, 8, 3) from the joined level box, or the flat
    face from the landmark where no box joined (``from_box`` False)."""

    corners: np.ndarray  # (S, 8, 3)
    from_box: np.ndarray  # (S,) bool


def sign_geometry(signs, box_index: np.ndarray, box_center, box_extent, box_rotation) -> SignGeometry:
    """Solids of every sign of a SignTable: its joined level box, else its landmark face."""
    n = len(signs)
    face = sign_face_corners(signs.x, signs.y, signs.z, signs.yaw, signs.width, signs.height)  # (S,4,3)
    corners = np.concatenate([face, face], axis=1)  # degenerate 8-corner solid
    from_box = np.asarray(box_index) >= 0
    if np.any(from_box):
        bc = box_corners(np.asarray(box_center)[box_index[from_box]], np.asarray(box_extent)[box_index[from_box]],
                         np.asarray(box_rotation)[box_index[from_box]])
        corners[from_box] = bc
    return SignGeometry(corners=corners.reshape(n, 8, 3), from_box=from_box)


def frame_labels(signs, geometry: SignGeometry, cam_to_world: np.ndarray, K: np.ndarray, width: int, height: int,
                 *, depth_img: np.ndarray | None = None, textures: dict | None = None,
                 max_distance_m: float = 120.0, min_visible: float = 0.0) -> list[dict]:
    """Labels (the :class:`~carla_mr.world.base.CameraFrame` contract, plus ``visible_box`` and
    ``pixels`` as the embedded renderer gives them) for signs in view.

    Signs are kept when they are within ``max_distance_m``, face the camera (forward-vector
    test), project inside the image, and (with a depth image) have a visible share above
    ``min_visible``. ``textures`` maps sign id -> SignTexture (source/ref).
    """
    if len(signs) == 0:
        return []
    cam = np.asarray(cam_to_world, dtype=np.float64)
    cam_xyz = cam[:3, 3]
    forward = cam[:3, 0]
    centre = geometry.corners.mean(axis=1)
    dist = np.linalg.norm(centre - cam_xyz[None, :], axis=1)
    cand = (dist <= max_distance_m) & facing_mask(signs.yaw, centre, cam_xyz, forward)
    idx = np.nonzero(cand)[0]
    if idx.size == 0:
        return []
    boxes, valid, depth = boxes_2d(geometry.corners[idx], cam, K, width, height)
    out: list[dict] = []
    for j, i in enumerate(idx):
        if not valid[j]:
            continue
        box = [float(v) for v in boxes[j]]
        if depth_img is None:
            vis, vbox, pixels = 1.0, box, int(round((box[2] - box[0]) * (box[3] - box[1])))
        else:
            vis, vbox, pixels = visible_region_depth(depth_img, box, float(depth[j, 0]))
            if vis <= min_visible:
                continue
        tex = (textures or {}).get(str(signs.ids[i]))
        val = float(signs.value[i])
        label_class = getattr(tex, "label_class", None)
        if label_class:  # a generated face: the class the validator read on it, no other value
            tail = str(label_class).rsplit("_", 1)[-1]
            val = float(tail) if tail.isdigit() else float("nan")
        out.append({
            "id": str(signs.ids[i]), "kind": str(signs.kind[i]), "value": None if np.isnan(val) else val,
            "box": box, "visible": float(vis), "distance": float(dist[i]),
            "source": getattr(tex, "source", "original"), "ref": getattr(tex, "ref", None),
            "visible_box": vbox, "pixels": int(pixels), **({"class": label_class} if label_class else {}),
        })
    return out

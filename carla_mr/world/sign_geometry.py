"""Where a sign's face sits in the world, how big it is, and what its original face looks like.

Units: metres and degrees in CARLA's left-handed world frame (x east, y south, z up, yaw
clockwise seen from above). A sign's ``yaw`` is the direction its face points to: a camera
at ``centre + t * normal`` (t > 0) sees the face, a camera behind it sees the metal back.

Sizes and mounting heights by kind follow common European practice (Vienna-convention signs
on a post, face centre about 2 m above the road; traffic-light heads higher). A SignTable
value that is missing, non-positive or not finite is replaced by the kind's default; a face
centre lower than :data:`MIN_FACE_HEIGHT_M` above the ground is placed at the kind's
standard height (OpenDRIVE files disagree on what ``zOffset`` is measured from, and a face
at road level is never meant).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: kind -> (face width m, face height m, face-centre height above ground m, shape)
KIND_GEOMETRY: dict[str, tuple[float, float, float, str]] = {
    "stop": (0.75, 0.75, 2.0, "octagon"),
    "yield": (0.9, 0.8, 2.0, "triangle_down"),
    "speed_limit": (0.6, 0.6, 2.0, "circle"),
    "no_entry": (0.6, 0.6, 2.0, "circle"),
    "priority_road": (0.6, 0.6, 2.0, "diamond"),
    "parking": (0.6, 0.6, 2.0, "square"),
    "warning": (0.9, 0.8, 2.0, "triangle_up"),
    "mandatory_arrow": (0.6, 0.6, 2.0, "circle"),
    "traffic_light": (0.5, 1.15, 2.9, "rect"),
}
DEFAULT_GEOMETRY = (0.6, 0.6, 2.0, "square")
MIN_FACE_HEIGHT_M = 1.0
POST_WIDTH_M = 0.08
#: The face sits this far in front of the post (metres), so the post never pokes through.
POST_OFFSET_M = 0.04


def kind_geometry(kind: str) -> tuple[float, float, float, str]:
    return KIND_GEOMETRY.get(str(kind), DEFAULT_GEOMETRY)


def class_name(kind: str, value: float | None) -> str:
    """The label class of a sign: ``kind`` plus the integer value where one applies
    (``speed_limit_30``); the same names the perception evaluation compares."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return str(kind)
    return f"{kind}_{int(round(float(value)))}"


@dataclass(frozen=True)
class SignGeometry:
    """Per-sign world geometry as arrays (S = number of signs).

    ``corners`` are the face's TL, TR, BR, BL corners as seen from the front (S, 4, 3);
    ``normal`` the unit face normal (S, 3); ``right`` the unit vector along the face's
    texture u axis (S, 3); ``post_base`` / ``post_top`` the post's ends (S, 3).
    """

    ids: np.ndarray  # (S,) str
    kind: np.ndarray  # (S,) str
    value: np.ndarray  # (S,) float64, NaN when none
    center: np.ndarray  # (S, 3)
    normal: np.ndarray  # (S, 3)
    right: np.ndarray  # (S, 3)
    width: np.ndarray  # (S,)
    height: np.ndarray  # (S,)
    corners: np.ndarray  # (S, 4, 3)
    post_base: np.ndarray  # (S, 3)
    post_top: np.ndarray  # (S, 3)
    shape: np.ndarray  # (S,) str

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def _pick(v: float, default: float) -> float:
    return float(v) if (v is not None and math.isfinite(float(v)) and float(v) > 0) else default


def build_sign_geometry(signs, ground_z: np.ndarray | None = None) -> SignGeometry:
    """Place every sign of a :class:`~carla_mr.world.base.SignTable`.

    ``ground_z`` (S,) is the road height under each sign (metres; default 0). The SignTable's
    ``z`` is read as the face centre's world height; see the module notes for the defaults.
    """
    n = len(signs)
    gz = np.zeros(n) if ground_z is None else np.asarray(ground_z, dtype=np.float64).reshape(n)
    center = np.zeros((n, 3))
    normal = np.zeros((n, 3))
    right = np.zeros((n, 3))
    width = np.zeros(n)
    height = np.zeros(n)
    shapes = np.empty(n, dtype=object)
    for i in range(n):
        dw, dh, dz, shape = kind_geometry(signs.kind[i])
        width[i] = _pick(signs.width[i], dw)
        height[i] = _pick(signs.height[i], dh)
        zc = float(signs.z[i]) if math.isfinite(float(signs.z[i])) else -math.inf
        if zc - gz[i] < MIN_FACE_HEIGHT_M:
            zc = gz[i] + max(dz, height[i] / 2.0 + 0.3)
        psi = math.radians(float(signs.yaw[i]))
        normal[i] = (math.cos(psi), math.sin(psi), 0.0)
        # The viewer looks along -normal; its right in CARLA's frame is (sin psi, -cos psi).
        right[i] = (math.sin(psi), -math.cos(psi), 0.0)
        center[i] = (float(signs.x[i]), float(signs.y[i]), zc)
        shapes[i] = shape
    up = np.array([0.0, 0.0, 1.0])
    hw = (width / 2.0)[:, None]
    hh = (height / 2.0)[:, None]
    tl = center - right * hw + up * hh
    tr = center + right * hw + up * hh
    br = center + right * hw - up * hh
    bl = center - right * hw - up * hh
    corners = np.stack([tl, tr, br, bl], axis=1)
    post_top = center - normal * POST_OFFSET_M
    post_base = post_top.copy()
    post_base[:, 2] = gz
    value = np.asarray(signs.value, dtype=np.float64).reshape(n) if n else np.zeros(0)
    return SignGeometry(np.asarray(signs.ids).astype(str), np.asarray(signs.kind).astype(str), value, center,
                        normal, right, width, height, corners, post_base, post_top, shapes)


# -- original faces -----------------------------------------------------------------------

def _shape_mask(shape: str, size: int) -> np.ndarray:
    import cv2

    m = np.zeros((size, size), np.uint8)
    c = (size - 1) / 2.0
    r = size / 2.0 - 1
    if shape == "circle":
        cv2.circle(m, (int(round(c)), int(round(c))), int(r), 255, -1, lineType=cv2.LINE_8)
    elif shape == "octagon":
        ang = np.deg2rad(22.5 + 45.0 * np.arange(8))
        pts = np.stack([c + r / math.cos(math.radians(22.5)) * np.cos(ang) * 0.999,
                        c + r / math.cos(math.radians(22.5)) * np.sin(ang) * 0.999], 1)
        pts = np.clip(pts, 0, size - 1)
        cv2.fillConvexPoly(m, np.round(pts).astype(np.int32), 255)
    elif shape == "triangle_down":
        cv2.fillConvexPoly(m, np.array([[0, 0], [size - 1, 0], [size // 2, size - 1]], np.int32), 255)
    elif shape == "triangle_up":
        cv2.fillConvexPoly(m, np.array([[size // 2, 0], [size - 1, size - 1], [0, size - 1]], np.int32), 255)
    elif shape == "diamond":
        h = size // 2
        cv2.fillConvexPoly(m, np.array([[h, 0], [size - 1, h], [h, size - 1], [0, h]], np.int32), 255)
    else:
        m[:] = 255
    return m


def procedural_face(kind: str, value: float | None = None, size: int = 128, variant: int = 0) -> np.ndarray:
    """A drawn sign face, RGBA uint8 (size, size, 4); alpha 0 outside the sign's shape.

    ``variant`` > 0 draws a visibly different variant (hue-rotated, striped, tinted; used as
    the clearly labelled fallback "generated" texture when no generated image is available).
    """
    import cv2

    kind = str(kind)
    shape = kind_geometry(kind)[3]
    img = np.full((size, size, 3), 255, np.uint8)
    red, white, black, blue, yellow = (200, 20, 30), (250, 250, 250), (15, 15, 15), (20, 60, 170), (250, 200, 0)
    s = size
    t = max(2, s // 12)
    font = cv2.FONT_HERSHEY_SIMPLEX
    if kind == "stop":
        img[:] = red
        cv2.putText(img, "STOP", (int(s * 0.1), int(s * 0.6)), font, s / 150.0, white, max(1, s // 40), cv2.LINE_AA)
    elif kind in ("yield", "warning"):
        img[:] = red
        inner = _shape_mask(shape, s - 4 * t)
        pad = 2 * t
        sub = img[pad:pad + inner.shape[0], pad:pad + inner.shape[1]]
        sub[inner > 0] = white
        if kind == "warning":
            cv2.putText(img, "!", (int(s * 0.44), int(s * 0.85)), font, s / 90.0, black, max(1, s // 25), cv2.LINE_AA)
    elif kind == "speed_limit":
        img[:] = red
        cv2.circle(img, (s // 2, s // 2), int(s / 2 - 1.6 * t), white, -1, cv2.LINE_AA)
        txt = "" if value is None or not math.isfinite(float(value)) else str(int(round(float(value))))
        scale = s / (60.0 if len(txt) <= 2 else 80.0)
        (tw, th), _ = cv2.getTextSize(txt, font, scale, max(1, s // 30))
        cv2.putText(img, txt, ((s - tw) // 2, (s + th) // 2), font, scale, black, max(1, s // 30), cv2.LINE_AA)
    elif kind == "no_entry":
        img[:] = red
        cv2.rectangle(img, (int(s * 0.18), int(s * 0.42)), (int(s * 0.82), int(s * 0.58)), white, -1)
    elif kind == "priority_road":
        img[:] = white
        q = s // 4
        cv2.fillConvexPoly(img, np.array([[s // 2, q], [s - q, s // 2], [s // 2, s - q], [q, s // 2]], np.int32), yellow)
    elif kind == "parking":
        img[:] = blue
        cv2.putText(img, "P", (int(s * 0.25), int(s * 0.8)), font, s / 45.0, white, max(1, s // 15), cv2.LINE_AA)
    elif kind == "mandatory_arrow":
        img[:] = blue
        cv2.arrowedLine(img, (s // 2, int(s * 0.8)), (s // 2, int(s * 0.2)), white, max(1, s // 10), tipLength=0.4)
    elif kind == "traffic_light":
        img[:] = (35, 35, 35)
        for k, col in enumerate(((220, 30, 20), (230, 170, 0), (30, 200, 60))):
            cv2.circle(img, (s // 2, int(s * (0.2 + 0.3 * k))), int(s * 0.12), col, -1, cv2.LINE_AA)
    else:
        img[:] = (230, 230, 230)
        cv2.putText(img, kind[:3].upper(), (int(s * 0.1), int(s * 0.6)), font, s / 160.0, black, 2, cv2.LINE_AA)
    if variant:
        # A visibly different "generated" look: hue rotation, a diagonal texture, a tint.
        rng = np.random.default_rng(variant * 104729 + sum(map(ord, kind)))
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.int32)
        hsv[:, :, 0] = (hsv[:, :, 0] + int(rng.integers(15, 75))) % 180
        hsv[:, :, 1] = np.clip(hsv[:, :, 1] + 60, 0, 255)
        img = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
        yy, xx = np.mgrid[0:s, 0:s]
        period = int(rng.integers(6, 16))
        stripes = (((xx + yy) // period) % 2 == 0)[:, :, None]
        tint = rng.integers(0, 256, 3)
        img = np.where(stripes, (0.75 * img + 0.25 * tint), img).astype(np.uint8)
    alpha = _shape_mask(shape, s)
    return np.dstack([img, alpha])


def original_face(kind: str, value: float | None = None, size: int = 128) -> np.ndarray:
    """The original face: the genai stage's ``sign_face`` when installed, else :func:`procedural_face`.

    Always RGBA uint8; the alpha channel is forced to the kind's shape so labels describe
    the same silhouette whatever the artwork.
    """
    face = None
    try:  # the TSDreamBooth stage's reference artwork, if this build has it
        from carla_mr.genai.signs import sign_face  # type: ignore
    except Exception:  # noqa: BLE001 - optional module; any import problem means "not available"
        sign_face = None
    if sign_face is not None:
        try:
            v = None if value is None or not math.isfinite(float(value)) else value
            face = np.asarray(sign_face(kind, v, size=size))
        except Exception:  # noqa: BLE001 - unknown kind for that generator: draw our own
            face = None
    if face is None or face.dtype != np.uint8 or face.ndim != 3 or face.shape[2] not in (3, 4):
        return procedural_face(kind, value, size)
    return fit_to_shape(face, kind, size)


def fit_to_shape(image: np.ndarray, kind: str, size: int = 128) -> np.ndarray:
    """Resize an RGB(A) uint8 image to ``size`` and give it an alpha channel.

    RGBA input keeps its own alpha (thresholded to 0/255); RGB input (a generated picture)
    takes the kind's shape as its silhouette.
    """
    import cv2

    img = np.asarray(image)
    if img.shape[0] != size or img.shape[1] != size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    if img.shape[2] == 4:
        alpha = np.where(img[:, :, 3] >= 128, 255, 0).astype(np.uint8)
        if not alpha.any():
            alpha = _shape_mask(kind_geometry(kind)[3], size)
        return np.dstack([img[:, :, :3], alpha])
    return np.dstack([img, _shape_mask(kind_geometry(kind)[3], size)])

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

from carla_mr.world.opendrive import SIGN_KINDS
from carla_mr.world.sign_art import face, fit_to_shape  # noqa: F401 - re-exported for the renderer

#: kind -> (face width m, face height m, face-centre height above the road m): the one table of
#: default face sizes (the map's landmarks and the embedded renderer both use it). Static signs
#: take their sizes from the sign-injection table (:data:`carla_mr.world.opendrive.SIGN_KINDS`).
KIND_GEOMETRY: dict[str, tuple[float, float, float]] = {
    **{k: (v["width"], v["height"], v["z"]) for k, v in SIGN_KINDS.items()},
    "traffic_light": (0.5, 1.2, 3.0),
}
#: Any other kind (``"other"`` included).
DEFAULT_GEOMETRY = (0.6, 0.6, 2.0)
MIN_FACE_HEIGHT_M = 1.0
POST_WIDTH_M = 0.08
#: The face sits this far in front of the post (metres), so the post never pokes through.
POST_OFFSET_M = 0.04


def kind_geometry(kind: str) -> tuple[float, float, float]:
    """(width m, height m, face-centre height above the road m) of a sign kind's face."""
    return KIND_GEOMETRY.get(str(kind), DEFAULT_GEOMETRY)


def class_name(kind: str, value: float | None) -> str:
    """The label class of a sign: ``kind`` plus the integer value where one applies
    (``speed_limit_30``); the same names the perception evaluation compares."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return str(kind)
    return f"{kind}_{int(round(float(value)))}"


def class_matches(read: str, label_class: str) -> bool:
    """Whether a class read on a sign (a classifier's answer, a validator's reading) matches a
    label or prompted class: exactly (``speed_limit_30``), or a value class of a class without
    value (``speed_limit_50`` for the generic ``speed_limit``, whose value nobody could read)."""
    return read == label_class or (read.startswith(label_class + "_") and read[len(label_class) + 1:].isdigit())


def sign_label(sign_id: str, kind: str, value: float, texture: "SignTexture") -> dict:
    """The identity fields of a sign's label: ``id``, ``kind``, ``class``, ``value``, ``source``
    and ``ref``. A generated face (``texture.label_class`` set) carries the class the validator
    read on it (docs/genai.md), never the in-world sign's own value; otherwise the class is the
    sign's kind and value (:func:`class_name`). ``value``: km/h or NaN. One function for every
    renderer."""
    value_or_none = float(value) if math.isfinite(float(value)) else None
    label_class = texture.label_class
    if label_class:
        tail = str(label_class).rsplit("_", 1)[-1]
        value_or_none = float(tail) if tail.isdigit() else None
    return {"id": str(sign_id), "kind": str(kind), "class": label_class or class_name(str(kind), value_or_none),
            "value": value_or_none, "source": texture.source, "ref": texture.ref}


def visible_box(ids: np.ndarray, box, instance: int) -> list[int]:
    """[x0, y0, x1, y1] (pixels, exclusive ends) of the pixels of ``instance`` in the id image
    ``ids`` (H, W) inside ``box``; the instance must have at least one pixel there."""
    x0, y0, x1, y1 = (int(v) for v in box)
    sub = ids[y0:y1, x0:x1] == instance
    rows = np.nonzero(sub.any(axis=1))[0]
    cols = np.nonzero(sub.any(axis=0))[0]
    return [x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1]


@dataclass(frozen=True)
class SignGeometry:
    """Per-sign world geometry as arrays (S = number of signs).

    ``corners`` are the face's TL, TR, BR, BL corners as seen from the front (S, 4, 3);
    ``normal`` the unit face normal (S, 3); ``right`` the unit vector along the face's
    texture u axis (S, 3); ``post_base`` / ``post_top`` the post's ends (S, 3). Positions in
    metres, CARLA's world frame.
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
    for i in range(n):
        dw, dh, dz = kind_geometry(signs.kind[i])
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
                        normal, right, width, height, corners, post_base, post_top)


# -- faces (drawn by carla_mr.world.sign_art) ----------------------------------------------

def original_face(kind: str, value: float | None = None, size: int = 128) -> np.ndarray:
    """A sign's original face: RGBA uint8 (size, size, 4), alpha 255 inside its silhouette."""
    return face(kind, value, size)


def procedural_face(kind: str, value: float | None = None, size: int = 128, variant: int = 0) -> np.ndarray:
    """The original face (``variant`` 0) or a visibly different seeded variant of it (> 0), the
    clearly labelled stand-in for a generated image when no generated image is available."""
    return face(kind, value, size, variant)

"""Sign artwork: the one painter and the one colour palette of every sign face in the project.

The renderer (:mod:`carla_mr.world.sign_geometry`: original faces, procedural "generated"
variants, silhouettes of generated images) and the generator's clean references
(:mod:`carla_mr.genai`) draw with :func:`face` / :func:`sign_face` from here. The words
(:data:`~carla_mr.config.vocab.SIGN_CLASSES`) live in :mod:`carla_mr.config.vocab`.

Faces follow the Vienna-convention families used in Europe (and BelgiumTS/GTSRB):

- ``stop``: red octagon, white rim, white ``STOP``
- ``yield``: inverted triangle, white inside, red rim
- ``speed_limit``: white disc, red ring, black km/h digits (``value``, default 50)
- ``no_entry``: red disc with a white horizontal bar
- ``priority_road``: yellow diamond with a white rim and a thin dark edge
- ``parking``: blue rounded square with a white ``P``
- ``warning``: triangle point up, red rim, white inside, black ``!``
- ``mandatory_arrow``: blue disc with a white arrow; ``value`` is the arrow direction in
  degrees clockwise from "straight up" (default 0)
- ``traffic_light`` (world only): a dark housing with red, amber and green lamps
- any other kind (world only): a light grey plate with the kind's first letters

Everything is drawn at 4x the requested size and area-averaged down, so edges are
anti-aliased and the result is deterministic (no randomness except the seeded ``variant``).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import cv2
import numpy as np

from carla_mr.config.vocab import SIGN_CLASSES
from carla_mr.errors import InputError

#: The palette (RGB), close to the RAL colours of European signs.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (200, 16, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "blue": (0, 76, 160),
    "yellow": (250, 195, 0),
    "dark": (40, 40, 40),
    "plate": (230, 230, 230),
    "lamp_red": (220, 30, 20),
    "lamp_amber": (230, 170, 0),
    "lamp_green": (30, 200, 60),
}
RED, WHITE, BLACK, BLUE, YELLOW, DARK = (PALETTE[k] for k in ("red", "white", "black", "blue", "yellow", "dark"))

_SS = 4  # supersampling factor


def sign_class_id(kind: str) -> int:
    """Class id of a sign kind (index in :data:`SIGN_CLASSES`); InputError if unknown."""
    try:
        return SIGN_CLASSES.index(kind)
    except ValueError:
        raise InputError(f"unknown sign class {kind!r}; known: {', '.join(SIGN_CLASSES)}",
                         field="sign class") from None


def sign_face(kind: str, value: float | None = None, size: int = 128,
              background: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """The clean face of one sign class as an (size, size, 4) uint8 RGBA image.

    ``kind``: one of :data:`SIGN_CLASSES` (InputError otherwise). ``value``: km/h for
    ``speed_limit`` (digits drawn, default 50), arrow direction in degrees clockwise from up
    for ``mandatory_arrow`` (default 0), ignored otherwise. ``size``: output side in pixels
    (>= 8). ``background``: None keeps alpha 0 outside the sign's shape; an RGB triple fills
    the outside with that colour; an (size, size, 3) uint8 image is composited under the
    sign. With a background the alpha channel is 255 everywhere.
    """
    kind = str(kind)
    sign_class_id(kind)
    out = _paint(kind, value, size)
    if background is not None:
        out = composite(out, background)
    return out


def face(kind: str, value: float | None = None, size: int = 128, variant: int = 0) -> np.ndarray:
    """The face of any world sign kind (the classes, ``traffic_light`` or another kind) as
    (size, size, 4) uint8 RGBA with a binary alpha (255 inside the sign's silhouette, else 0).

    ``value`` NaN or None means "none". ``variant`` > 0 draws a visibly different, seeded
    variant (hue-rotated, saturated, striped and tinted): the clearly labelled stand-in for
    a generated image when none is available.
    """
    kind = str(kind)
    v = None if value is None or not math.isfinite(float(value)) else float(value)
    if kind == "speed_limit" and v is not None and not 0 <= v <= 999:
        v = None  # not a drawable km/h value: the default digits
    out = _paint(kind, v, size)
    out[..., 3] = np.where(out[..., 3] >= 128, 255, 0).astype(np.uint8)
    if variant:
        out[..., :3] = _variant(out[..., :3], kind, int(variant))
    return out


@functools.lru_cache(maxsize=64)
def _silhouette(kind: str, size: int) -> np.ndarray:
    m = face(kind, None, size)[..., 3].copy()
    m.flags.writeable = False
    return m


def silhouette(kind: str, size: int = 128) -> np.ndarray:
    """(size, size) uint8 mask, 255 inside the kind's outline (its face's alpha)."""
    return _silhouette(str(kind), int(size))


def fit_to_shape(image: np.ndarray, kind: str, size: int = 128) -> np.ndarray:
    """Resize an RGB(A) uint8 image to ``size`` and give it a binary alpha channel.

    RGBA input keeps its own alpha (thresholded at 128; an all-transparent image takes the
    kind's silhouette); RGB input (a generated picture) takes the kind's silhouette.
    """
    img = np.asarray(image)
    if img.shape[0] != size or img.shape[1] != size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    if img.shape[2] == 4:
        alpha = np.where(img[:, :, 3] >= 128, 255, 0).astype(np.uint8)
        if not alpha.any():
            alpha = silhouette(kind, size)
        return np.dstack([img[:, :, :3], alpha])
    return np.dstack([img, silhouette(kind, size)])


def composite(face: np.ndarray, background: Sequence[int] | np.ndarray) -> np.ndarray:
    """Alpha-composite an RGBA ``face`` over ``background`` (RGB triple or HxWx3 uint8).

    Returns HxWx4 uint8 with alpha 255.
    """
    h, w = face.shape[:2]
    bg = np.asarray(background)
    if bg.ndim == 1:
        if bg.shape[0] != 3:
            raise InputError("background colour must be an RGB triple", field="background")
        bg = np.broadcast_to(bg.astype(np.float32), (h, w, 3))
    elif bg.shape[:2] != (h, w) or bg.ndim != 3 or bg.shape[2] < 3:
        raise InputError(f"background image must be ({h}, {w}, 3), got {bg.shape}", field="background")
    a = face[..., 3:4].astype(np.float32) / 255.0
    rgb = face[..., :3].astype(np.float32) * a + bg[..., :3].astype(np.float32) * (1.0 - a)
    out = np.empty((h, w, 4), np.uint8)
    out[..., :3] = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    out[..., 3] = 255
    return out


def _paint(kind: str, value: float | None, size: int) -> np.ndarray:
    """Draw ``kind`` supersampled and area-average it down to (size, size, 4) RGBA."""
    size = int(size)
    if size < 8:
        raise InputError(f"size must be >= 8 pixels, got {size}", field="size")
    n = size * _SS
    rgb = np.zeros((n, n, 3), np.uint8)
    mask = np.zeros((n, n), np.uint8)
    draw = _DRAW.get(kind)
    if draw is None:
        _draw_plate(rgb, mask, n, kind)
    else:
        draw(rgb, mask, n, value)
    rgb_s = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    a_s = cv2.resize(mask, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    # rgb was drawn as black outside the mask: un-premultiply so edge colours stay true.
    prem = cv2.resize((rgb.astype(np.float32) * (mask[..., None] / 255.0)), (size, size),
                      interpolation=cv2.INTER_AREA)
    with np.errstate(invalid="ignore", divide="ignore"):
        colour = np.where(a_s[..., None] > 0, prem * 255.0 / np.maximum(a_s[..., None], 1e-6), rgb_s)
    colour = np.clip(colour, 0, 255)
    out = np.zeros((size, size, 4), np.uint8)
    out[..., :3] = np.round(colour).astype(np.uint8)
    out[..., 3] = np.round(a_s).astype(np.uint8)
    return out


def _variant(rgb: np.ndarray, kind: str, variant: int) -> np.ndarray:
    """A visibly different "generated" look: hue rotation, more saturation, diagonal stripes
    of a tint (seeded by ``variant`` and the kind)."""
    rng = np.random.default_rng(variant * 104729 + sum(map(ord, kind)))
    s = rgb.shape[0]
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV).astype(np.int32)
    hsv[:, :, 0] = (hsv[:, :, 0] + int(rng.integers(15, 75))) % 180
    hsv[:, :, 1] = np.clip(hsv[:, :, 1] + 60, 0, 255)
    img = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    yy, xx = np.mgrid[0:s, 0:s]
    period = int(rng.integers(6, 16))
    stripes = (((xx + yy) // period) % 2 == 0)[:, :, None]
    tint = rng.integers(0, 256, 3)
    return np.where(stripes, (0.75 * img + 0.25 * tint), img).astype(np.uint8)


# --------------------------------------------------------------------------- drawing helpers


def _poly(n: int, k: int, radius: float, rot_deg: float) -> np.ndarray:
    c = n / 2.0
    ang = np.deg2rad(rot_deg + np.arange(k) * 360.0 / k)
    pts = np.stack([c + radius * np.sin(ang), c - radius * np.cos(ang)], axis=1)
    return np.round(pts * 16).astype(np.int32)  # 4 fractional bits


def _fill_poly(img: np.ndarray, pts: np.ndarray, colour) -> None:
    cv2.fillPoly(img, [pts], colour, lineType=cv2.LINE_8, shift=4)


def _fill_circle(img: np.ndarray, n: int, radius: float, colour) -> None:
    c = int(round(n / 2.0 * 16))
    cv2.circle(img, (c, c), int(round(radius * 16)), colour, thickness=-1, lineType=cv2.LINE_8, shift=4)


def _text(img: np.ndarray, text: str, n: int, height_frac: float, colour, *, thickness_frac: float = 0.12,
          max_width_frac: float = 0.8, centre_y: float = 0.5) -> None:
    """Draw ``text`` centred, with its cap height ``height_frac * n`` (or narrower to fit)."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    target_h = height_frac * n
    (w1, h1), _ = cv2.getTextSize(text, font, 1.0, 1)
    scale = target_h / max(h1, 1)
    if w1 * scale > max_width_frac * n:
        scale = max_width_frac * n / w1
    thick = max(1, int(round(thickness_frac * scale * h1)))
    (tw, th), _ = cv2.getTextSize(text, font, scale, thick)
    org = (int(round(n / 2 - tw / 2)), int(round(centre_y * n + th / 2)))
    cv2.putText(img, text, org, font, scale, colour, thick, lineType=cv2.LINE_8)


def _draw_stop(rgb, mask, n, value):
    r = 0.49 * n
    outer = _poly(n, 8, r, 22.5)
    _fill_poly(mask, outer, 255)
    _fill_poly(rgb, outer, WHITE)
    _fill_poly(rgb, _poly(n, 8, r * 0.90, 22.5), RED)
    _text(rgb, "STOP", n, 0.22, WHITE, max_width_frac=0.70, thickness_frac=0.16)


def _draw_yield(rgb, mask, n, value):
    # Inverted equilateral triangle centred so it fills the square's width.
    r = 0.56 * n
    outer = _poly(n, 3, r, 180.0) + np.array([0, int(-0.06 * n * 16)], np.int32)
    _fill_poly(mask, outer, 255)
    _fill_poly(rgb, outer, RED)
    inner = _poly(n, 3, r * 0.62, 180.0) + np.array([0, int(-0.06 * n * 16)], np.int32)
    _fill_poly(rgb, inner, WHITE)


def _draw_speed_limit(rgb, mask, n, value):
    v = 50 if value is None or (isinstance(value, float) and math.isnan(value)) else int(round(float(value)))
    if v < 0 or v > 999:
        raise InputError(f"speed limit value must be 0..999 km/h, got {value}", field="value")
    r = 0.49 * n
    _fill_circle(mask, n, r, 255)
    _fill_circle(rgb, n, r, RED)
    _fill_circle(rgb, n, r * 0.76, WHITE)
    _text(rgb, str(v), n, 0.34, BLACK, max_width_frac=0.62, thickness_frac=0.15)


def _draw_no_entry(rgb, mask, n, value):
    r = 0.49 * n
    _fill_circle(mask, n, r, 255)
    _fill_circle(rgb, n, r, RED)
    h = 0.10 * n
    cv2.rectangle(rgb, (int(0.2 * n), int(n / 2 - h)), (int(0.8 * n), int(n / 2 + h)), WHITE, thickness=-1)


def _draw_priority_road(rgb, mask, n, value):
    r = 0.50 * n
    outer = _poly(n, 4, r, 0.0)
    _fill_poly(mask, outer, 255)
    _fill_poly(rgb, outer, DARK)
    _fill_poly(rgb, _poly(n, 4, r * 0.95, 0.0), WHITE)
    _fill_poly(rgb, _poly(n, 4, r * 0.68, 0.0), YELLOW)


def _draw_parking(rgb, mask, n, value):
    m = int(0.04 * n)
    rad = int(0.10 * n)
    for img, col in ((mask, 255), (rgb, WHITE)):
        _rounded_rect(img, m, m, n - m, n - m, rad, col)
    m2 = int(0.085 * n)
    _rounded_rect(rgb, m2, m2, n - m2, n - m2, int(rad * 0.7), BLUE)
    _text(rgb, "P", n, 0.56, WHITE, thickness_frac=0.20)


def _rounded_rect(img, x0, y0, x1, y1, r, colour):
    cv2.rectangle(img, (x0 + r, y0), (x1 - r, y1), colour, -1)
    cv2.rectangle(img, (x0, y0 + r), (x1, y1 - r), colour, -1)
    for cx, cy in ((x0 + r, y0 + r), (x1 - r, y0 + r), (x0 + r, y1 - r), (x1 - r, y1 - r)):
        cv2.circle(img, (cx, cy), r, colour, -1)


def _draw_warning(rgb, mask, n, value):
    r = 0.56 * n
    shift = np.array([0, int(0.07 * n * 16)], np.int32)
    outer = _poly(n, 3, r, 0.0) + shift
    _fill_poly(mask, outer, 255)
    _fill_poly(rgb, outer, RED)
    _fill_poly(rgb, _poly(n, 3, r * 0.64, 0.0) + shift, WHITE)
    # the exclamation mark
    cx = n / 2
    w = 0.045 * n
    cv2.rectangle(rgb, (int(cx - w), int(0.40 * n)), (int(cx + w), int(0.68 * n)), BLACK, -1)
    cv2.circle(rgb, (int(cx), int(0.76 * n)), int(w * 1.15), BLACK, -1)


def _draw_mandatory_arrow(rgb, mask, n, value):
    r = 0.49 * n
    _fill_circle(mask, n, r, 255)
    _fill_circle(rgb, n, r, WHITE)
    _fill_circle(rgb, n, r * 0.93, BLUE)
    ang = 0.0 if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
    # an upward arrow in unit coordinates (x right, y down, centre 0), then rotated
    pts = np.array([[0.0, -0.62], [0.36, -0.14], [0.12, -0.14], [0.12, 0.62], [-0.12, 0.62], [-0.12, -0.14],
                    [-0.36, -0.14]])
    t = math.radians(ang)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    pts = pts @ rot.T * (0.62 * n) + n / 2
    _fill_poly(rgb, np.round(pts * 16).astype(np.int32), WHITE)


def _draw_traffic_light(rgb, mask, n, value):
    """The housing fills the face (the texture is stretched over the head's width x height)."""
    mask[:] = 255
    rgb[:] = DARK
    for k, name in enumerate(("lamp_red", "lamp_amber", "lamp_green")):
        cv2.circle(rgb, (n // 2, int(n * (0.2 + 0.3 * k))), int(n * 0.12), PALETTE[name], -1)


def _draw_plate(rgb, mask, n, kind: str):
    """Any other kind: a light grey plate with the kind's first three letters."""
    m = int(0.04 * n)
    cv2.rectangle(mask, (m, m), (n - m, n - m), 255, -1)
    cv2.rectangle(rgb, (m, m), (n - m, n - m), PALETTE["plate"], -1)
    _text(rgb, (kind[:3] or "?").upper(), n, 0.22, BLACK, max_width_frac=0.8)


_DRAW = {
    "stop": _draw_stop,
    "yield": _draw_yield,
    "speed_limit": _draw_speed_limit,
    "no_entry": _draw_no_entry,
    "priority_road": _draw_priority_road,
    "parking": _draw_parking,
    "warning": _draw_warning,
    "mandatory_arrow": _draw_mandatory_arrow,
    "traffic_light": _draw_traffic_light,
}

"""Independent sign artwork for the validator: a second painter, never the generator's templates.

The generator learned the faces of :mod:`carla_mr.world.sign_art` (one font, fixed ring and
stroke widths, one palette). The validator must not learn the same pictures, or G would only
measure how well the generator copies them. This painter draws every class with its own,
randomised style: other Hershey fonts (never ``FONT_HERSHEY_SIMPLEX``, the template font)
and TrueType faces (:data:`TTF_TRAIN`: the DejaVu and Computer Modern families matplotlib
ships), condensed or widened, random stroke widths, ring widths, rim widths, colour shades,
digit spacing, arrow shapes and shape proportions. :data:`TTF_HELD_OUT` (the STIX family) is
never drawn for training: ``make_set(..., fonts="held_out")`` draws every text with it, the
test of reading a type family the validator never saw. It also draws out-of-vocabulary signs
(the ``reject`` class) and the photometric/geometric effects of a road camera: distance (down-
and up-sampling), viewing angle (perspective), lighting, blur, noise, partial occlusion and
street backgrounds.

Class names: the sign vocabulary with speed limits split by value
(``speed_limit_30`` ...; :data:`~carla_mr.config.vocab.SPEED_VALUES`) plus ``reject``.
Everything is deterministic for a numpy Generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from carla_mr.config.vocab import SIGN_CLASSES, SPEED_VALUES

REJECT = "reject"
#: Hershey fonts of this painter (the template painter uses FONT_HERSHEY_SIMPLEX only).
FONTS = (cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_PLAIN)
#: TrueType faces drawn for training (file names in matplotlib's bundled ``fonts/ttf``): sans,
#: bold, monospaced, serif, Computer Modern roman and sans.
TTF_TRAIN = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf",
             "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "cmr10.ttf", "cmss10.ttf")
#: A type family never drawn for training: the held-out-font test (``make_set(fonts="held_out")``).
TTF_HELD_OUT = ("STIXGeneral.ttf", "STIXGeneralBol.ttf")
#: Share of training texts drawn with a TrueType face (the rest with a Hershey font).
TTF_SHARE = 0.5


@dataclass(frozen=True)
class FontSet:
    """The faces a painter draws texts with: TrueType file names, the share of texts drawn with
    one of them, and Hershey fonts for the rest."""

    ttf: tuple[str, ...]
    ttf_share: float
    hershey: tuple[int, ...]


#: Training (and the held-apart split): Hershey and TrueType faces, half each.
TRAIN_FONTS = FontSet(TTF_TRAIN, TTF_SHARE, FONTS)
#: The held-out-font test: every text in the STIX family (its Hershey fonts are never drawn).
HELD_OUT_FONTS = FontSet(TTF_HELD_OUT, 1.0, FONTS)
FACE = 128  # drawing side of one face, pixels
_FONT_CACHE: dict[str, object] = {}


def validator_classes() -> list[str]:
    """The validator's class names: vocabulary kinds, speed limits by value, then ``reject``."""
    out: list[str] = []
    for k in SIGN_CLASSES:
        out += [f"speed_limit_{v}" for v in SPEED_VALUES] if k == "speed_limit" else [k]
    return out + [REJECT]


def kind_of(class_name: str) -> str:
    """``speed_limit_30`` -> ``speed_limit``; other names unchanged."""
    return "speed_limit" if class_name.startswith("speed_limit") else class_name


def _shade(rng, rgb, spread=18):
    return tuple(int(np.clip(c + rng.normal(0, spread), 0, 255)) for c in rgb)


def _red(rng):
    return _shade(rng, (int(rng.uniform(170, 230)), int(rng.uniform(10, 45)), int(rng.uniform(20, 50))), 8)


def _blue(rng):
    return _shade(rng, (int(rng.uniform(0, 40)), int(rng.uniform(60, 110)), int(rng.uniform(150, 210))), 8)


def _white(rng):
    return _shade(rng, (238, 238, 232), 8)


def _black(rng):
    return _shade(rng, (25, 25, 30), 8)


def _poly(c, r, k, rot):
    a = np.deg2rad(rot + np.arange(k) * 360.0 / k)
    return np.stack([c[0] + r * np.sin(a), c[1] - r * np.cos(a)], 1).astype(np.int32)


def _font(name: str):
    """A TrueType face of matplotlib's bundled fonts at 100 px (cached); a clear error if missing."""
    if name not in _FONT_CACHE:
        from pathlib import Path

        import matplotlib
        from PIL import ImageFont

        path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name
        if not path.is_file():
            raise FileNotFoundError(f"font {name} is not in matplotlib's bundled fonts ({path.parent}); "
                                    "reinstall matplotlib (pip install --force-reinstall matplotlib)")
        _FONT_CACHE[name] = ImageFont.truetype(str(path), 100)
    return _FONT_CACHE[name]


def _ttf_text(img, text, rng, name, height, colour, centre, max_w):
    """``text`` in TrueType face ``name``: random stroke, squeezed or widened (x0.65-1.1, sign
    digits are often condensed), ``height`` (fraction of the face) tall, centred at ``centre``."""
    from PIL import Image, ImageDraw

    font = _font(name)
    stroke = int(rng.integers(0, 6))
    x0, y0, x1, y1 = font.getbbox(text, stroke_width=stroke)
    w, h = max(1, x1 - x0), max(1, y1 - y0)
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).text((-x0, -y0), text, font=font, fill=255, stroke_width=stroke, stroke_fill=255)
    th = height * FACE * rng.uniform(0.9, 1.05)
    tw = w * th / h * rng.uniform(0.65, 1.1)
    if tw > max_w * FACE:
        th, tw = th * max_w * FACE / tw, max_w * FACE
    tw, th = max(2, int(round(tw))), max(2, int(round(th)))
    a = cv2.resize(np.asarray(mask), (tw, th), interpolation=cv2.INTER_AREA).astype(np.float32)[..., None] / 255.0
    ox = int(round(centre[0] * FACE - tw / 2 + rng.normal(0, 1.5)))
    oy = int(round(centre[1] * FACE - th / 2 + rng.normal(0, 1.5)))
    # the part of the text box inside the face
    ax0, ay0 = max(0, -ox), max(0, -oy)
    bx0, by0 = max(0, ox), max(0, oy)
    bx1, by1 = min(FACE, ox + tw), min(FACE, oy + th)
    if bx1 <= bx0 or by1 <= by0:
        return
    a = a[ay0:ay0 + by1 - by0, ax0:ax0 + bx1 - bx0]
    region = img[by0:by1, bx0:bx1].astype(np.float32)
    img[by0:by1, bx0:bx1] = np.round(region * (1 - a) + np.asarray(colour, np.float32) * a).astype(np.uint8)


def _text(img, text, rng, height, colour, centre=(0.5, 0.5), max_w=0.8, *, fonts: FontSet):
    """``text`` in a random non-template font of ``fonts``, random stroke, centred at ``centre``
    (fractions): a TrueType face with probability ``fonts.ttf_share``, else a Hershey font."""
    if rng.random() < fonts.ttf_share:
        _ttf_text(img, text, rng, fonts.ttf[int(rng.integers(len(fonts.ttf)))], height, colour, centre, max_w)
        return
    font = fonts.hershey[int(rng.integers(len(fonts.hershey)))]
    (w1, h1), _ = cv2.getTextSize(text, font, 1.0, 1)
    scale = height * FACE / max(h1, 1)
    scale = min(scale, max_w * FACE / max(w1, 1)) * rng.uniform(0.9, 1.05)
    thick = max(2, int(round(scale * h1 * rng.uniform(0.09, 0.2))))
    (tw, th), _ = cv2.getTextSize(text, font, scale, thick)
    org = (int(centre[0] * FACE - tw / 2 + rng.normal(0, 1.5)), int(centre[1] * FACE + th / 2 + rng.normal(0, 1.5)))
    cv2.putText(img, text, org, font, scale, colour, thick, lineType=cv2.LINE_AA)


def _disc(rgb, mask, rng, ring_col, inner_col, ring=(0.1, 0.22)):
    c = (FACE // 2, FACE // 2)
    r = int(FACE * rng.uniform(0.44, 0.49))
    cv2.circle(mask, c, r, 255, -1)
    cv2.circle(rgb, c, r, ring_col, -1)
    cv2.circle(rgb, c, int(r * (1 - rng.uniform(*ring))), inner_col, -1)
    return c, r


def _paint_speed(rgb, mask, rng, value, fonts):
    _disc(rgb, mask, rng, _red(rng), _white(rng))
    _text(rgb, str(value), rng, rng.uniform(0.28, 0.38), _black(rng), max_w=rng.uniform(0.5, 0.66), fonts=fonts)


def _paint_stop(rgb, mask, rng, value, fonts):
    c = (FACE / 2, FACE / 2)
    r = FACE * rng.uniform(0.45, 0.5)
    cv2.fillPoly(mask, [_poly(c, r, 8, 22.5)], 255)
    cv2.fillPoly(rgb, [_poly(c, r, 8, 22.5)], _white(rng))
    cv2.fillPoly(rgb, [_poly(c, r * rng.uniform(0.82, 0.95), 8, 22.5)], _red(rng))
    _text(rgb, "STOP", rng, rng.uniform(0.18, 0.26), _white(rng), max_w=rng.uniform(0.6, 0.75), fonts=fonts)


def _triangle(rgb, mask, rng, rot, inner):
    c = (FACE / 2, FACE / 2 + (-1 if rot else 1) * FACE * 0.07)
    r = FACE * rng.uniform(0.52, 0.58)
    cv2.fillPoly(mask, [_poly(c, r, 3, rot)], 255)
    cv2.fillPoly(rgb, [_poly(c, r, 3, rot)], _red(rng))
    cv2.fillPoly(rgb, [_poly(c, r * rng.uniform(inner[0], inner[1]), 3, rot)], _white(rng))


def _paint_yield(rgb, mask, rng, value, fonts):
    _triangle(rgb, mask, rng, 180.0, (0.5, 0.7))


def _paint_warning(rgb, mask, rng, value, fonts):
    _triangle(rgb, mask, rng, 0.0, (0.55, 0.72))
    _text(rgb, "!", rng, rng.uniform(0.24, 0.32), _black(rng), centre=(0.5, 0.6), max_w=0.3, fonts=fonts)


def _paint_no_entry(rgb, mask, rng, value, fonts):
    c, r = _disc(rgb, mask, rng, _red(rng), _red(rng))
    h = int(FACE * rng.uniform(0.07, 0.12))
    w = int(r * rng.uniform(0.6, 0.8))
    cv2.rectangle(rgb, (c[0] - w, c[1] - h), (c[0] + w, c[1] + h), _white(rng), -1)


def _paint_priority(rgb, mask, rng, value, fonts):
    c = (FACE / 2, FACE / 2)
    r = FACE * rng.uniform(0.47, 0.5)
    cv2.fillPoly(mask, [_poly(c, r, 4, 0)], 255)
    cv2.fillPoly(rgb, [_poly(c, r, 4, 0)], _white(rng))
    cv2.polylines(rgb, [_poly(c, r * 0.98, 4, 0)], True, _black(rng), int(rng.integers(1, 4)))
    yellow = _shade(rng, (240, int(rng.uniform(170, 215)), 10), 8)
    cv2.fillPoly(rgb, [_poly(c, r * rng.uniform(0.58, 0.75), 4, 0)], yellow)


def _paint_parking(rgb, mask, rng, value, fonts):
    m = int(FACE * rng.uniform(0.02, 0.07))
    cv2.rectangle(mask, (m, m), (FACE - m, FACE - m), 255, -1)
    cv2.rectangle(rgb, (m, m), (FACE - m, FACE - m), _white(rng), -1)
    m2 = m + int(FACE * rng.uniform(0.02, 0.06))
    cv2.rectangle(rgb, (m2, m2), (FACE - m2, FACE - m2), _blue(rng), -1)
    _text(rgb, "P", rng, rng.uniform(0.45, 0.62), _white(rng), fonts=fonts)


def _paint_arrow(rgb, mask, rng, value, fonts):
    c, r = _disc(rgb, mask, rng, _white(rng), _blue(rng), ring=(0.03, 0.09))
    ang = float(rng.choice([0.0, 90.0, 270.0, 45.0, 315.0, 0.0]))
    t = math.radians(ang)
    d = (math.sin(t), -math.cos(t))
    L = r * rng.uniform(0.55, 0.7)
    p0 = (int(c[0] - d[0] * L), int(c[1] - d[1] * L))
    p1 = (int(c[0] + d[0] * L), int(c[1] + d[1] * L))
    cv2.arrowedLine(rgb, p0, p1, _white(rng), int(FACE * rng.uniform(0.07, 0.12)), cv2.LINE_AA,
                    tipLength=rng.uniform(0.35, 0.5))


_PAINT = {"stop": _paint_stop, "yield": _paint_yield, "no_entry": _paint_no_entry, "priority_road": _paint_priority,
          "parking": _paint_parking, "warning": _paint_warning, "mandatory_arrow": _paint_arrow}


def _paint_oov(rgb, mask, rng, fonts):
    """A sign outside the vocabulary: shapes and colours of real signs the classes do not cover."""
    c = (FACE // 2, FACE // 2)
    r = int(FACE * rng.uniform(0.44, 0.49))
    kind = int(rng.integers(9))
    if kind == 0:  # prohibition: red ring, empty white or a black bar/car, no digits
        _disc(rgb, mask, rng, _red(rng), _white(rng))
        if rng.random() < 0.6:
            cv2.rectangle(rgb, (c[0] - r // 2, c[1] - r // 5), (c[0] + r // 2, c[1] + r // 5), _black(rng), -1)
    elif kind == 1:  # end of restriction: white disc, black diagonal stripes
        _disc(rgb, mask, rng, _white(rng), _white(rng))
        for k in range(-2, 3):
            o = int(k * FACE * 0.07)
            cv2.line(rgb, (c[0] - r + o, c[1] + r + o), (c[0] + r + o, c[1] - r + o), _black(rng), 2)
    elif kind == 2:  # direction / information panel
        col = [(0, 120, 60), (20, 60, 170), (120, 70, 20), (240, 240, 240)][int(rng.integers(4))]
        y0, y1 = int(FACE * rng.uniform(0.15, 0.3)), int(FACE * rng.uniform(0.7, 0.85))
        cv2.rectangle(mask, (2, y0), (FACE - 2, y1), 255, -1)
        cv2.rectangle(rgb, (2, y0), (FACE - 2, y1), _shade(rng, col, 10), -1)
        word = "".join(chr(int(rng.integers(65, 91))) for _ in range(int(rng.integers(3, 7))))
        _text(rgb, word, rng, 0.18, _white(rng) if col[0] < 200 else _black(rng), max_w=0.85, fonts=fonts)
    elif kind == 3:  # blue information square with a letter other than P
        cv2.rectangle(mask, (4, 4), (FACE - 4, FACE - 4), 255, -1)
        cv2.rectangle(rgb, (4, 4), (FACE - 4, FACE - 4), _blue(rng), -1)
        _text(rgb, str(rng.choice(list("HiAT"))), rng, 0.5, _white(rng), fonts=fonts)
    elif kind == 4:  # a disc of a colour no class uses, or a blue disc without arrow
        _disc(rgb, mask, rng, _shade(rng, tuple(int(v) for v in rng.uniform(0, 255, 3)), 0),
              _blue(rng) if rng.random() < 0.5 else _shade(rng, (90, 160, 60), 20))
    elif kind == 5:  # triangle warning with an empty inside
        _triangle(rgb, mask, rng, 0.0, (0.55, 0.72))
    elif kind == 6:  # octagon or diamond of the wrong colours
        cv2.fillPoly(mask, [_poly(c, r, int(rng.choice([4, 6, 8])), 22.5)], 255)
        cv2.fillPoly(rgb, [_poly(c, r, int(rng.choice([4, 6, 8])), 22.5)], _blue(rng))
    elif kind == 7:  # a plain plate (advertising, house number)
        cv2.rectangle(mask, (10, 30), (FACE - 10, FACE - 30), 255, -1)
        cv2.rectangle(rgb, (10, 30), (FACE - 10, FACE - 30), _shade(rng, (200, 200, 200), 40), -1)
        _text(rgb, str(int(rng.integers(1, 99))), rng, 0.25, _black(rng), fonts=fonts)
    else:  # a red ring with a two-digit number and a bar through it (end of limit)
        _disc(rgb, mask, rng, _shade(rng, (120, 120, 120), 20), _white(rng))
        _text(rgb, str(int(rng.choice(SPEED_VALUES))), rng, 0.32, _shade(rng, (110, 110, 110), 15), max_w=0.6,
              fonts=fonts)
        cv2.line(rgb, (c[0] - r, c[1] + r), (c[0] + r, c[1] - r), _black(rng), 6)


def paint_face(class_name: str, rng: np.random.Generator, fonts: "FontSet | None" = None) -> np.ndarray:
    """(FACE, FACE, 4) uint8 RGBA face of a validator class (``reject``: an out-of-vocabulary sign),
    its texts drawn with ``fonts`` (default :data:`TRAIN_FONTS`)."""
    fonts = fonts or TRAIN_FONTS
    rgb = np.zeros((FACE, FACE, 3), np.uint8)
    mask = np.zeros((FACE, FACE), np.uint8)
    if class_name == REJECT:
        _paint_oov(rgb, mask, rng, fonts)
    elif class_name.startswith("speed_limit_"):
        _paint_speed(rgb, mask, rng, int(class_name.rsplit("_", 1)[1]), fonts)
    else:
        _PAINT[class_name](rgb, mask, rng, None, fonts)
    return np.dstack([rgb, mask])


def street_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A street-like backdrop: sky/foliage/facade/road gradients with blobs and poles."""
    top = rng.uniform(0, 255, 3) if rng.random() < 0.3 else _shade(rng, (140, 170, 210), 40)
    bottom = _shade(rng, (110, 110, 105), 45) if rng.random() < 0.7 else rng.uniform(0, 255, 3)
    t = np.linspace(0, 1, size)[:, None, None] ** rng.uniform(0.5, 2.0)
    img = (np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t) * np.ones((1, size, 1))
    img = img.astype(np.float32)
    for _ in range(int(rng.integers(0, 7))):
        col = tuple(float(v) for v in rng.uniform(0, 255, 3))
        x, y = (int(v) for v in rng.integers(0, size, 2))
        s = int(rng.integers(max(2, size // 10), max(3, size // 2)))
        if rng.random() < 0.4:
            cv2.rectangle(img, (x, y), (x + s, y + int(s * rng.uniform(0.3, 2))), col, -1)
        elif rng.random() < 0.6:
            cv2.circle(img, (x, y), s // 2, col, -1)
        else:
            cv2.line(img, (x, 0), (x + int(rng.integers(-3, 4)), size), col, int(rng.integers(1, 4)))
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.5))
    return np.clip(img + rng.normal(0, rng.uniform(1, 8), img.shape), 0, 255).astype(np.uint8)


def _view(face: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Warp a face as a road camera sees it: scale, offset, roll, yaw/pitch foreshortening."""
    s = size * rng.uniform(0.62, 0.95)
    cx, cy = size / 2 + rng.normal(0, 0.05, 2) * size
    yaw, pitch = np.radians(rng.uniform(-45, 45)), np.radians(rng.uniform(-18, 18))
    roll = np.radians(rng.normal(0, 5))
    sq = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    x, y = sq[:, 0] * math.cos(yaw), sq[:, 1] * math.cos(pitch)
    z = sq[:, 0] * math.sin(yaw) + sq[:, 1] * math.sin(pitch)
    x, y = x * 3 / (3 + z), y * 3 / (3 + z)
    xr = x * math.cos(roll) - y * math.sin(roll)
    yr = x * math.sin(roll) + y * math.cos(roll)
    dst = np.stack([cx + xr * s, cy + yr * s], 1).astype(np.float32)
    src = np.array([[0, 0], [FACE, 0], [FACE, FACE], [0, FACE]], np.float32)
    return cv2.warpPerspective(face, cv2.getPerspectiveTransform(src, dst), (size, size), flags=cv2.INTER_AREA)


def camera_effects(img: np.ndarray, rng: np.random.Generator, out: int) -> np.ndarray:
    """Distance (downsample to 10..40 px and back), light, colour cast, blur, noise, JPEG-like blockiness."""
    f = img.astype(np.float32)
    f = f * rng.uniform(0.5, 1.3) + rng.uniform(-30, 30) + rng.normal(0, 8, 3)
    f = np.clip(f, 0, 255).astype(np.uint8)
    far = int(rng.integers(16, 48))
    f = cv2.resize(f, (far, far), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.4:
        f = cv2.GaussianBlur(f, (0, 0), rng.uniform(0.3, 1.0))
    f = cv2.resize(f, (out, out), interpolation=cv2.INTER_LINEAR if rng.random() < 0.5 else cv2.INTER_CUBIC)
    g = f.astype(np.float32) + rng.normal(0, rng.uniform(0, 9), f.shape)
    return np.clip(g, 0, 255).astype(np.uint8)


def sign_crop(class_name: str, rng: np.random.Generator, size: int = 32, fonts: FontSet | None = None) -> np.ndarray:
    """One (size, size, 3) uint8 crop of a validator class as a road camera would capture it
    (texts in ``fonts``, default :data:`TRAIN_FONTS`)."""
    big = 96
    face = paint_face(class_name, rng, fonts)
    warped = _view(face, rng, big).astype(np.float32)
    a = warped[..., 3:4] / 255.0
    bg = street_background(rng, big).astype(np.float32)
    img = warped[..., :3] * a + bg * (1 - a)
    if rng.random() < 0.25:  # partial occlusion by a branch / pole / another car
        col = tuple(float(v) for v in rng.uniform(0, 200, 3))
        x0 = int(rng.integers(0, big))
        w = int(rng.integers(big // 12, big // 6))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x0, 0), (x0 + w, big), col, -1)
        else:
            cv2.rectangle(img, (0, x0), (big, x0 + w), col, -1)
    return camera_effects(np.clip(img, 0, 255).astype(np.uint8), rng, size)


def junk_image(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A ``reject`` input that is no sign at all: uniform colour, noise, background, stripes."""
    k = int(rng.integers(5))
    if k == 0:
        img = np.broadcast_to(rng.uniform(0, 255, 3), (size, size, 3)) + rng.normal(0, rng.uniform(0, 4), (size, size, 3))
    elif k == 1:
        img = rng.uniform(0, 255, (size, size, 3))
    elif k == 2:
        img = rng.normal(rng.uniform(60, 200), rng.uniform(10, 80), (size, size, 3))
        img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), rng.uniform(0.3, 3))
    elif k == 3:
        img = street_background(rng, size)
    else:
        yy, xx = np.mgrid[0:size, 0:size]
        img = ((np.sin((xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) * rng.uniform(0.2, 1.5)) > 0)[..., None]
               * rng.uniform(0, 255, 3) + rng.uniform(0, 255, 3) * 0.5)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_set(per_class: int, seed: int, stream: int, size: int = 32,
             fonts: str = "train") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images (N, size, size, 3) uint8, labels (N,), class names): ``per_class`` crops of every
    class; the ``reject`` class gets half out-of-vocabulary signs and half junk images.
    ``stream`` separates splits (train 0, held-apart test 1, theta eval 2, held-out fonts 3).
    ``fonts``: ``"train"`` (:data:`TRAIN_FONTS`) or ``"held_out"`` (:data:`HELD_OUT_FONTS`: every
    text in the STIX family, which training never draws)."""
    if fonts not in ("train", "held_out"):
        raise ValueError(f"fonts must be 'train' or 'held_out', got {fonts!r}")
    face_fonts = TRAIN_FONTS if fonts == "train" else HELD_OUT_FONTS
    names = validator_classes()
    xs, ys = [], []
    for cid, name in enumerate(names):
        rng = np.random.default_rng([int(seed), int(stream), cid])
        for i in range(int(per_class)):
            if name == REJECT and i % 2:
                xs.append(junk_image(rng, size))
            else:
                xs.append(sign_crop(name, rng, size, face_fonts))
            ys.append(cid)
    return np.stack(xs), np.array(ys, np.int64), names

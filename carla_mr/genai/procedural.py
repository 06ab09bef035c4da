"""Procedural sign images: pose, scale, lighting, blur and background variation.

:func:`render_sample` draws one sign (a face from :mod:`carla_mr.genai.signs`) warped by a
random pose into an image of a random (or given) background, and returns the image with the
sign's ROI. :func:`write_dataset` writes a whole data set in the published BelgiumTS/GTSRB
layout (see :mod:`carla_mr.genai.datasets`) with a held-apart test split. Everything is
deterministic for a seed (numpy ``default_rng``; OpenCV runs single-threaded here).
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from carla_mr.errors import InputError
from carla_mr.genai.prompts import COLOURS
from carla_mr.genai.datasets import crop_roi
from carla_mr.genai.signs import SIGN_CLASSES, sign_face

#: The variants drawn for each kind (value passed to sign_face).
VARIANTS: dict[str, tuple] = {
    "speed_limit": (20, 30, 50, 60, 70, 80, 90, 100, 120),
    "mandatory_arrow": (0.0, 90.0, 270.0, 45.0, 315.0),
}

FACE_PX = 96  # resolution of the cached faces (images up to 48 px; larger ones use 2x the side)


def _face_px(size: int) -> int:
    """Face resolution for an output side ``size`` (rendered at 2x): at least FACE_PX, sharp at 128 px."""
    return FACE_PX if size <= 48 else int(2 * size)


@lru_cache(maxsize=128)
def _face(kind: str, value, px: int = FACE_PX) -> np.ndarray:
    return sign_face(kind, value, size=px)


@dataclass(frozen=True)
class Jitter:
    """Ranges of the random pose/appearance (fractions of the image side, degrees, gains)."""

    scale: tuple[float, float] = (0.55, 0.9)  # sign side / image side
    shift: float = 0.08  # centre offset, fraction of the side
    roll_deg: float = 10.0
    yaw_deg: float = 35.0  # out-of-plane turn (foreshortening)
    pitch_deg: float = 15.0
    brightness: tuple[float, float] = (0.6, 1.25)
    contrast: tuple[float, float] = (0.75, 1.15)
    blur_p: float = 0.35
    blur_sigma: tuple[float, float] = (0.3, 1.1)
    noise_std: tuple[float, float] = (0.0, 6.0)


#: Gentle jitter for the base model's training images (clean "sign on a colour" pictures).
BASE_JITTER = Jitter(scale=(0.68, 0.9), shift=0.04, roll_deg=5.0, yaw_deg=15.0, pitch_deg=8.0,
                     brightness=(0.85, 1.1), contrast=(0.9, 1.05), blur_p=0.15, blur_sigma=(0.3, 0.6),
                     noise_std=(0.0, 2.0))
#: Strong jitter for classifier data (the BelgiumTS/GTSRB-like sets).
DATA_JITTER = Jitter()


def _homography(rng: np.random.Generator, size: int, j: Jitter, face_px: int = FACE_PX) -> np.ndarray:
    """Face pixel coords (``face_px`` square) -> output pixel coords."""
    s = rng.uniform(*j.scale) * size
    cx = size / 2 + rng.uniform(-j.shift, j.shift) * size
    cy = size / 2 + rng.uniform(-j.shift, j.shift) * size
    roll = math.radians(rng.uniform(-j.roll_deg, j.roll_deg))
    yaw = math.radians(rng.uniform(-j.yaw_deg, j.yaw_deg))
    pitch = math.radians(rng.uniform(-j.pitch_deg, j.pitch_deg))
    # corners of a unit square in 3D, rotated, projected with a camera at distance 3
    sq = np.array([[-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0]], np.float64)
    cy_, sy_ = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    ry = np.array([[cy_, 0, sy_], [0, 1, 0], [-sy_, 0, cy_]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    pts = sq @ (rz @ rx @ ry).T
    d = 3.0
    proj = pts[:, :2] * (d / (d + pts[:, 2:3]))
    dst = proj * s + np.array([cx, cy])
    src = np.array([[0, 0], [face_px, 0], [face_px, face_px], [0, face_px]], np.float64)
    return cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32))


def background_image(rng: np.random.Generator, size: int, colour: tuple[int, int, int] | None = None,
                     *, clutter: bool = False) -> np.ndarray:
    """A (size, size, 3) uint8 background: a jittered solid colour with a soft gradient and
    mild texture; ``colour=None`` picks a random one; ``clutter`` adds random shapes/stripes
    (the look of a street scene behind a cropped sign)."""
    if colour is None:
        base = rng.uniform(0, 255, 3)
    else:
        base = np.asarray(colour, np.float64) + rng.normal(0, 8, 3)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    ang = rng.uniform(0, 2 * math.pi)
    grad = (np.cos(ang) * (xx - 0.5) + np.sin(ang) * (yy - 0.5))[..., None] * rng.uniform(0, 30 if colour else 80)
    img = base[None, None, :] + grad
    if clutter:
        img = img.astype(np.float32)
        for _ in range(int(rng.integers(1, 6))):
            c = tuple(float(v) for v in rng.uniform(0, 255, 3))
            x0, y0 = rng.integers(-size // 2, size, 2)
            w, h = rng.integers(size // 8, size, 2)
            if rng.random() < 0.5:
                cv2.rectangle(img, (int(x0), int(y0)), (int(x0 + w), int(y0 + h)), c, -1)
            else:
                cv2.circle(img, (int(x0 + w // 2), int(y0 + h // 2)), int(max(w, h) // 2), c, -1)
        img = cv2.GaussianBlur(img, (0, 0), sigmaX=rng.uniform(0.5, 2.0))
    noise = rng.normal(0, 3.0, (size, size, 1))
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def render_sample(kind: str, rng: np.random.Generator, *, size: int = 32, value=None,
                  background: np.ndarray | tuple[int, int, int] | str | None = None,
                  jitter: Jitter = DATA_JITTER, clutter: bool = False) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """One sign image: (size, size, 3) uint8 RGB and the ROI (x1, y1, x2, y2), inclusive pixels.

    ``value``: the face variant (random among :data:`VARIANTS` if None). ``background``: an
    image, an RGB colour, a colour name of :data:`~carla_mr.genai.prompts.COLOURS`, or None
    (random colour, with ``clutter`` shapes if asked).
    """
    if kind not in SIGN_CLASSES:
        raise InputError(f"unknown sign class {kind!r}; known: {', '.join(SIGN_CLASSES)}", field="sign class")
    if value is None and kind in VARIANTS:
        vs = VARIANTS[kind]
        value = vs[int(rng.integers(len(vs)))]
    ss = 2  # render at 2x, area-downsample
    big = size * ss
    fpx = _face_px(size)
    face = _face(kind, value, fpx)
    if isinstance(background, str):
        if background not in COLOURS:
            raise InputError(f"unknown colour {background!r}; known: {', '.join(COLOURS)}", field="background")
        background = COLOURS[background]
    if background is None or (isinstance(background, tuple) and len(background) == 3) or \
            (isinstance(background, np.ndarray) and background.ndim == 1):
        bg = background_image(rng, big, None if background is None else tuple(background), clutter=clutter)
    else:
        bg = cv2.resize(np.asarray(background, np.uint8)[..., :3], (big, big), interpolation=cv2.INTER_LINEAR)
    H = _homography(rng, big, jitter, fpx)
    warped = cv2.warpPerspective(face, H, (big, big), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                 borderValue=(0, 0, 0, 0))
    # lighting on the sign (the background keeps its colour, so prompts stay true)
    gain = rng.uniform(*jitter.brightness)
    contrast = rng.uniform(*jitter.contrast)
    srgb = warped[..., :3].astype(np.float32)
    srgb = (srgb - 128.0) * contrast + 128.0
    srgb = srgb * gain
    a = warped[..., 3:4].astype(np.float32) / 255.0
    img = srgb * a + bg.astype(np.float32) * (1 - a)
    img = cv2.resize(np.clip(img, 0, 255), (size, size), interpolation=cv2.INTER_AREA)
    if rng.random() < jitter.blur_p:
        img = cv2.GaussianBlur(img, (0, 0), sigmaX=rng.uniform(*jitter.blur_sigma))
    std = rng.uniform(*jitter.noise_std)
    if std > 0:
        img = img + rng.normal(0, std, img.shape)
    out = np.clip(np.round(img), 0, 255).astype(np.uint8)
    alpha = cv2.resize(warped[..., 3], (size, size), interpolation=cv2.INTER_AREA)
    ys, xs = np.nonzero(alpha > 127)
    if len(xs) == 0:
        roi = (0, 0, size - 1, size - 1)
    else:
        roi = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
    return out, roi


def base_batch(rng: np.random.Generator, n: int, *, size: int = 32, kinds=SIGN_CLASSES, colours=tuple(COLOURS)):
    """n training pairs for the base model: images (n, size, size, 3) uint8, kinds, colours."""
    ks = [kinds[int(i)] for i in rng.integers(len(kinds), size=n)]
    cs = [colours[int(i)] for i in rng.integers(len(colours), size=n)]
    imgs = np.stack([render_sample(k, rng, size=size, background=c, jitter=BASE_JITTER)[0] for k, c in zip(ks, cs)])
    return imgs, ks, cs


def value_batch(rng: np.random.Generator, n: int, *, size: int = 32, kinds=SIGN_CLASSES, colours=tuple(COLOURS),
                speed_share: float = 0.0):
    """Like :func:`base_batch` but every image's variant is drawn here and returned:
    images (n, size, size, 3) uint8, kinds, colours, values (km/h for speed_limit, else None).

    ``speed_share``: probability that an item is a speed-limit sign (0: uniform over ``kinds``).
    """
    ks, cs, vs = _draw_variants(rng, n, kinds, colours, speed_share)
    imgs = np.stack([render_sample(k, rng, size=size, background=c, jitter=BASE_JITTER, value=v)[0]
                     for k, c, v in zip(ks, cs, vs)])
    return imgs, ks, cs, vs


def value_batch_with_decoys(rng: np.random.Generator, n: int, *, size: int = 32, speed_share: float = 0.0,
                            decoy_p: float = 0.0, decoy_rng: np.random.Generator | None = None):
    """:func:`value_batch` (same images for the same ``rng``) plus a *decoy* per image:
    (images, decoys, kinds, colours, values, decoy_values), decoys (n, size, size, 3) uint8.

    With probability ``decoy_p`` (drawn from ``decoy_rng``) a speed-limit item's decoy is the
    very same picture (pose, light, noise, background) with other digits: a random value in
    10..199 km/h other than the item's, returned in ``decoy_values``; every other decoy is the
    image itself (``decoy_values`` None). The super-resolution stage learns from such pairs to
    draw the digits the prompt names rather than those its low-resolution input shows.
    """
    decoy_rng = decoy_rng if decoy_rng is not None else np.random.default_rng(0)
    ks, cs, vs = _draw_variants(rng, n, SIGN_CLASSES, tuple(COLOURS), speed_share)
    imgs, decoys, dvs = [], [], []
    for k, c, v in zip(ks, cs, vs):
        dv = None
        if v is not None and decoy_rng.random() < decoy_p:
            while dv is None or dv == v:
                dv = int(decoy_rng.integers(10, 200))
        state = copy.deepcopy(rng) if dv is not None else None
        img = render_sample(k, rng, size=size, background=c, jitter=BASE_JITTER, value=v)[0]
        imgs.append(img)
        decoys.append(img if dv is None else
                      render_sample(k, state, size=size, background=c, jitter=BASE_JITTER, value=dv)[0])
        dvs.append(dv)
    return np.stack(imgs), np.stack(decoys), ks, cs, vs, dvs


def _draw_variants(rng, n, kinds, colours, speed_share):
    """Kinds, colours and values (km/h for speed_limit, else None) of ``n`` items."""
    ks = []
    for _ in range(int(n)):
        if speed_share > 0 and "speed_limit" in kinds and rng.random() < speed_share:
            ks.append("speed_limit")
        else:
            ks.append(kinds[int(rng.integers(len(kinds)))])
    cs = [colours[int(i)] for i in rng.integers(len(colours), size=n)]
    vs = [VARIANTS["speed_limit"][int(rng.integers(len(VARIANTS["speed_limit"])))] if k == "speed_limit" else None
          for k in ks]
    return ks, cs, vs


def split_stream(kind: str, cid: int, n: int, seed: int, stream: int, size: int):
    """The images of one class of one split: yields (image, roi, side) in order (deterministic)."""
    rng = np.random.default_rng([int(seed), int(stream), int(cid)])
    for _ in range(int(n)):
        s = int(round(size * rng.uniform(0.75, 1.5)))
        img, roi = render_sample(kind, rng, size=s, clutter=bool(rng.random() < 0.6))
        yield img, roi, s


def split_arrays(split: str = "test", *, per_class: int = 100, seed: int = 0, size: int = 48, out_size: int = 32,
                 kinds=SIGN_CLASSES, margin: float = 0.12) -> tuple[np.ndarray, np.ndarray]:
    """The same images :func:`write_dataset` writes for ``split`` ("train"/"test"), in memory,
    ROI-cropped like :meth:`SignDataset.images`: (N, out_size, out_size, 3) uint8 and labels."""
    stream = {"train": 0, "test": 1}.get(split)
    if stream is None:
        raise InputError(f"split must be 'train' or 'test', got {split!r}", field="split")
    imgs, labels = [], []
    for cid, kind in enumerate(kinds):
        for img, roi, _ in split_stream(kind, cid, per_class, seed, stream, size):
            imgs.append(crop_roi(img, roi, out_size, margin))
            labels.append(cid)
    return np.stack(imgs), np.array(labels, np.int64)


def write_dataset(root: str | os.PathLike, *, per_class: int = 300, test_per_class: int = 100, size: int = 48,
                  seed: int = 0, kinds=SIGN_CLASSES, progress=None) -> dict:
    """Write a procedural data set in the BelgiumTS layout under ``root``::

        root/Training/000CC/000CC_NNNNN.ppm + GT-000CC.csv
        root/Testing/000CC/...                 (held apart: a different seed stream)
        root/classes.txt                       (class id -> name)

    Images vary in size around ``size`` (0.75x..1.5x, like real crops), background (random
    colour, gradients, clutter), pose, lighting and blur. Returns a summary dict.
    """
    from carla_mr.genai.datasets import write_gt_csv
    from carla_mr.io import atomic_write_bytes, atomic_write_text

    root = Path(root)
    if per_class < 1 or test_per_class < 1:
        raise InputError("per_class and test_per_class must be >= 1", field="per_class")
    for split, n, stream in (("Training", per_class, 0), ("Testing", test_per_class, 1)):
        for cid, kind in enumerate(kinds):
            d = root / split / f"{cid:05d}"
            d.mkdir(parents=True, exist_ok=True)
            rows = []
            for i, (img, roi, s) in enumerate(split_stream(kind, cid, n, seed, stream, size)):
                name = f"{cid:05d}_{i:05d}.ppm"
                ok, buf = cv2.imencode(".ppm", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
                atomic_write_bytes(d / name, buf.tobytes())
                rows.append((name, s, s, *roi, cid))
                if progress:
                    progress(1)
            write_gt_csv(d / f"GT-{cid:05d}.csv", rows)
    atomic_write_text(root / "classes.txt", "".join(f"{i};{k}\n" for i, k in enumerate(kinds)))
    return {"root": str(root), "classes": list(kinds), "train": per_class * len(kinds),
            "test": test_per_class * len(kinds), "seed": int(seed)}

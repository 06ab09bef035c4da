"""Scores of a generated set: generative score G, diversity, relative accuracy theta, Frechet distance.

- **G** (generative score): the share of generated images the independent open-set validator
  reads as the prompted sign class (value included when the prompt names one), with its 95%
  Wilson interval and the mean validator confidence in the prompted class.
- **diversity**: mean pairwise distance of the validator's normalised embeddings within a
  prompted class (0 = collapse), reported beside G.
- **theta**: the paper's way (a tiny model's error after training on the images over chance,
  its error before) lives in :mod:`carla_mr.genai.theta`;
  the two accuracy-ratio variants below are kept for the ``generate --theta-mode`` options.
- **theta** (relative accuracy), operationally: copy the validator, fine-tune it on the
  generated images only (labels = prompted classes; ``epochs`` epochs, learning rate ``lr``,
  fixed seed), and measure its accuracy on the held-apart real/procedural test split;
  ``theta = clip(acc_after / acc_before, 0, 1)``. 1 means the synthetic images teach the
  classifier nothing wrong (they are as good as real training data); low values mean the
  synthetic data pulls the classifier away from real signs. Computed for the whole set and
  per subset ("background": background colour changed, "context": re-contextualised).
- **theta, "scratch" mode** (train on synthetic, test on real; the default of ``generate``):
  train a fresh validator of the same architecture (width ``width``) on the generated images
  only, and another on as many procedural *training* images of the same classes (the same count
  per class); theta = clip(acc_synthetic / acc_real, 0, 1) on the held-apart test split. This
  does not saturate when the committed validator is already perfect on the test split, which
  makes the fine-tune ratio 1 for any reasonable generator.
- **Frechet distance** on the validator's penultimate features between the generated images
  and real test images: the FID formula with the validator in place of Inception (no download).
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np

from carla_mr.errors import InputError


def read_matches(read: str, kind: str) -> bool:
    """Whether a validator reading matches a prompted class
    (:func:`~carla_mr.world.sign_geometry.class_matches`, the rule the perception scores use too)."""
    from carla_mr.world.sign_geometry import class_matches

    return class_matches(read, kind)


def generative_score(validator, images: np.ndarray, kinds: Sequence[str]) -> dict:
    """G over images with their prompted classes: {"G", "G_low", "G_high" (95% Wilson
    interval), "mean_confidence", "n", "predicted" (what the validator read per image, an open-set
    validator's ``reject`` included), "confidence" (per image, in the prompted class; for a kind
    without value the sum over its value classes), "recognised" (per image bool)}.

    An open-set validator (one with a ``reject`` class) recognises an image when what it reads
    (:meth:`~carla_mr.genai.validator.Validator.read`) matches the prompt (:func:`read_matches`);
    a closed-set one when its argmax is the prompted class."""
    images = np.asarray(images)
    if len(images) != len(kinds):
        raise InputError(f"{len(images)} images but {len(kinds)} prompted classes", field="kinds")
    if len(images) == 0:
        return {"G": float("nan"), "G_low": float("nan"), "G_high": float("nan"), "mean_confidence": float("nan"),
                "n": 0, "predicted": [], "confidence": [], "recognised": []}
    p = validator.probs(images)
    if getattr(validator, "open_set", False):
        idx = p.argmax(1)
        top = p[np.arange(len(idx)), idx]
        pred = [validator.class_names[i] if c >= validator.threshold else "reject" for i, c in zip(idx, top)]
        conf = np.array([float(validator.kind_probability(p[i:i + 1], k)[0]) for i, k in enumerate(kinds)])
        ok = np.array([read_matches(r, str(k)) for r, k in zip(pred, kinds)])
    else:
        target = np.array([validator.class_index(k) for k in kinds])
        pred = [validator.class_names[i] for i in p.argmax(1)]
        ok = p.argmax(1) == target
        conf = p[np.arange(len(target)), target]
    lo, hi = wilson_interval(int(ok.sum()), len(ok))
    return {"G": float(ok.mean()), "G_low": lo, "G_high": hi, "mean_confidence": float(conf.mean()),
            "n": int(len(images)), "predicted": list(pred), "confidence": conf.tolist(), "recognised": ok.tolist(),
            "top_confidence": p.max(1).tolist()}


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% for z = 1.96); (nan, nan) for n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    lo, hi = (0.0 if successes == 0 else max(0.0, c - h)), (1.0 if successes == n else min(1.0, c + h))
    return float(min(lo, p)), float(max(hi, p))


def diversity(features: np.ndarray, kinds: Sequence[str]) -> dict:
    """Mean pairwise distance of L2-normalised features (the validator's embeddings) between
    images of the same prompted class, averaged over classes with >= 2 images: 0 = identical
    images (mode collapse), about 1.41 = orthogonal embeddings. {"diversity", "classes"}."""
    f = np.asarray(features, np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    vals = []
    kinds = np.asarray([str(k) for k in kinds])
    for k in sorted(set(kinds.tolist())):
        g = f[kinds == k]
        if len(g) < 2:
            continue
        d = np.sqrt(np.maximum(((g[:, None, :] - g[None, :, :]) ** 2).sum(-1), 0))
        vals.append(d[np.triu_indices(len(g), 1)].mean())
    return {"diversity": float(np.mean(vals)) if vals else float("nan"), "classes": len(vals)}


def relative_accuracy(validator, synth_images: np.ndarray, synth_kinds: Sequence[str], test_images: np.ndarray,
                      test_labels: np.ndarray, *, epochs: int = 3, lr: float = 5e-4, seed: int = 0) -> dict:
    """theta of one synthetic set (see the module docstring): {"theta", "acc_before", "acc_after", "n"}."""
    from carla_mr.genai.validator import fit

    if len(synth_images) == 0:
        return {"theta": float("nan"), "acc_before": float("nan"), "acc_after": float("nan"), "n": 0}
    before = validator.accuracy(test_images, test_labels)
    tuned = copy.deepcopy(validator)
    labels = np.array([tuned.class_index(k) for k in synth_kinds])
    fit(tuned, np.asarray(synth_images), labels, epochs=epochs, lr=lr, seed=seed, batch_size=32)
    after = tuned.accuracy(test_images, test_labels)
    theta = float(np.clip(after / before, 0.0, 1.0)) if before > 0 else float("nan")
    return {"theta": theta, "acc_before": before, "acc_after": after, "n": int(len(synth_images))}


def frechet_distance(feat_a: np.ndarray, feat_b: np.ndarray, *, min_ratio: float = 0.0) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two (N, D) feature sets.

    ``min_ratio``: NaN unless both sets hold at least ``min_ratio * D`` samples (a covariance
    of D dimensions from fewer samples is singular and the distance meaningless: 32 samples
    against 96-128 features ranked a degraded set as closer to real). Reports use
    :data:`FRECHET_MIN_RATIO`."""
    from scipy import linalg

    a = np.asarray(feat_a, np.float64)
    b = np.asarray(feat_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise InputError(f"feature sets must be (N, D) with the same D, got {a.shape} and {b.shape}", field="features")
    if len(a) < 2 or len(b) < 2:
        raise InputError("the Frechet distance needs at least two samples per set", field="features")
    if min(len(a), len(b)) < min_ratio * a.shape[1]:
        return float("nan")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    if not np.isfinite(covmean).all():
        eps = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)
    d = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    return max(d, 0.0)


#: The Frechet distance is reported only with at least this many samples per feature dimension.
FRECHET_MIN_RATIO = 4.0


def colour_match(images: np.ndarray, colours: Sequence[str | None], *, border: int = 3) -> dict:
    """How often the background (the ``border``-pixel frame) is nearest, among the palette
    :data:`~carla_mr.genai.prompts.COLOURS`, to the prompted colour. Chance is 1/len(palette)."""
    from carla_mr.genai.prompts import COLOURS

    names = list(COLOURS)
    pal = np.array([COLOURS[n] for n in names], np.float64)
    hits, n = 0, 0
    for img, c in zip(np.asarray(images), colours):
        if c is None:
            continue
        frame = np.concatenate([img[:border].reshape(-1, 3), img[-border:].reshape(-1, 3),
                                img[:, :border].reshape(-1, 3), img[:, -border:].reshape(-1, 3)]).astype(np.float64)
        med = np.median(frame, 0)
        nearest = names[int(np.argmin(((pal - med) ** 2).sum(1)))]
        hits += nearest == c
        n += 1
    return {"colour_match": hits / n if n else float("nan"), "n": n, "chance": 1.0 / len(names)}


def relative_accuracy_scratch(class_names: Sequence[str], synth_images: np.ndarray, synth_kinds: Sequence[str],
                              test_images: np.ndarray, test_labels: np.ndarray, *, arch: str = "small",
                              width: float | None = 16, epochs: int = 15, seed: int = 0, data_seed: int = 20_011,
                              min_steps: int = 300) -> dict:
    """theta in "scratch" mode (see the module docstring): {"theta", "acc_synthetic", "acc_real", "n"}.

    Both classifiers get the same optimisation budget: ``epochs`` epochs, raised so that small
    sets still get at least ``min_steps`` optimiser steps (batch 32)."""
    from carla_mr.genai.datasets import crop_roi
    from carla_mr.genai.procedural import split_stream
    from carla_mr.genai.validator import build_validator, fit

    names = list(class_names)
    if len(synth_images) == 0:
        return {"theta": float("nan"), "acc_synthetic": float("nan"), "acc_real": float("nan"), "n": 0}
    for k in synth_kinds:
        if k not in names:
            raise InputError(f"class {k!r} is not one of the validator's classes {names}", field="kinds")
    y_syn = np.array([names.index(k) for k in synth_kinds], np.int64)
    v_syn = build_validator(arch, names, width=width, seed=seed)
    size = v_syn.input_size
    # the same number of real (procedural) training images per class
    real_x, real_y = [], []
    for c in sorted(set(y_syn.tolist())):
        n_c = int((y_syn == c).sum())
        for img, roi, _ in split_stream(names[c], c, n_c, data_seed, 0, 48):
            real_x.append(crop_roi(img, roi, size))
            real_y.append(c)
    real_x, real_y = np.stack(real_x), np.array(real_y, np.int64)
    syn = np.asarray(synth_images)
    epochs = max(int(epochs), int(np.ceil(min_steps / max(1, int(np.ceil(len(syn) / 32))))))
    fit(v_syn, syn, y_syn, epochs=epochs, seed=seed, batch_size=32)
    v_real = build_validator(arch, names, width=width, seed=seed)
    fit(v_real, real_x, real_y, epochs=epochs, seed=seed, batch_size=32)
    acc_syn = v_syn.accuracy(test_images, test_labels)
    acc_real = v_real.accuracy(test_images, test_labels)
    theta = float(np.clip(acc_syn / acc_real, 0.0, 1.0)) if acc_real > 0 else float("nan")
    return {"theta": theta, "acc_synthetic": acc_syn, "acc_real": acc_real, "n": int(len(syn)), "epochs": epochs}

"""Scores of a generated set: generative score G, relative accuracy theta, Frechet distance.

- **G** (generative score): the share of generated images the validator classifies as the
  prompted sign class; reported with the mean validator confidence in the prompted class.
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


def generative_score(validator, images: np.ndarray, kinds: Sequence[str]) -> dict:
    """G over images with their prompted kinds: {"G", "mean_confidence", "n", "predicted",
    "confidence" (per image, in the prompted class), "recognised" (per image bool)}."""
    images = np.asarray(images)
    if len(images) != len(kinds):
        raise InputError(f"{len(images)} images but {len(kinds)} prompted classes", field="kinds")
    if len(images) == 0:
        return {"G": float("nan"), "mean_confidence": float("nan"), "n": 0, "predicted": [], "confidence": [],
                "recognised": []}
    target = np.array([validator.class_index(k) for k in kinds])
    p = validator.probs(images)
    pred = p.argmax(1)
    ok = pred == target
    conf = p[np.arange(len(target)), target]
    return {"G": float(ok.mean()), "mean_confidence": float(conf.mean()), "n": int(len(images)),
            "predicted": [validator.class_names[i] for i in pred], "confidence": conf.tolist(),
            "recognised": ok.tolist()}


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


def frechet_distance(feat_a: np.ndarray, feat_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two (N, D) feature sets."""
    from scipy import linalg

    a = np.asarray(feat_a, np.float64)
    b = np.asarray(feat_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise InputError(f"feature sets must be (N, D) with the same D, got {a.shape} and {b.shape}", field="features")
    if len(a) < 2 or len(b) < 2:
        raise InputError("the Frechet distance needs at least two samples per set", field="features")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    if not np.isfinite(covmean).all():
        eps = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)
    d = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    return max(d, 0.0)


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
    from carla_mr.genai.procedural import _split_stream
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
        for img, roi, _ in _split_stream(names[c], c, n_c, data_seed, 0, 48):
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

"""Best-of-k speed values: sample k candidates of a speed-limit prompt, keep the one whose
digits a generator-side reader reads as the prompted value.

Why: the base model draws the prompted value on under half of its speed-limit samples
(docs/genai.md, "Legible values"), but k samples of the same prompt usually hold one that
shows it. Picking needs a reader, and it must not be the validator that grades the result
(that would score its own choice). The **ranker** is a small CNN trained only on the
generator's own templates (:func:`carla_mr.genai.procedural.render_sample`: the pictures the
base model learned, one font, one artwork), while the validator learned world camera renders
with other fonts, artwork, distances and clutter. The validator's value accuracy on picked
images therefore stays an independent measurement; ``evaluate --values --value-candidates K``
reports it beside candidate 0 alone (k = 1, the same images) and the any-of-k bound.

Candidate ``c`` of image ``i`` starts from the noise of seed ``seed + i + c * CANDIDATE_STRIDE``;
candidate 0 is the image plain sampling gives, so ``k = 1`` changes nothing.

    ranker = load_ranker()                      # the committed one (carla_mr/data/genai/ranker)
    out = best_of_k(model, prompts, values, seed=0, k=8, confidence=0.9, ranker=ranker)
    out.images, out.picked, out.drawn                # (B, 32, 32, 3), (B,), (B,)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from carla_mr.config.vocab import COLOURS, SIGN_CLASSES, SPEED_VALUES
from carla_mr.errors import InputError

DEFAULT_RANKER = Path(__file__).resolve().parent.parent / "data" / "genai" / "ranker"
#: Seed distance between the candidates of one image (far beyond any batch's seed range).
CANDIDATE_STRIDE = 1_000_003
#: The ranker's classes: speed limits by value, then the other kinds (no reject class: it only
#: compares candidates of one prompt, it never decides whether a sign is there).
RANKER_CLASSES: tuple[str, ...] = tuple([f"speed_limit_{v}" for v in SPEED_VALUES]
                                        + [k for k in SIGN_CLASSES if k != "speed_limit"])
#: Test-time shifts (dx, dy pixels) whose probabilities :func:`shifted_probs` averages.
SHIFTS: tuple[tuple[int, int], ...] = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))


def _degrade(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Generated 32 px faces are softer, lower in contrast and noisier than the templates: per
    image, Gaussian blur (sigma 0.4-1.2 px) with probability 0.7, contrast x0.6-1.2 about mid
    grey, brightness +-30, and pixel noise of sigma 0-10 (uint8 levels)."""
    import cv2

    out = images.astype(np.float32)
    for i in range(len(out)):
        x = out[i]
        if rng.random() < 0.7:
            x = cv2.GaussianBlur(x, (0, 0), float(rng.uniform(0.4, 1.2)))
        x = (x - 128.0) * float(rng.uniform(0.6, 1.2)) + 128.0 + float(rng.uniform(-30, 30))
        out[i] = x + rng.normal(0.0, float(rng.uniform(0, 10)), x.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def template_set(per_class: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """The generator's templates for every ranker class: (N, size, size, 3) uint8 images (on
    the prompt colours, the base model's jitter, degraded like generated faces: :func:`_degrade`)
    and (N,) class indices."""
    from carla_mr.genai.procedural import BASE_JITTER, render_sample

    if int(per_class) < 1:
        raise InputError(f"per_class must be >= 1, got {per_class}", field="per_class")
    rng = np.random.default_rng(int(seed))
    cols = list(COLOURS)
    xs, ys = [], []
    for j, name in enumerate(RANKER_CLASSES):
        kind, value = ("speed_limit", int(name.rsplit("_", 1)[1])) if name.startswith("speed_limit_") else (name, None)
        for _ in range(int(per_class)):
            img, _roi = render_sample(kind, rng, size=size, value=value, background=cols[int(rng.integers(len(cols)))],
                                      jitter=BASE_JITTER)
            xs.append(img)
            ys.append(j)
    return _degrade(np.stack(xs), rng), np.asarray(ys, np.int64)


def train_ranker(out: str | os.PathLike, *, per_class: int = 800, test_per_class: int = 60, epochs: int = 10,
                 width: int = 32, seed: int = 1, progress: Callable[[int], None] | None = None,
                 log: Callable[[str], None] | None = None) -> dict:
    """Train the ranker on the generator's templates and save it to ``out`` (the validator
    directory format: ``validator.json`` + ``model.safetensors``). Returns {"train_s",
    "template_accuracy" (held-apart templates of another seed), "value_accuracy" (its speed
    classes only), "n_train", "n_test", ...}, also written into ``validator.json``."""
    from carla_mr.genai.validator import build_validator, fit

    say = log or (lambda _m: None)
    t0 = time.perf_counter()
    say(f"rendering {per_class} templates per class ({len(RANKER_CLASSES)} classes)")
    x, y = template_set(per_class, seed)
    xt, yt = template_set(test_per_class, seed + 10_000)
    ranker = build_validator("small", RANKER_CLASSES, input_size=32, width=width, seed=seed)
    ranker.threshold = 0.0  # never rejects
    say(f"training {epochs} epochs on {len(x)} images")
    fit_info = fit(ranker, x, y, epochs=epochs, seed=seed, progress=progress)
    pred = ranker.probs(xt).argmax(1)
    speed = yt < len(SPEED_VALUES)
    report = {"role": "ranker: picks the best of k speed-limit candidates (carla_mr.genai.ranker)",
              "source": "the generator's templates (procedural.render_sample, BASE_JITTER, degraded: blur, contrast, "
                        "noise); "
                        "independent of the validator's training data",
              "n_train": int(len(x)), "n_test": int(len(xt)), "epochs": int(epochs), "width": int(width),
              "seed": int(seed), "final_loss": fit_info["final_loss"],
              "template_accuracy": float(np.mean(pred == yt)),
              "value_accuracy": float(np.mean(pred[speed] == yt[speed])),
              "train_s": round(time.perf_counter() - t0, 1)}
    ranker.save(out, report)
    say(f"ranker saved to {out}: held-apart template accuracy {report['template_accuracy']:.3f}")
    return report


def load_ranker(path: str | os.PathLike | None = None):
    """The ranker (the committed one unless ``path`` names another ranker directory); an
    :class:`InputError` if the directory is not one (it must know every speed-value class)."""
    from carla_mr.genai.validator import load_validator

    r = load_validator(path or DEFAULT_RANKER)
    missing = [f"speed_limit_{v}" for v in SPEED_VALUES if f"speed_limit_{v}" not in r.class_names]
    if missing:
        raise InputError(f"{path or DEFAULT_RANKER} cannot rank speed values: it lacks the classes {missing}",
                         field="ranker")
    return r


def shifted_probs(ranker, images: np.ndarray) -> np.ndarray:
    """(N, C) class probabilities averaged over the one-pixel :data:`SHIFTS` of each image
    (edge pixels repeated): a face drawn a pixel off the templates' centre reads alike."""
    n, h, w = images.shape[:3]
    pad = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    views = [pad[:, 1 - dy:1 - dy + h, 1 - dx:1 - dx + w] for dx, dy in SHIFTS]
    return ranker.probs(np.concatenate(views)).reshape(len(SHIFTS), n, -1).mean(0)


@dataclass(frozen=True)
class BestOfK:
    """Output of :func:`best_of_k`.

    ``images``: (B, H, W, 3) uint8, the picked candidate per prompt (the base model's size);
    ``picked``: (B,) int64 candidate index (0 for prompts without a value);
    ``drawn``: (B,) int64 candidates sampled per prompt (1 without a value);
    ``confidence``: (B,) the ranker's probability of the wanted value for the pick (NaN without a value);
    ``candidates``: (K, B, H, W, 3) uint8, candidate c of prompt i in ``[c, i]`` for c < drawn[i]
    (later rows zero; rows of prompts without a value repeat candidate 0)."""

    images: np.ndarray
    picked: np.ndarray
    drawn: np.ndarray
    confidence: np.ndarray
    candidates: np.ndarray


def best_of_k(model, prompts: Sequence[str], values: Sequence[int | None], *, seed: int = 0, k: int = 4,
              confidence: float | None = None, round_size: int = 4, ranker=None, steps: int = 20,
              guidance: float = 7.5, sampler: str = "dpm") -> BestOfK:
    """Sample every prompt once (image i: seed ``seed + i``) and each prompt that carries a
    speed value (``values[i]`` not None) up to ``k - 1`` more times; keep the candidate the
    ranker reads as ``speed_limit_{value}`` most surely (probability averaged over :data:`SHIFTS`;
    ties keep the lower index).

    More candidates are drawn in rounds of ``round_size``, only for prompts whose best
    candidate so far the ranker reads as the wanted value with probability below
    ``confidence`` (None: always all ``k``). ``ranker``: default the committed one."""
    from carla_mr.genai.sample import sample

    prompts, values = list(prompts), list(values)
    k = int(k)
    if len(values) != len(prompts):
        raise InputError("one value (or None) per prompt is needed", field="values")
    if k < 1:
        raise InputError(f"value_candidates must be >= 1, got {k}", field="value_candidates")
    if int(round_size) < 1:
        raise InputError(f"round_size must be >= 1, got {round_size}", field="round_size")
    if confidence is not None and not 0.0 <= float(confidence) <= 1.0:
        raise InputError(f"value_confidence must be in [0, 1], got {confidence}", field="value_confidence")
    bad = [v for v in values if v is not None and int(v) not in SPEED_VALUES]
    if bad:
        raise InputError(f"speed values {bad} are not in {list(SPEED_VALUES)}", field="values")
    first = sample(model, prompts, seed=seed, steps=steps, guidance=guidance, sampler=sampler)
    n = len(prompts)
    cands = np.zeros((k, *first.shape), np.uint8)
    cands[:] = first[None]
    picked = np.zeros(n, np.int64)
    drawn = np.ones(n, np.int64)
    best = np.full(n, np.nan)
    rows = np.array([i for i, v in enumerate(values) if v is not None], np.int64)
    if k == 1 or rows.size == 0:
        return BestOfK(first, picked, drawn, best, cands)
    r = ranker if ranker is not None else load_ranker()
    col = {i: r.class_index(f"speed_limit_{int(values[i])}") for i in rows}

    def score(imgs, idx):
        return shifted_probs(r, imgs)[np.arange(len(idx)), [col[i] for i in idx]]

    cands[1:, rows] = 0
    best[rows] = score(first[rows], rows)
    active, d = list(rows), 1  # every prompt still drawing has d candidates so far
    while d < k:
        active = [i for i in active if confidence is None or best[i] < float(confidence)]
        if not active:
            break
        m = min(int(round_size), k - d)
        todo = [(i, c) for c in range(d, d + m) for i in active]
        imgs = sample(model, [prompts[i] for i, _ in todo], steps=steps, guidance=guidance, sampler=sampler,
                      seeds=[int(seed) + i + c * CANDIDATE_STRIDE for i, c in todo])
        for (i, c), img, v in zip(todo, imgs, score(imgs, [i for i, _ in todo])):
            cands[c, i] = img
            if v > best[i]:  # ties keep the lower index
                best[i], picked[i] = v, c
        d += m
        drawn[active] = d
    images = cands[picked, np.arange(n)]
    return BestOfK(images, picked, drawn, best, cands)

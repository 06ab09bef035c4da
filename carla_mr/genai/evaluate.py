"""Evaluate a generator with the independent validator: G (95% interval) over a prompt grid,
prompt coverage, diversity, theta, and what the validator reads on speed-limit faces.

    carla-mr genai evaluate --per-prompt 4 --steps 20 --json       (docs/genai.md, "G")
    carla-mr genai evaluate --values --upsampler default --json    (speed-value legibility)

``degraded_copy`` makes the deliberately worse generator of the theta/F ordering test.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Sequence

import numpy as np

from carla_mr.config.vocab import COLOURS, SIGN_CLASSES


def prompt_grid(kinds: Sequence[str] = SIGN_CLASSES, colours: Sequence[str] = tuple(COLOURS),
                per_prompt: int = 1, token: str | None = None) -> tuple[list[str], list[str], list[str]]:
    """(prompts, kinds, colours): every kind on every colour, ``per_prompt`` times."""
    from carla_mr.genai.prompts import prompt_for

    ps, ks, cs = [], [], []
    for k in kinds:
        for c in colours:
            for _ in range(int(per_prompt)):
                ps.append(prompt_for(k, c, token=token))
                ks.append(k)
                cs.append(c)
    return ps, ks, cs


def evaluate_generator(model, validator, *, per_prompt: int = 2, steps: int = 20, guidance: float = 7.5,
                       seed: int = 0, kinds: Sequence[str] = SIGN_CLASSES, colours: Sequence[str] = tuple(COLOURS),
                       theta_steps: int = 30, upsampler=None, upsample_steps: int = 10) -> dict:
    """G with its 95% Wilson interval, per class and per colour, coverage, diversity, theta, and
    the speed-limit readings (share read as a value class, the values read) of one generator
    (scored after ``upsampler``, the super-resolution stage, when given)."""
    from carla_mr.genai.api import generate
    from carla_mr.genai.scores import diversity, generative_score, wilson_interval
    from carla_mr.genai.theta import theta_of

    prompts, ks, cs = prompt_grid(kinds, colours, per_prompt)
    images = generate(model, prompts, seed=seed, steps=steps, guidance=guidance, upsampler=upsampler,
                      upsample_steps=upsample_steps)
    v = generative_score(validator, images, ks)
    rec = np.asarray(v["recognised"], bool)

    def share(mask):
        n, r = int(mask.sum()), int(rec[mask].sum())
        lo, hi = wilson_interval(r, n)
        return {"n": n, "G": r / n if n else None, "G_low": lo, "G_high": hi}

    ks_a, cs_a = np.asarray(ks), np.asarray(cs)
    sl = ks_a == "speed_limit"
    read_sl = [p for p, m in zip(v["predicted"], sl) if m]
    out = {"n": len(images), "G": v["G"], "G_low": v["G_low"], "G_high": v["G_high"],
           "mean_confidence": v["mean_confidence"],
           "px": int(images.shape[1]), "upsampled": upsampler is not None,
           "coverage": {"classes": sorted(set(ks)), "colours": sorted(set(cs)), "contexts": [],
                        "per_prompt": int(per_prompt), "steps": int(steps), "guidance": float(guidance)},
           "per_class": {k: share(ks_a == k) for k in sorted(set(ks))},
           "per_colour": {c: share(cs_a == c) for c in sorted(set(cs))},
           "diversity": diversity(validator.features(images), ks)["diversity"],
           "theta": theta_of(images, ks, steps=theta_steps, seed=seed)["theta"],
           "rejected": float(np.mean([p == "reject" for p in v["predicted"]])),
           "speed_limit": {"n": int(sl.sum()),
                           "read_a_value": float(np.mean([p.startswith("speed_limit_") for p in read_sl]))
                           if read_sl else None,
                           "values_read": dict(Counter(read_sl).most_common())}}
    return out


def _read_values(validator, images: np.ndarray, values: Sequence[int]) -> tuple[list[str], list[bool]]:
    from carla_mr.genai.scores import generative_score, read_matches

    read = generative_score(validator, images, ["speed_limit"] * len(values))["predicted"]
    return read, [read_matches(r, f"speed_limit_{v}") for r, v in zip(read, values)]


def _share(ok: Sequence[bool]) -> dict:
    from carla_mr.genai.scores import wilson_interval

    lo, hi = wilson_interval(int(sum(ok)), len(ok))
    return {"value_accuracy": float(np.mean(ok)), "value_accuracy_low": lo, "value_accuracy_high": hi}


def speed_value_accuracy(model, validator, *, upsampler=None, per_value: int = 8, steps: int = 20,
                         guidance: float = 7.5, seed: int = 0, colours: Sequence[str] = tuple(COLOURS),
                         upsample_steps: int = 10, value_candidates: int = 1,
                         value_confidence: float | None = None, ranker=None, grid_path=None) -> dict:
    """Is the prompted speed value legible? For every value of ``SPEED_VALUES``, ``per_value``
    prompts "a speed limit {value} sign on a {colour} background" (colours cycled); the images
    (after ``upsampler`` when given: the swap resolution) are read by the independent
    validator. With ``value_candidates`` k > 1 each prompt is sampled up to k times (fewer
    once the ranker reads one as the value with probability >= ``value_confidence``) and the
    ranker (:mod:`carla_mr.genai.ranker`, trained on the generator's templates, not the
    validator's data) keeps one; the same run also reads candidate 0 alone (plain sampling,
    k = 1) and counts prompts where any drawn candidate reads right at the base size (the bound
    a perfect ranker reaches with the same draws).

    Returns {"n", "value_accuracy" (read class == speed_limit_{prompted value}) with its 95%
    Wilson interval, "plain" (the same for candidate 0; equal to the above when k = 1),
    "any_of_k", "mean_drawn" (candidates sampled per prompt), "picked_other_than_0",
    "read_as_speed_limit", "chance" (1 / number of values),
    "per_value": {value: {"n", "correct", "read": Counter of classes read}}, "px", ...}.
    ``grid_path``: also write the images read (rows: values) as a PNG there."""
    from carla_mr.config.vocab import SPEED_VALUES
    from carla_mr.genai.api import upsample
    from carla_mr.genai.prompts import prompt_for
    from carla_mr.genai.ranker import best_of_k

    if int(per_value) < 1:
        from carla_mr.errors import InputError

        raise InputError(f"per_value must be >= 1, got {per_value}", field="per_value")
    k = int(value_candidates)
    values = [v for v in SPEED_VALUES for _ in range(int(per_value))]
    prompts = [prompt_for("speed_limit", colours[i % len(colours)], value=v) for i, v in enumerate(values)]
    out = best_of_k(model, prompts, values, seed=seed, k=k, confidence=value_confidence, ranker=ranker, steps=steps,
                    guidance=guidance)

    def final(images):
        if upsampler is None:
            return images
        return upsample(upsampler, images, prompts, seed=seed, steps=upsample_steps)

    images = final(out.images)
    read, ok = _read_values(validator, images, values)
    plain_ok = ok if k == 1 else _read_values(validator, final(out.candidates[0]), values)[1]
    any_ok = np.zeros(len(values), bool)
    for c in range(k):
        any_ok |= np.asarray(_read_values(validator, out.candidates[c], values)[1]) & (c < out.drawn)
    per = {int(v): {"n": int(per_value), "correct": int(sum(o for o, w in zip(ok, values) if w == v)),
                    "read": dict(Counter(r for r, w in zip(read, values) if w == v).most_common())}
           for v in SPEED_VALUES}
    if grid_path is not None:
        _write_grid(grid_path, images, int(per_value))
    return {"n": len(values), **_share(ok), "value_candidates": k,
            "value_confidence": value_confidence, "mean_drawn": float(np.mean(out.drawn)),
            "plain": _share(plain_ok), "any_of_k": float(np.mean(any_ok)),
            "picked_other_than_0": float(np.mean(out.picked != 0)),
            "chance": 1.0 / len(SPEED_VALUES),
            "read_as_speed_limit": float(np.mean([r.startswith("speed_limit") for r in read])),
            "px": int(images.shape[1]), "steps": int(steps), "guidance": float(guidance),
            "upsampled": upsampler is not None, "per_value": per}


def _write_grid(path, images: np.ndarray, per_row: int) -> None:
    """Images as a PNG grid, ``per_row`` to a row (one row per speed value)."""
    from carla_mr.io import atomic_write_png

    n, h, w, _ = images.shape
    rows = -(-n // per_row)
    grid = np.full((rows * h, per_row * w, 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, per_row)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = img
    atomic_write_png(path, grid)


def degraded_copy(model, *, noise: float = 0.5, seed: int = 0):
    """A deliberately worse generator: a copy of ``model`` whose UNet weights get Gaussian noise
    of ``noise`` times each tensor's standard deviation."""
    import torch

    m = copy.copy(model)
    m.unet = copy.deepcopy(model.unet)
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for p in m.unet.parameters():
            if p.numel() > 1:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * float(p.std()) * noise)
    return m

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


def speed_value_accuracy(model, validator, *, upsampler=None, per_value: int = 8, steps: int = 20,
                         guidance: float = 7.5, seed: int = 0, colours: Sequence[str] = tuple(COLOURS),
                         upsample_steps: int = 10) -> dict:
    """Is the prompted speed value legible? For every value of ``SPEED_VALUES``, ``per_value``
    prompts "a speed limit {value} sign on a {colour} background" (colours cycled); the images
    (after ``upsampler`` when given: the swap resolution) are read by the independent
    validator. Returns {"n", "value_accuracy" (read class == speed_limit_{prompted value}) with
    its 95% Wilson interval, "read_as_speed_limit", "chance" (1 / number of values),
    "per_value": {value: {"n", "correct", "read": Counter of classes read}}, "px"}."""
    from carla_mr.config.vocab import SPEED_VALUES
    from carla_mr.genai.api import sign_images
    from carla_mr.genai.scores import generative_score, wilson_interval

    if int(per_value) < 1:
        from carla_mr.errors import InputError

        raise InputError(f"per_value must be >= 1, got {per_value}", field="per_value")
    values = [v for v in SPEED_VALUES for _ in range(int(per_value))]
    images = sign_images(["speed_limit"] * len(values), seed, colours=[colours[i % len(colours)] for i in
                                                                       range(len(values))],
                         model=model, steps=steps, guidance=guidance, values=values, upsampler=upsampler,
                         upsample_steps=upsample_steps)
    read = generative_score(validator, images, ["speed_limit"] * len(values))["predicted"]
    ok = [r == f"speed_limit_{v}" for r, v in zip(read, values)]
    lo, hi = wilson_interval(int(sum(ok)), len(ok))
    per = {int(v): {"n": int(per_value), "correct": int(sum(o for o, w in zip(ok, values) if w == v)),
                    "read": dict(Counter(r for r, w in zip(read, values) if w == v).most_common())}
           for v in SPEED_VALUES}
    return {"n": len(values), "value_accuracy": float(np.mean(ok)), "value_accuracy_low": lo,
            "value_accuracy_high": hi, "chance": 1.0 / len(SPEED_VALUES),
            "read_as_speed_limit": float(np.mean([r.startswith("speed_limit") for r in read])),
            "px": int(images.shape[1]), "steps": int(steps), "guidance": float(guidance),
            "upsampled": upsampler is not None, "per_value": per}


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

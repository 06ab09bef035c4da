"""Generation runs: preferences -> prompts -> images + manifest + scores.

A run directory::

    images/00000.png ...   the generated images (RGB PNG)
    manifest.json          {"model", "validator", "seed", "steps", "guidance", "sampler",
                            "items": [{"file", "prompt", "seed", "class", "colour", "context",
                                       "subset", "verdict": {"predicted", "confidence",
                                       "recognised"}}]}
    scores.json            G (+ 95% interval), diversity, mean confidence, colour match, per-subset G,
                           [theta, Frechet when enough samples]

``scores.json`` is what :func:`carla_mr.genai.market_link.market_parameters` reads.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from carla_mr.errors import InputError
from carla_mr.genai.prompts import PromptSpec, parse_prompt


def specs_from_prompts(prompts: Sequence[str]) -> list[PromptSpec]:
    """Free-text prompts -> PromptSpecs (InputError if a prompt names no known sign class)."""
    out = []
    for p in prompts:
        pp = parse_prompt(p)
        out.append(PromptSpec(p, pp.kind, pp.colour, pp.context, "context" if pp.context else "background", pp.value))
    return out


def generate_run(out: str | os.PathLike, specs: Sequence[PromptSpec], *, model, model_ref: str, validator=None,
                 validator_ref: str | None = None, seed: int = 0, per_prompt: int = 1, steps: int = 20,
                 guidance: float = 7.5, sampler: str = "dpm", theta: bool = False, theta_epochs: int | None = None,
                 theta_mode: str = "scratch",
                 test_per_class: int = 50, progress=None, log=None) -> dict:
    """Generate ``per_prompt`` images per spec, validate them, write the run directory; returns
    the scores dict (also written to ``scores.json``)."""
    from carla_mr.genai.sample import sample
    from carla_mr.genai.scores import colour_match, frechet_distance, generative_score
    from carla_mr.io import atomic_write_json, atomic_write_png

    if not specs:
        raise InputError("nothing to generate: no prompts", field="prompts")
    if theta_mode not in ("scratch", "finetune"):
        raise InputError(f"theta mode must be 'scratch' or 'finetune', got {theta_mode!r}", field="--theta-mode")
    if per_prompt < 1:
        raise InputError(f"per_prompt must be >= 1, got {per_prompt}", field="--per-prompt")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    items = [s for s in specs for _ in range(per_prompt)]
    seeds = [int(seed) + i for i in range(len(items))]
    images = sample(model, [s.prompt for s in items], seeds=seeds, steps=steps, guidance=guidance, sampler=sampler,
                    progress=progress)
    gen_s = time.time() - t0
    kinds = [s.kind for s in items]
    verdict = generative_score(validator, images, kinds) if validator is not None else None
    manifest_items = []
    for i, (s, im) in enumerate(zip(items, images)):
        name = f"images/{i:05d}.png"
        atomic_write_png(out / name, im)
        v = None
        if verdict is not None:
            v = {"predicted": verdict["predicted"][i], "confidence": round(float(verdict["confidence"][i]), 5),
                 "recognised": bool(verdict["recognised"][i])}
        manifest_items.append({"file": name, "prompt": s.prompt, "seed": seeds[i], "class": s.kind,
                               "colour": s.colour, "context": s.context, "subset": s.subset, "verdict": v})
    manifest = {"model": model_ref, "validator": validator_ref, "seed": int(seed), "steps": int(steps),
                "guidance": float(guidance), "sampler": sampler, "per_prompt": int(per_prompt),
                "image_size": int(images.shape[1]), "items": manifest_items}
    atomic_write_json(out / "manifest.json", manifest)
    scores: dict = {"n": len(items), "generate_s": round(gen_s, 2),
                    "images_per_s": round(len(items) / max(gen_s, 1e-9), 3)}
    scores.update({k: v for k, v in colour_match(images, [s.colour for s in items]).items() if k != "n"})
    if verdict is not None:
        scores["G"] = verdict["G"]
        scores["mean_confidence"] = verdict["mean_confidence"]
        subsets = sorted({s.subset for s in items})
        for sub in subsets:
            idx = [i for i, s in enumerate(items) if s.subset == sub]
            scores[f"G_{sub}"] = float(np.mean([verdict["recognised"][i] for i in idx]))
        per_class = {}
        for k in sorted(set(kinds)):
            idx = [i for i, kk in enumerate(kinds) if kk == k]
            per_class[k] = float(np.mean([verdict["recognised"][i] for i in idx]))
        scores["G_per_class"] = per_class
        from carla_mr.genai.scores import FRECHET_MIN_RATIO, diversity

        feats = validator.features(images)
        scores["diversity"] = diversity(feats, kinds)["diversity"]
        scores["G_low"], scores["G_high"] = verdict["G_low"], verdict["G_high"]
        if theta:
            th = _theta_sets(validator, images, kinds, items, subsets, theta_mode, theta_epochs, test_per_class,
                             seed, log)
            scores["theta_mode"] = theta_mode if not getattr(validator, "open_set", False) else "loss_ratio"
            scores["theta"] = th["all"]["theta"]
            for sub in subsets:
                scores[f"theta_{sub}"] = th[sub]["theta"]
            scores["theta_detail"] = th
            xte = th.pop("_test_images")
            # the Frechet distance only with enough samples for the feature size (else NaN)
            fd = frechet_distance(feats, validator.features(xte), min_ratio=FRECHET_MIN_RATIO)
            scores["frechet"] = None if not np.isfinite(fd) else fd
            scores["frechet_min_samples"] = int(FRECHET_MIN_RATIO * feats.shape[1])
    scores["elapsed_s"] = round(time.time() - t0, 2)
    atomic_write_json(out / "scores.json", scores)
    return scores


def _theta_sets(validator, images, kinds, items, subsets, theta_mode, theta_epochs, test_per_class, seed, log):
    """theta of the whole set and of each subset. An open-set validator (value classes +
    ``reject``): the error ratio of :func:`carla_mr.genai.theta.theta_of` (held-apart
    crops of the independent painter); a closed-set one: the older accuracy ratios."""
    from carla_mr.genai.scores import relative_accuracy, relative_accuracy_scratch

    if getattr(validator, "open_set", False):
        from carla_mr.genai.theta import theta_of
        from carla_mr.genai.validator_art import make_set

        if log:
            log("computing theta (loss after / before fine-tuning a tiny model on the generated images)")
        th = {"all": theta_of(images, kinds, seed=seed)}
        for sub in subsets:
            idx = [i for i, s in enumerate(items) if s.subset == sub]
            th[sub] = theta_of(images[idx], [kinds[i] for i in idx], seed=seed)
        th["_test_images"] = make_set(max(4, test_per_class // 4), 0, 1, validator.input_size)[0]
        return th
    from carla_mr.genai.procedural import split_arrays

    if log:
        log(f"computing theta ({theta_mode} mode): training small validators on the generated images")
    xte, yte = split_arrays("test", per_class=test_per_class, seed=10_007, out_size=validator.input_size,
                            kinds=tuple(validator.class_names))

    def theta_of_set(imgs, ks):
        if theta_mode == "finetune":
            return relative_accuracy(validator, imgs, ks, xte, yte, epochs=theta_epochs or 3, seed=seed)
        return relative_accuracy_scratch(validator.class_names, imgs, ks, xte, yte, epochs=theta_epochs or 15,
                                         seed=seed)

    th = {"all": theta_of_set(images, kinds)}
    for sub in subsets:
        idx = [i for i, s in enumerate(items) if s.subset == sub]
        th[sub] = theta_of_set(images[idx], [kinds[i] for i in idx])
    th["_test_images"] = xte
    return th

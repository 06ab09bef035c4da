"""theta on main-job-like windows: the committed base model vs a degraded copy vs pure noise.

Draws one prompt list like the main job's (70 % "speed limit V" on the AVs' colours, the rest
the other kinds; half the batches at the cheap simulator settings, 8 steps / guidance 3),
generates it with the committed base model and with a deliberately degraded copy
(``evaluate.degraded_copy``, UNet weights + 0.3 sigma noise), lifts both through the committed
upsampler (128 px, as the main job scores them), and measures theta on random windows of
6-96 images of each set (the same windows for every source) with
:func:`carla_mr.genai.theta.theta_of` and, for comparison, the loss ratio against the label
prior that defined theta before 2026-12-07 (:func:`loss_ratio_theta`, here only).

A theta that means what the paper means orders base < degraded < noise (~1). About 4 minutes
on one core (generation 3, theta 1). Run: ``python bench/theta_windows.py [--prompts 96]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main_job_prompts(n: int, seed: int = 7) -> tuple[list[str], list[str]]:
    """(prompts, kinds) like the main job's windows (see the module docstring)."""
    import numpy as np

    from carla_mr.genai.prompts import prompt_for

    rng = np.random.default_rng(seed)
    colours = ["black", "gray", "yellow", "white", "blue"]
    others = ["stop", "yield", "no_entry", "priority_road", "parking", "warning", "mandatory_arrow"]
    prompts, kinds = [], []
    for _ in range(n):
        if rng.random() < 0.7:
            kind, value = "speed_limit", int(rng.choice([50, 50, 50, 30, 60]))
        else:
            kind, value = str(rng.choice(others)), None
        kinds.append(kind)
        prompts.append(prompt_for(kind, str(rng.choice(colours)), value=value))
    return prompts, kinds


def loss_ratio_theta(images, kinds, *, steps: int = 30, seed: int = 0, eval_per_class: int = 12) -> float:
    """The old definition: cross-entropy after ``steps`` uniformly drawn Adam steps over the
    cross-entropy of the training labels' frequencies, on the kinds present (all 8 logits)."""
    import numpy as np
    import torch

    from carla_mr.config.vocab import SIGN_CLASSES
    from carla_mr.genai.theta import THETA_MIN, _kind_ids, _tensor, eval_set, fit_tiny, tiny_net

    y = _kind_ids(kinds)
    present = np.unique(y)
    if present.size < 2:
        return float("nan")
    ex, ey = eval_set(eval_per_class)
    keep = np.isin(ey, present)
    ex_t, ey_t = _tensor(ex[keep]), torch.from_numpy(ey[keep])
    x_t, y_t = _tensor(images), torch.from_numpy(y)
    net = tiny_net(len(SIGN_CLASSES), seed)
    ce = torch.nn.functional.cross_entropy
    prior = np.bincount(y, minlength=len(SIGN_CLASSES)) / len(y)
    before = float(-np.mean(np.log(prior[ey[keep]])))
    fit_tiny(net, x_t, y_t, steps=steps, seed=seed, balanced=False)
    with torch.no_grad():
        after = float(ce(net(ex_t), ey_t))
    return float(np.clip(after / before, THETA_MIN, 1.0))


def run(n_prompts: int = 96, windows: int = 6, sizes=(6, 12, 24, 48, 96)) -> list[dict]:
    import numpy as np
    import torch

    from carla_mr.genai import api
    from carla_mr.genai.evaluate import degraded_copy
    from carla_mr.genai.theta import theta_of

    torch.set_num_threads(1)
    prompts, kinds = main_job_prompts(n_prompts)
    base, up = api.load_default_generator(), api.load_default_upsampler()
    sets = {}
    for name, model in (("base", base), ("degraded", degraded_copy(base, noise=0.3))):
        chunks = []
        for a in range(0, n_prompts, 8):
            cheap = (a // 8) % 2 == 1
            chunks.append(api.generate(model, prompts[a:a + 8], seed=100 + a, steps=8 if cheap else 20,
                                       guidance=3.0 if cheap else 7.5, upsampler=up))
            print(f"{name}: {a + len(chunks[-1])}/{n_prompts} images", file=sys.stderr)
        sets[name] = np.concatenate(chunks)
    sets["noise"] = np.random.default_rng(5).integers(0, 256, sets["base"].shape, dtype=np.uint8)
    rng = np.random.default_rng(0)
    rows = []
    for size in sizes:
        if size > n_prompts:
            continue
        picks = [np.arange(n_prompts)] if size == n_prompts else \
            [rng.choice(n_prompts, size, replace=False) for _ in range(windows)]
        for name, images in sets.items():
            new, old = [], []
            for idx in picks:
                ks = [kinds[i] for i in idx]
                t = theta_of(images[idx], ks)["theta"]
                if np.isfinite(t):
                    new.append(t)
                    old.append(loss_ratio_theta(images[idx], ks))
            rows.append({"source": name, "window": size, "windows": len(new),
                         "theta_mean": float(np.mean(new)), "theta_min": float(np.min(new)),
                         "theta_max": float(np.max(new)), "old_loss_ratio_mean": float(np.mean(old))})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=96)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = run(args.prompts)
    if args.json:
        print(json.dumps({"rows": rows}))
        return
    print(f"{'source':9s} {'window':>6s} {'theta mean [min, max]':>24s} {'old loss ratio':>15s}")
    for r in rows:
        print(f"{r['source']:9s} {r['window']:6d} {r['theta_mean']:10.3f} [{r['theta_min']:.3f}, {r['theta_max']:.3f}]"
              f" {r['old_loss_ratio_mean']:15.3f}")


if __name__ == "__main__":
    main()

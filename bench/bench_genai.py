"""genai figures: sampling speed, training speed, validator accuracy, base-model G and colour match.

Rows (``run(quick)``), each against a baseline measured in the same run:

- ``sample_img_per_cpu_s``: images per CPU-second of the default model at its default size and
  step count (DPM-Solver++, 20 steps, guidance 7.5, batch 32) vs ancestral DDPM with the
  training schedule (1000 steps; quick: 100 steps, scaled). Ratio = speed-up.
- ``train_steps_per_cpu_s``: base-model training steps per CPU-second (batch 16: procedural
  batch, text encoder, UNet, AdamW, EMA) vs the bare UNet forward+backward on a ready batch.
  Ratio = the share of a step that is the UNet itself (target >= 0.5: data and bookkeeping
  cost at most as much as the network).
- ``validator_accuracy``: the default validator on the procedural test split vs chance.
- ``base_G``: share of base-model images (every class x background colour; quick: 1 image per
  pair, else 4) the validator recognises as the prompted class, vs the validator's recognition
  rate on procedural images of the same prompts (what a perfect generator would score).
- ``colour_match``: share of those images whose background is nearest the prompted colour, vs
  chance (1/8).
- ``upsample_ms_per_img``: CPU milliseconds per image of the super-resolution stage (32 -> 128
  px, DDIM 10 steps, no guidance, batch 16) vs OpenCV bicubic upscaling of the same images.
  Ratio = how many times the bicubic cost it is.
- ``upsample_psnr``: PSNR (dB) of the upsampled procedural 32 px images against their 128 px
  originals (held-out render seed), vs bicubic on the same images. Ratio = upsampler / bicubic.

Times are this process's CPU time (``time.process_time``), robust to other load; torch uses
1 thread (CPU time is then not inflated by spinning threads on a loaded machine). Run: ``python bench/bench_genai.py [--quick]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _cpu(fn):
    t = time.process_time()
    out = fn()
    return time.process_time() - t, out


def run(quick: bool = False) -> list[dict]:
    import numpy as np
    import torch

    from carla_mr.genai.api import load_default_generator, load_default_validator
    from carla_mr.genai.procedural import BASE_JITTER, render_sample, split_arrays
    from carla_mr.genai.prompts import COLOURS, prompt_for
    from carla_mr.genai.sample import sample
    from carla_mr.genai.scores import colour_match, generative_score
    from carla_mr.genai.signs import SIGN_CLASSES

    torch.set_num_threads(1)
    rows = []
    model = load_default_generator()
    validator = load_default_validator()

    # --- sampling speed
    prompts = [prompt_for(k, c) for k in SIGN_CLASSES for c in COLOURS][: (32 if quick else 64)]
    sample(model, prompts[:2], steps=2)  # warm-up
    t_dpm, _ = _cpu(lambda: sample(model, prompts, steps=20, guidance=7.5))
    ddpm_steps = 100 if quick else 1000
    n_ddpm = 8
    t_ddpm, _ = _cpu(lambda: _ddpm(model, prompts[:n_ddpm], ddpm_steps))
    t_ddpm = t_ddpm * (1000 / ddpm_steps) / n_ddpm * len(prompts)
    rows.append({"name": "sample_img_per_cpu_s", "value": len(prompts) / t_dpm, "unit": "img/CPU-s",
                 "baseline": len(prompts) / t_ddpm, "ratio": t_ddpm / t_dpm, "target": ">= 20 (vs DDPM-1000)"})

    # --- training speed
    from carla_mr.genai.model import build_tiny
    from carla_mr.genai.train import BaseTrainConfig, train_base
    import tempfile

    n_steps = 3 if quick else 10
    with tempfile.TemporaryDirectory() as d:
        cfg = BaseTrainConfig(steps=n_steps, batch_size=16, save_every=10_000, threads=1)
        m = build_tiny()
        t_train, _ = _cpu(lambda: train_base(d, cfg, model=m))
        # subtract the final save
        t_save, _ = _cpu(lambda: __import__("carla_mr.genai.model", fromlist=["save_model"]).save_model(m, Path(d) / "x", half=True))
    t_train = max(t_train - t_save, 1e-9)
    m = build_tiny()
    opt = torch.optim.AdamW(m.unet.parameters(), 1e-4)
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        hs = m.encode_prompts(["a stop sign on a blue background"] * 16)

    def bare():
        for _ in range(n_steps):
            out = m.unet(x, torch.randint(0, 1000, (16,)), encoder_hidden_states=hs).sample
            loss = (out - x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
    t_bare, _ = _cpu(bare)
    rows.append({"name": "train_steps_per_cpu_s", "value": n_steps / t_train, "unit": "steps/CPU-s (batch 16)",
                 "baseline": n_steps / t_bare, "ratio": t_bare / t_train, "target": ">= 0.5"})

    # --- validator accuracy on the procedural test split
    xte, yte = split_arrays("test", per_class=50 if quick else 200, seed=0)
    acc = validator.accuracy(xte, yte)
    rows.append({"name": "validator_accuracy", "value": acc, "unit": "share", "baseline": 1 / len(SIGN_CLASSES),
                 "ratio": acc * len(SIGN_CLASSES), "target": "value >= 0.96"})

    # --- base-model G and colour match over every class x colour
    per = 1 if quick else 4
    specs = [(k, c) for k in SIGN_CLASSES for c in COLOURS for _ in range(per)]
    imgs = sample(model, [prompt_for(k, c) for k, c in specs], seed=1000, steps=20, guidance=7.5)
    kinds = [k for k, _ in specs]
    g = generative_score(validator, imgs, kinds)
    rng = np.random.default_rng(5)
    ref = np.stack([render_sample(k, rng, size=32, background=c, jitter=BASE_JITTER)[0] for k, c in specs])
    g_ref = generative_score(validator, ref, kinds)
    rows.append({"name": "base_G", "value": g["G"], "unit": "share", "baseline": g_ref["G"],
                 "ratio": g["G"] / max(g_ref["G"], 1e-9), "target": "value >= 0.8"})
    cm = colour_match(imgs, [c for _, c in specs])
    rows.append({"name": "colour_match", "value": cm["colour_match"], "unit": "share", "baseline": cm["chance"],
                 "ratio": cm["colour_match"] / cm["chance"], "target": "ratio >= 4"})
    rows += _upsampler_rows(model, quick)
    return rows


def _psnr(a, b) -> float:
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-9))


def _upsampler_rows(model, quick: bool) -> list[dict]:
    """Speed and fidelity of the committed super-resolution stage vs bicubic, same run."""
    from carla_mr.genai.api import default_upsampler_path, load_default_upsampler
    from carla_mr.genai.upsampler import bicubic_baseline, upsample
    from carla_mr.genai.upsampler_train import render_pairs

    if not (default_upsampler_path() / "upsampler.json").is_file():
        return []
    up = load_default_upsampler(text_model=model)
    n = 8 if quick else 32
    high, low, prompts = render_pairs(n, seed=9_999, speed_share=0.5, value_drop=0.0)
    upsample(up, low[:2], prompts[:2], steps=2)  # warm-up
    t_up, sr = _cpu(lambda: upsample(up, low, prompts, steps=10, batch_size=16))
    t_bic, bic = _cpu(lambda: bicubic_baseline(low))
    rows = [{"name": "upsample_ms_per_img", "value": 1000 * t_up / n, "unit": "CPU-ms/img",
             "baseline": 1000 * t_bic / n, "ratio": t_up / max(t_bic, 1e-9), "target": "value <= 400"}]
    p_sr = sum(_psnr(a, b) for a, b in zip(sr, high)) / n
    p_bic = sum(_psnr(a, b) for a, b in zip(bic, high)) / n
    rows.append({"name": "upsample_psnr", "value": p_sr, "unit": "dB", "baseline": p_bic, "ratio": p_sr / p_bic,
                 "target": "ratio >= 1"})
    return rows


def _ddpm(model, prompts, steps):
    """Ancestral DDPM sampling with the training scheduler (the slow baseline)."""
    import diffusers
    import torch

    sched = diffusers.DDPMScheduler.from_config(model.scheduler_config)
    sched.set_timesteps(steps)
    with torch.no_grad():
        cond = model.encode_prompts(prompts)
        unc = model.encode_prompts([""]).expand(len(prompts), -1, -1)
        hs = torch.cat([unc, cond])
        lat = torch.randn(len(prompts), 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0))
        for t in sched.timesteps:
            e = model.unet(torch.cat([lat, lat]), t, encoder_hidden_states=hs).sample
            eu, ec = e.chunk(2)
            lat = sched.step(eu + 7.5 * (ec - eu), t, lat).prev_sample
    return lat


if __name__ == "__main__":
    from carla_mr.bench_cli import main_for

    main_for(run)

"""Sampling: classifier-free-guided DPM-Solver++ (default) or DDIM over any :class:`TextToImage`."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from carla_mr.errors import InputError, require

SAMPLERS = ("dpm", "ddim")


def make_sampler(model, kind: str = "dpm"):
    diffusers = require("diffusers", extra="genai", feature="sampling")
    cfg = dict(model.scheduler_config)
    if kind == "dpm":
        return diffusers.DPMSolverMultistepScheduler.from_config(cfg, algorithm_type="dpmsolver++", solver_order=2)
    if kind == "ddim":
        return diffusers.DDIMScheduler.from_config(cfg)
    raise InputError(f"unknown sampler {kind!r}; use one of {', '.join(SAMPLERS)}", field="sampler")


def sample(model, prompts: Sequence[str], *, seed: int = 0, steps: int = 20, guidance: float = 7.5,
           size: int | None = None, sampler: str = "dpm", negative_prompt: str = "", batch_size: int = 32,
           seeds: Sequence[int] | None = None, progress=None) -> np.ndarray:
    """Generate one image per prompt: (B, H, W, 3) uint8 RGB.

    Image i's initial noise comes from ``torch.Generator().manual_seed(seeds[i])`` (default
    ``seed + i``), so every image is reproducible on its own. ``guidance``: classifier-free
    guidance scale (1 = off). ``size``: output side in pixels (default: the model's).
    """
    torch = require("torch", extra="genai", feature="sampling")
    prompts = [str(p) for p in prompts]
    if not prompts:
        return np.zeros((0, 0, 0, 3), np.uint8)
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}", field="steps")
    size = int(size or model.image_size)
    mult = model.vae_scale * 2 ** (len(model.unet.config.block_out_channels) - 1)
    if size < mult or size % mult:
        raise InputError(f"size {size} must be a positive multiple of {mult} pixels for this model", field="size")
    seeds = list(seeds) if seeds is not None else [int(seed) + i for i in range(len(prompts))]
    if len(seeds) != len(prompts):
        raise InputError("one seed per prompt is needed", field="seeds")
    lat_side = size // model.vae_scale
    ch = int(model.unet.config.in_channels)
    out = []
    dev = model.device
    with torch.no_grad():
        uncond = model.encode_prompts([negative_prompt])
        for b0 in range(0, len(prompts), int(batch_size)):
            ps = prompts[b0:b0 + batch_size]
            ss = seeds[b0:b0 + batch_size]
            sched = make_sampler(model, sampler)
            sched.set_timesteps(int(steps))
            lat = torch.stack([torch.randn((ch, lat_side, lat_side), generator=torch.Generator().manual_seed(int(s)))
                               for s in ss]).to(dev) * sched.init_noise_sigma
            cond = model.encode_prompts(ps)
            use_cfg = guidance != 1.0
            hs = torch.cat([uncond.expand(len(ps), -1, -1), cond]) if use_cfg else cond
            for t in sched.timesteps:
                x = torch.cat([lat, lat]) if use_cfg else lat
                x = sched.scale_model_input(x, t)
                eps = model.unet(x, t, encoder_hidden_states=hs).sample
                if use_cfg:
                    e_u, e_c = eps.chunk(2)
                    eps = e_u + float(guidance) * (e_c - e_u)
                lat = sched.step(eps, t, lat).prev_sample
                if progress:
                    progress(0)
            img = model.decode(lat).clamp(-1, 1)
            out.append(((img + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
            if progress:
                progress(len(ps))
    return np.concatenate(out, 0)

"""Training the super-resolution stage on low/high-resolution pairs.

Pairs: a 128 px procedural sign (:func:`~carla_mr.genai.procedural.value_batch`, the base
model's training distribution rendered at 4x) and its 32 px area-downsampled copy, prompted
like the base model ("a speed limit 30 sign on a red background"; the value is dropped from
``value_drop`` of the prompts and the prompt from ``cfg_drop``). Each step noises the
residual target (:func:`~carla_mr.genai.upsampler.residual_target`) at a uniform DDPM
timestep and the low-resolution conditioning at a uniform noise-augmentation level in
0..``max_noise_level`` (0 for a quarter of the items), and regresses the scheduler's target
(v-prediction for the default, MSE). The
text encoder is the base model's and stays frozen. DreamBooth reuses :func:`fit_pairs` on the
instance images' pairs.

Run directory: ``upsampler/`` (the EMA weights), ``train_log.csv`` (step, loss, loss_ema, lr,
elapsed_s), ``train_upsampler.json``.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from carla_mr.errors import InputError, require


@dataclass
class UpsamplerTrainConfig:
    steps: int = 2000
    batch_size: int = 16
    lr: float = 5e-4
    warmup: int = 100
    weight_decay: float = 1e-2
    ema_decay: float = 0.995
    cfg_drop: float = 0.1
    value_drop: float = 0.2
    value_swap: float = 0.0  # share of speed-limit pairs whose low-res input shows other digits
    speed_share: float = 0.3
    init: str | None = None  # an upsampler directory to continue from (None: a fresh UNet)
    bank: int = 3000  # rendered pairs (the data set the steps draw from)
    low_size: int = 32
    factor: int = 4
    save_every: int = 200
    log_every: int = 10
    seed: int = 0
    threads: int = 2
    device: str = "cpu"
    dtype: str = "fp32"
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = False

    def __post_init__(self):
        for name, share in (("speed_share", self.speed_share), ("value_swap", self.value_swap),
                            ("value_drop", self.value_drop)):
            if not 0.0 <= float(share) <= 1.0:
                flag = "--" + name.replace("_", "-")
                raise InputError(f"{flag} must be in [0, 1], got {share}", field=flag)


def render_pairs(n: int, *, low_size: int = 32, factor: int = 4, seed: int = 0, speed_share: float = 0.3,
                 value_drop: float = 0.2, value_swap: float = 0.0, progress=None):
    """``n`` (high (n, H, H, 3), low (n, h, h, 3) uint8, prompts) pairs of procedural signs.

    ``value_swap``: the share of speed-limit pairs whose low-resolution image shows other
    digits (a random 10..199) than the high-resolution target and the prompt, which then always
    names the value (see :func:`~carla_mr.genai.procedural.value_batch_with_decoys`): it teaches
    the upsampler to draw the prompted value over the garbled digits of the base model's output.
    """
    import cv2

    from carla_mr.genai.procedural import value_batch_with_decoys
    from carla_mr.genai.prompts import prompt_for

    if not 0.0 <= float(value_swap) <= 1.0:
        raise InputError(f"value_swap must be in [0, 1], got {value_swap}", field="--value-swap")
    rng = np.random.default_rng([int(seed), 77])
    swap_rng = np.random.default_rng([int(seed), 78])
    hi, lo_src, prompts = [], [], []
    for b0 in range(0, int(n), 64):
        m = min(64, int(n) - b0)
        imgs, decoys, ks, cs, vs, dvs = value_batch_with_decoys(rng, m, size=low_size * factor,
                                                                speed_share=speed_share, decoy_p=value_swap,
                                                                decoy_rng=swap_rng)
        hi.append(imgs)
        lo_src.append(decoys)
        prompts += [prompt_for(k, c, value=v if (v is not None and (rng.random() >= value_drop or dv is not None))
                               else None)
                    for k, c, v, dv in zip(ks, cs, vs, dvs)]
        if progress:
            progress(m)
    high = np.concatenate(hi)
    low = np.stack([cv2.resize(im, (low_size, low_size), interpolation=cv2.INTER_AREA)
                    for im in np.concatenate(lo_src)])
    return high, low, prompts


def pairs_from_images(images: np.ndarray, factor: int = 4):
    """(high, low) pairs from high-resolution images (N, H, H, 3): low = area-downsampled."""
    import cv2

    images = np.asarray(images)
    s = images.shape[1] // factor
    low = np.stack([cv2.resize(im, (s, s), interpolation=cv2.INTER_AREA) for im in images])
    return images, low


def _lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _to_tensor(x):
    torch = require("torch", extra="genai", feature="the upsampler")
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def pair_loss(up, high, low, prompts, gen, accel=None):
    """Noise-prediction MSE of the upsampler on a batch of pairs (tensors in [-1, 1])."""
    torch = require("torch", extra="genai", feature="the upsampler")
    diffusers = require("diffusers", extra="genai", feature="the upsampler")
    from carla_mr.genai.upsampler import noised_low, residual_target

    dev = up.device
    sched = diffusers.DDPMScheduler.from_config(up.scheduler_config)
    n = high.shape[0]
    x0 = residual_target(up, high, low)
    noise = torch.randn(x0.shape, generator=gen).to(dev)
    t = torch.randint(0, int(sched.config.num_train_timesteps), (n,), generator=gen).to(dev)
    levels = torch.randint(0, int(up.max_noise_level) + 1, (n,), generator=gen)
    levels = torch.where(torch.rand(n, generator=gen) < 0.25, torch.zeros_like(levels), levels).to(dev)
    cond = noised_low(up, low, levels, generator=gen)
    xt = sched.add_noise(x0, noise, t)
    with torch.no_grad():
        hs = up.encode_prompts(prompts)
    ctx = accel.autocast() if accel is not None else None
    if ctx is None:
        pred = up.unet(torch.cat([xt, cond], 1), t, encoder_hidden_states=hs, class_labels=levels).sample
    else:
        with ctx:
            pred = up.unet(torch.cat([xt, cond], 1), t, encoder_hidden_states=hs, class_labels=levels).sample
    target = noise if sched.config.prediction_type == "epsilon" else sched.get_velocity(x0, noise, t)
    return torch.nn.functional.mse_loss(pred.float(), target)


def fit_pairs(up, high: np.ndarray, low: np.ndarray, prompts, *, steps: int, lr: float, batch_size: int = 8,
              warmup: int = 0, weight_decay: float = 1e-2, cfg_drop: float = 0.1, seed: int = 0, accel=None,
              ema_decay: float | None = None, on_step=None) -> list[float]:
    """Train ``up.unet`` on the pairs for ``steps`` steps (AdamW, warm-up + cosine); with
    ``ema_decay`` the EMA weights are copied in at the end. Returns the per-step losses."""
    torch = require("torch", extra="genai", feature="the upsampler")
    from carla_mr.genai.accel import backward_step, make_accel, make_optimizer, prepare_unet
    from carla_mr.genai.train import Ema

    if len(high) == 0 or len(high) != len(low) or len(low) != len(prompts):
        raise InputError("fit_pairs needs as many high, low images and prompts, at least one", field="pairs")
    accel = accel or make_accel()
    prepare_unet(up.unet, accel)
    up.text_encoder.requires_grad_(False)
    up.unet.train()
    params = [p for p in up.unet.parameters() if p.requires_grad]
    opt = make_optimizer(params, lr=lr, weight_decay=weight_decay, accel=accel)
    scaler = accel.scaler()
    ema = Ema(params, ema_decay) if ema_decay else None
    gen = torch.Generator().manual_seed(int(seed))
    rng = np.random.default_rng([int(seed), 5])
    losses = []
    for step in range(int(steps)):
        idx = rng.integers(0, len(high), size=int(batch_size))
        ps = [prompts[i] if rng.random() >= cfg_drop else "" for i in idx]
        h, lo = _to_tensor(high[idx]).to(accel.device), _to_tensor(low[idx]).to(accel.device)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, int(steps), lr, warmup)
        loss = pair_loss(up, h, lo, ps, gen, accel)
        backward_step(loss, opt, params, accel, scaler)
        if ema is not None:
            ema.update(params)
        losses.append(float(loss.detach()))
        if on_step:
            on_step(step + 1, losses[-1], _lr_at(step, int(steps), lr, warmup), ema)
    if ema is not None:
        ema.copy_to(params)
    up.unet.eval()
    return losses


def train_upsampler(out: str | os.PathLike, base: str | os.PathLike, cfg: UpsamplerTrainConfig | None = None, *,
                    progress=None, log=None) -> dict:
    """Train an upsampler for the base checkpoint ``base`` (its text encoder) into ``out``: a
    fresh one, or ``cfg.init`` (an upsampler directory) continued."""
    torch = require("torch", extra="genai", feature="training the upsampler")
    from carla_mr.genai.accel import make_accel
    from carla_mr.genai.model import load_model
    from carla_mr.genai.upsampler import build_upsampler, load_upsampler, save_upsampler
    from carla_mr.io import atomic_write_json, atomic_write_text

    cfg = cfg or UpsamplerTrainConfig()
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.bank < 1:
        raise InputError("steps, batch_size and bank must be >= 1", field="--steps")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    accel = make_accel(cfg.device, cfg.dtype, cfg.gradient_checkpointing, cfg.use_8bit_adam)
    text_model = load_model(base)
    text_model.text_encoder.to(accel.device)
    if cfg.init:
        up = load_upsampler(cfg.init, text_model, device=accel.device)
        if (up.low_size, up.factor) != (cfg.low_size, cfg.factor):
            raise InputError(f"--init {cfg.init} upsamples {up.low_size} px by {up.factor}, not "
                             f"{cfg.low_size} px by {cfg.factor}", field="--init")
    else:
        up = build_upsampler(text_model, low_size=cfg.low_size, factor=cfg.factor, seed=cfg.seed)
    t0 = time.time()
    if log:
        log(f"rendering {cfg.bank} low/high-resolution pairs")
    high, low, prompts = render_pairs(cfg.bank, low_size=cfg.low_size, factor=cfg.factor, seed=cfg.seed,
                                      speed_share=cfg.speed_share, value_drop=cfg.value_drop,
                                      value_swap=cfg.value_swap)
    rows: list[str] = []
    state = {"loss_ema": None}

    def save(step):
        save_upsampler(up, out / "upsampler", text_encoder_ref=str(base), extra={"trained_steps": step,
                                                                                 "config": asdict(cfg)})
        atomic_write_text(out / "train_log.csv", "step,loss,loss_ema,lr,elapsed_s\n" + "".join(r + "\n" for r in rows))

    def on_step(step, loss, lr, ema):
        le = state["loss_ema"]
        state["loss_ema"] = loss if le is None else 0.98 * le + 0.02 * loss
        if step % cfg.log_every == 0 or step == cfg.steps:
            rows.append(f"{step},{loss:.5f},{state['loss_ema']:.5f},{lr:.6g},{time.time() - t0:.1f}")
        if progress:
            progress(1)
        if step % cfg.save_every == 0 and step < cfg.steps:
            raw = [p.detach().clone() for p in up.unet.parameters()]
            ema.copy_to(list(up.unet.parameters()))
            save(step)
            with torch.no_grad():
                for p, r in zip(up.unet.parameters(), raw):
                    p.copy_(r)

    fit_pairs(up, high, low, prompts, steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, warmup=cfg.warmup,
              weight_decay=cfg.weight_decay, cfg_drop=cfg.cfg_drop, seed=cfg.seed, accel=accel,
              ema_decay=cfg.ema_decay, on_step=on_step)
    save(cfg.steps)
    summary = {"upsampler": str(out / "upsampler"), "base": str(base), "steps": cfg.steps,
               "loss_ema": state["loss_ema"], "elapsed_s": round(time.time() - t0, 1),
               "params": int(sum(p.numel() for p in up.unet.parameters())), "pairs": int(len(high)),
               "config": asdict(cfg)}
    atomic_write_json(out / "train_upsampler.json", summary)
    return summary

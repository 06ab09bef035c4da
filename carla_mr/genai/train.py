"""Training the CPU default: a pixel-space text-to-image model from scratch on procedural signs.

Each step draws a fresh batch of procedural "sign on a colour background" images
(:func:`~carla_mr.genai.procedural.base_batch`) with prompts
"a {sign} sign on a {colour} background" (10% empty prompts, for classifier-free guidance),
adds DDPM noise at uniform timesteps and regresses the noise (MSE). The UNet and the text
encoder are trained jointly (AdamW, linear warm-up, cosine decay); an EMA of the weights is
what gets saved. The batch of step ``k`` depends only on (seed, k), so a resumed run sees the
same data as an uninterrupted one.

Run directory::

    model/            the EMA model, StableDiffusionPipeline layout (written at every checkpoint)
    checkpoint.pt     training state (weights, EMA, optimiser, step) for --resume (torch.save,
                      loaded with weights_only=True)
    train_log.csv     step, loss, loss_ema, lr, elapsed_s
    train.json        the configuration and final figures
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from carla_mr.errors import InputError, require
from carla_mr.genai.prompts import COLOURS, prompt_for
from carla_mr.genai.signs import SIGN_CLASSES


@dataclass
class BaseTrainConfig:
    steps: int = 2000
    batch_size: int = 16
    lr: float = 8e-4
    warmup: int = 200
    weight_decay: float = 1e-2
    ema_decay: float = 0.995
    cfg_drop: float = 0.1
    image_size: int = 32
    save_every: int = 100
    log_every: int = 10
    seed: int = 0
    threads: int = 2
    half_save: bool = True  # float16 weights on disk (the committed checkpoint is <= 20 MB)
    # value prompts: speed-limit images are prompted "a speed limit {v} sign ..." (1 - value_drop
    # of the time; else the generic "a speed limit sign ..."), and speed_share of each batch is
    # speed-limit signs (0: uniform over the classes, the original recipe)
    value_prompts: bool = False
    value_drop: float = 0.2
    speed_share: float = 0.0
    train_text_encoder: bool = True  # False: the text encoder is frozen (an upsampler sharing it stays valid)
    # with train_text_encoder False: these tokens' input embeddings still train (textual-inversion
    # style; e.g. "0 1 2 3 4 5 6 7 8 9" for the digits of speed values, which the original base
    # never saw); every other weight of the text encoder stays bit-identical
    train_tokens: str = ""
    # > 0: cross-attention in this many lowest-resolution UNet levels (widens an --init model, new
    # attention layers start as the identity); 0 keeps the architecture
    cross_attention_levels: int = 0
    token_lr: float = 5e-3  # their peak learning rate (textual inversion needs far more than the UNet's)
    init: str | None = None  # continue from this checkpoint directory instead of a fresh model
    device: str = "cpu"
    dtype: str = "fp32"
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = False


def _lr_at(step: int, cfg: BaseTrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def images_to_tensor(imgs: np.ndarray):
    torch = require("torch", extra="genai", feature="training")
    return torch.from_numpy(np.ascontiguousarray(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


class Ema:
    """Exponential moving average of a list of parameters (with the usual warm-up)."""

    def __init__(self, params, decay: float):
        self.decay = float(decay)
        self.shadow = [p.detach().clone() for p in params]
        self.n = 0

    def update(self, params):
        torch = require("torch", extra="genai", feature="training")
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        with torch.no_grad():
            for s, p in zip(self.shadow, params):
                s.lerp_(p.detach(), 1 - d)

    def copy_to(self, params):
        torch = require("torch", extra="genai", feature="training")
        with torch.no_grad():
            for s, p in zip(self.shadow, params):
                p.copy_(s)


def _batch(rng, cfg: BaseTrainConfig, kinds, colours):
    """One step's images (uint8) and prompts ("" for the classifier-free-guidance drop)."""
    from carla_mr.genai.procedural import base_batch, value_batch

    if not cfg.value_prompts:
        imgs, ks, cs = base_batch(rng, cfg.batch_size, size=cfg.image_size, kinds=kinds, colours=colours)
        return imgs, [prompt_for(k, c) if rng.random() >= cfg.cfg_drop else "" for k, c in zip(ks, cs)]
    imgs, ks, cs, vs = value_batch(rng, cfg.batch_size, size=cfg.image_size, kinds=kinds, colours=colours,
                                   speed_share=cfg.speed_share)
    prompts = []
    for k, c, v in zip(ks, cs, vs):
        if rng.random() < cfg.cfg_drop:
            prompts.append("")
        else:
            prompts.append(prompt_for(k, c, value=v if (v is not None and rng.random() >= cfg.value_drop) else None))
    return imgs, prompts


def token_rows_trainable(model, tokens: str):
    """Make the input-embedding rows of ``tokens`` (whitespace-separated) trainable, and only them.

    Returns the embedding weight (V, D) with ``requires_grad`` and a gradient hook that zeroes every
    other row; with weight decay 0 for it, Adam leaves those rows exactly as they were.
    """
    torch = require("torch", extra="genai", feature="training")
    ids = set()
    special = {model.tokenizer.bos_token_id, model.tokenizer.eos_token_id, model.tokenizer.pad_token_id}
    for tok in tokens.split():
        got = [i for i in model.tokenizer(tok).input_ids if i not in special]
        if not got:
            raise InputError(f"train_tokens: {tok!r} is not a token of this tokenizer", field="train_tokens")
        ids.update(got)
    weight = model.text_encoder.get_input_embeddings().weight
    mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
    mask[sorted(ids)] = 1.0
    weight.requires_grad_(True)
    weight.register_hook(lambda g: g * mask)
    return weight


def _check_base_config(cfg: BaseTrainConfig) -> None:
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise InputError("steps and batch_size must be >= 1", field="steps")
    if cfg.train_tokens.strip() and cfg.train_text_encoder:
        raise InputError("train_tokens trains single embedding rows of a frozen text encoder; add "
                         "--freeze-text-encoder, or drop --train-tokens (the whole encoder trains)",
                         field="train_tokens")


@dataclass
class _BaseRun:
    """What one base-model training run updates: the model, its trained tensors (the UNet,
    the text encoder when it trains, single token rows when only those train), the optimiser
    and the EMA of the trained tensors."""

    model: Any
    params: list
    opt: Any
    ema: Ema


def _base_trainables(cfg: BaseTrainConfig, accel, model) -> _BaseRun:
    """Build or load the model, put it on ``accel``'s device and make its optimiser and EMA."""
    import torch

    from carla_mr.genai.accel import make_optimizer, prepare_unet
    from carla_mr.genai.model import build_tiny, load_model, widen_cross_attention

    if model is None:
        model = load_model(cfg.init) if cfg.init else build_tiny(image_size=cfg.image_size, seed=cfg.seed)
    if cfg.cross_attention_levels:
        model = widen_cross_attention(model, cfg.cross_attention_levels)
    prepare_unet(model.unet, accel)
    model.text_encoder.to(device=accel.device, dtype=torch.float32)
    model.text_encoder.requires_grad_(bool(cfg.train_text_encoder))
    params = list(model.unet.parameters()) + (list(model.text_encoder.parameters()) if cfg.train_text_encoder else [])
    groups = [{"params": list(params)}]
    if cfg.train_tokens.strip():
        emb = token_rows_trainable(model, cfg.train_tokens)
        params.append(emb)
        # no decay: it would shrink the frozen rows; the schedule scales this group's own peak lr
        groups.append({"params": [emb], "weight_decay": 0.0, "lr_scale": cfg.token_lr / cfg.lr})
    opt = make_optimizer(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, accel=accel)
    return _BaseRun(model, params, opt, Ema(params, cfg.ema_decay))


def _resume_base(out: Path, run: _BaseRun, log) -> tuple[int, list[str]]:
    """Load ``out``'s checkpoint into ``run``: (the step it reached, its log rows up to it)."""
    import torch

    ckpt_path = out / "checkpoint.pt"
    if not ckpt_path.is_file():
        raise InputError(f"--resume given but {ckpt_path} does not exist; drop --resume or point --out at the "
                         "run to resume", field="--resume")
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    run.model.unet.load_state_dict(state["unet"])
    run.model.text_encoder.load_state_dict(state["text_encoder"])
    run.opt.load_state_dict(state["opt"])
    for s, v in zip(run.ema.shadow, state["ema"]):
        s.copy_(v)
    run.ema.n = int(state["ema_n"])
    start = int(state["step"])
    log_rows: list[str] = []
    if (out / "train_log.csv").is_file():
        log_rows = (out / "train_log.csv").read_text().splitlines()[1:]
        log_rows = [r for r in log_rows if int(r.split(",")[0]) <= start]
    if log:
        log(f"resumed from step {start}")
    return start, log_rows


def _save_base(out: Path, step: int, cfg: BaseTrainConfig, run: _BaseRun, log_rows: list[str]) -> None:
    """EMA weights into ``out/model`` (written beside, then swapped in); raw weights, optimiser
    and EMA into ``out/checkpoint.pt``; the log into ``out/train_log.csv``."""
    import torch

    from carla_mr.genai.model import save_model
    from carla_mr.io import atomic_write, atomic_write_text

    model, params, ema = run.model, run.params, run.ema
    raw = [p.detach().clone() for p in params]
    ema.copy_to(params)
    extra = {"trained_steps": step, "kind": "carla_mr-base", "classes": list(SIGN_CLASSES),
             "colours": list(COLOURS), "prompt": "a {sign} sign on a {colour} background",
             "config": asdict(cfg)}
    if cfg.value_prompts:
        from carla_mr.config.vocab import SPEED_VALUES

        extra.update(speed_values=list(SPEED_VALUES), value_prompt="a speed limit {value} sign on a {colour} background")
    if cfg.init:
        extra["init"] = str(cfg.init)
    save_model(model, out / "model.partial", half=cfg.half_save, extra=extra)
    with torch.no_grad():
        for p, r in zip(params, raw):
            p.copy_(r)
    if (out / "model").exists():
        shutil.rmtree(out / "model")
    os.replace(out / "model.partial", out / "model")
    state = {"unet": model.unet.state_dict(), "text_encoder": model.text_encoder.state_dict(),
             "opt": run.opt.state_dict(), "ema": ema.shadow, "ema_n": ema.n, "step": step}
    atomic_write(out / "checkpoint.pt", lambda fh: torch.save(state, fh))
    atomic_write_text(out / "train_log.csv", "step,loss,loss_ema,lr,elapsed_s\n" + "".join(r + "\n" for r in log_rows))


def _base_step(step: int, cfg: BaseTrainConfig, run: _BaseRun, sched, accel, scaler) -> float:
    """One denoising step on a batch drawn from (seed, step); returns the loss."""
    import torch

    from carla_mr.genai.accel import backward_step

    model, opt = run.model, run.opt
    rng = np.random.default_rng([int(cfg.seed), step])
    imgs, prompts = _batch(rng, cfg, SIGN_CLASSES, tuple(COLOURS))
    g = torch.Generator().manual_seed(int(cfg.seed) * 1_000_003 + step)
    x0 = model.encode(images_to_tensor(imgs)).to(accel.device)
    noise = torch.randn(x0.shape, generator=g).to(accel.device)
    t = torch.randint(0, int(sched.config.num_train_timesteps), (x0.shape[0],), generator=g).to(accel.device)
    xt = sched.add_noise(x0, noise, t)
    for group in opt.param_groups:
        group["lr"] = _lr_at(step, cfg) * group.get("lr_scale", 1.0)
    with accel.autocast():
        hs = model.encode_prompts(prompts)
        pred = model.unet(xt, t, encoder_hidden_states=hs).sample
    loss = torch.nn.functional.mse_loss(pred.float(), noise)
    backward_step(loss, opt, run.params, accel, scaler)
    run.ema.update(run.params)
    return float(loss.detach())


def train_base(out: str | os.PathLike, cfg: BaseTrainConfig | None = None, *, resume: bool = False,
               progress=None, log=None, model=None) -> dict:
    """Train (or resume) the base model into the run directory ``out``; returns a summary."""
    torch = require("torch", extra="genai", feature="training the base model")
    diffusers = require("diffusers", extra="genai", feature="training the base model")
    from carla_mr.genai.accel import make_accel
    from carla_mr.io import atomic_write_json

    cfg = cfg or BaseTrainConfig()
    _check_base_config(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    accel = make_accel(cfg.device, cfg.dtype, cfg.gradient_checkpointing, cfg.use_8bit_adam)
    run = _base_trainables(cfg, accel, model)
    scaler = accel.scaler()
    start, log_rows = _resume_base(out, run, log) if resume else (0, [])
    sched = diffusers.DDPMScheduler.from_config(run.model.scheduler_config)
    run.model.unet.train(), run.model.text_encoder.train()
    t0 = time.time()
    elapsed0 = float(log_rows[-1].split(",")[4]) if log_rows else 0.0
    loss_ema = float(log_rows[-1].split(",")[2]) if log_rows else None
    for step in range(start, cfg.steps):
        lv = _base_step(step, cfg, run, sched, accel, scaler)
        loss_ema = lv if loss_ema is None else 0.98 * loss_ema + 0.02 * lv
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            log_rows.append(f"{step + 1},{lv:.5f},{loss_ema:.5f},{_lr_at(step, cfg):.6g},"
                            f"{elapsed0 + time.time() - t0:.1f}")
        if progress:
            progress(1)
        if (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            _save_base(out, step + 1, cfg, run, log_rows)
    final = max(cfg.steps, start)
    _save_base(out, final, cfg, run, log_rows)
    elapsed = elapsed0 + time.time() - t0
    summary = {"model": str(out / "model"), "steps": final, "resumed_from": start if resume else None,
               "loss_ema": loss_ema, "elapsed_s": round(elapsed, 1),
               "steps_per_s": round((final - start) / max(time.time() - t0, 1e-9), 4),
               "params": run.model.n_params(), "config": asdict(cfg)}
    atomic_write_json(out / "train.json", summary)
    return summary

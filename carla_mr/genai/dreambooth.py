"""DreamBooth fine-tuning with prior preservation (Ruiz et al. 2023) on any :class:`TextToImage`.

Inputs: a few *instance* images of one sign, a rare identifier token (default ``sks``) and the
sign's class. *Class* images are sampled from the base model with the class prompt before
training. Every step builds one batch of ``batch_size`` instance and ``batch_size`` class
images, noises both at random DDPM timesteps and minimises::

    loss = MSE(eps_hat, eps)[instance half] + prior_loss_weight * MSE(eps_hat, eps)[class half]

(:func:`prior_preservation_loss`). ``mode="full"`` fine-tunes every UNet weight (and the text
encoder with ``train_text_encoder``); ``mode="lora"`` trains rank-``rank`` LoRA adapters (peft)
on the UNet's attention projections, then fuses them so the saved model is a plain checkpoint;
the adapter alone is also saved in diffusers' format as ``lora/pytorch_lora_weights.safetensors``
(:mod:`carla_mr.genai.lora`: ``StableDiffusionPipeline.load_lora_weights(out/"lora")`` loads it).

Augmentation of the few instance images: each is shifted by a random whole number of pixels,
up to ``shift_px`` in x and y (edges replicated), every time it is drawn.

With ``upsampler`` (a super-resolution stage directory) the instance images are also cut into
low/high-resolution pairs (high = the image at the upsampler's output size, low = its area
downsample) and the upsampler is fine-tuned on them, half of each batch being procedural
class pairs (prior preservation), as the paper fine-tunes "the super-resolution components".

Recipe defaults (from the DreamBooth paper and the diffusers example): 400 steps,
prior_loss_weight 1.0, 100-200 class images, lr 5e-6 for a full fine-tune of a latent (Stable
Diffusion) model and 1e-5 for the pixel-space default (1e-4 made the default collapse on 6
images: instance-prompt G 0.42), 1e-4 for LoRA.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from carla_mr.errors import InputError, require

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".webp")


@dataclass
class DreamBoothConfig:
    kind: str = "stop"  # the sign class of the instance images
    token: str = "sks"
    instance_prompt: str | None = None  # default: "a {token} {sign} sign on a {colour} background"
    class_prompt: str | None = None  # default: "a {sign} sign on a {colour} background" (random colours)
    steps: int = 400
    batch_size: int = 4
    lr: float | None = None  # None: 5e-6 full (SD) / 1e-5 full (pixel model) / 1e-4 LoRA
    prior_loss_weight: float = 1.0
    num_class_images: int = 100
    # "instance": class images of the instance's class only (the paper's prior preservation);
    # "all": of every class the base model knows (its carla_mr.json classes, else the sign
    # vocabulary), so a full fine-tune also keeps the classes it does not train
    prior_classes: str = "instance"
    class_sample_steps: int = 20
    # classifier-free guidance of the class images; None: 1.0 for pixel-space models (the model's
    # own p(x | prompt): guided samples are sharper than the prior, and training on them drifts
    # the model toward them), 7.5 for latent (Stable Diffusion) models, whose unguided samples are poor
    class_guidance: float | None = None
    mode: str = "full"  # "full" | "lora"
    rank: int = 4
    train_text_encoder: bool = False
    shift_px: int = 2  # augmentation: random shift of the instance images, pixels
    seed: int = 0
    threads: int = 2
    device: str = "cpu"
    dtype: str = "fp32"
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = False
    upsampler: str | None = None  # fine-tune this super-resolution stage on the instance pairs too
    upsampler_steps: int = 200
    upsampler_lr: float = 2e-5


def default_lr(mode: str, pixel_space: bool) -> float:
    """The default learning rate: 1e-4 LoRA, 1e-5 full pixel-space, 5e-6 full latent (SD)."""
    if mode == "lora":
        return 1e-4
    return 1e-5 if pixel_space else 5e-6


def default_class_guidance(pixel_space: bool) -> float:
    """Guidance of the prior-preservation class images: 1.0 pixel-space, 7.5 latent (SD)."""
    return 1.0 if pixel_space else 7.5


def shift_augment(x, max_px: int, gen):
    """Shift each image of (B, C, H, W) by random integers in [-max_px, max_px] (edges replicated)."""
    torch = require("torch", extra="genai", feature="DreamBooth")
    if max_px <= 0:
        return x
    p = int(max_px)
    padded = torch.nn.functional.pad(x, (p, p, p, p), mode="replicate")
    h, w = x.shape[-2:]
    d = torch.randint(0, 2 * p + 1, (x.shape[0], 2), generator=gen)
    return torch.stack([padded[i, :, int(dy):int(dy) + h, int(dx):int(dx) + w] for i, (dy, dx) in enumerate(d)])


def list_instance_images(folder: str | os.PathLike) -> list[Path]:
    p = Path(folder).expanduser()
    if not p.is_dir():
        raise InputError(f"instance folder {p} does not exist; pass a folder of 3-20 images of one sign",
                         field="--instance-dir")
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS and f.is_file())
    if not files:
        raise InputError(f"instance folder {p} holds no images ({', '.join(IMAGE_EXTS)}); put 3-20 images of one "
                         "sign there", field="--instance-dir")
    return files


def read_instance_images(folder: str | os.PathLike) -> list[np.ndarray]:
    """The instance images as read; InputError if the folder has none, one is unreadable, or
    they have mixed sizes (naming the files and sizes)."""
    from carla_mr.genai.datasets import read_image

    files = list_instance_images(folder)
    imgs = [read_image(f) for f in files]
    sizes = {}
    for f, im in zip(files, imgs):
        sizes.setdefault(f"{im.shape[1]}x{im.shape[0]}", []).append(f.name)
    if len(sizes) > 1:
        detail = "; ".join(f"{k}: {', '.join(v[:3])}{' ...' if len(v) > 3 else ''}" for k, v in sorted(sizes.items()))
        raise InputError(f"the instance images in {folder} have mixed sizes ({detail}); give every image the same "
                         "size (crop or resize them to one square size, e.g. 128x128)", field="--instance-dir")
    return imgs


def load_instance_images(folder: str | os.PathLike, size: int) -> np.ndarray:
    """(N, size, size, 3) uint8: centre square crop, area resize."""
    import cv2

    out = []
    for img in read_instance_images(folder):
        h, w = img.shape[:2]
        s = min(h, w)
        img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        out.append(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if s > size else cv2.INTER_LINEAR))
    return np.stack(out)


def prior_preservation_loss(pred, target, n_instance: int, prior_loss_weight: float):
    """Split a batch [instance | class] and return (total, instance_loss, prior_loss)."""
    torch = require("torch", extra="genai", feature="DreamBooth")
    if not 0 < n_instance <= pred.shape[0]:
        raise InputError("n_instance must be in 1..batch", field="n_instance")
    f = torch.nn.functional.mse_loss
    inst = f(pred[:n_instance].float(), target[:n_instance].float())
    if n_instance == pred.shape[0]:
        return inst, inst, torch.zeros((), dtype=inst.dtype)
    prior = f(pred[n_instance:].float(), target[n_instance:].float())
    return inst + float(prior_loss_weight) * prior, inst, prior


def _background_colour(img: np.ndarray) -> str:
    from carla_mr.genai.scores import colour_match
    from carla_mr.genai.prompts import COLOURS

    best = None
    for c in COLOURS:
        if colour_match(img[None], [c])["colour_match"] == 1.0:
            best = c
    return best or "white"


def _class_images(m, cfg: DreamBoothConfig, class_prompts, out: Path, guidance: float, log=None) -> np.ndarray:
    """Sample the prior-preservation class images with the base model (and write them as PNG)."""
    from carla_mr.genai.sample import sample
    from carla_mr.io import atomic_write_png

    if not cfg.num_class_images:
        return np.zeros((0, m.image_size, m.image_size, 3), np.uint8)
    if log:
        log(f"sampling {cfg.num_class_images} class images with the base model")
    cls = sample(m, class_prompts, seed=int(cfg.seed) * 100_003 + 17, steps=cfg.class_sample_steps, guidance=guidance)
    cdir = out / "class_images"
    cdir.mkdir(exist_ok=True)
    for i, im in enumerate(cls):
        atomic_write_png(cdir / f"{i:04d}.png", im)
    return cls


def _trainable(m, cfg: DreamBoothConfig, accel) -> list:
    """Set requires_grad for the mode; returns the parameters to optimise."""
    from carla_mr.genai.accel import prepare_frozen, prepare_unet

    prepare_unet(m.unet, accel)
    m.unet.train()
    if cfg.mode == "lora":
        from carla_mr.genai.lora import add_unet_lora

        params = add_unet_lora(m.unet, cfg.rank)
    else:
        m.unet.requires_grad_(True)
        params = list(m.unet.parameters())
    m.text_encoder.requires_grad_(bool(cfg.train_text_encoder))
    if cfg.train_text_encoder:
        prepare_unet(m.text_encoder, type(accel)(accel.device, accel.dtype))  # fp32 master weights
        m.text_encoder.train()
        params += list(m.text_encoder.parameters())
    else:
        prepare_frozen(m.text_encoder, accel)
    prepare_frozen(m.vae, accel)
    return params


def _train_loop(m, cfg: DreamBoothConfig, X_inst, inst_prompts, X_cls, class_prompts, params, lr, accel, progress):
    """The DreamBooth steps; returns the log rows and the last (loss, instance, prior) losses."""
    torch = require("torch", extra="genai", feature="DreamBooth")
    diffusers = require("diffusers", extra="genai", feature="DreamBooth")
    from carla_mr.genai.accel import backward_step, make_optimizer

    opt = make_optimizer(params, lr=lr, weight_decay=1e-2, accel=accel)
    scaler = accel.scaler()
    sched = diffusers.DDPMScheduler.from_config(m.scheduler_config)
    T = int(sched.config.num_train_timesteps)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    rows, last = [], None
    for step in range(int(cfg.steps)):
        ii = torch.randint(0, len(X_inst), (cfg.batch_size,), generator=gen)
        xb = [shift_augment(X_inst[ii], cfg.shift_px, gen)]
        prompts = [inst_prompts[int(i)] for i in ii]
        if X_cls is not None and cfg.prior_loss_weight > 0:
            ci = torch.randint(0, len(X_cls), (cfg.batch_size,), generator=gen)
            xb.append(X_cls[ci])
            prompts += [class_prompts[int(i)] for i in ci]
        x = torch.cat(xb).to(accel.device)
        with torch.no_grad(), accel.autocast():
            lat = m.encode(x).float()
        noise = torch.randn(lat.shape, generator=gen).to(accel.device)
        t = torch.randint(0, T, (lat.shape[0],), generator=gen).to(accel.device)
        noisy = sched.add_noise(lat, noise, t)
        with accel.autocast():
            if cfg.train_text_encoder:
                hs = m.encode_prompts(prompts)
            else:
                with torch.no_grad():
                    hs = m.encode_prompts(prompts)
            pred = m.unet(noisy, t, encoder_hidden_states=hs).sample
        target = noise if sched.config.prediction_type == "epsilon" else sched.get_velocity(lat, noise, t)
        loss, li, lp = prior_preservation_loss(pred, target, cfg.batch_size, cfg.prior_loss_weight)
        backward_step(loss, opt, params, accel, scaler)
        last = (float(loss.detach()), float(li.detach()), float(lp.detach()))
        rows.append(f"{step + 1},{last[0]:.5f},{last[1]:.5f},{last[2]:.5f}")
        if progress:
            progress(1)
    return rows, last


def finetune_upsampler(upsampler_dir, m, instance_dir, inst_prompts, cfg: DreamBoothConfig, out: Path, accel,
                       log=None) -> dict:
    """Fine-tune a super-resolution stage on the instance images' low/high-resolution pairs,
    half of every batch procedural class pairs; writes ``out/upsampler``."""
    from carla_mr.genai.upsampler import load_upsampler, save_upsampler
    from carla_mr.genai.upsampler_train import fit_pairs, pairs_from_images, render_pairs

    up = load_upsampler(upsampler_dir, m, device=str(accel.device))
    hi_inst, lo_inst = pairs_from_images(load_instance_images(instance_dir, up.high_size), up.factor)
    n_cls = max(len(hi_inst) * 8, 32)
    hi_cls, lo_cls, p_cls = render_pairs(n_cls, low_size=up.low_size, factor=up.factor, seed=int(cfg.seed) + 1)
    # as many class pairs as instance pairs in expectation: repeat the instance pairs
    rep = max(1, n_cls // len(hi_inst))
    high = np.concatenate([np.repeat(hi_inst, rep, 0), hi_cls])
    low = np.concatenate([np.repeat(lo_inst, rep, 0), lo_cls])
    prompts = [p for p in inst_prompts for _ in range(rep)] + list(p_cls)
    if log:
        log(f"fine-tuning the upsampler on {len(hi_inst)} instance pairs (+{n_cls} class pairs)")
    losses = fit_pairs(up, high, low, prompts, steps=cfg.upsampler_steps, lr=cfg.upsampler_lr,
                       batch_size=cfg.batch_size * 2, seed=cfg.seed, accel=accel)
    save_upsampler(up, out / "upsampler", text_encoder_ref=str(out / "model"),
                   extra={"dreambooth_of": str(upsampler_dir), "instance_prompts": sorted(set(inst_prompts))})
    return {"upsampler": str(out / "upsampler"), "upsampler_steps": cfg.upsampler_steps,
            "upsampler_final_loss": losses[-1] if losses else None}


def dreambooth(base: str | os.PathLike, instance_dir: str | os.PathLike, out: str | os.PathLike,
               cfg: DreamBoothConfig | None = None, *, progress=None, log=None, model=None) -> dict:
    """Fine-tune ``base`` on the instance images; writes ``out/model`` (pipeline layout),
    ``out/class_images/``, ``out/train_log.csv``, ``out/dreambooth.json`` (and ``out/lora/``
    for LoRA, ``out/upsampler/`` with ``cfg.upsampler``). Returns a summary."""
    torch = require("torch", extra="genai", feature="DreamBooth")
    from carla_mr.genai.accel import make_accel
    from carla_mr.genai.model import load_model, save_model
    from carla_mr.genai.prompts import COLOURS, prompt_for
    from carla_mr.genai.signs import SIGN_CLASSES
    from carla_mr.genai.train import images_to_tensor
    from carla_mr.io import atomic_write_json, atomic_write_text

    cfg = cfg or DreamBoothConfig()
    if cfg.mode not in ("full", "lora"):
        raise InputError(f"mode must be 'full' or 'lora', got {cfg.mode!r}", field="--mode")
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.num_class_images < 0:
        raise InputError("steps and batch_size must be >= 1, num_class_images >= 0", field="--steps")
    prompt_for(cfg.kind)  # validates the class
    if cfg.prior_classes not in ("instance", "all"):
        raise InputError(f"prior_classes must be 'instance' or 'all', got {cfg.prior_classes!r}",
                         field="--prior-classes")
    accel = make_accel(cfg.device, cfg.dtype, cfg.gradient_checkpointing, cfg.use_8bit_adam)
    if cfg.upsampler:
        from carla_mr.genai.upsampler import check_upsampler_dir

        check_upsampler_dir(cfg.upsampler)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    m = model if model is not None else load_model(base)
    inst = load_instance_images(instance_dir, m.image_size)
    rng = np.random.default_rng(int(cfg.seed))
    colours = list(COLOURS)
    if cfg.instance_prompt:
        inst_prompts = [cfg.instance_prompt] * len(inst)
    else:
        inst_prompts = [prompt_for(cfg.kind, _background_colour(im), token=cfg.token) for im in inst]
    if cfg.class_prompt:
        class_prompts = [cfg.class_prompt] * cfg.num_class_images
    else:
        kinds = [cfg.kind] if cfg.prior_classes == "instance" else list(m.extra.get("classes") or SIGN_CLASSES)
        class_prompts = [prompt_for(kinds[i % len(kinds)], colours[int(rng.integers(len(colours)))])
                         for i in range(cfg.num_class_images)]
    class_guidance = cfg.class_guidance if cfg.class_guidance is not None else default_class_guidance(m.pixel_space)
    cls = _class_images(m, cfg, class_prompts, out, class_guidance, log)
    lr = cfg.lr if cfg.lr is not None else default_lr(cfg.mode, m.pixel_space)
    params = _trainable(m, cfg, accel)
    X_cls = images_to_tensor(cls) if len(cls) else None
    rows, last = _train_loop(m, cfg, images_to_tensor(inst), inst_prompts, X_cls, class_prompts, params, lr, accel,
                             progress)
    m.unet.eval(), m.text_encoder.eval()
    m.to(dtype=torch.float32)
    summary_extra = {}
    if cfg.mode == "lora":
        from carla_mr.genai.lora import save_lora

        save_lora(m.unet, out / "lora")
        summary_extra["lora"] = str(out / "lora")
        m.unet.fuse_lora()
        m.unet.unload_lora()
    save_model(m, out / "model", extra={"kind": "carla_mr-dreambooth", "base": str(base), "token": cfg.token,
                                        "instance_class": cfg.kind, "instance_prompts": sorted(set(inst_prompts)),
                                        "config": asdict(cfg),
                                        **{k: v for k, v in m.extra.items()
                                           if k in ("classes", "colours", "prompt", "speed_values", "value_prompt")}})
    atomic_write_text(out / "train_log.csv", "step,loss,instance_loss,prior_loss\n" + "".join(r + "\n" for r in rows))
    if cfg.upsampler:
        summary_extra.update(finetune_upsampler(cfg.upsampler, m, instance_dir, inst_prompts, cfg, out, accel, log))
    summary = {"model": str(out / "model"), "base": str(base), "mode": cfg.mode, "steps": cfg.steps, "lr": lr,
               "instance_images": int(len(inst)), "class_images": int(len(cls)), "class_guidance": class_guidance,
               "instance_prompt": inst_prompts[0], "final_loss": last[0], "elapsed_s": round(time.time() - t0, 1),
               **summary_extra, "config": asdict(cfg)}
    atomic_write_json(out / "dreambooth.json", summary)
    return summary

"""DreamBooth fine-tuning with prior preservation (Ruiz et al. 2023) on any :class:`TextToImage`.

Inputs: a few *instance* images of one sign, a rare identifier token (default ``sks``) and the
sign's class. *Class* images are sampled from the base model with the class prompt before
training. Every step builds one batch of ``batch_size`` instance and ``batch_size`` class
images, noises both at random DDPM timesteps and minimises::

    loss = MSE(eps_hat, eps)[instance half] + prior_loss_weight * MSE(eps_hat, eps)[class half]

(:func:`prior_preservation_loss`). ``mode="full"`` fine-tunes every UNet weight (and the text
encoder with ``train_text_encoder``); ``mode="lora"`` trains rank-``rank`` LoRA adapters (peft)
on the UNet's attention projections, then fuses them so the saved model is a plain checkpoint
(the adapter alone is also saved, as ``unet_lora/``).

Recipe defaults (from the DreamBooth paper and the diffusers example): 400 steps,
prior_loss_weight 1.0, 100-200 class images, lr 5e-6 full fine-tune of a Stable Diffusion
model, 1e-4 for LoRA; pixel-space tiny models trained from scratch here take 1e-4 full.
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
    lr: float | None = None  # None: 5e-6 full (SD) / 1e-4 full (pixel model) / 1e-4 LoRA
    prior_loss_weight: float = 1.0
    num_class_images: int = 100
    class_sample_steps: int = 20
    mode: str = "full"  # "full" | "lora"
    rank: int = 4
    train_text_encoder: bool = False
    seed: int = 0
    threads: int = 2


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


def load_instance_images(folder: str | os.PathLike, size: int) -> np.ndarray:
    """(N, size, size, 3) uint8: centre square crop, area resize."""
    import cv2

    from carla_mr.genai.datasets import read_image

    out = []
    for f in list_instance_images(folder):
        img = read_image(f)
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


def dreambooth(base: str | os.PathLike, instance_dir: str | os.PathLike, out: str | os.PathLike,
               cfg: DreamBoothConfig | None = None, *, progress=None, log=None, model=None) -> dict:
    """Fine-tune ``base`` on the instance images; writes ``out/model`` (pipeline layout),
    ``out/class_images/``, ``out/train_log.csv`` and ``out/dreambooth.json``. Returns a summary."""
    torch = require("torch", extra="genai", feature="DreamBooth")
    diffusers = require("diffusers", extra="genai", feature="DreamBooth")
    from carla_mr.genai.model import load_model, save_model
    from carla_mr.genai.prompts import COLOURS, prompt_for
    from carla_mr.genai.sample import sample
    from carla_mr.genai.train import images_to_tensor
    from carla_mr.io import atomic_write_json, atomic_write_text

    cfg = cfg or DreamBoothConfig()
    if cfg.mode not in ("full", "lora"):
        raise InputError(f"mode must be 'full' or 'lora', got {cfg.mode!r}", field="--mode")
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.num_class_images < 0:
        raise InputError("steps and batch_size must be >= 1, num_class_images >= 0", field="--steps")
    prompt_for(cfg.kind)  # validates the class
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    m = model if model is not None else load_model(base)
    size = m.image_size
    inst = load_instance_images(instance_dir, size)
    rng = np.random.default_rng(int(cfg.seed))
    colours = list(COLOURS)

    # prompts
    if cfg.instance_prompt:
        inst_prompts = [cfg.instance_prompt] * len(inst)
    else:
        inst_prompts = [prompt_for(cfg.kind, _background_colour(im), token=cfg.token) for im in inst]
    if cfg.class_prompt:
        class_prompts = [cfg.class_prompt] * cfg.num_class_images
    else:
        class_prompts = [prompt_for(cfg.kind, colours[int(rng.integers(len(colours)))])
                         for _ in range(cfg.num_class_images)]

    # class images from the base model (prior preservation)
    if cfg.num_class_images:
        if log:
            log(f"sampling {cfg.num_class_images} class images with the base model")
        cls = sample(m, class_prompts, seed=int(cfg.seed) * 100_003 + 17, steps=cfg.class_sample_steps)
        import cv2

        from carla_mr.io import atomic_write_bytes

        cdir = out / "class_images"
        cdir.mkdir(exist_ok=True)
        for i, im in enumerate(cls):
            atomic_write_bytes(cdir / f"{i:04d}.png", cv2.imencode(".png", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))[1].tobytes())
    else:
        cls = np.zeros((0, size, size, 3), np.uint8)

    lr = cfg.lr if cfg.lr is not None else (1e-4 if (cfg.mode == "lora" or m.pixel_space) else 5e-6)
    m.unet.train()
    params = []
    if cfg.mode == "lora":
        peft = require("peft", extra="genai", feature="LoRA DreamBooth")
        m.unet.requires_grad_(False)
        m.unet.add_adapter(peft.LoraConfig(r=int(cfg.rank), lora_alpha=int(cfg.rank), init_lora_weights="gaussian",
                                           target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
        params = [p for p in m.unet.parameters() if p.requires_grad]
    else:
        m.unet.requires_grad_(True)
        params = list(m.unet.parameters())
    m.text_encoder.requires_grad_(bool(cfg.train_text_encoder))
    if cfg.train_text_encoder:
        m.text_encoder.train()
        params += list(m.text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    sched = diffusers.DDPMScheduler.from_config(m.scheduler_config)
    T = int(sched.config.num_train_timesteps)
    X_inst = images_to_tensor(inst)
    X_cls = images_to_tensor(cls) if len(cls) else None
    gen = torch.Generator().manual_seed(int(cfg.seed))
    rows = []
    for step in range(int(cfg.steps)):
        ii = torch.randint(0, len(X_inst), (cfg.batch_size,), generator=gen)
        xb = [X_inst[ii]]
        prompts = [inst_prompts[int(i)] for i in ii]
        # light augmentation of the few instance images: horizontal shift by up to 2 px
        if X_cls is not None and cfg.prior_loss_weight > 0:
            ci = torch.randint(0, len(X_cls), (cfg.batch_size,), generator=gen)
            xb.append(X_cls[ci])
            prompts += [class_prompts[int(i)] for i in ci]
        x = torch.cat(xb)
        with torch.no_grad():
            lat = m.encode(x)
        noise = torch.randn(lat.shape, generator=gen)
        t = torch.randint(0, T, (lat.shape[0],), generator=gen)
        noisy = sched.add_noise(lat, noise, t)
        if cfg.train_text_encoder:
            hs = m.encode_prompts(prompts)
        else:
            with torch.no_grad():
                hs = m.encode_prompts(prompts)
        pred = m.unet(noisy, t, encoder_hidden_states=hs).sample
        target = noise if sched.config.prediction_type == "epsilon" else sched.get_velocity(lat, noise, t)
        loss, li, lp = prior_preservation_loss(pred, target, cfg.batch_size, cfg.prior_loss_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        rows.append(f"{step + 1},{float(loss.detach()):.5f},{float(li.detach()):.5f},{float(lp.detach()):.5f}")
        if progress:
            progress(1)
    m.unet.eval(), m.text_encoder.eval()
    if cfg.mode == "lora":
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        lora_state = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(m.unet).items()}
        (out / "unet_lora").mkdir(exist_ok=True)
        save_file(lora_state, str(out / "unet_lora" / "adapter_model.safetensors"))
        m.unet.fuse_lora()
        m.unet.unload_lora()
    save_model(m, out / "model", extra={"kind": "carla_mr-dreambooth", "base": str(base), "token": cfg.token,
                                        "instance_class": cfg.kind, "instance_prompts": sorted(set(inst_prompts)),
                                        "config": asdict(cfg),
                                        **{k: v for k, v in m.extra.items() if k in ("classes", "colours", "prompt")}})
    atomic_write_text(out / "train_log.csv", "step,loss,instance_loss,prior_loss\n" + "".join(r + "\n" for r in rows))
    summary = {"model": str(out / "model"), "base": str(base), "mode": cfg.mode, "steps": cfg.steps, "lr": lr,
               "instance_images": int(len(inst)), "class_images": int(len(cls)),
               "instance_prompt": inst_prompts[0], "final_loss": float(loss.detach()), "elapsed_s": round(time.time() - t0, 1),
               "config": asdict(cfg)}
    atomic_write_json(out / "dreambooth.json", summary)
    return summary

"""The super-resolution stage: a text-conditioned diffusion upsampler (32x32 -> 128x128).

The paper fine-tunes "the low-resolution text-to-image model and then the super-resolution
components with low/high-resolution pairs" (Imagen / the Stable Diffusion x4 upscaler). Here
the upsampler is a diffusers ``UNet2DConditionModel`` conditioned on

* the low-resolution image, concatenated to the UNet input as extra channels (as in the SD x4
  upscaler), with *noise augmentation*: the low-resolution image is noised to a random level
  during training (0..``max_noise_level`` of the DDPM schedule), the level is given to the
  UNet as its class label, and sampling uses a small fixed level (``noise_level``), so the
  upsampler does not copy the base model's artefacts;
* the prompt, through cross-attention over the base model's (frozen, shared) CLIP text
  encoder, so "a speed limit 30 sign" draws the digits 3 and 0 even where the 32 px input
  only shows a blur.

**Cheap on CPU.** The 128x128 image is diffused as a 32x32 grid of 4x4 pixel patches
(``pixel_unshuffle``: 48 channels), and what is diffused is the *residual* over the bicubic
upscale of the low-resolution input, times ``residual_scale`` (so a weak model degrades to
bicubic, not to noise). One UNet call therefore costs about what the 32 px base model's does.

On disk (``save_upsampler``)::

    unet/                 UNet2DConditionModel (in 48 + 3 channels, out 48)
    scheduler/            DDPMScheduler config of the training noise schedule
    upsampler.json        {"kind": "carla_mr-upsampler", "factor", "low_size", "high_size",
                           "residual_scale", "noise_level", "max_noise_level", "text_encoder":
                           the base checkpoint whose text encoder it was trained with}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from carla_mr.errors import InputError, require

#: The default upsampler's UNet (about 2.2 M parameters; cross-attention at 8x8 and mid). The
#: first block is wider than the 48 + 3 input channels: narrower, it cannot pass the 48 noise
#: channels through (a 32-wide first version stalled at loss 0.47 and left visible noise).
UPSAMPLER_UNET = dict(
    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    block_out_channels=(64, 64, 64),
    layers_per_block=1,
    attention_head_dim=8,
    norm_num_groups=16,
    num_class_embeds=1000,  # the noise-augmentation level of the low-resolution input
    addition_embed_type="text",
    addition_embed_type_num_heads=2,
)

SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                 clip_sample=False)


@dataclass
class Upsampler:
    """A text-conditioned diffusion upsampler and the text encoder it reads prompts with."""

    unet: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict
    factor: int = 4
    residual_scale: float = 4.0
    noise_level: int = 20
    max_noise_level: int = 250
    extra: dict = field(default_factory=dict)

    @property
    def low_size(self) -> int:
        s = self.unet.config.sample_size
        return int(s[0] if isinstance(s, (list, tuple)) else s)

    @property
    def high_size(self) -> int:
        return self.low_size * self.factor

    @property
    def device(self):
        return next(self.unet.parameters()).device

    def encode_prompts(self, prompts: Sequence[str]):
        n = int(min(self.tokenizer.model_max_length, self.text_encoder.config.max_position_embeddings))
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=n, truncation=True,
                             return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids)[0]


def build_upsampler(text_model, *, low_size: int = 32, factor: int = 4, unet_overrides: dict | None = None,
                    seed: int = 0, residual_scale: float = 4.0) -> Upsampler:
    """A fresh upsampler reading prompts with ``text_model``'s text encoder and tokenizer
    (a :class:`~carla_mr.genai.model.TextToImage`)."""
    torch = require("torch", extra="genai", feature="the upsampler")
    diffusers = require("diffusers", extra="genai", feature="the upsampler")
    torch.manual_seed(int(seed))
    ch = 3 * factor * factor
    cfg = dict(UPSAMPLER_UNET, sample_size=int(low_size), in_channels=ch + 3, out_channels=ch,
               cross_attention_dim=int(text_model.text_encoder.config.hidden_size))
    cfg.update(unet_overrides or {})
    unet = diffusers.UNet2DConditionModel(**cfg)
    return Upsampler(unet=unet, text_encoder=text_model.text_encoder, tokenizer=text_model.tokenizer,
                     scheduler_config=dict(SCHEDULER), factor=int(factor), residual_scale=float(residual_scale))


# ------------------------------------------------------------------ tensors


def bicubic_up(low, factor: int):
    """(B, 3, h, w) in [-1, 1] -> (B, 3, h*f, w*f) bicubic (the residual's base)."""
    torch = require("torch", extra="genai", feature="the upsampler")
    return torch.nn.functional.interpolate(low, scale_factor=factor, mode="bicubic", align_corners=False)


def to_patches(x, factor: int):
    """(B, 3, H, W) -> (B, 3*f*f, H/f, W/f) (pixel_unshuffle)."""
    torch = require("torch", extra="genai", feature="the upsampler")
    return torch.nn.functional.pixel_unshuffle(x, factor)


def from_patches(x, factor: int):
    torch = require("torch", extra="genai", feature="the upsampler")
    return torch.nn.functional.pixel_shuffle(x, factor)


def noised_low(up: Upsampler, low, levels, generator=None, noise=None):
    """The low-resolution conditioning, noised to the DDPM ``levels`` (noise augmentation)."""
    torch = require("torch", extra="genai", feature="the upsampler")
    diffusers = require("diffusers", extra="genai", feature="the upsampler")
    sched = diffusers.DDPMScheduler.from_config(up.scheduler_config)
    if noise is None:
        noise = torch.randn(low.shape, generator=generator)
    noise = noise.to(low.device)
    levels = levels.to(low.device)
    out = sched.add_noise(low, noise, levels)
    return torch.where((levels > 0).view(-1, 1, 1, 1), out, low)


def residual_target(up: Upsampler, high, low):
    """What the upsampler diffuses: (high - bicubic(low)) * residual_scale, as 4x4 patches."""
    return to_patches((high - bicubic_up(low, up.factor)) * up.residual_scale, up.factor)


# ------------------------------------------------------------------ sampling


def upsample(up: Upsampler, images: np.ndarray, prompts: Sequence[str], *, steps: int = 10, guidance: float = 1.0,
             seed: int = 0, noise_level: int | None = None, batch_size: int = 32) -> np.ndarray:
    """Lift (N, h, w, 3) uint8 low-resolution images to (N, h*f, w*f, 3) uint8 (DDIM, ``steps``
    steps; ``guidance`` > 1 adds classifier-free guidance on the prompt at twice the cost).

    Image i's noise comes from ``torch.Generator().manual_seed(seed + i)``.
    """
    torch = require("torch", extra="genai", feature="the upsampler")
    diffusers = require("diffusers", extra="genai", feature="the upsampler")
    images = np.asarray(images)
    prompts = [str(p) for p in prompts]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise InputError(f"upsample needs (N, H, W, 3) uint8 images, got {images.shape} {images.dtype}", field="images")
    if len(prompts) != len(images):
        raise InputError(f"one prompt per image is needed ({len(images)} images, {len(prompts)} prompts)",
                         field="prompts")
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}", field="steps")
    if len(images) == 0:
        return np.zeros((0, up.high_size, up.high_size, 3), np.uint8)
    h, w = images.shape[1:3]
    mult = 2 ** (len(up.unet.config.block_out_channels) - 1)
    if h != w or h % mult:
        raise InputError(f"upsample needs square images with a side divisible by {mult}, got {h}x{w}",
                         field="images")
    level = int(up.noise_level if noise_level is None else noise_level)
    dev = up.device
    out = []
    with torch.no_grad():
        uncond = up.encode_prompts([""]) if guidance != 1.0 else None
        for b0 in range(0, len(images), int(batch_size)):
            chunk = images[b0:b0 + batch_size]
            n = len(chunk)
            low = torch.from_numpy(np.ascontiguousarray(chunk)).permute(0, 3, 1, 2).float().to(dev) / 127.5 - 1.0
            g = [torch.Generator().manual_seed(int(seed) + b0 + i) for i in range(n)]
            aug = torch.stack([torch.randn(low.shape[1:], generator=gi) for gi in g])
            cond_low = noised_low(up, low, torch.full((n,), level, dtype=torch.long), noise=aug)
            labels = torch.full((n,), level, dtype=torch.long, device=dev)
            hs = up.encode_prompts(prompts[b0:b0 + n])
            sched = diffusers.DDIMScheduler.from_config(up.scheduler_config)
            sched.set_timesteps(int(steps))
            ch = int(up.unet.config.out_channels)
            x = torch.stack([torch.randn((ch, h, w), generator=gi) for gi in g]).to(dev)
            if uncond is not None:
                hs = torch.cat([uncond.expand(n, -1, -1), hs])
                cond_low, labels = torch.cat([cond_low, cond_low]), torch.cat([labels, labels])
            for t in sched.timesteps:
                xin = torch.cat([x, x]) if uncond is not None else x
                pred = up.unet(torch.cat([xin, cond_low], 1), t, encoder_hidden_states=hs, class_labels=labels).sample
                if uncond is not None:
                    p_u, p_c = pred.chunk(2)
                    pred = p_u + float(guidance) * (p_c - p_u)
                x = sched.step(pred, t, x).prev_sample
            high = bicubic_up(low, up.factor) + from_patches(x, up.factor) / up.residual_scale
            out.append(((high.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out, 0)


def bicubic_baseline(images: np.ndarray, factor: int = 4) -> np.ndarray:
    """The same-run baseline: OpenCV bicubic upscaling of (N, h, w, 3) uint8."""
    import cv2

    return np.stack([cv2.resize(im, (im.shape[1] * factor, im.shape[0] * factor), interpolation=cv2.INTER_CUBIC)
                     for im in np.asarray(images)]) if len(images) else np.zeros((0, 0, 0, 3), np.uint8)


# ------------------------------------------------------------------ save / load


def save_upsampler(up: Upsampler, path: str | os.PathLike, *, text_encoder_ref: str, half: bool = True,
                   extra: dict | None = None) -> Path:
    """Write ``unet/``, ``scheduler/`` and ``upsampler.json`` (the text encoder is the base's)."""
    torch = require("torch", extra="genai", feature="saving the upsampler")
    diffusers = require("diffusers", extra="genai", feature="saving the upsampler")
    import copy

    from carla_mr.io import atomic_write_json

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    unet = copy.deepcopy(up.unet).to(dtype=torch.float16) if half else up.unet
    unet.save_pretrained(str(path / "unet"), safe_serialization=True)
    diffusers.DDPMScheduler.from_config(up.scheduler_config).save_pretrained(str(path / "scheduler"))
    meta = {"kind": "carla_mr-upsampler", "factor": up.factor, "low_size": up.low_size, "high_size": up.high_size,
            "residual_scale": up.residual_scale, "noise_level": up.noise_level,
            "max_noise_level": up.max_noise_level, "text_encoder": str(text_encoder_ref)}
    meta.update(up.extra)
    meta.update(extra or {})
    atomic_write_json(path / "upsampler.json", meta)
    return path


def check_upsampler_dir(path: str | os.PathLike, field: str = "--upsampler") -> Path:
    p = Path(path).expanduser()
    if not (p / "upsampler.json").is_file() or not (p / "unet" / "config.json").is_file():
        raise InputError(f"{p} is not an upsampler directory (needs upsampler.json and unet/config.json); pass one "
                         "written by 'carla-mr genai train-upsampler'", field=field)
    return p


def load_upsampler(path: str | os.PathLike, text_model, *, device: str = "cpu") -> Upsampler:
    """Load an upsampler directory; prompts are read with ``text_model``'s text encoder (the
    base checkpoint it was trained with: ``upsampler.json["text_encoder"]``)."""
    torch = require("torch", extra="genai", feature="loading the upsampler")
    diffusers = require("diffusers", extra="genai", feature="loading the upsampler")
    p = check_upsampler_dir(path)
    try:
        meta = json.loads((p / "upsampler.json").read_text())
        unet = diffusers.UNet2DConditionModel.from_pretrained(str(p / "unet"), torch_dtype=torch.float32)
        sched = dict(diffusers.DDPMScheduler.load_config(str(p / "scheduler"))) if (p / "scheduler").is_dir() \
            else dict(SCHEDULER)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot load the upsampler {p}: {exc}", field="--upsampler") from exc
    if int(unet.config.cross_attention_dim) != int(text_model.text_encoder.config.hidden_size):
        raise InputError(f"the upsampler {p} reads {unet.config.cross_attention_dim}-wide text states but the text "
                         f"encoder gives {text_model.text_encoder.config.hidden_size}; pair it with the base model "
                         f"it was trained with ({meta.get('text_encoder')})", field="--upsampler")
    sched = {k: v for k, v in sched.items() if not k.startswith("_")}
    keys = ("factor", "residual_scale", "noise_level", "max_noise_level")
    up = Upsampler(unet=unet.eval().to(device), text_encoder=text_model.text_encoder, tokenizer=text_model.tokenizer,
                   scheduler_config=sched, **{k: meta[k] for k in keys if k in meta},
                   extra={k: v for k, v in meta.items() if k not in keys})
    return up

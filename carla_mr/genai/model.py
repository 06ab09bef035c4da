"""Text-to-image model components and their Stable-Diffusion-compatible directory layout.

A model is a :class:`TextToImage` bundle of real diffusers/transformers parts: a
``UNet2DConditionModel``, a ``CLIPTextModel``, a ``CLIPTokenizer``, a noise scheduler
config, and an optional ``AutoencoderKL`` (``vae``). On disk it is the directory layout of
``StableDiffusionPipeline.save_pretrained``::

    model_index.json   {"_class_name": "StableDiffusionPipeline", "vae": [null, null] | [...], ...}
    unet/ text_encoder/ tokenizer/ scheduler/ [vae/]

so a Stable Diffusion checkpoint directory (or a hub id, with network) loads through the same
:func:`load_model`, and our pixel-space checkpoints load with
``StableDiffusionPipeline.from_pretrained(dir)`` too (vae=None; call it with
``output_type="latent"`` and the "latents" are the images in [-1, 1]).

**Pixel space.** The CPU default has no VAE: the diffusion runs on the RGB pixels scaled to
[-1, 1] (``vae=None`` in ``model_index.json``; :meth:`TextToImage.encode` / ``decode`` are the
identity). With a VAE, ``encode`` = ``vae.encode(x).latent_dist.sample() * scaling_factor``
and ``decode`` the inverse, exactly as in Stable Diffusion.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carla_mr.errors import InputError, RunError, require

#: Architecture of the CPU default (about 1.5 M UNet parameters, 32x32 pixels; cross-attention
#: at 8x8 and in the mid block).
TINY_UNET = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    cross_attention_dim=64,
    attention_head_dim=8,
    norm_num_groups=16,
    # global text conditioning: an attention-pooled prompt embedding is added to the time
    # embedding, so every ResNet block sees the sign class and the background colour
    addition_embed_type="text",
    addition_embed_type_num_heads=2,
)

#: A tiny CLIP text encoder (2 layers, width 64) over the full 49,408-token CLIP vocabulary.
TINY_TEXT = dict(
    vocab_size=49408,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=32,
    projection_dim=64,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)

TRAIN_SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
                       clip_sample=False)


@dataclass
class TextToImage:
    """A text-conditional diffusion model (real diffusers/transformers components)."""

    unet: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict
    vae: Any = None
    source: str = ""
    extra: dict = field(default_factory=dict)  # carla_mr metadata (carla_mr.json)
    scheduler_class: str = "DDPMScheduler"  # the checkpoint's scheduler class, kept on save

    # --------------------------------------------------------------- geometry
    @property
    def pixel_space(self) -> bool:
        return self.vae is None

    @property
    def vae_scale(self) -> int:
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_size(self) -> int:
        """Default output side in pixels."""
        s = self.unet.config.sample_size
        s = s[0] if isinstance(s, (list, tuple)) else s
        return int(s) * self.vae_scale

    @property
    def device(self):
        return next(self.unet.parameters()).device

    # --------------------------------------------------------------- text
    def encode_prompts(self, prompts: list[str]):
        """(B, L, D) hidden states of the text encoder for the prompts."""
        torch = require("torch", extra="genai", feature="text encoding")
        ids = self.tokenize(prompts).to(self.device)
        return self.text_encoder(ids)[0]

    def tokenize(self, prompts: list[str]):
        torch = require("torch", extra="genai", feature="text encoding")
        n = int(min(self.tokenizer.model_max_length, self.text_encoder.config.max_position_embeddings))
        enc = self.tokenizer(list(prompts), padding="max_length", max_length=n, truncation=True, return_tensors="pt")
        return enc.input_ids

    # --------------------------------------------------------------- latents
    def encode(self, images):
        """Images (B, 3, H, W) in [-1, 1] -> the diffusion space (pixels or VAE latents)."""
        if self.vae is None:
            return images
        lat = self.vae.encode(images.to(self.vae.dtype)).latent_dist.sample()
        return lat * float(self.vae.config.scaling_factor)

    def decode(self, latents):
        """The diffusion space -> images (B, 3, H, W) in [-1, 1]."""
        if self.vae is None:
            return latents
        return self.vae.decode(latents / float(self.vae.config.scaling_factor)).sample

    def to(self, device=None, dtype=None):
        kw = {"device": device} if dtype is None else {"device": device, "dtype": dtype}
        for m in (self.unet, self.text_encoder, self.vae):
            if m is not None:  # no dtype=None: diffusers warns of a cast that is not happening
                m.to(**kw)
        return self

    def n_params(self) -> dict[str, int]:
        out = {"unet": sum(p.numel() for p in self.unet.parameters()),
               "text_encoder": sum(p.numel() for p in self.text_encoder.parameters())}
        if self.vae is not None:
            out["vae"] = sum(p.numel() for p in self.vae.parameters())
        return out


def build_tiny(*, image_size: int = 32, unet_overrides: dict | None = None, text_overrides: dict | None = None,
               seed: int = 0) -> TextToImage:
    """A freshly initialised pixel-space model (the CPU default's architecture)."""
    torch = require("torch", extra="genai", feature="the text-to-image model")
    diffusers = require("diffusers", extra="genai", feature="the text-to-image model")
    transformers = require("transformers", extra="genai", feature="the text-to-image model")
    from carla_mr.genai.tokenizer import build_clip_tokenizer

    torch.manual_seed(int(seed))
    ucfg = dict(TINY_UNET, sample_size=int(image_size))
    ucfg.update(unet_overrides or {})
    tcfg = dict(TINY_TEXT)
    tcfg.update(text_overrides or {})
    ucfg["cross_attention_dim"] = tcfg["hidden_size"]
    unet = diffusers.UNet2DConditionModel(**ucfg)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(**tcfg))
    tokenizer = build_clip_tokenizer(model_max_length=tcfg["max_position_embeddings"])
    return TextToImage(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer,
                       scheduler_config=dict(TRAIN_SCHEDULER), source="scratch")


def widen_cross_attention(model: TextToImage, levels: int) -> TextToImage:
    """The same model with cross-attention in its ``levels`` lowest-resolution down and up blocks.

    The existing weights are kept; each new attention layer starts freshly initialised with its
    output projection zeroed, so the widened model computes exactly what the old one did until
    it is trained (``carla-mr genai train-base --init DIR --cross-attention-levels N``). A model
    that already has cross-attention at those levels is returned unchanged.
    """
    torch = require("torch", extra="genai", feature="the text-to-image model")
    diffusers = require("diffusers", extra="genai", feature="the text-to-image model")
    cfg = dict(model.unet.config)
    down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    if not 1 <= int(levels) <= len(down):
        raise InputError(f"cross-attention levels must be 1..{len(down)} for this UNet, got {levels}",
                         field="--cross-attention-levels")
    new_down = [("CrossAttnDownBlock2D" if i >= len(down) - levels else t) for i, t in enumerate(down)]
    new_up = [("CrossAttnUpBlock2D" if i < levels else t) for i, t in enumerate(up)]
    if new_down == down and new_up == up:
        return model
    if any(t not in ("DownBlock2D", "CrossAttnDownBlock2D") for t in down) or \
            any(t not in ("UpBlock2D", "CrossAttnUpBlock2D") for t in up):
        raise InputError(f"only plain/cross-attention 2-D blocks can be widened, got {down} / {up}",
                         field="--cross-attention-levels")
    cfg.update(down_block_types=tuple(new_down), up_block_types=tuple(new_up))
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    unet = diffusers.UNet2DConditionModel(**cfg)
    old = model.unet.state_dict()
    missing, unexpected = unet.load_state_dict(old, strict=False)
    if unexpected or any(".attentions." not in k for k in missing):
        raise RunError(f"widening the UNet lost weights: unexpected {unexpected[:3]}, "
                       f"missing {[k for k in missing if '.attentions.' not in k][:3]}")
    with torch.no_grad():
        for k in {k.rsplit(".proj_out.", 1)[0] for k in missing if ".proj_out." in k}:
            proj = unet.get_submodule(k + ".proj_out")
            proj.weight.zero_()
            if proj.bias is not None:
                proj.bias.zero_()
    unet.to(dtype=next(model.unet.parameters()).dtype)
    return dataclasses.replace(model, unet=unet)


# ------------------------------------------------------------------- save / load


def save_model(model: TextToImage, path: str | os.PathLike, *, half: bool = False, extra: dict | None = None) -> Path:
    """Write the StableDiffusionPipeline directory layout (atomically per file where possible).

    ``half=True`` stores the weights as float16 (halves the size; loading upcasts to float32).
    """
    torch = require("torch", extra="genai", feature="saving a model")
    diffusers = require("diffusers", extra="genai", feature="saving a model")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if half else None
    import copy

    def _save(module, sub):
        m = copy.deepcopy(module).to(dtype=dtype) if dtype is not None else module
        m.save_pretrained(str(path / sub), safe_serialization=True)

    _save(model.unet, "unet")
    _save(model.text_encoder, "text_encoder")
    model.tokenizer.save_pretrained(str(path / "tokenizer"))
    sched = _scheduler_class(diffusers, model.scheduler_class).from_config(
        {k: v for k, v in model.scheduler_config.items() if not k.startswith("_")})
    sched.save_pretrained(str(path / "scheduler"))
    if model.vae is not None:
        _save(model.vae, "vae")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", type(sched).__name__],
        "text_encoder": ["transformers", type(model.text_encoder).__name__],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", type(model.vae).__name__] if model.vae is not None else [None, None],
    }
    from carla_mr.io import atomic_write_json

    atomic_write_json(path / "model_index.json", index)
    meta = dict(model.extra)
    meta.update(extra or {})
    atomic_write_json(path / "carla_mr.json", meta)
    return path


def _scheduler_class(diffusers, name: str):
    """The diffusers scheduler class called ``name`` (DDPMScheduler when diffusers has none)."""
    cls = getattr(diffusers, str(name), None)
    if cls is None or not hasattr(cls, "from_config"):
        return diffusers.DDPMScheduler
    return cls


def check_model_dir(path: str | os.PathLike, *, field: str = "checkpoint") -> Path:
    """The directory ``path`` if it holds a diffusers text-to-image pipeline
    (model_index.json + unet/ text_encoder/ tokenizer/ scheduler/ with their configs), else
    InputError naming what is missing."""
    src = str(path)
    p = Path(src).expanduser()
    if not p.exists():
        hint = " (a hub id needs network and --allow-download)" if _is_hub_id(src) else ""
        raise InputError(f"checkpoint {src} does not exist{hint}; pass a model directory written by "
                         "'carla-mr genai train-base' or a Stable Diffusion checkpoint directory", field=field)
    index_file = p / "model_index.json"
    if not p.is_dir() or not index_file.is_file():
        raise InputError(f"{src} is not a diffusers model directory (no model_index.json); pass a directory "
                         "written by 'carla-mr genai train-base' or a Stable Diffusion checkpoint", field=field)
    try:
        json.loads(index_file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{index_file} is not valid JSON: {exc}", field=field) from exc
    for sub, cfg in (("unet", "config.json"), ("text_encoder", "config.json"), ("tokenizer", None),
                     ("scheduler", "scheduler_config.json")):
        if not (p / sub).is_dir():
            raise InputError(f"{src} has no {sub}/ folder; it is not a complete diffusers text-to-image checkpoint",
                             field=field)
        if cfg and not (p / sub / cfg).is_file():
            raise InputError(f"{src}/{sub} has no {cfg}; it is not a diffusers text-to-image checkpoint", field=field)
    return p


def _is_hub_id(s: str) -> bool:
    return "/" in s and not s.startswith((".", "/", "~")) and s.count("/") == 1 and not Path(s).exists()


def load_model(path: str | os.PathLike, *, device: str = "cpu", local_only: bool = True) -> TextToImage:
    """Load a model directory (ours or any Stable Diffusion checkpoint) or, with
    ``local_only=False`` and network, a hub id. float32 on ``device``.

    InputError if the path is missing or is not a diffusion-pipeline directory.
    """
    torch = require("torch", extra="genai", feature="loading a model")
    diffusers = require("diffusers", extra="genai", feature="loading a model")
    transformers = require("transformers", extra="genai", feature="loading a model")
    src = str(path)
    p = Path(src).expanduser()
    if not p.exists():
        if _is_hub_id(src) and not local_only:
            from huggingface_hub import snapshot_download

            p = Path(snapshot_download(src, allow_patterns=["model_index.json", "unet/*", "text_encoder/*",
                                                            "tokenizer/*", "scheduler/*", "vae/*"]))
        else:
            check_model_dir(src)
    p = check_model_dir(p)
    index = json.loads((p / "model_index.json").read_text())
    try:
        unet = diffusers.UNet2DConditionModel.from_pretrained(str(p / "unet"), torch_dtype=torch.float32)
        text_encoder = transformers.CLIPTextModel.from_pretrained(str(p / "text_encoder"), dtype=torch.float32)
        tokenizer = transformers.CLIPTokenizer.from_pretrained(str(p / "tokenizer"))
        sched_cfg = dict(diffusers.DDPMScheduler.load_config(str(p / "scheduler")))
        sched_class = str(sched_cfg.get("_class_name") or "DDPMScheduler")
        vae = None
        vae_entry = index.get("vae") or [None, None]
        if vae_entry[0] is not None and (p / "vae").is_dir():
            vae = diffusers.AutoencoderKL.from_pretrained(str(p / "vae"), torch_dtype=torch.float32)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"cannot load the checkpoint {src} as a diffusers model: {exc}", field="checkpoint") from exc
    meta = {}
    if (p / "carla_mr.json").is_file():
        try:
            meta = json.loads((p / "carla_mr.json").read_text())
        except json.JSONDecodeError:
            meta = {}
    m = TextToImage(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler_config=sched_cfg, vae=vae,
                    source=src, extra=meta, scheduler_class=sched_class)
    m.unet.eval(), m.text_encoder.eval()
    if vae is not None:
        vae.eval()
    return m.to(device=device)

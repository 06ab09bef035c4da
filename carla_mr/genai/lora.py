"""LoRA adapters in the format diffusers loads.

:func:`add_unet_lora` puts rank-``rank`` LoRA adapters (peft) on the UNet's attention
projections (``to_q``, ``to_k``, ``to_v``, ``to_out.0``). :func:`save_lora` writes them with
diffusers' own ``StableDiffusionLoraLoaderMixin.save_lora_weights``:
``pytorch_lora_weights.safetensors`` with keys ``unet.<module>.lora_A.weight`` /
``lora_B.weight`` (plus the adapter's rank/alpha metadata), so

    pipe = StableDiffusionPipeline.from_pretrained(base_dir)
    pipe.load_lora_weights(lora_dir)

applies it (tested in tests/genai/test_lora.py on a tiny model in the SD 1.5 layout), and
:func:`load_lora` does the same for a :class:`~carla_mr.genai.model.TextToImage`.
"""

from __future__ import annotations

import os
from pathlib import Path

from carla_mr.errors import InputError, require

LORA_FILE = "pytorch_lora_weights.safetensors"
TARGET_MODULES = ("to_k", "to_q", "to_v", "to_out.0")


def add_unet_lora(unet, rank: int = 4, alpha: int | None = None):
    """Add a trainable LoRA adapter to ``unet`` (all other weights frozen); returns its parameters."""
    peft = require("peft", extra="genai", feature="LoRA")
    if rank < 1:
        raise InputError(f"LoRA rank must be >= 1, got {rank}", field="--rank")
    unet.requires_grad_(False)
    unet.add_adapter(peft.LoraConfig(r=int(rank), lora_alpha=int(alpha or rank), init_lora_weights="gaussian",
                                     target_modules=list(TARGET_MODULES)))
    return [p for p in unet.parameters() if p.requires_grad]


def unet_lora_state_dict(unet) -> dict:
    """The adapter's weights with peft key names (``<module>.lora_A.weight``; diffusers' saver
    adds the ``unet.`` prefix), as diffusers' current training scripts save them."""
    require("peft", extra="genai", feature="LoRA")
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(unet)


def save_lora(unet, path: str | os.PathLike) -> Path:
    """Write the UNet's LoRA adapter as ``path/pytorch_lora_weights.safetensors`` (diffusers format)."""
    diffusers = require("diffusers", extra="genai", feature="saving LoRA weights")
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    layers = {k: v.detach().contiguous().cpu() for k, v in unet_lora_state_dict(unet).items()}
    kwargs = {}
    try:
        from peft.utils import get_peft_model_state_dict  # noqa: F401

        cfg = unet.peft_config.get("default")
        if cfg is not None:
            import inspect

            if "unet_lora_adapter_metadata" in inspect.signature(
                    StableDiffusionLoraLoaderMixin.save_lora_weights).parameters:
                kwargs["unet_lora_adapter_metadata"] = cfg.to_dict()
    except (AttributeError, TypeError):
        pass
    StableDiffusionLoraLoaderMixin.save_lora_weights(str(path), unet_lora_layers=layers, safe_serialization=True,
                                                     **kwargs)
    del diffusers
    return path


def load_lora(model, path: str | os.PathLike, *, fuse: bool = True, scale: float = 1.0):
    """Apply a diffusers-format LoRA file/directory to a TextToImage's UNet (fused by default)."""
    require("peft", extra="genai", feature="LoRA")
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    p = Path(path)
    if p.is_dir():
        if not (p / LORA_FILE).is_file():
            raise InputError(f"{p} holds no {LORA_FILE}; pass a LoRA directory written by 'carla-mr genai dreambooth "
                             "--mode lora' or by diffusers", field="--lora")
    elif not p.is_file():
        raise InputError(f"LoRA weights {p} do not exist", field="--lora")
    try:
        state, alphas, meta = StableDiffusionLoraLoaderMixin.lora_state_dict(str(p), return_lora_metadata=True)
    except TypeError:  # older diffusers
        (state, alphas), meta = StableDiffusionLoraLoaderMixin.lora_state_dict(str(p)), None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the LoRA weights {p}: {exc}", field="--lora") from exc
    StableDiffusionLoraLoaderMixin.load_lora_into_unet(state, network_alphas=alphas, unet=model.unet,
                                                      adapter_name="carla_mr", metadata=meta)
    if fuse:
        model.unet.fuse_lora(lora_scale=float(scale))
        model.unet.unload_lora()
    return model

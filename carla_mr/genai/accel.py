"""Device, precision and memory options shared by ``train-base``, ``dreambooth`` and the upsampler.

* ``device``: ``"cpu"``, ``"cuda"`` (``"cuda:1"`` ...) or ``"auto"`` (cuda when available).
* ``dtype``: ``"fp32"`` (default), ``"fp16"`` or ``"bf16"``: mixed precision. Trainable
  weights and the optimiser state stay float32; forward passes run under ``torch.autocast``
  in the chosen type (fp16 with a gradient scaler on CUDA), the way diffusers' training
  examples do it. Frozen modules (text encoder, VAE) are cast to the chosen type.
* ``gradient_checkpointing``: recompute UNet activations in the backward pass (less memory,
  about 20-30% more time).
* ``use_8bit_adam``: bitsandbytes' ``AdamW8bit`` (optimiser state in 8 bits: 2 bytes per
  parameter instead of 8); InputError naming the missing package when bitsandbytes is absent.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from carla_mr.errors import InputError, require

DTYPES = ("fp32", "fp16", "bf16")
DEVICES_HELP = "cpu, cuda, cuda:N or auto"


def resolve_device(name: str = "cpu"):
    """A torch.device for ``name``; InputError if CUDA is asked for but not available."""
    torch = require("torch", extra="genai", feature="training")
    name = str(name or "cpu").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: this torch has no usable CUDA device (torch {torch.__version__}); "
                             "use --device cpu, or install a CUDA build of torch", field="--device")
        return torch.device(name)
    raise InputError(f"unknown device {name!r}; use {DEVICES_HELP}", field="--device")


def resolve_dtype(name: str = "fp32"):
    torch = require("torch", extra="genai", feature="training")
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name not in table:
        raise InputError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}", field="--dtype")
    return table[name]


@dataclass
class Accel:
    """Resolved device/precision settings for one training run."""

    device: object
    dtype: object  # torch dtype of the autocast (float32: no autocast)
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = False

    @property
    def mixed(self) -> bool:
        import torch

        return self.dtype != torch.float32

    def autocast(self):
        """Context manager for forward passes (a no-op at fp32)."""
        import torch

        if not self.mixed:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def scaler(self):
        """A gradient scaler for fp16 on CUDA (None otherwise)."""
        import torch

        if self.dtype == torch.float16 and self.device.type == "cuda":
            return torch.amp.GradScaler("cuda")
        return None


def make_accel(device: str = "cpu", dtype: str = "fp32", gradient_checkpointing: bool = False,
               use_8bit_adam: bool = False) -> Accel:
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    if use_8bit_adam:
        bnb_available()
    return Accel(dev, dt, bool(gradient_checkpointing), bool(use_8bit_adam))


def bnb_available():
    """The bitsandbytes module, or InputError saying how to get it."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise InputError("--use-8bit-adam needs bitsandbytes, which is not installed; "
                         "pip install bitsandbytes (CUDA machines), or drop --use-8bit-adam",
                         field="--use-8bit-adam") from exc
    return bitsandbytes


def make_optimizer(params, *, lr: float, weight_decay: float, accel: Accel | None = None):
    """AdamW, or bitsandbytes' AdamW8bit with ``accel.use_8bit_adam``; ``params``: tensors or param groups."""
    torch = require("torch", extra="genai", feature="training")
    params = list(params)
    if accel is not None and accel.use_8bit_adam:
        bnb = bnb_available()
        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def prepare_unet(unet, accel: Accel):
    """Move a trainable UNet to the device (float32 master weights) and switch on gradient
    checkpointing when asked."""
    unet.to(device=accel.device, dtype=require("torch", extra="genai", feature="training").float32)
    if accel.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    return unet


def prepare_frozen(module, accel: Accel):
    """Move a frozen module to the device in the run's precision."""
    if module is not None:
        module.to(device=accel.device, dtype=accel.dtype)
    return module


def backward_step(loss, opt, params, accel: Accel, scaler=None, clip: float = 1.0):
    """loss.backward + gradient clipping + optimiser step (through the fp16 scaler if any)."""
    torch = require("torch", extra="genai", feature="training")
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, clip)
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()

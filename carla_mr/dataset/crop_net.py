"""The project's default model under test: a small CNN classifying sign crops from rendered frames.

Independent of the genai validator (which is trained on the procedural faces the generator
paints): this one is trained on crops cut from camera frames the embedded world rendered, with
*original* sign textures only, and is then tested on frames with generated textures (see
:mod:`carla_mr.dataset.train_default`). A model folder holds ``crop_net.json`` (classes,
input size, widths, training record) and ``model.safetensors`` (no pickle).

Input: RGB uint8 crops of any size (the sign box grown by ``margin`` of its size each side),
resized to ``input_size`` (32 px) and scaled to [0, 1]. Output: one class name per crop
(``stop``, ``speed_limit_30``...).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from carla_mr.errors import InputError

CONFIG = "crop_net.json"
WEIGHTS = "model.safetensors"


def default_crop_net_path() -> Path:
    """The committed model folder (``carla_mr/data/perception/crop_net``)."""
    return Path(__file__).resolve().parents[1] / "data" / "perception" / "crop_net"


def build_net(n_classes: int, widths: Sequence[int] = (16, 32, 64)):
    """Three conv-BN-ReLU-pool blocks, global average pool, a linear layer (logits)."""
    import torch.nn as nn

    layers, c = [], 3
    for w in widths:
        layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                   nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                   nn.MaxPool2d(2)]
        c = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(c, n_classes)]
    return nn.Sequential(*layers)


def to_batch(crops: list[np.ndarray], size: int) -> np.ndarray:
    """(N, 3, size, size) float32 in [0, 1] from RGB uint8 crops of any size."""
    from carla_mr.dataset.model_io import resize as _resize

    x = np.stack([_resize(np.asarray(c, np.uint8), size) for c in crops]).astype(np.float32) / 255.0
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


class CropNet:
    """A trained crop classifier behind the model-under-test interface (``name``, ``predict``)."""

    def __init__(self, net, classes: Sequence[str], input_size: int, name: str, meta: Optional[dict] = None):
        self.net = net
        self.classes = list(classes)
        self.input_size = int(input_size)
        self.name = name
        self.meta = meta or {}

    def predict(self, crops: list[np.ndarray]) -> list[str]:
        import torch

        if not crops:
            return []
        self.net.eval()
        with torch.no_grad():
            logits = self.net(torch.from_numpy(to_batch(crops, self.input_size)))
        return [self.classes[i] for i in logits.argmax(1).tolist()]

    def save(self, folder: str | os.PathLike, record: Optional[dict] = None) -> Path:
        from safetensors.torch import save_file

        from carla_mr.io import atomic_write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{WEIGHTS}.tmp"
        save_file({k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}, str(tmp))
        os.replace(tmp, folder / WEIGHTS)
        atomic_write_json(folder / CONFIG, {"classes": self.classes, "input_size": self.input_size,
                                            "widths": self.meta.get("widths", [16, 32, 64]), **(record or {})})
        return folder


def is_crop_net_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG).is_file() and (Path(path) / WEIGHTS).is_file()


def load_crop_net(folder: str | os.PathLike, name: Optional[str] = None) -> CropNet:
    """Load a crop-net folder; InputError naming the path when it is missing or does not match."""
    from safetensors.torch import load_file

    from carla_mr.dataset.model_io import check_state_keys

    folder = Path(folder)
    if not is_crop_net_dir(folder):
        raise InputError(f"{folder} is not a crop-net folder (needs {CONFIG} and {WEIGHTS}); train one with "
                         f"'carla-mr dataset train-default'", field="perception.checkpoint")
    cfg = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    net = build_net(len(cfg["classes"]), cfg.get("widths", (16, 32, 64)))
    state = load_file(str(folder / WEIGHTS))
    check_state_keys(net, state, folder / WEIGHTS)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"{folder / WEIGHTS} does not fit its {CONFIG}: {str(exc).splitlines()[-1].strip()}",
                         field="perception.checkpoint") from exc
    net.eval()
    return CropNet(net, cfg["classes"], cfg["input_size"], name or f"crop_net:{folder.name}",
                   meta={k: v for k, v in cfg.items() if k not in ("classes", "input_size")})

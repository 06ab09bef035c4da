"""The validator: a sign classifier that scores generated images (G, theta, Frechet distance).

Two architectures, both trained from scratch here (no ImageNet weights are downloaded; a local
torchvision GoogLeNet state dict can be loaded with ``init_from``):

- ``small``: a fast 4-stage CNN (about 0.3 M parameters, 32x32 input): the default, its
  weights ship in ``carla_mr/data/genai/validator``.
- ``googlenet``: the GoogLeNet (Inception v1) family: torchvision's ``googlenet`` when
  torchvision is importable, else the same architecture written in plain torch
  (:class:`GoogLeNet`; ``width`` scales every channel count, 1.0 = the original), 64x64 input.

A validator directory holds ``validator.json`` (architecture, class names, input size,
normalisation, test accuracy) and ``model.safetensors`` (no pickle).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from carla_mr.errors import InputError, require

ARCHS = ("small", "googlenet")


def _torch():
    return require("torch", extra="genai", feature="the validator")


def _nn():
    return _torch().nn


# ----------------------------------------------------------------------------- architectures


def small_cnn(n_classes: int, width: int = 32):
    """conv-BN-ReLU x2 per stage, 3 max-pool stages, global average pool, 2-layer head."""
    nn = _nn()

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    w = int(width)
    features = nn.Sequential(*block(3, w), *block(w, w), nn.MaxPool2d(2),
                             *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),
                             *block(2 * w, 4 * w), *block(4 * w, 4 * w), nn.MaxPool2d(2),
                             *block(4 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    head = nn.Sequential(nn.Dropout(0.2), nn.Linear(4 * w, n_classes))
    return _Classifier(features, head, 4 * w)


def _make_classifier_class():
    nn = _nn()

    class Classifier(nn.Module):
        """features(x) -> (B, D) embedding; head -> logits. ``forward`` returns logits."""

        def __init__(self, features, head, dim):
            super().__init__()
            self.features = features
            self.head = head
            self.dim = int(dim)

        def embed(self, x):
            return self.features(x)

        def forward(self, x):
            return self.head(self.features(x))

    return Classifier


def _Classifier(features, head, dim):
    return _make_classifier_class()(features, head, dim)


def googlenet(n_classes: int, width: float = 1.0):
    """GoogLeNet (Inception v1): torchvision's when importable (no pretrained weights), else
    the same layer layout in plain torch, channels scaled by ``width``."""
    nn = _nn()
    try:
        import torchvision  # noqa: F401

        if width == 1.0:
            from torchvision.models import googlenet as tv_googlenet

            net = tv_googlenet(weights=None, num_classes=n_classes, aux_logits=False, init_weights=True)
            fc = net.fc
            net.fc = nn.Identity()
            return _Classifier(net, nn.Sequential(fc), fc.in_features)
    except ImportError:
        pass
    return _plain_googlenet(n_classes, width)


def _plain_googlenet(n_classes: int, width: float):
    nn = _nn()
    torch = _torch()

    def c(n):
        return max(8, int(round(n * width)))

    class BasicConv(nn.Module):
        def __init__(self, cin, cout, k, s=1, p=0):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, k, stride=s, padding=p, bias=False)
            self.bn = nn.BatchNorm2d(cout, eps=0.001)

        def forward(self, x):
            return torch.relu(self.bn(self.conv(x)))

    class Inception(nn.Module):
        def __init__(self, cin, b1, b2r, b2, b3r, b3, b4):
            super().__init__()
            self.b1 = BasicConv(cin, b1, 1)
            self.b2 = nn.Sequential(BasicConv(cin, b2r, 1), BasicConv(b2r, b2, 3, p=1))
            self.b3 = nn.Sequential(BasicConv(cin, b3r, 1), BasicConv(b3r, b3, 3, p=1))  # 3x3 as in torchvision
            self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), BasicConv(cin, b4, 1))
            self.out = b1 + b2 + b3 + b4

        def forward(self, x):
            return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)

    spec = [  # (b1, b2r, b2, b3r, b3, b4) of Szegedy et al. 2015, Table 1
        ("3a", 64, 96, 128, 16, 32, 32), ("3b", 128, 128, 192, 32, 96, 64), "pool",
        ("4a", 192, 96, 208, 16, 48, 64), ("4b", 160, 112, 224, 24, 64, 64), ("4c", 128, 128, 256, 24, 64, 64),
        ("4d", 112, 144, 288, 32, 64, 64), ("4e", 256, 160, 320, 32, 128, 128), "pool",
        ("5a", 256, 160, 320, 32, 128, 128), ("5b", 384, 192, 384, 48, 128, 128),
    ]
    layers = [BasicConv(3, c(64), 7, 2, 3), nn.MaxPool2d(3, 2, ceil_mode=True), BasicConv(c(64), c(64), 1),
              BasicConv(c(64), c(192), 3, p=1), nn.MaxPool2d(3, 2, ceil_mode=True)]
    cin = c(192)
    for s in spec:
        if s == "pool":
            layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
            continue
        m = Inception(cin, *[c(v) for v in s[1:]])
        layers.append(m)
        cin = m.out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return _Classifier(nn.Sequential(*layers), nn.Sequential(nn.Dropout(0.2), nn.Linear(cin, n_classes)), cin)


# ----------------------------------------------------------------------------- the validator


MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


@dataclass
class Validator:
    net: object
    arch: str
    class_names: list[str]
    input_size: int
    width: float = 1.0
    meta: dict = field(default_factory=dict)
    #: open-set rule: a top probability below this reads as ``reject`` (when the validator has
    #: a ``reject`` class; closed-set validators never reject)
    threshold: float = 0.5

    @property
    def open_set(self) -> bool:
        return "reject" in self.class_names

    def read(self, images: np.ndarray) -> tuple[list[str], np.ndarray]:
        """What the validator reads on each image: a class name (``speed_limit_30``, ``stop``,
        ..., or ``reject`` when the top class is ``reject`` or its probability is below
        :attr:`threshold`) and the top probability."""
        p = self.probs(images)
        idx = p.argmax(1)
        conf = p[np.arange(len(idx)), idx]
        names = [self.class_names[i] for i in idx]
        if self.open_set:
            names = [n if c >= self.threshold else "reject" for n, c in zip(names, conf)]
        return names, conf

    def kind_probability(self, probs: np.ndarray, kind: str) -> np.ndarray:
        """(B,) probability of a prompted class: an exact class (``speed_limit_30``) or a kind
        summed over its value classes (``speed_limit`` = all ``speed_limit_*``)."""
        cols = [i for i, n in enumerate(self.class_names) if n == kind or n.startswith(kind + "_")
                and n[len(kind) + 1:].isdigit()]
        if not cols:
            self.class_index(kind)  # raises InputError naming the known classes
        return probs[:, cols].sum(1)

    def to_tensor(self, images: np.ndarray):
        """(B, H, W, 3) uint8 RGB -> normalised (B, 3, s, s) float tensor (resized if needed)."""
        torch = _torch()
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise InputError(f"images must be (B, H, W, 3) uint8, got {images.shape}", field="images")
        if images.shape[1] != self.input_size or images.shape[2] != self.input_size:
            import cv2

            images = np.stack([cv2.resize(i, (self.input_size, self.input_size),
                                          interpolation=cv2.INTER_AREA if i.shape[0] > self.input_size
                                          else cv2.INTER_LINEAR) for i in images])
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
        mean = torch.tensor(MEAN).view(1, 3, 1, 1)
        std = torch.tensor(STD).view(1, 3, 1, 1)
        return (x - mean) / std

    def probs(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """(B, C) softmax probabilities."""
        torch = _torch()
        self.net.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                out.append(torch.softmax(self.net(self.to_tensor(images[i:i + batch_size])), 1).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)

    def features(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """(B, D) penultimate-layer embeddings (for the Frechet distance)."""
        torch = _torch()
        self.net.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                out.append(self.net.embed(self.to_tensor(images[i:i + batch_size])).numpy().astype(np.float64))
        return np.concatenate(out) if out else np.zeros((0, self.net.dim))

    def predict(self, images: np.ndarray) -> tuple[list[str], np.ndarray]:
        p = self.probs(images)
        idx = p.argmax(1)
        return [self.class_names[i] for i in idx], p[np.arange(len(idx)), idx]

    def class_index(self, kind: str) -> int:
        try:
            return self.class_names.index(kind)
        except ValueError:
            raise InputError(f"the validator does not know the class {kind!r} (it knows {', '.join(self.class_names)})",
                             field="class") from None

    def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
        if len(images) == 0:
            return float("nan")
        return float((self.probs(images).argmax(1) == np.asarray(labels)).mean())

    def save(self, path: str | os.PathLike, extra: dict | None = None) -> Path:
        from safetensors.torch import save_file

        from carla_mr.io import atomic_write_json

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().clone() for k, v in self.net.state_dict().items()}
        tmp = path / ".model.safetensors.tmp"
        save_file(state, str(tmp))
        os.replace(tmp, path / "model.safetensors")
        meta = dict(self.meta)
        meta.update(extra or {})
        self.meta = meta
        atomic_write_json(path / "validator.json", {"arch": self.arch, "class_names": self.class_names,
                                                    "input_size": self.input_size, "width": self.width,
                                                    "mean": MEAN, "std": STD, "threshold": self.threshold,
                                                    **meta})
        return path


def build_validator(arch: str, class_names: Sequence[str], *, input_size: int | None = None,
                    width: float | None = None, seed: int = 0) -> Validator:
    """A freshly initialised validator (weights drawn from torch's RNG seeded with ``seed``)."""
    if arch not in ARCHS:
        raise InputError(f"unknown validator architecture {arch!r}; use one of {', '.join(ARCHS)}", field="arch")
    n = len(class_names)
    _torch().manual_seed(int(seed))
    if arch == "small":
        w = 32 if width is None else int(width)
        net = small_cnn(n, w)
        size = input_size or 32
    else:
        w = 1.0 if width is None else float(width)
        net = googlenet(n, w)
        size = input_size or 64
    return Validator(net=net, arch=arch, class_names=list(class_names), input_size=int(size), width=w)


def load_validator(path: str | os.PathLike) -> Validator:
    """Load a validator directory; InputError if missing or malformed."""
    from safetensors.torch import load_file

    p = Path(path).expanduser()
    cfg_file = p / "validator.json"
    if not cfg_file.is_file() or not (p / "model.safetensors").is_file():
        raise InputError(f"{p} is not a validator directory (needs validator.json and model.safetensors); "
                         "train one with 'carla-mr genai train-validator'", field="validator")
    cfg = json.loads(cfg_file.read_text())
    v = build_validator(cfg["arch"], cfg["class_names"], input_size=cfg["input_size"], width=cfg.get("width"))
    try:
        v.net.load_state_dict(load_file(str(p / "model.safetensors")))
    except (RuntimeError, KeyError) as exc:
        raise InputError(f"{p}/model.safetensors does not match {cfg['arch']}: {exc}", field="validator") from exc
    v.net.eval()
    v.threshold = float(cfg.get("threshold", 0.5))
    v.meta = {k: val for k, val in cfg.items()
              if k not in ("arch", "class_names", "input_size", "width", "mean", "std", "threshold")}
    return v


# ----------------------------------------------------------------------------- training


def _augment(x, gen):
    """Random shifts (pad 3 + crop) and small brightness/contrast jitter, on a batch tensor."""
    torch = _torch()
    B, C, H, W = x.shape
    pad = 3
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (B,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (B,), generator=gen)
    out = torch.stack([xp[i, :, dy[i]:dy[i] + H, dx[i]:dx[i] + W] for i in range(B)])
    gain = 1 + 0.2 * (torch.rand((B, 1, 1, 1), generator=gen) - 0.5)
    bias = 0.3 * (torch.rand((B, 1, 1, 1), generator=gen) - 0.5)
    return out * gain + bias


def fit(v: Validator, images: np.ndarray, labels: np.ndarray, *, epochs: int = 12, batch_size: int = 64,
        lr: float = 2e-3, seed: int = 0, augment: bool = True, progress=None, weight_decay: float = 5e-4) -> dict:
    """Train (or fine-tune) ``v`` on uint8 images with integer labels (AdamW, one-cycle cosine)."""
    torch = _torch()
    if len(images) == 0:
        raise InputError("no training images", field="images")
    labels = np.asarray(labels, np.int64)
    if labels.min() < 0 or labels.max() >= len(v.class_names):
        raise InputError(f"labels must be 0..{len(v.class_names) - 1}", field="labels")
    torch.manual_seed(int(seed))
    gen = torch.Generator().manual_seed(int(seed))
    X = v.to_tensor(images)
    Y = torch.from_numpy(labels)
    opt = torch.optim.AdamW(v.net.parameters(), lr=lr, weight_decay=weight_decay)
    n_batches = max(1, int(np.ceil(len(X) / batch_size)))
    total = epochs * n_batches
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.15)
    v.net.train()
    losses = []
    for ep in range(int(epochs)):
        perm = torch.randperm(len(X), generator=gen)
        for b in range(n_batches):
            idx = perm[b * batch_size:(b + 1) * batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            xb = _augment(X[idx], gen) if augment else X[idx]
            loss = torch.nn.functional.cross_entropy(v.net(xb), Y[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if progress:
                progress(1)
    v.net.eval()
    return {"epochs": int(epochs), "final_loss": float(np.mean(losses[-max(1, n_batches):])) if losses else float("nan")}

"""Detectors under test: full frame in; boxes, classes and scores out.

The protocol (duck-typed) is an object with

- ``name``: str;
- ``detect(images) -> list[Detections]``: ``images`` a list of RGB uint8 arrays (H, W, 3),
  one :class:`Detections` per image.

:class:`Detections` holds ``boxes`` (K, 4) float pixel corners ``x0, y0, x1, y1`` (x1/y1
exclusive, the image's pixel grid, origin top-left), ``classes`` (K,) class names (a sign
``kind`` such as ``stop`` or a kind with its value, ``speed_limit_30``) and ``scores`` (K,)
in [0, 1]. :mod:`carla_mr.dataset.detection_eval` scores detectors with pycocotools' COCOeval.

Adapters wrap the two common model families without importing their packages:

- :class:`TorchvisionDetector`: a torchvision-style detection model (``model(list of (3, H, W)
  float tensors in [0, 1]) -> list[dict(boxes=(K, 4) xyxy, labels=(K,) int64, scores=(K,))]``
  in eval mode), with ``class_names[label]`` naming each label (torchvision's convention:
  label 0 is the background, so ``class_names[0]`` is a placeholder such as ``"__background__"``).
- :class:`UltralyticsDetector`: an Ultralytics YOLO model (``model(list of HxWx3 BGR uint8
  arrays, verbose=False) -> list[Results]`` with ``Results.boxes.xyxy`` (K, 4), ``.cls`` (K,)
  and ``.conf`` (K,) tensors) and ``model.names`` {index: class name}.

:func:`load_detector` builds one from ``module:attr`` (a class is instantiated without
arguments), recognising either interface by its output, or from an object that already has
``detect``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from carla_mr.errors import InputError


@dataclass
class Detections:
    """One image's detections: (K, 4) xyxy pixel boxes, (K,) class names, (K,) scores."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    classes: list[str] = field(default_factory=list)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, np.float64).reshape(-1, 4)
        self.scores = np.asarray(self.scores, np.float64).reshape(-1)
        self.classes = [str(c) for c in self.classes]
        if not (len(self.boxes) == len(self.classes) == len(self.scores)):
            raise InputError(f"detections disagree in length: {len(self.boxes)} boxes, {len(self.classes)} classes, "
                             f"{len(self.scores)} scores", field="detector")

    def __len__(self) -> int:
        return len(self.scores)


def _np(t) -> np.ndarray:
    """A torch tensor (any device) or array-like as a numpy array."""
    if hasattr(t, "detach"):
        t = t.detach().cpu().numpy()
    return np.asarray(t)


def _name(names: Any, idx: int, who: str) -> str:
    try:
        return str(names[int(idx)])
    except (KeyError, IndexError, TypeError) as exc:
        raise InputError(f"{who} returned label {int(idx)} with no entry in its class names", field="detector") from exc


class TorchvisionDetector:
    """Adapter for torchvision-style detection models (see the module docstring)."""

    def __init__(self, model, class_names: Sequence[str] | Mapping[int, str], *, name: str = "torchvision",
                 min_score: float = 0.0):
        self.model = model
        self.class_names = class_names
        self.name = name
        self.min_score = float(min_score)

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        import torch

        if not images:
            return []
        xs = [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).float().div(255.0) for im in images]
        if hasattr(self.model, "eval"):
            self.model.eval()
        with torch.no_grad():
            outs = self.model(xs)
        if len(outs) != len(images):
            raise InputError(f"{self.name} returned {len(outs)} results for {len(images)} images", field="detector")
        return [self._one(o) for o in outs]

    def _one(self, out: Mapping[str, Any]) -> Detections:
        try:
            boxes, labels, scores = _np(out["boxes"]), _np(out["labels"]), _np(out["scores"])
        except (KeyError, TypeError) as exc:
            raise InputError(f"{self.name}: a torchvision detection result is a dict with boxes, labels and scores "
                             f"(got {type(out).__name__})", field="detector") from exc
        keep = scores >= self.min_score
        return Detections(boxes[keep], [_name(self.class_names, i, self.name) for i in labels[keep]], scores[keep])


class UltralyticsDetector:
    """Adapter for Ultralytics YOLO models (see the module docstring)."""

    def __init__(self, model, class_names: Optional[Mapping[int, str] | Sequence[str]] = None, *,
                 name: str = "ultralytics", min_score: float = 0.0):
        self.model = model
        self.class_names = class_names if class_names is not None else getattr(model, "names", None)
        if self.class_names is None:
            raise InputError(f"{name} has no names attribute; pass class_names", field="detector")
        self.name = name
        self.min_score = float(min_score)

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        if not images:
            return []
        bgr = [np.ascontiguousarray(im[:, :, ::-1]) for im in images]  # Ultralytics reads numpy images as BGR
        results = self.model(bgr, verbose=False)
        results = list(results)
        if len(results) != len(images):
            raise InputError(f"{self.name} returned {len(results)} results for {len(images)} images", field="detector")
        return [self._one(r) for r in results]

    def _one(self, res) -> Detections:
        b = getattr(res, "boxes", None)
        if b is None or not all(hasattr(b, a) for a in ("xyxy", "cls", "conf")):
            raise InputError(f"{self.name}: an Ultralytics result has .boxes with xyxy, cls and conf", field="detector")
        boxes, cls, conf = _np(b.xyxy), _np(b.cls), _np(b.conf)
        keep = conf >= self.min_score
        return Detections(boxes[keep], [_name(self.class_names, i, self.name) for i in cls[keep]], conf[keep])


class _DetectFn:
    """A plain callable (or object with ``detect``) returning Detections or (boxes, classes, scores)."""

    def __init__(self, fn, name: str):
        self.fn = fn
        self.name = name

    def detect(self, images):
        outs = list(self.fn(list(images)))
        if len(outs) != len(images):
            raise InputError(f"{self.name} returned {len(outs)} results for {len(images)} images", field="detector")
        return [o if isinstance(o, Detections) else _as_detections(o, self.name) for o in outs]


def _as_detections(o, who: str) -> Detections:
    if isinstance(o, Mapping) and "classes" in o:
        return Detections(_np(o["boxes"]), list(o["classes"]), _np(o["scores"]))
    if isinstance(o, (tuple, list)) and len(o) == 3:
        return Detections(_np(o[0]), list(o[1]), _np(o[2]))
    raise InputError(f"{who} must return, per image, Detections, dict(boxes, classes, scores) or "
                     f"(boxes, classes, scores)", field="detector")


def wrap_detector(obj, name: str, class_names=None, *, min_score: float = 0.0):
    """The adapter for ``obj``: itself when it has ``detect``; Ultralytics when it has ``names``
    and no ``class_names`` (or ``kind="ultralytics"``); else torchvision when it is a torch
    module with ``class_names``; else a plain callable."""
    if hasattr(obj, "detect") and callable(obj.detect):
        return _DetectFn(obj.detect, name)
    kind = getattr(obj, "detector_interface", None)
    names = class_names if class_names is not None else getattr(obj, "class_names", None)
    if kind == "ultralytics" or (kind is None and names is None and hasattr(obj, "names")):
        return UltralyticsDetector(obj, class_names, name=name, min_score=min_score)
    if kind == "torchvision" or names is not None:
        if names is None:
            raise InputError(f"{name} needs class_names (label index -> class name)", field="detector")
        return TorchvisionDetector(obj, names, name=name, min_score=min_score)
    if callable(obj):
        return _DetectFn(obj, name)
    raise InputError(f"{name} is not a detector (no detect(), names or class_names)", field="detector")


def load_detector(spec: str, checkpoint: Optional[str] = None, *, min_score: float = 0.0):
    """A detector from ``module:attr`` (a class is instantiated without arguments); a torch
    module gets ``checkpoint`` as its state dict (missing / unexpected keys: InputError)."""
    from carla_mr.dataset.models import load_state, resolve_model

    obj = resolve_model(spec)
    if isinstance(obj, type):
        obj = obj()
    if checkpoint:
        if not hasattr(obj, "load_state_dict"):
            raise InputError(f"{spec} takes no checkpoint (not a torch module)", field="perception.detector_checkpoint")
        load_state(obj, checkpoint)
    return wrap_detector(obj, spec, min_score=min_score)

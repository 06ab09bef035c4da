"""Models under test for perception in the loop, behind one small interface.

A model under test is any object with ``name`` (str) and ``predict(crops) -> list[str]``,
where ``crops`` is a list of RGB uint8 images (H, W, 3) of any size and each answer is a
class name: a sign ``kind`` (``stop``) or a kind with its value (``speed_limit_30``).
:func:`load_model` builds one from a spec:

- ``"default"`` (or ``"crop_net"``): the project's crop CNN (:mod:`carla_mr.dataset.crop_net`),
  trained on rendered frames with original textures only (``carla-mr dataset train-default``),
  from ``checkpoint`` (a crop-net folder) or the committed one, when torch is installed; else
  the :class:`TemplateMatcher`. It is independent of the genai validator. A validator folder as
  ``checkpoint`` loads that validator instead (as before).
- ``"validator"``: the genai validator (``checkpoint`` or the committed one).
- ``"template"``: the :class:`TemplateMatcher` (no training, no torch).
- ``"module:attr"`` (or ``module.attr``): a callable taking the crop list and returning
  class names (or ints indexing its ``class_names``/``classes`` attribute); a class is
  instantiated without arguments first; a ``torch.nn.Module`` gets (B, 3, S, S) float input
  in [0, 1] (S = its ``input_size``, default 64) and its argmax indexes ``class_names``.
  ``checkpoint`` loads a state dict (``.safetensors``, or a torch file with weights only).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from carla_mr.dataset.model_io import check_state_keys, resize as _resize
from carla_mr.errors import InputError
from carla_mr.world.sign_geometry import original_face


DEFAULT_CLASSES = ("stop", "yield", "no_entry", "priority_road", "parking", "warning", "mandatory_arrow",
                   *(f"speed_limit_{v}" for v in (10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130)))


class TemplateMatcher:
    """Nearest original face by normalised cross-correlation on 24x24 crops.

    Templates are the original faces of ``classes`` composited on grey and cropped with the
    same margin the evaluation uses, so a clean, unoccluded, near sign scores high and a
    far, occluded or re-textured one degrades: a transparent, training-free baseline.
    """

    size = 24

    def __init__(self, classes: Sequence[str] = DEFAULT_CLASSES, margin: float = 0.1):
        self.classes = list(classes)
        self.name = "template"
        temps = []
        for c in self.classes:
            kind, value = _split_class(c)
            face = original_face(kind, value, 96).astype(np.float64)
            a = face[:, :, 3:4] / 255.0
            rgb = face[:, :, :3] * a + 110.0 * (1 - a)
            pad = int(round(96 * margin))
            canvas = np.full((96 + 2 * pad, 96 + 2 * pad, 3), 110.0)
            canvas[pad:pad + 96, pad:pad + 96] = rgb
            temps.append(self._vec(canvas.astype(np.uint8)))
        self._t = np.stack(temps)  # (C, D)

    def _vec(self, img: np.ndarray) -> np.ndarray:
        v = _resize(np.asarray(img, np.uint8), self.size).astype(np.float64).ravel()
        v -= v.mean()
        return v / (np.linalg.norm(v) + 1e-9)

    def predict(self, crops: list[np.ndarray]) -> list[str]:
        if not crops:
            return []
        x = np.stack([self._vec(c) for c in crops])
        return [self.classes[i] for i in (x @ self._t.T).argmax(axis=1)]


def _split_class(c: str) -> tuple[str, Optional[float]]:
    head, _, tail = c.rpartition("_")
    if head and tail.isdigit():
        return head, float(tail)
    return c, None


class _ValidatorModel:
    def __init__(self, validator, name: str):
        self.v = validator
        self.name = name

    def predict(self, crops):
        if not crops:
            return []
        s = int(self.v.input_size)
        names, _conf = self.v.predict(np.stack([_resize(c, s) for c in crops]))
        return list(names)


class _CallableModel:
    def __init__(self, fn: Callable, name: str, classes: Optional[Sequence[str]]):
        self.fn = fn
        self.name = name
        self.classes = list(classes) if classes is not None else None

    def predict(self, crops):
        if not crops:
            return []
        out = self.fn(list(crops))
        out = list(np.asarray(out).tolist()) if not isinstance(out, list) else out
        if len(out) != len(crops):
            raise InputError(f"model {self.name} returned {len(out)} answers for {len(crops)} crops", field="model")
        res = []
        for o in out:
            if isinstance(o, (int, np.integer)) and not isinstance(o, bool):
                if self.classes is None:
                    raise InputError(f"model {self.name} returned class indices but has no class_names attribute",
                                     field="model")
                res.append(self.classes[int(o)])
            else:
                res.append(str(o))
        return res


class _TorchModel:
    def __init__(self, module, name: str, classes: Sequence[str], input_size: int):
        self.m = module
        self.name = name
        self.classes = list(classes)
        self.size = int(input_size)

    def predict(self, crops):
        import torch

        if not crops:
            return []
        x = np.stack([_resize(c, self.size) for c in crops]).astype(np.float32) / 255.0
        self.m.eval()
        with torch.no_grad():
            logits = self.m(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())
        return [self.classes[i] for i in logits.argmax(1).tolist()]


def load_state(module, checkpoint: str) -> None:
    """Load a ``.safetensors`` or torch state dict into ``module``; InputError (field
    ``perception.checkpoint``) for an unreadable file, missing/extra keys or wrong shapes."""
    p = Path(checkpoint)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            import torch

            state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is bad input
        raise InputError(f"cannot read {checkpoint} as weights: {type(exc).__name__}: {exc}",
                         field="perception.checkpoint") from exc
    check_state_keys(module, state, checkpoint)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:  # shapes that do not fit the module
        raise InputError(f"{checkpoint} does not fit {type(module).__name__}: {str(exc).splitlines()[-1].strip()}",
                         field="perception.checkpoint") from exc


def resolve_model(spec: str) -> Any:
    """The object a ``module:attr`` (or ``module.attr``) spec names; the working directory is
    searched too. InputError (field ``perception.model``) when it does not resolve."""
    mod, sep, attr = spec.partition(":")
    if not sep:
        mod, _, attr = spec.rpartition(".")
    if not mod or not attr:
        raise InputError(f"'{spec}' is not 'module:attr'", field="perception.model")
    try:
        obj = importlib.import_module(mod)
    except ModuleNotFoundError as exc:
        # Console scripts do not put the working directory on sys.path; a model file next to
        # the user is the common case, so look there too.
        import os
        import sys

        if exc.name != mod.split(".")[0] or os.getcwd() in sys.path:
            raise InputError(f"cannot import module '{mod}': {exc}", field="perception.model") from exc
        sys.path.insert(0, os.getcwd())
        try:
            obj = importlib.import_module(mod)
        except ImportError as exc2:
            raise InputError(f"cannot import module '{mod}': {exc2}", field="perception.model") from exc2
        finally:
            sys.path.remove(os.getcwd())
    except ImportError as exc:
        raise InputError(f"cannot import module '{mod}': {exc}", field="perception.model") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InputError(f"module '{mod}' has no attribute '{attr}'", field="perception.model")
        obj = getattr(obj, part)
    return obj


def _builtin(spec: str, checkpoint: Optional[str], classes):
    """'default' / 'crop_net': the project-trained crop net (``checkpoint`` or the committed one);
    'validator' (or a validator folder as checkpoint): the genai validator; else the template matcher."""
    if checkpoint and spec != "validator":
        from carla_mr.dataset.crop_net import is_crop_net_dir

        if is_crop_net_dir(checkpoint):
            from carla_mr.dataset.crop_net import load_crop_net

            return load_crop_net(checkpoint)
    if spec == "validator" or checkpoint:
        try:
            from carla_mr.genai import validator as vmod  # needs torch (extra 'genai')
        except ImportError as exc:
            raise InputError("the genai validator needs the 'genai' extra (torch)", field="perception.model") from exc
        if checkpoint:
            return _ValidatorModel(vmod.load_validator(checkpoint), f"validator:{Path(checkpoint).name}")
        from carla_mr.genai.api import load_default_validator

        return _ValidatorModel(load_default_validator(), "validator:default")
    try:
        from carla_mr.dataset.crop_net import default_crop_net_path, is_crop_net_dir, load_crop_net

        if is_crop_net_dir(default_crop_net_path()):
            return load_crop_net(default_crop_net_path(), name="crop_net:default")
    except ImportError:  # no torch: the training-free baseline
        pass
    if spec == "crop_net":
        raise InputError("no crop net is installed; train one with 'carla-mr dataset train-default --install'",
                         field="perception.model")
    return TemplateMatcher(classes or DEFAULT_CLASSES)


def load_model(spec: str | None = "default", checkpoint: str | None = None, *, classes: Sequence[str] | None = None):
    """Build the model under test named by ``spec`` (see the module docstring)."""
    spec = spec or "default"
    if spec == "template":
        return TemplateMatcher(classes or DEFAULT_CLASSES)
    if spec in ("default", "crop_net", "validator"):
        return _builtin(spec, checkpoint, classes)
    obj = resolve_model(spec)
    if isinstance(obj, type):
        obj = obj()
    cls_names = getattr(obj, "class_names", None) or getattr(obj, "classes", None)
    try:
        import torch

        is_module = isinstance(obj, torch.nn.Module)
    except ImportError:
        is_module = False
    if is_module:
        if checkpoint:
            load_state(obj, checkpoint)
        if not cls_names:
            raise InputError(f"torch module {spec} needs a class_names attribute (list of class names)",
                             field="perception.model")
        return _TorchModel(obj, spec, cls_names, getattr(obj, "input_size", 64))
    if hasattr(obj, "predict") and callable(obj.predict):
        return _CallableModel(obj.predict, spec, cls_names)
    if callable(obj):
        return _CallableModel(obj, spec, cls_names)
    raise InputError(f"{spec} is neither a callable nor a torch module", field="perception.model")

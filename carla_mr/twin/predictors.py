"""Trajectory predictors with one interface: ``fit``, ``predict`` a batch, ``save``, ``load``.

- :class:`ZeroMotion`: the vehicle stays where it was last seen.
- :class:`ConstantVelocity`: the last observed velocity (mean over ``velocity_steps`` samples)
  is held for the whole horizon.
- :class:`~carla_mr.twin.residual.ResidualPredictor`: constant velocity plus a bounded learned
  correction (numpy MLP), any rate from 1 to 25 Hz; trained by ``carla-mr twin train``.

Shapes: ``past`` (M, P, 2) metres, newest point last; predictions (M, F, 2) metres, in the same
frame as ``past``; one step is ``1 / sample_hz`` seconds. Saved models are a directory with
``config.json`` (kind, shapes, normalisers) and ``weights.npz`` (float32 arrays; loaded with
``allow_pickle=False``): no pickle anywhere.
"""

from __future__ import annotations

import abc
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from carla_mr.errors import InputError
from carla_mr.io import atomic_write_json
from carla_mr.twin.residual import ResidualPredictor

BASELINES = ("zero_motion", "constant_velocity")
FORMAT_VERSION = 1


def _check_past(past: np.ndarray, min_len: int = 2) -> np.ndarray:
    past = np.asarray(past, np.float64)
    if past.ndim != 3 or past.shape[2] != 2 or past.shape[1] < min_len:
        raise InputError(f"past must have shape (M, P>={min_len}, 2), got {past.shape}", field="past")
    return past


class Predictor(abc.ABC):
    """A trajectory predictor over ``past`` samples (P) giving ``future`` samples (F)."""

    kind: str = ""

    def __init__(self, past: int = 60, future: int = 5, sample_hz: float = 2.0):
        if past < 2 or future < 1:
            raise InputError(f"need past >= 2 and future >= 1, got {past} and {future}", field="past/future")
        if not sample_hz > 0:
            raise InputError(f"sample_hz must be > 0, got {sample_hz}", field="sample_hz")
        self.past = int(past)
        self.future = int(future)
        self.sample_hz = float(sample_hz)

    def fit(self, past: np.ndarray, future: np.ndarray, **kwargs) -> dict[str, Any]:
        """Learn from windows (past (M, P, 2), future (M, F, 2)); returns training facts."""
        return {}

    @abc.abstractmethod
    def predict(self, past: np.ndarray) -> np.ndarray:
        """(M, P, 2) metres -> (M, F, 2) metres."""

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "format": FORMAT_VERSION, "past": self.past, "future": self.future,
                "sample_hz": self.sample_hz}

    def save(self, directory: str | os.PathLike) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_json(d / "config.json", self.config())
        return d

    @classmethod
    def from_config(cls, cfg: dict[str, Any], directory: Path | None) -> "Predictor":
        return cls(past=cfg["past"], future=cfg["future"], sample_hz=cfg["sample_hz"])


class ZeroMotion(Predictor):
    kind = "zero_motion"

    def predict(self, past: np.ndarray) -> np.ndarray:
        past = _check_past(past, 1)
        return np.repeat(past[:, -1:, :], self.future, axis=1)


class ConstantVelocity(Predictor):
    kind = "constant_velocity"

    def __init__(self, past: int = 60, future: int = 5, sample_hz: float = 2.0, velocity_steps: int = 1):
        super().__init__(past, future, sample_hz)
        if velocity_steps < 1:
            raise InputError(f"velocity_steps must be >= 1, got {velocity_steps}", field="velocity_steps")
        self.velocity_steps = int(velocity_steps)

    def predict(self, past: np.ndarray) -> np.ndarray:
        past = _check_past(past, 2)
        k = min(self.velocity_steps, past.shape[1] - 1)
        v = (past[:, -1] - past[:, -1 - k]) / k  # metres per step
        steps = np.arange(1, self.future + 1, dtype=np.float64)
        return past[:, -1:, :] + steps[None, :, None] * v[:, None, :]

    def config(self) -> dict[str, Any]:
        return {**super().config(), "velocity_steps": self.velocity_steps}

    @classmethod
    def from_config(cls, cfg, directory):
        return cls(cfg["past"], cfg["future"], cfg["sample_hz"], cfg.get("velocity_steps", 1))


KINDS: dict[str, type] = {c.kind: c for c in (ZeroMotion, ConstantVelocity, ResidualPredictor)}


def load_predictor(spec: str | os.PathLike, *, past: int = 60, future: int = 5, sample_hz: float = 2.0) -> Predictor:
    """A saved model directory, or a baseline by name (``zero_motion``, ``constant_velocity``).

    ``sample_hz`` is the rate of the data the predictor will see: a residual model serves any
    rate (it keeps its own ``past`` and ``future``); the baselines take ``past``/``future`` too.
    """
    if str(spec) in BASELINES:
        return KINDS[str(spec)](past=past, future=future, sample_hz=sample_hz)
    d = Path(spec)
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise InputError(f"not a model directory (no config.json) nor a baseline name {BASELINES}",
                         field="model", source=str(d))
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"config.json is not valid JSON: {exc}", source=str(cfg_path)) from exc
    kind = cfg.get("kind")
    if kind not in KINDS:
        raise InputError(f"unknown model kind {kind!r}; known: {sorted(KINDS)}", field="kind", source=str(cfg_path))
    try:
        pred = KINDS[kind].from_config(cfg, d)
        if kind == ResidualPredictor.kind:  # rate-agnostic: serves the caller's rate
            pred.sample_hz = float(sample_hz)
        return pred
    except (KeyError, TypeError, OSError) as exc:
        raise InputError(f"config.json is missing or has a bad field: {exc}", source=str(cfg_path)) from exc

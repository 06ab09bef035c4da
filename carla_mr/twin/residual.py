"""The residual twin predictor: constant velocity plus a small, bounded, learned correction.

Prediction = constant velocity (the last step's velocity held for F steps, exactly
:class:`~carla_mr.twin.predictors.ConstantVelocity`) + a correction in the vehicle's own
heading-aligned frame (x forward, y to the side; origin at the last observed point). The
correction of horizon step k (t_k = k * dt seconds ahead) is::

    c_k = tanh(o_k) * min(0.5 * ACCEL_BOUND * t_k**2, CORRECTION_BOUND)

where ``o`` is the output of a small MLP (numpy at inference). A zero output is constant
velocity exactly, and no correction exceeds ``CORRECTION_BOUND`` metres per axis: the model
cannot be far worse than physics. Scaling by t_k**2 makes the output a normalised
acceleration, so one network serves every rate.

Inputs (rate-agnostic; ``dt`` is the data's own step, seconds):

- the local-frame position at fixed look-back times ``LAGS_S`` (linearly interpolated between
  past samples, all at or before the last one; divided by the lag, so roughly the mean velocity
  over it, m/s / 10), each with a flag saying whether the past window reaches that far;
- the local-frame velocity of the last ``STEP_VELOCITIES`` steps (m/s / 10);
- log(dt) and the speed of the last step.

Optionally (``map_inputs``, said in ``config.json``'s ``features.map``) the lane geometry ahead
from an offline ``carla.Map`` (:mod:`carla_mr.twin.map_features`, N_MAP more inputs, in the same
vehicle frame). The predictor's :attr:`ResidualPredictor.map` is the
:class:`~carla_mr.twin.map_features.MapFeatures` of the map the positions are on, or None: then
those inputs are zeros with the map flag 0 (the model is trained with map dropout to serve that
case too) -- unless it carries a ``fallback`` network (``twin train --init MODEL``: the map-free
model it was warm-started from), which then serves the windows without a map exactly as that
model would. A model saved without ``features.map`` (format 2) takes no map inputs.

Saved as a directory: ``config.json`` (kind, shapes, feature layout, normalisers, training
facts, training-vehicle fingerprints) and ``weights.npz`` (float32; loaded with
``allow_pickle=False``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from carla_mr.errors import InputError
from carla_mr.io import atomic_save_npz, atomic_write_json
from carla_mr.twin.frames import heading_from_past, to_local, to_world

LAGS_S = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)
STEP_VELOCITIES = 3
ACCEL_BOUND = 4.0  # m/s^2
CORRECTION_BOUND = 6.0  # m


def n_features(map_inputs: bool = False) -> int:
    from carla_mr.twin.map_features import N_MAP

    return 3 * len(LAGS_S) + 2 * STEP_VELOCITIES + 2 + (N_MAP if map_inputs else 0)


def context_samples(dt: float, past: int) -> int:
    """Past samples the features use at step ``dt``: enough to reach the longest lag, at most ``past``."""
    return int(min(past, int(np.ceil(max(LAGS_S) / dt + 1e-9)) + 1))


def local_frame(past: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Origin (M, 2) = last point; heading (M,) rad from the recent positions."""
    return past[:, -1, :], heading_from_past(past)


def features(past: np.ndarray, dt: float) -> np.ndarray:
    """(M, P, 2) metres at step ``dt`` s -> (M, n_features()) float64 (see the module docstring)."""
    m, p, _ = past.shape
    origin, heading = local_frame(past)
    q = to_local(past, origin, heading)  # (M, P, 2), last point at the origin
    out = np.zeros((m, n_features(False)))
    col = 0
    for lag in LAGS_S:
        s = lag / dt  # steps back (may be fractional)
        avail = s <= p - 1 + 1e-9
        s = min(s, p - 1)
        i0 = int(np.floor(s))
        fr = s - i0
        a = q[:, p - 1 - i0]
        b = q[:, max(p - 2 - i0, 0)]
        pos = a + fr * (b - a)  # the local position `lag` seconds ago (interpolated, all in the past)
        out[:, col:col + 2] = -pos / (lag * 10.0) if avail else 0.0
        out[:, col + 2] = 1.0 if avail else 0.0
        col += 3
    k = min(STEP_VELOCITIES, p - 1)
    v = (q[:, -k:] - q[:, -k - 1:-1]) / dt / 10.0  # (M, k, 2)
    out[:, col:col + 2 * k] = v[:, ::-1].reshape(m, -1)
    col += 2 * STEP_VELOCITIES
    out[:, col] = np.log(dt)
    out[:, col + 1] = np.hypot(v[:, -1, 0], v[:, -1, 1])
    return out


def map_inputs_for(past: np.ndarray, cmap, origin: np.ndarray | None = None,
                   heading: np.ndarray | None = None) -> np.ndarray:
    """(M, N_MAP) map features of windows ``past`` (their last point and residual heading); zeros
    with flag 0 when ``cmap`` (a :class:`~carla_mr.twin.map_features.MapFeatures`) is None."""
    from carla_mr.twin.map_features import absent

    if cmap is None:
        return absent(past.shape[0])
    if origin is None or heading is None:
        origin, heading = local_frame(past)
    return cmap.compute(origin[:, 0], origin[:, 1], heading)


def bounds(dt: float, future: int) -> np.ndarray:
    """(F,) metres: the largest correction per axis at each horizon step."""
    tk = dt * np.arange(1, future + 1)
    return np.minimum(0.5 * ACCEL_BOUND * tk ** 2, CORRECTION_BOUND)


def cv_local(past: np.ndarray, heading: np.ndarray, future: int) -> np.ndarray:
    """Constant velocity (last step) in the local frame, (M, F, 2)."""
    v = past[:, -1] - past[:, -2]
    c, s = np.cos(heading), np.sin(heading)
    vl = np.stack([c * v[:, 0] + s * v[:, 1], -s * v[:, 0] + c * v[:, 1]], axis=-1)
    return np.arange(1, future + 1)[None, :, None] * vl[:, None, :]


def mlp_forward(params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """ReLU MLP: layers W0, b0, W1, b1, ...; the last layer is linear.

    ``einsum`` rather than ``@``: one thread, no BLAS thread pool spinning up for a 200-row batch
    (which, on a loaded machine, made the same call take 1-25 ms)."""
    n = len([k for k in params if k.startswith("W")])
    h = x
    for i in range(n):
        h = np.einsum("ij,jk->ik", h, params[f"W{i}"]) + params[f"b{i}"]
        if i < n - 1:
            np.maximum(h, 0.0, out=h)
    return h


class ResidualPredictor:
    """Constant velocity + a bounded learned correction (see the module docstring).

    ``past`` is the window length it is served (P, paper: 60); it uses only the last
    :func:`context_samples` of it. ``future`` (F) is fixed by the weights. ``sample_hz`` is the
    rate of the data it is given (1-25 Hz); set it per data source.
    """

    kind = "residual"

    def __init__(self, past: int = 60, future: int = 5, sample_hz: float = 2.0, *,
                 params: dict[str, np.ndarray] | None = None, norm: dict[str, np.ndarray] | None = None,
                 info: dict[str, Any] | None = None, train_keys: list[str] | None = None,
                 map_inputs: bool = False, fallback: dict[str, dict[str, np.ndarray]] | None = None):
        if past < 2 or future < 1 or not sample_hz > 0:
            raise InputError(f"need past >= 2, future >= 1, sample_hz > 0 (got {past}, {future}, {sample_hz})",
                             field="past/future")
        self.past, self.future, self.sample_hz = int(past), int(future), float(sample_hz)
        self.params = params
        self.norm = norm
        self.info = dict(info or {})
        self.train_keys = list(train_keys or [])
        #: whether the model takes map inputs; ``map``: the MapFeatures of the data's map, or None
        self.map_inputs = bool(map_inputs)
        self.map = None
        #: {"params", "norm"} of a map-free network serving when there is no map (or None)
        self.fallback = fallback if map_inputs else None

    def correction(self, feat: np.ndarray, dt: float, params: dict | None = None,
                   norm: dict | None = None) -> np.ndarray:
        """(M, F, 2) local-frame correction, metres (``params``/``norm``: another network, the fallback)."""
        params, norm = (self.params, self.norm) if params is None else (params, norm)
        if params is None:
            return np.zeros((feat.shape[0], self.future, 2))
        x = (feat - norm["mean"]) / norm["std"]
        o = mlp_forward(params, x.astype(np.float32)).astype(np.float64)
        return np.tanh(o.reshape(-1, self.future, 2)) * bounds(dt, self.future)[None, :, None]

    def predict(self, past: np.ndarray) -> np.ndarray:
        """(M, P, 2) metres -> (M, F, 2) metres, same frame; P >= 2 (uses the last context samples)."""
        past = np.asarray(past, np.float64)
        if past.ndim != 3 or past.shape[2] != 2 or past.shape[1] < 2:
            raise InputError(f"past must have shape (M, P>=2, 2), got {past.shape}", field="past")
        if past.shape[0] == 0:
            return np.zeros((0, self.future, 2))
        dt = 1.0 / self.sample_hz
        past = past[:, -context_samples(dt, past.shape[1]):]
        origin, heading = local_frame(past)
        feat = features(past, dt)
        if self.map_inputs and self.map is None and self.fallback is not None:
            corr = self.correction(feat, dt, self.fallback["params"], self.fallback["norm"])
        else:
            if self.map_inputs:
                feat = np.concatenate([feat, map_inputs_for(past, self.map, origin, heading)], axis=1)
            corr = self.correction(feat, dt)
        local = cv_local(past, heading, self.future) + corr
        return to_world(local, origin, heading)

    # -- persistence ----------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "format": 2, "past": self.past, "future": self.future,
                "sample_hz": self.sample_hz, "rates_hz": self.info.get("rates_hz"),
                "features": {"lags_s": list(LAGS_S), "step_velocities": STEP_VELOCITIES,
                             "accel_bound": ACCEL_BOUND, "correction_bound_m": CORRECTION_BOUND,
                             **({"map": _map_layout()} if self.map_inputs else {})},
                "norm": {k: v.tolist() for k, v in (self.norm or {}).items()}, "train": self.info,
                **({"fallback_norm": {k: np.asarray(v).tolist() for k, v in self.fallback["norm"].items()}}
                   if self.fallback else {}),
                "train_vehicle_keys": self.train_keys}

    def save(self, directory: str | os.PathLike) -> Path:
        if self.params is None:
            raise InputError("nothing to save: the residual predictor is not trained", field="model")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_json(d / "config.json", self.config(), indent=None)
        arrays = {k: v.astype(np.float32) for k, v in self.params.items()}
        if self.fallback:
            arrays.update({f"fallback_{k}": np.asarray(v, np.float32) for k, v in self.fallback["params"].items()})
        atomic_save_npz(d / "weights.npz", **arrays)
        return d

    @classmethod
    def from_config(cls, cfg: dict[str, Any], directory: Path | None) -> "ResidualPredictor":
        f = cfg.get("features", {})
        if (tuple(f.get("lags_s", ())) != LAGS_S or f.get("step_velocities") != STEP_VELOCITIES
                or f.get("accel_bound") != ACCEL_BOUND or f.get("correction_bound_m") != CORRECTION_BOUND):
            raise InputError("the model's feature layout differs from this version's; retrain it with "
                             "'carla-mr twin train'", field="features", source=str(directory))
        if "map" in f and f["map"] != _map_layout():
            raise InputError("the model's map-feature layout differs from this version's; retrain it with "
                             "'carla-mr twin train --map ...'", field="features.map", source=str(directory))
        w = Path(directory) / "weights.npz"
        if not w.is_file():
            raise InputError("the model directory has no weights.npz", source=str(directory))
        with np.load(w, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k], np.float32) for k in z.files}
        params = {k: v for k, v in arrays.items() if not k.startswith("fallback_")}
        fb = {k[len("fallback_"):]: v for k, v in arrays.items() if k.startswith("fallback_")}
        norm = {k: np.asarray(v, np.float64) for k, v in cfg["norm"].items()}
        fallback = None
        if fb:
            fallback = {"params": fb, "norm": {k: np.asarray(v, np.float64) for k, v in cfg["fallback_norm"].items()}}
        return cls(cfg["past"], cfg["future"], cfg["sample_hz"], params=params, norm=norm, info=cfg.get("train"),
                   train_keys=cfg.get("train_vehicle_keys"), map_inputs="map" in f, fallback=fallback)


def _map_layout() -> dict[str, Any]:
    from carla_mr.twin import map_features as mf

    return {"n": mf.N_MAP, "names": list(mf.NAMES), "ahead_m": list(mf.AHEAD_M), "step_m": mf.STEP_M,
            "junction_horizon_m": mf.JUNCTION_HORIZON_M, "spacing_m": mf.SPACING_M,
            "max_offset_m": mf.MAX_OFFSET_M}

"""Trajectory predictors with one interface: ``fit``, ``predict`` a batch, ``save``, ``load``.

- :class:`ZeroMotion`: the vehicle stays where it was last seen.
- :class:`ConstantVelocity`: the last observed velocity (mean over ``velocity_steps`` samples)
  is held for the whole horizon.
- :class:`LSTMPredictor` (torch, imported lazily): an LSTM over the past window expressed in
  the window's local frame (origin at the last observed point, x along the recent heading;
  features: positions and per-step displacements), predicting the future displacements from
  the last observed point in that frame. Normalisers are fit on the training windows only.
  With ``residual`` (default) the network predicts the correction to the constant-velocity
  extrapolation, so an untrained network starts at the baseline.

Shapes: ``past`` (M, P, 2) metres, newest point last; predictions (M, F, 2) metres, in the same
frame as ``past``; one step is ``1 / sample_hz`` seconds. Saved models are a directory with
``config.json`` (kind, shapes, recipe, normalisers) and, for the LSTM, ``weights.npz``
(float32 arrays; loaded with ``allow_pickle=False``): no pickle anywhere.
"""

from __future__ import annotations

import abc
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from carla_mr.errors import InputError, require
from carla_mr.io import atomic_save_npz, atomic_write_json
from carla_mr.twin.frames import heading_from_past, to_local, to_world

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


@dataclass
class LSTMRecipe:
    """Training recipe. Defaults are the paper's: 500 epochs, batch 40, dropout 0.05, MSE loss.

    ``patience`` stops early when the validation loss (a by-vehicle split of the training
    windows, ``val_fraction``) has not improved for that many epochs; the best weights are kept.
    ``max_seconds`` bounds the wall time (None: no bound).
    """

    epochs: int = 500
    batch_size: int = 40
    lr: float = 1e-3
    dropout: float = 0.05
    hidden: int = 64
    layers: int = 1
    residual: bool = True
    val_fraction: float = 0.1
    patience: int | None = 25
    max_seconds: float | None = None
    weight_decay: float = 0.0
    clip_grad: float = 1.0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.hidden < 1 or self.layers < 1:
            raise InputError("epochs, batch_size, hidden and layers must be >= 1", field="recipe")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout must lie in [0, 1), got {self.dropout}", field="dropout")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"val_fraction must lie in [0, 1), got {self.val_fraction}", field="val_fraction")
        if not self.lr > 0:
            raise InputError(f"lr must be > 0, got {self.lr}", field="lr")


def _features(past: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local-frame features (M, P, 4) [x, y, dx, dy], plus the frame's origin and heading."""
    origin = past[:, -1, :]
    heading = heading_from_past(past)
    q = to_local(past, origin, heading)
    dq = np.zeros_like(q)
    dq[:, 1:] = q[:, 1:] - q[:, :-1]
    return np.concatenate([q, dq], axis=-1), origin, heading


def _cv_local(feat: np.ndarray, future: int) -> np.ndarray:
    """Constant-velocity extrapolation in the local frame (M, F, 2) from features."""
    v = feat[:, -1, 2:4]
    steps = np.arange(1, future + 1, dtype=feat.dtype)
    return steps[None, :, None] * v[:, None, :]


def _build_net(torch, n_in: int, hidden: int, layers: int, dropout: float, n_out: int):
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(n_in, hidden, num_layers=layers, batch_first=True,
                                dropout=dropout if layers > 1 else 0.0)
            self.drop = nn.Dropout(dropout)
            self.head = nn.Linear(hidden, n_out)

        def forward(self, x):
            out, _ = self.lstm(x)
            return self.head(self.drop(out[:, -1]))

    return Net()


class LSTMPredictor(Predictor):
    kind = "lstm"

    def __init__(self, past: int = 60, future: int = 5, sample_hz: float = 2.0, recipe: LSTMRecipe | None = None):
        super().__init__(past, future, sample_hz)
        self.recipe = recipe or LSTMRecipe()
        self.norm: dict[str, np.ndarray] | None = None
        self.net = None
        self.train_info: dict[str, Any] = {}
        #: torch threads for predict (set around each call, then restored); None: leave torch's setting
        self.threads: int | None = None

    # -- torch plumbing ------------------------------------------------------------------------
    @staticmethod
    def _torch():
        return require("torch", extra="genai", feature="the LSTM twin predictor")

    def _new_net(self):
        torch = self._torch()
        return _build_net(torch, 4, self.recipe.hidden, self.recipe.layers, self.recipe.dropout, self.future * 2)

    def _targets_local(self, feat: np.ndarray, past: np.ndarray, future: np.ndarray, origin, heading) -> np.ndarray:
        y = to_local(future, origin, heading)
        if self.recipe.residual:
            y = y - _cv_local(feat, self.future)
        return y

    # -- interface ----------------------------------------------------------------------------
    def fit(self, past: np.ndarray, future: np.ndarray, *, groups: np.ndarray | None = None, seed: int = 0,
            on_epoch: Callable[[int, float, float], None] | None = None, **_) -> dict[str, Any]:
        """Train on windows; ``groups`` (M,) vehicle ids for the by-vehicle validation split."""
        torch = self._torch()
        past = _check_past(past, self.past)[:, -self.past:]
        future = np.asarray(future, np.float64)
        if future.shape != (past.shape[0], self.future, 2):
            raise InputError(f"future must have shape ({past.shape[0]}, {self.future}, 2), got {future.shape}",
                             field="future")
        if past.shape[0] < 2:
            raise InputError("need at least 2 training windows", field="DATA")
        r = self.recipe
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        feat, origin, heading = _features(past)
        y = self._targets_local(feat, past, future, origin, heading).reshape(len(past), -1)
        # validation split by vehicle (falls back to windows when no groups are given)
        is_val = np.zeros(len(past), bool)
        if r.val_fraction > 0:
            g = np.asarray(groups) if groups is not None else np.arange(len(past))
            ug = np.unique(g)
            if ug.size >= 2:
                n_val = min(ug.size - 1, max(1, int(round(r.val_fraction * ug.size))))
                is_val = np.isin(g, rng.permutation(ug)[:n_val])
        tr = ~is_val
        # normalisers from the training part only
        f_mean = feat[tr].reshape(-1, 4).mean(0)
        f_std = feat[tr].reshape(-1, 4).std(0) + 1e-6
        y_mean = y[tr].mean(0)
        y_std = y[tr].std(0) + 1e-6
        self.norm = {"f_mean": f_mean, "f_std": f_std, "y_mean": y_mean, "y_std": y_std}
        X = torch.from_numpy(((feat - f_mean) / f_std).astype(np.float32))
        Y = torch.from_numpy(((y - y_mean) / y_std).astype(np.float32))
        net = self._new_net()
        opt = torch.optim.Adam(net.parameters(), lr=r.lr, weight_decay=r.weight_decay)
        loss_fn = torch.nn.MSELoss()
        tr_idx = np.flatnonzero(tr)
        va_idx = np.flatnonzero(is_val)
        best, best_state, since, history = math.inf, None, 0, []
        t0 = time.perf_counter()
        epochs_run, stop = 0, "epochs"
        for epoch in range(r.epochs):
            net.train()
            perm = rng.permutation(tr_idx)
            tot = 0.0
            for i in range(0, perm.size, r.batch_size):
                b = torch.from_numpy(perm[i:i + r.batch_size])
                opt.zero_grad()
                loss = loss_fn(net(X[b]), Y[b])
                loss.backward()
                if r.clip_grad:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), r.clip_grad)
                opt.step()
                tot += loss.item() * len(b)
            train_loss = tot / max(1, perm.size)
            val_loss = self._eval_loss(torch, net, X, Y, va_idx) if va_idx.size else train_loss
            history.append((train_loss, val_loss))
            epochs_run = epoch + 1
            if on_epoch:
                on_epoch(epochs_run, train_loss, val_loss)
            if val_loss < best - 1e-6:
                best, since = val_loss, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                since += 1
            if r.patience is not None and since >= r.patience:
                stop = "patience"
                break
            if r.max_seconds is not None and time.perf_counter() - t0 > r.max_seconds:
                stop = "max_seconds"
                break
        if best_state is not None:
            net.load_state_dict(best_state)
        net.eval()
        self.net = net
        secs = time.perf_counter() - t0
        self.train_info = {"epochs_run": epochs_run, "stopped_by": stop, "train_seconds": secs,
                           "train_windows": int(tr.sum()), "val_windows": int(is_val.sum()),
                           "best_val_loss": best, "windows_per_second": epochs_run * int(tr.sum()) / max(secs, 1e-9),
                           "final_train_loss": history[-1][0] if history else None}
        return dict(self.train_info)

    @staticmethod
    def _eval_loss(torch, net, X, Y, idx: np.ndarray, chunk: int = 4096) -> float:
        net.eval()
        tot = 0.0
        with torch.inference_mode():
            for i in range(0, idx.size, chunk):
                b = torch.from_numpy(idx[i:i + chunk])
                tot += float(((net(X[b]) - Y[b]) ** 2).mean()) * len(b)
        return tot / idx.size

    def predict(self, past: np.ndarray, chunk: int = 8192) -> np.ndarray:
        if self.net is None or self.norm is None:
            raise InputError("the LSTM predictor is not trained; fit it or load a saved model", field="model")
        torch = self._torch()
        past = _check_past(past, self.past)[:, -self.past:]
        if past.shape[0] == 0:
            return np.zeros((0, self.future, 2))
        feat, origin, heading = _features(past)
        n = self.norm
        x = ((feat - n["f_mean"]) / n["f_std"]).astype(np.float32)
        outs = []
        prev = torch.get_num_threads()
        if self.threads and prev != self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                for i in range(0, len(x), chunk):
                    outs.append(self.net(torch.from_numpy(x[i:i + chunk])).numpy())
        finally:
            if self.threads and prev != self.threads:
                torch.set_num_threads(prev)
        y = np.concatenate(outs).astype(np.float64) * n["y_std"] + n["y_mean"]
        y = y.reshape(-1, self.future, 2)
        if self.recipe.residual:
            y = y + _cv_local(feat, self.future)
        return to_world(y, origin, heading)

    # -- persistence ----------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {**super().config(), "recipe": asdict(self.recipe),
                "norm": {k: v.tolist() for k, v in (self.norm or {}).items()}, "train": self.train_info}

    def save(self, directory: str | os.PathLike) -> Path:
        if self.net is None:
            raise InputError("nothing to save: the LSTM predictor is not trained", field="model")
        d = super().save(directory)
        state = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in self.net.state_dict().items()}
        atomic_save_npz(d / "weights.npz", **state)
        return d

    @classmethod
    def from_config(cls, cfg, directory):
        recipe = LSTMRecipe(**cfg["recipe"])
        obj = cls(cfg["past"], cfg["future"], cfg["sample_hz"], recipe)
        obj.norm = {k: np.asarray(v, np.float64) for k, v in cfg["norm"].items()}
        obj.train_info = dict(cfg.get("train") or {})
        torch = cls._torch()
        w = directory / "weights.npz"
        if not w.is_file():
            raise InputError("the model directory has no weights.npz", source=str(directory))
        with np.load(w, allow_pickle=False) as z:
            state = {k: torch.from_numpy(np.array(z[k])) for k in z.files}
        net = obj._new_net()
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise InputError(f"weights do not match the config: {exc}", source=str(w)) from exc
        net.eval()
        obj.net = net
        return obj


KINDS: dict[str, type[Predictor]] = {c.kind: c for c in (ZeroMotion, ConstantVelocity, LSTMPredictor)}


def load_predictor(spec: str | os.PathLike, *, past: int = 60, future: int = 5, sample_hz: float = 2.0) -> Predictor:
    """A saved model directory, or a baseline by name (``zero_motion``, ``constant_velocity``)."""
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
        return KINDS[kind].from_config(cfg, d)
    except (KeyError, TypeError) as exc:
        raise InputError(f"config.json is missing or has a bad field: {exc}", source=str(cfg_path)) from exc

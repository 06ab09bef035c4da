"""Training the residual predictor (torch, CPU): windows at several rates -> MLP weights.

:func:`prepare` turns windows of one rate into the training arrays (features, constant
velocity and the truth in the local frame, the correction bounds); :func:`fit` trains the MLP
on the pooled arrays of every rate with the mean Euclidean error (ADE, metres) as the loss,
early-stopped on a by-vehicle validation share, and returns the numpy weights.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from carla_mr.errors import InputError, require
from carla_mr.twin.frames import to_local
from carla_mr.twin.residual import bounds, context_samples, cv_local, features, local_frame, map_inputs_for


@dataclass
class ResidualRecipe:
    """MLP size and training schedule. ``noise_m``: half the windows at <= 5 Hz get Gaussian
    position noise with a standard deviation drawn from [0, noise_m] (robustness to measured tracks)."""

    hidden: int = 64
    layers: int = 2
    epochs: int = 40
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 1e-5
    val_fraction: float = 0.1
    patience: int = 5
    max_seconds: float | None = 900.0
    noise_m: float = 0.2

    def __post_init__(self):
        if min(self.hidden, self.layers, self.epochs, self.batch_size) < 1 or not self.lr > 0:
            raise InputError("hidden, layers, epochs, batch_size must be >= 1 and lr > 0", field="recipe")


def prepare(past: np.ndarray, future: np.ndarray, dt: float, *, rng: np.random.Generator | None = None,
            noise_m: float = 0.0, map_inputs: bool = False, cmap=None, map_dropout: float = 0.0
            ) -> dict[str, np.ndarray]:
    """Windows of one rate -> {feat (M, D), cv (M, F, 2), y (M, F, 2), bound (M, F)} in the local frame.

    ``map_inputs``: append the map features of ``cmap`` (a MapFeatures, or None: zeros, flag 0);
    a random ``map_dropout`` share of the windows get the map-less zeros (so the model also serves
    data with no map)."""
    past = np.asarray(past, np.float64)
    future = np.asarray(future, np.float64)
    if noise_m > 0 and dt >= 0.2 - 1e-9 and rng is not None:
        m = past.shape[0]
        sig = rng.uniform(0, noise_m, m) * (rng.random(m) < 0.5)
        past = past + rng.normal(size=past.shape) * sig[:, None, None]
        future = future + rng.normal(size=future.shape) * sig[:, None, None]
    past = past[:, -context_samples(dt, past.shape[1]):]
    origin, heading = local_frame(past)
    f = future.shape[1]
    feat = features(past, dt)
    if map_inputs:
        mf = map_inputs_for(past, cmap, origin, heading)
        if map_dropout > 0 and rng is not None:
            mf[rng.random(mf.shape[0]) < map_dropout] = 0.0
        feat = np.concatenate([feat, mf], axis=1)
    return {"feat": feat, "cv": cv_local(past, heading, f), "y": to_local(future, origin, heading),
            "bound": np.broadcast_to(bounds(dt, f), (past.shape[0], f)).copy()}


def _net(torch, n_in: int, hidden: int, layers: int, n_out: int):
    mods, d = [], n_in
    for _ in range(layers):
        mods += [torch.nn.Linear(d, hidden), torch.nn.ReLU()]
        d = hidden
    mods.append(torch.nn.Linear(d, n_out))
    net = torch.nn.Sequential(*mods)
    with torch.no_grad():  # start at constant velocity exactly
        mods[-1].weight.zero_()
        mods[-1].bias.zero_()
    return net


def _ade(torch, net, X, CV, Y, B, W=None):
    """The ADE (metres); with per-window weights ``W`` their weighted mean."""
    o = net(X).reshape(CV.shape)
    pred = CV + torch.tanh(o) * B.unsqueeze(-1)
    err = torch.sqrt(((pred - Y) ** 2).sum(-1) + 1e-6).mean(-1)
    return err.mean() if W is None else (err * W).sum() / W.sum()


def _init_net(torch, net, init: dict, n_in: int) -> None:
    """Copy a trained network with fewer inputs (the first columns) into ``net``; new inputs' weights 0."""
    lin = [mod for mod in net if isinstance(mod, torch.nn.Linear)]
    n = len([k for k in init if k.startswith("W")])
    if n != len(lin) or init["W0"].shape[1] != lin[0].out_features or init["W0"].shape[0] > n_in:
        raise InputError("--init: the model's layers differ from this recipe's (give the same --hidden/--layers)",
                         field="--init")
    with torch.no_grad():
        for i, mod in enumerate(lin):
            w = torch.from_numpy(np.ascontiguousarray(init[f"W{i}"].T, np.float32))
            if i == 0:
                mod.weight.zero_()
                mod.weight[:, :w.shape[1]] = w
            else:
                mod.weight.copy_(w)
            mod.bias.copy_(torch.from_numpy(np.ascontiguousarray(init[f"b{i}"], np.float32)))


def _validation_rows(groups: np.ndarray, val_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """(M,) bool: the windows of a ``val_fraction`` share of the vehicles (at least one vehicle,
    never all; none when there is a single vehicle), drawn with ``rng``."""
    ug = np.unique(groups)
    n_val = min(ug.size - 1, max(1, int(round(val_fraction * ug.size)))) if ug.size >= 2 else 0
    return np.isin(groups, rng.permutation(ug)[:n_val]) if n_val else np.zeros(groups.shape[0], bool)


def _normaliser(train_feat: np.ndarray, init: dict | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-column (mean, std) of the training windows; constant columns get std 1; with
    ``init``, its own normalisers for the columns it had."""
    mean, std = train_feat.mean(0), train_feat.std(0) + 1e-6
    std[std < 1e-3] = 1.0  # constant columns (e.g. an always-present lag flag) pass through
    if init is not None:
        k0 = init["norm"]["mean"].shape[0]
        mean[:k0], std[:k0] = init["norm"]["mean"], init["norm"]["std"]
    return mean, std


def _export(torch, net) -> dict[str, np.ndarray]:
    """The MLP's weights as float32 numpy arrays {W0 (in, out), b0, W1, ...}."""
    params = {}
    for i, mod in enumerate(m for m in net if isinstance(m, torch.nn.Linear)):
        params[f"W{i}"] = mod.weight.detach().numpy().T.astype(np.float32).copy()
        params[f"b{i}"] = mod.bias.detach().numpy().astype(np.float32).copy()
    return params


def fit(arrays: dict[str, np.ndarray], groups: np.ndarray, recipe: ResidualRecipe, *, seed: int = 0,
        on_epoch: Callable[[int, float, float], None] | None = None, init: dict | None = None,
        ) -> tuple[dict, dict, dict[str, Any]]:
    """Train on pooled ``prepare`` arrays; ``groups`` (M,) vehicle keys for the validation split.

    ``arrays["w"]`` (optional, (M,)): per-window loss weights (training and validation).
    ``init`` ({"params", "norm"} of a trained model whose inputs are the first columns): start
    from it (its normalisers for those columns, zero weights for the others).
    Returns (params {W0, b0, ...} float32, norm {mean, std}, facts).
    """
    torch = require("torch", extra="genai", feature="twin train")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    m = arrays["feat"].shape[0]
    if m < 10:
        raise InputError(f"need at least 10 training windows, got {m}", field="DATA")
    is_val = _validation_rows(groups, recipe.val_fraction, rng)
    feat = arrays["feat"]
    mean, std = _normaliser(feat[~is_val], init)
    w = arrays.get("w")
    T = {k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in
         {"X": (feat - mean) / std, "CV": arrays["cv"], "Y": arrays["y"], "B": arrays["bound"],
          "W": np.ones(m) if w is None else w}.items()}
    f = arrays["cv"].shape[1]
    net = _net(torch, feat.shape[1], recipe.hidden, recipe.layers, 2 * f)
    if init is not None:
        _init_net(torch, net, init["params"], feat.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    tr_idx, va_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    best, best_state, since, t0, stop, epoch = math.inf, None, 0, time.perf_counter(), "epochs", 0
    if init is not None:  # the starting point counts: fine-tuning must beat it on validation
        with torch.no_grad():
            idx = torch.from_numpy(va_idx if va_idx.size else tr_idx)
            best = float(_ade(torch, net, T["X"][idx], T["CV"][idx], T["Y"][idx], T["B"][idx], T["W"][idx]))
        best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    for epoch in range(1, recipe.epochs + 1):
        net.train()
        perm = rng.permutation(tr_idx)
        tot = 0.0
        for i in range(0, perm.size, recipe.batch_size):
            b = torch.from_numpy(perm[i:i + recipe.batch_size])
            opt.zero_grad()
            loss = _ade(torch, net, T["X"][b], T["CV"][b], T["Y"][b], T["B"][b], T["W"][b])
            loss.backward()
            opt.step()
            tot += loss.item() * len(b)
        net.eval()
        with torch.no_grad():
            idx = torch.from_numpy(va_idx if va_idx.size else tr_idx)
            val = float(_ade(torch, net, T["X"][idx], T["CV"][idx], T["Y"][idx], T["B"][idx], T["W"][idx]))
        if on_epoch:
            on_epoch(epoch, tot / max(perm.size, 1), val)
        if val < best - 1e-5:
            best, since = val, 0
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            since += 1
        if since >= recipe.patience:
            stop = "patience"
            break
        if recipe.max_seconds is not None and time.perf_counter() - t0 > recipe.max_seconds:
            stop = "max_seconds"
            break
    if best_state is not None:
        net.load_state_dict(best_state)
    params = _export(torch, net)
    facts = {"recipe": asdict(recipe), "epochs_run": epoch, "stopped_by": stop,
             "train_seconds": round(time.perf_counter() - t0, 1), "train_windows": int(tr_idx.size),
             "val_windows": int(va_idx.size), "best_val_ade_m": best,
             "weighted": bool(w is not None and np.ptp(w) > 0),
             "init": init is not None}
    return params, {"mean": mean, "std": std}, facts

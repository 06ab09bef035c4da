"""Prediction metrics (metres), computed the same way for every predictor.

For windows with ``past`` (M, P, 2), ground truth ``future`` (M, F, 2) and a prediction (M, F, 2):

- ``ade``: mean over windows and horizon steps of the Euclidean error.
- ``fde``: mean over windows of the error at the last horizon step.
- ``per_step``: (F,) mean error at each horizon step.
- ``miss_rate``: share of windows whose final error exceeds ``miss_m`` (2 m).
- ``r2_abs``: the coefficient of determination on ABSOLUTE coordinates, the paper's way
  (as sklearn's ``r2_score`` with its default uniform average over the x and y outputs, each
  over all M*F predicted points). It is dominated by the spread of positions over the map, so
  it is close to 1 for any sensible predictor, and is reported for comparison with the paper.
- ``r2_disp``: the same on displacements from the last observed point (the informative one:
  0 = no better than predicting the mean displacement).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from carla_mr.errors import InputError

MISS_M = 2.0


def _r2(pred: np.ndarray, true: np.ndarray) -> float:
    """Uniform average over the last axis of per-output R2, pooling all other axes."""
    p = pred.reshape(-1, pred.shape[-1])
    t = true.reshape(-1, true.shape[-1])
    ss_res = ((t - p) ** 2).sum(0)
    ss_tot = ((t - t.mean(0)) ** 2).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, np.where(ss_res == 0, 1.0, 0.0))
    return float(r2.mean())


def evaluate(pred: np.ndarray, past: np.ndarray, future: np.ndarray, *, miss_m: float = MISS_M) -> dict:
    """All metrics for one predictor on M windows (see the module docstring)."""
    pred = np.asarray(pred, np.float64)
    future = np.asarray(future, np.float64)
    past = np.asarray(past, np.float64)
    if pred.shape != future.shape or pred.ndim != 3 or pred.shape[2] != 2:
        raise InputError(f"prediction {pred.shape} and truth {future.shape} must both be (M, F, 2)", field="pred")
    if past.ndim != 3 or past.shape[0] != pred.shape[0]:
        raise InputError(f"past {past.shape} must be (M, P, 2) with M = {pred.shape[0]}", field="past")
    m = pred.shape[0]
    if m == 0:
        raise InputError("no windows to evaluate", field="DATA")
    if not (np.isfinite(pred).all() and np.isfinite(future).all()):
        raise InputError("non-finite values in predictions or truth", field="pred")
    err = np.linalg.norm(pred - future, axis=-1)  # (M, F)
    last = past[:, -1:, :]
    return {
        "windows": int(m),
        "ade": float(err.mean()),
        "fde": float(err[:, -1].mean()),
        "per_step": err.mean(0).tolist(),
        "miss_rate": float((err[:, -1] > miss_m).mean()),
        "r2_abs": _r2(pred, future),
        "r2_disp": _r2(pred - last, future - last),
    }


def compare(predictions: Mapping[str, np.ndarray], past: np.ndarray, future: np.ndarray, *,
            miss_m: float = MISS_M) -> dict[str, dict]:
    """``evaluate`` for every named prediction, plus ADE/FDE gains of each over constant velocity."""
    out = {name: evaluate(p, past, future, miss_m=miss_m) for name, p in predictions.items()}
    cv = out.get("constant_velocity")
    if cv:
        for name, r in out.items():
            r["ade_gain_vs_cv"] = 1.0 - r["ade"] / cv["ade"] if cv["ade"] > 0 else 0.0
            r["fde_gain_vs_cv"] = 1.0 - r["fde"] / cv["fde"] if cv["fde"] > 0 else 0.0
    return out


def metric_rows(results: Mapping[str, dict]) -> list[tuple]:
    """Table rows (predictor, ADE, FDE, miss rate, R2 abs, R2 disp, per-step errors) for display."""
    rows = []
    for name, r in results.items():
        rows.append((name, r["ade"], r["fde"], r["miss_rate"], r["r2_abs"], r["r2_disp"],
                     " ".join(f"{e:.2f}" for e in r["per_step"])))
    return rows


METRIC_COLUMNS = ("predictor", "ADE m", "FDE m", "miss rate", "R2 abs", "R2 disp", "error per step m")


def bootstrap(errors: Mapping[str, np.ndarray], vehicle: np.ndarray, *, baseline: str = "constant_velocity",
              n_boot: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Per-vehicle bootstrap 95 % intervals of ADE, FDE and the ADE/FDE gain over ``baseline``.

    ``errors``: per predictor the (W, F) Euclidean errors, metres, of the same W windows;
    ``vehicle`` (W,) which vehicle each window belongs to. Vehicles (not windows) are resampled
    with replacement ``n_boot`` times, so windows of one vehicle move together. Returns per
    predictor {ade, ade_ci, fde, fde_ci, vehicles} and, beside the baseline,
    {ade_gain, ade_gain_ci, fde_gain, fde_gain_ci} (gain = 1 - metric / baseline's metric).
    """
    _, inv = np.unique(np.asarray(vehicle), return_inverse=True)
    inv = inv.reshape(-1)
    nv = int(inv.max()) + 1 if inv.size else 0
    if nv == 0:
        raise InputError("no windows to bootstrap", field="DATA")
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(nv, np.full(nv, 1.0 / nv), size=n_boot).astype(np.float64)  # (B, V)
    cnt = np.bincount(inv, minlength=nv).astype(np.float64)
    den = draws @ cnt
    stats: dict[str, dict] = {}
    boot: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, err in errors.items():
        err = np.asarray(err, np.float64)
        sa = np.bincount(inv, weights=err.mean(1), minlength=nv)
        sf = np.bincount(inv, weights=err[:, -1], minlength=nv)
        ba, bf = draws @ sa / den, draws @ sf / den
        boot[name] = (ba, bf)
        stats[name] = {"ade": float(err.mean()), "ade_ci": _ci(ba), "fde": float(err[:, -1].mean()),
                       "fde_ci": _ci(bf), "vehicles": nv, "windows": int(err.shape[0])}
    if baseline in boot:
        ca, cf = boot[baseline]
        for name, (ba, bf) in boot.items():
            s = stats[name]
            s["ade_gain"] = 1.0 - s["ade"] / stats[baseline]["ade"] if stats[baseline]["ade"] > 0 else 0.0
            s["fde_gain"] = 1.0 - s["fde"] / stats[baseline]["fde"] if stats[baseline]["fde"] > 0 else 0.0
            with np.errstate(divide="ignore", invalid="ignore"):
                s["ade_gain_ci"] = _ci(1.0 - ba / ca)
                s["fde_gain_ci"] = _ci(1.0 - bf / cf)
    return stats


def _ci(samples: np.ndarray) -> list[float]:
    s = samples[np.isfinite(samples)]
    return [float(np.percentile(s, 2.5)), float(np.percentile(s, 97.5))] if s.size else [float("nan")] * 2

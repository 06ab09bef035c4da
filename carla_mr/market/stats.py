"""Statistics of the experiments: trimmed means, paired bootstrap intervals, ratios of means
and of medians (common random numbers: numerator and denominator come from the same draws)."""

from __future__ import annotations

import numpy as np


def trimmed_mean(x: np.ndarray, frac: float = 0.1, axis: int = -1) -> np.ndarray:
    x = np.sort(np.asarray(x, float), axis=axis)
    n = x.shape[axis]
    k = int(np.floor(frac * n))
    sl = [slice(None)] * x.ndim
    sl[axis] = slice(k, n - k if n - 2 * k > 0 else n)
    return x[tuple(sl)].mean(axis=axis)


def bootstrap_indices(n: int, base_seed: int, key: tuple[int, ...], n_boot: int = 2000) -> np.ndarray:
    """Paired resampling indices (n_boot, n), deterministic for the key."""
    rng = np.random.default_rng(np.random.SeedSequence(base_seed, spawn_key=(999,) + tuple(key)))
    return rng.integers(0, n, size=(n_boot, n))


def summarise(values: np.ndarray, idx: np.ndarray) -> dict[str, float]:
    """n, mean, median, 10% trimmed mean and the 95% percentile-bootstrap interval of the mean."""
    boot = values[idx].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"n": int(values.size), "mean": float(values.mean()), "median": float(np.median(values)),
            "trimmed_mean": float(trimmed_mean(values)), "ci_low": float(lo), "ci_high": float(hi)}


def ratio_of_means(num: np.ndarray, den: np.ndarray, idx: np.ndarray | None) -> dict[str, float]:
    """mean(num) / mean(den) and median(num) / median(den), each with a paired 95% bootstrap
    interval when ``idx`` is given (ci_low/ci_high; median_ci_low/median_ci_high)."""
    r = float(num.mean() / den.mean()) if den.mean() > 0 else float("nan")
    rm = float(np.median(num) / np.median(den)) if np.median(den) > 0 else float("nan")
    out = {"ratio": r, "ratio_of_medians": rm}
    if idx is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            b = num[idx].mean(1) / den[idx].mean(1)
            bm = np.median(num[idx], axis=1) / np.median(den[idx], axis=1)
        lo, hi = np.nanpercentile(b, [2.5, 97.5])
        mlo, mhi = np.nanpercentile(bm, [2.5, 97.5]) if np.isfinite(bm).any() else (np.nan, np.nan)
        out.update(ci_low=float(lo), ci_high=float(hi), median_ci_low=float(mlo), median_ci_high=float(mhi))
    return out

"""What `carla-mr twin train` and `twin eval` do, as functions: windows per (source, rate),
a by-vehicle split that holds at every rate, and scores with per-vehicle bootstrap intervals.

Every source is read once and resampled at each rate (Hz) asked for, never above its own
rate unless ``allow_upsample``; P and F are counts of steps at that rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from carla_mr.errors import InputError
from carla_mr.twin import data, metrics
from carla_mr.twin.residual import context_samples


@dataclass
class TestSet:
    """Windows of one (source, rate): past (W, P, 2), future (W, F, 2) metres, vehicle keys (W,)."""

    source: str
    hz: float
    past: np.ndarray
    future: np.ndarray
    keys: np.ndarray
    available: int
    report: dict = field(default_factory=dict)
    map: Any = None  # the MapFeatures of the source's map, or None


def window_keys(tracks: data.Tracks, past: int, future: int, *, step: int = 1, max_windows: int | None = None,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """:func:`data.windows` with each window's vehicle key; also how many windows were available."""
    n = int(data.window_starts(tracks, past, future, step).size)
    if n == 0:
        return np.zeros((0, past, 2)), np.zeros((0, future, 2)), np.zeros(0, str), 0
    p, f, veh = data.windows(tracks, past, future, step=step, max_windows=max_windows, seed=seed)
    key_of = dict(zip(tracks.vehicle.tolist(), tracks.keys.tolist()))
    return p, f, np.asarray([key_of[v] for v in veh.tolist()]), n


def rate_tracks(rows: tuple, hz: float | None, *, min_samples: int, allow_upsample: bool, sort_time: bool,
                max_gap_s: float | None, log: Callable[[str], None]) -> data.Tracks | None:
    """The source at ``hz`` (None: its own rate); None (logged) when that would upsample a training source."""
    ids, t = rows[0], rows[1]
    if hz is not None and not allow_upsample:
        order = np.lexsort((t, ids))
        native = data.native_rate(ids[order], t[order])
        if hz > native * 1.01:
            log(f"{rows[4]['source']}: skipping {hz:g} Hz (above its own {native:g} Hz; no upsampling)")
            return None
    return data.tracks_from_rows(rows, sample_hz=hz, min_samples=min_samples, max_gap_s=max_gap_s,
                                 allow_upsample=allow_upsample, sort_time=sort_time)


def training_sets(sources: list[tuple], rates: list[float], *, past: int, future: int, test_fraction: float,
                  seed: int, max_windows: int, max_test_windows: int, noise_m: float, load: dict,
                  log: Callable[[str], None], maps: list | None = None, map_inputs: bool = False,
                  map_dropout: float = 0.0, rate_balance: bool = False
                  ) -> tuple[dict, np.ndarray, list[str], list[TestSet]]:
    """Pooled training arrays (:func:`residual_train.prepare`) over sources x rates, their
    vehicle keys, the training vehicles' keys, and the held-apart test sets (P + F windows).

    ``maps``: per source, its MapFeatures or None; with ``map_inputs`` the training arrays carry
    the map features (a ``map_dropout`` share of windows without them). ``rate_balance``: each
    window's loss weight ``w`` is 1 / constant velocity's mean ADE on its (source, rate), so every
    rate counts alike (the loss is then about the ratio to constant velocity, as the results are)."""
    from carla_mr.twin.residual_train import prepare

    rng = np.random.default_rng(seed)
    parts, groups, train_keys, tests = [], [], set(), []
    maps = list(maps) if maps is not None else [None] * len(sources)
    for rows, cmap in zip(sources, maps):
        src = rows[4]["source"]
        for hz in rates:
            tr = rate_tracks(rows, hz, min_samples=2, log=log, **load)
            if tr is None:
                continue
            is_test = data.split_by_key(tr, test_fraction, seed)
            train, test = tr.subset(~is_test), tr.subset(is_test)
            ctx = context_samples(1.0 / hz, past)
            tp, tf, tk, n_tr = window_keys(train, ctx, future, max_windows=max_windows, seed=seed)
            xp, xf, xk, n_te = window_keys(test, past, future, max_windows=max_test_windows, seed=seed + 1)
            log(f"{src} @ {hz:g} Hz: {len(tp)} training windows ({n_tr} available, {ctx}+{future} steps), "
                f"{len(xp)} test windows ({n_te} available, {past}+{future} steps) from "
                f"{len(set(xk.tolist()))} held-apart vehicles")
            if len(tp):
                part = prepare(tp, tf, 1.0 / hz, rng=rng, noise_m=noise_m, map_inputs=map_inputs, cmap=cmap,
                               map_dropout=map_dropout)
                cv_ade = float(np.linalg.norm(part["cv"] - part["y"], axis=-1).mean())
                part["w"] = np.full(len(tp), 1.0 / max(cv_ade, 1e-6) if rate_balance else 1.0)
                parts.append(part)
                groups.append(tk)
                train_keys.update(train.keys.tolist())
            if len(xp):
                tests.append(TestSet(src, hz, xp, xf, xk, n_te, dict(tr.report), cmap))
    if not parts:
        raise InputError(f"no training window of the needed length at any of the rates {rates}; give longer "
                         f"tracks or lower --future", field="DATA")
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return arrays, np.concatenate(groups), sorted(train_keys), tests


def score(predictors: dict[str, Any], ts: TestSet, *, seed: int = 0, n_boot: int = 1000) -> dict[str, dict]:
    """Every predictor on one test set at its rate: ADE, FDE, miss rate, R2 and bootstrap intervals."""
    preds = {}
    for name, p in predictors.items():
        p.sample_hz = ts.hz
        if getattr(p, "map_inputs", False) and not getattr(p, "no_map", False):
            p.map = ts.map
        preds[name] = np.asarray(p.predict(ts.past), np.float64)
    res = metrics.compare(preds, ts.past, ts.future)
    errs = {k: np.linalg.norm(v - ts.future, axis=-1) for k, v in preds.items()}
    boot = metrics.bootstrap(errs, ts.keys, n_boot=n_boot, seed=seed)
    for k in res:
        res[k].update(boot[k])
    return res


def pooled_gain(results: list[dict], name: str) -> dict[str, float]:
    """The worst and best ADE gain of ``name`` over constant velocity across test sets."""
    g = [r["metrics"][name]["ade_gain"] for r in results if name in r["metrics"]]
    return {"worst_ade_gain": float(min(g)), "best_ade_gain": float(max(g))} if g else {}

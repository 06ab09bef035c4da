"""The paper's experiments (Figs. 8-10) with common random numbers and bootstrap intervals.

Every market draw is seeded with ``SeedSequence(base, spawn_key=(figure code, point, rep))`` and
evaluated by every mechanism, with and without generative AI (and, for Fig. 10, at every
theta): the treatments share the draw. Work is split into picklable :class:`Task` chunks run
through ``map_fn`` (builtin ``map`` by default; Ray's or a process pool's map gives the same
numbers, since every rep owns its seed).

Outputs (written by :func:`write_outputs`): ``<figure>.csv`` (one row per point, series and
metric with n, mean, median, 10% trimmed mean, 95% bootstrap interval), ``<figure>_raw.csv``
(every rep), ``<figure>.png`` and ``summary.json`` (the headline ratios and the claims).
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from carla_mr.errors import InputError
from carla_mr.market.figures import ALL, FIGURES, METRICS
from carla_mr.market.mechanisms import clear_all
from carla_mr.market.model import MarketParams, sample_market


@dataclass(frozen=True)
class Task:
    """One chunk of reps at one point of one figure (picklable: plain data only)."""

    figure: str
    point: int
    rep_start: int
    rep_stop: int
    base_seed: int
    params: dict[str, Any] = field(default_factory=dict)  # MarketParams overrides at this point
    scoring: str = "reported"
    epvisa_windows: str = "first"


def run_task(task: Task) -> dict[str, Any]:
    """Evaluate the reps of one task; returns {"task": ..., "series": {label: {metric: list}}}."""
    fig = FIGURES[task.figure]
    params = MarketParams(**task.params).validate()
    series: dict[str, dict[str, list[float]]] = {}
    for rep in range(task.rep_start, task.rep_stop):
        seed = np.random.SeedSequence(task.base_seed, spawn_key=(fig.code, task.point, rep))
        market = sample_market(params, seed)
        for suffix, genai, theta in fig.treatments(params.theta):
            mk = market if (genai == params.genai and theta == params.theta) else market.with_genai(genai, theta=theta)
            feas = np.broadcast_to(mk.public.feasible[:, :, None], mk.F.shape)
            helped = float((mk.F[feas] > 1).mean()) if genai and feas.any() else 0.0
            outcomes = clear_all(mk, scoring=task.scoring, epvisa_windows=task.epvisa_windows, r_acc=params.r_acc)
            for mech, out in outcomes.items():
                rec = series.setdefault(f"{mech}|{suffix}", {m: [] for m in METRICS})
                for metric in METRICS:
                    rec[metric].append(helped if metric == "helped" else float(getattr(out, metric)))
    return {"task": asdict(task), "series": series}


def make_tasks(figures: Iterable[str], reps: int, base_seed: int, *, chunk: int = 50,
               overrides: dict[str, Any] | None = None, scoring: str = "reported",
               epvisa_windows: str = "first") -> list[Task]:
    overrides = dict(overrides or {})
    tasks = []
    for name in figures:
        fig = FIGURES[name]
        for p, x in enumerate(fig.xs):
            params = {**overrides, **fig.params_at(x)}
            MarketParams(**params).validate()
            for start in range(0, reps, chunk):
                tasks.append(Task(name, p, start, min(reps, start + chunk), base_seed, params, scoring,
                                  epvisa_windows))
    return tasks


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


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
    boot = values[idx].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"n": int(values.size), "mean": float(values.mean()), "median": float(np.median(values)),
            "trimmed_mean": float(trimmed_mean(values)), "ci_low": float(lo), "ci_high": float(hi)}


def ratio_of_means(num: np.ndarray, den: np.ndarray, idx: np.ndarray | None) -> dict[str, float]:
    """mean(num) / mean(den) with a paired 95% bootstrap interval (CRN: same draws)."""
    r = float(num.mean() / den.mean()) if den.mean() > 0 else float("nan")
    out = {"ratio": r, "ratio_of_medians": float(np.median(num) / np.median(den)) if np.median(den) > 0 else float("nan")}
    if idx is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            b = num[idx].mean(1) / den[idx].mean(1)
        lo, hi = np.nanpercentile(b, [2.5, 97.5])
        out.update(ci_low=float(lo), ci_high=float(hi))
    return out


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


@dataclass
class ExperimentResult:
    """Per figure: xs and, per point, series -> metric -> array (reps,)."""

    figures: dict[str, list[dict[str, dict[str, np.ndarray]]]]
    reps: int
    base_seed: int
    overrides: dict[str, Any]
    scoring: str
    seconds: float = 0.0
    headline: dict[str, Any] = field(default_factory=dict)


def run_experiments(figures: Iterable[str] = ALL, *, reps: int = 300, base_seed: int = 0,
                    map_fn: Callable[..., Iterable[Any]] = map, overrides: dict[str, Any] | None = None,
                    scoring: str = "reported", epvisa_windows: str = "first", chunk: int = 50,
                    progress: Callable[[int], None] | None = None) -> ExperimentResult:
    """Run the figures' sweeps. ``map_fn(run_task, tasks)`` may be Ray's or a pool's map;
    the results are identical to the builtin map's because every rep owns its seed."""
    figures = list(figures)
    for f in figures:
        if f not in FIGURES:
            raise InputError(f"unknown figure {f!r}; choose from {list(FIGURES)} or 'all'", field="figure")
    if not isinstance(reps, int) or reps < 2:
        raise InputError(f"needs at least 2 reps, got {reps!r}", field="--reps")
    if not isinstance(chunk, int) or chunk < 1:
        raise InputError(f"must be a positive integer, got {chunk!r}", field="chunk")
    tasks = make_tasks(figures, reps, base_seed, chunk=chunk, overrides=overrides, scoring=scoring,
                       epvisa_windows=epvisa_windows)
    t0 = time.perf_counter()
    collected: dict[tuple[str, int], list[tuple[int, dict]]] = {}
    for res in map_fn(run_task, tasks):
        t = res["task"]
        collected.setdefault((t["figure"], t["point"]), []).append((t["rep_start"], res["series"]))
        if progress is not None:
            progress(1)
    out: dict[str, list[dict[str, dict[str, np.ndarray]]]] = {}
    for name in figures:
        points = []
        for p in range(len(FIGURES[name].xs)):
            chunks = sorted(collected[(name, p)], key=lambda c: c[0])
            merged: dict[str, dict[str, np.ndarray]] = {}
            for label in chunks[0][1]:
                merged[label] = {m: np.concatenate([np.asarray(c[1][label][m], float) for c in chunks])
                                 for m in METRICS}
            points.append(merged)
        out[name] = points
    result = ExperimentResult(out, reps, base_seed, dict(overrides or {}), scoring,
                              seconds=time.perf_counter() - t0)
    result.headline = headline(result)
    return result


def _pooled(result: ExperimentResult, label: str, metric: str = "total") -> np.ndarray | None:
    arrs = []
    for name, points in result.figures.items():
        fig = FIGURES[name]
        if fig.default_x is None:
            continue
        p = fig.xs.index(fig.default_x)
        if label in points[p]:
            arrs.append(points[p][label][metric])
    return np.concatenate(arrs) if arrs else None


def headline(result: ExperimentResult) -> dict[str, Any]:
    """The paper's three claims as ratios of mean total surplus (paired bootstrap intervals).

    genai_gain and mtepvisa_over_pvisa pool the points that have the default parameters
    (fig8a I=30, fig8b 30 simulators, fig8c g=0.5, fig9 N=1); mtepvisa_over_epvisa_by_n comes
    from fig9 (generative AI on).
    """
    h: dict[str, Any] = {"genai_gain": None, "mtepvisa_over_pvisa": None, "mtepvisa_over_epvisa_by_n": None,
                         "mtepvisa_over_pvisa_by_n": None, "details": {}, "claims": {}}
    mt, mt0, pv = (_pooled(result, lab) for lab in ("mtepvisa|genai", "mtepvisa|none", "pvisa|genai"))
    if mt is not None:
        idx = bootstrap_indices(mt.size, result.base_seed, (1,))
        g = ratio_of_means(mt, mt0, idx)
        r = ratio_of_means(mt, pv, idx)
        h["genai_gain"], h["mtepvisa_over_pvisa"] = g["ratio"], r["ratio"]
        h["details"]["genai_gain"] = g
        h["details"]["mtepvisa_over_pvisa"] = r
        h["claims"]["genai_gain >= 2.5"] = bool(g["ratio"] >= 2.5)
        h["claims"]["mtepvisa_over_pvisa > 1.5"] = bool(r["ratio"] > 1.5)
    if "fig9" in result.figures:
        fig = FIGURES["fig9"]
        by_n, pv_n = {}, {}
        for p, x in enumerate(fig.xs):
            s = result.figures["fig9"][p]
            idx = bootstrap_indices(s["mtepvisa|genai"]["total"].size, result.base_seed, (2, p))
            e = ratio_of_means(s["mtepvisa|genai"]["total"], s["epvisa|genai"]["total"], idx)
            q = ratio_of_means(s["mtepvisa|genai"]["total"], s["pvisa|genai"]["total"], idx)
            by_n[str(int(x))], pv_n[str(int(x))] = e["ratio"], q["ratio"]
            h["details"][f"mtepvisa_over_epvisa_N{int(x)}"] = e
        h["mtepvisa_over_epvisa_by_n"] = by_n
        h["mtepvisa_over_pvisa_by_n"] = pv_n
        vals = list(by_n.values())
        h["claims"]["mtepvisa_over_epvisa grows with N"] = bool(all(b > a for a, b in zip(vals, vals[1:])))
    h["claims_hold"] = bool(h["claims"]) and all(h["claims"].values())
    return h


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def summary_rows(result: ExperimentResult, name: str) -> list[dict[str, Any]]:
    fig = FIGURES[name]
    rows = []
    for p, x in enumerate(fig.xs):
        series = result.figures[name][p]
        n = next(iter(series.values()))["total"].size
        idx = bootstrap_indices(n, result.base_seed, (fig.code, p))
        for label, metrics in series.items():
            mech, treat = label.split("|")
            for metric in METRICS:
                rows.append({"figure": name, fig.x_name: x, "x": x, "mechanism": mech, "treatment": treat,
                             "metric": metric, **summarise(metrics[metric], idx)})
    return rows


def csv_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def raw_rows(result: ExperimentResult, name: str) -> list[dict[str, Any]]:
    fig = FIGURES[name]
    rows = []
    for p, x in enumerate(fig.xs):
        for label, metrics in result.figures[name][p].items():
            mech, treat = label.split("|")
            for rep in range(metrics["total"].size):
                rows.append({"figure": name, "x": x, "rep": rep, "mechanism": mech, "treatment": treat,
                             **{m: float(metrics[m][rep]) for m in METRICS}})
    return rows


def write_outputs(result: ExperimentResult, run_dir, *, plots: bool = True) -> list[str]:
    """Write CSVs, PNGs and summary.json atomically into ``run_dir``; returns the file names."""
    from pathlib import Path

    from carla_mr.io import atomic_write_json, atomic_write_text

    run_dir = Path(run_dir)
    files = []
    summaries = {}
    for name in result.figures:
        rows = summary_rows(result, name)
        summaries[name] = rows
        atomic_write_text(run_dir / f"{name}.csv", csv_text(rows))
        atomic_write_text(run_dir / f"{name}_raw.csv", csv_text(raw_rows(result, name)))
        files += [f"{name}.csv", f"{name}_raw.csv"]
    if plots:
        from carla_mr.market.plots import plot_figure

        for name, rows in summaries.items():
            for fname in plot_figure(name, rows, run_dir):
                files.append(fname)
    summary = {"reps": result.reps, "seed": result.base_seed, "overrides": result.overrides,
               "scoring": result.scoring, "figures": list(result.figures), "seconds": result.seconds,
               **{k: v for k, v in result.headline.items()}, "files": files + ["summary.json"]}
    atomic_write_json(run_dir / "summary.json", summary)
    files.append("summary.json")
    return files

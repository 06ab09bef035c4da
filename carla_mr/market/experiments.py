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
from carla_mr.market.headline import headline
from carla_mr.market.mechanisms import clear, clear_all
from carla_mr.market.model import MarketParams, sample_market
from carla_mr.market.stats import bootstrap_indices, summarise


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
            if fig.both_epvisa_windows:  # EPViSA with the other setting too (where the gap comes from)
                other = "all" if task.epvisa_windows == "first" else "first"
                outcomes[f"epvisa:{other}"] = clear(mk, mechanism="epvisa", scoring=task.scoring,
                                                    epvisa_windows=other, r_acc=params.r_acc)
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
    epvisa_windows: str = "first"
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
    result = ExperimentResult(out, reps, base_seed, dict(overrides or {}), scoring, epvisa_windows,
                              seconds=time.perf_counter() - t0)
    result.headline = headline(out, base_seed, epvisa_windows)
    return result


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
               "scoring": result.scoring, "epvisa_windows": result.epvisa_windows, "figures": list(result.figures), "seconds": result.seconds,
               **{k: v for k, v in result.headline.items()}, "files": files + ["summary.json"]}
    atomic_write_json(run_dir / "summary.json", summary)
    files.append("summary.json")
    return files

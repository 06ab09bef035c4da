"""Matplotlib figures in the style of the paper's Figs. 8-10, from experiments' summary rows.

Each function takes the rows of :func:`carla_mr.market.experiments.summary_rows` (mean, median,
bootstrap interval per point, series and metric) and writes PNGs atomically. matplotlib is
imported (with the Agg backend) only when a plot is drawn.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from carla_mr.io import atomic_write_bytes
from carla_mr.market import registry
from carla_mr.market.figures import FIGURES
THETA_STYLE = {"theta=generated": ("#d62728", "o", "generated (θ=0.82)"),
               "theta=background": ("#9467bd", "s", "background (θ=0.42)"),
               "theta=recontextualised": ("#8c564b", "^", "re-contextualised (θ=0.85)"),
               "none": ("#7f7f7f", "x", "without generative AI")}
XLABEL = {"n_avs": "Number of AVs I", "n_simulators": "Number of virtual simulators K + 1",
          "g_mean": "Generative score G (mean of U[g-0.1, g+0.1])", "n_tasks": "Number of DT tasks N"}
SPLIT = (("S_DT", "DT (R_acc v)", "#4c72b0"), ("S_T", "traffic simulators", "#55a868"),
         ("S_D", "driving simulator (γ S_D)", "#c44e52"))


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path.name


def _select(rows: list[dict[str, Any]], **kw: Any) -> list[dict[str, Any]]:
    return sorted((r for r in rows if all(r[k] == v for k, v in kw.items())), key=lambda r: r["x"])


def _style(ax, x_name: str, ylabel: str = "Total surplus (mean, 95% CI; dotted: median)", log: bool = True) -> None:
    ax.set_xlabel(XLABEL.get(x_name, x_name))
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(True, which="major", alpha=0.3)


def _mech_lines(ax, rows: list[dict[str, Any]], stat: str) -> None:
    """The six series (3 mechanisms x with/without generative AI); EPViSA drawn hollow so that
    MTEPViSA (identical at N = 1) stays visible on top of it."""
    for mech in registry.NAMES:
        hollow = dict(mfc="none", ms=9) if mech == "epvisa" else {}
        for treat, marker, ls, suffix in (("genai", "o", "-", "with generative AI"), ("none", "x", "--", "without")):
            sel = _select(rows, mechanism=mech, treatment=treat, metric="total")
            if not sel:
                continue
            x = np.array([r["x"] for r in sel], float)
            y = np.array([r[stat] for r in sel])
            label = f"{registry.label(mech)} {suffix}"
            if stat == "mean":
                lo = np.array([r["ci_low"] for r in sel])
                hi = np.array([r["ci_high"] for r in sel])
                ax.errorbar(x, y, yerr=[np.maximum(y - lo, 0), np.maximum(hi - y, 0)], color=registry.colour(mech),
                            marker=marker, ls=ls, capsize=3, label=label, lw=1.6, **({"ms": 5} | hollow))
            else:
                ax.plot(x, y, color=registry.colour(mech), marker=marker, ls=ls, label=label, lw=1.6, **({"ms": 5} | hollow))


def _int_ticks(ax, x_name: str) -> None:
    if x_name in ("n_tasks", "n_avs", "n_simulators"):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_fig8(name: str, rows: list[dict[str, Any]], run_dir: Path, x_name: str, title: str) -> list[str]:
    plt = _plt()
    ncols = 3 if name == "fig8c" else 2
    fig, axes = plt.subplots(1, ncols, figsize=(6.0 * ncols, 4.6), squeeze=False)
    for ax, stat, ylabel in ((axes[0, 0], "mean", "Total surplus (mean, 95% bootstrap CI)"),
                             (axes[0, 1], "median", "Total surplus (median)")):
        _mech_lines(ax, rows, stat)
        _style(ax, x_name, ylabel)
        _int_ticks(ax, x_name)
        ax.legend(fontsize=7, ncol=2)
    axes[0, 0].set_title(f"{title}: mean (N = 1, so EPViSA = MTEPViSA)", fontsize=9)
    axes[0, 1].set_title("median (C ~ Zipf(2) has an infinite mean)", fontsize=9)
    if name == "fig8c":
        ax2 = axes[0, 2]
        sel = _select(rows, mechanism="mtepvisa", treatment="genai", metric="helped")
        ax2.plot([r["x"] for r in sel], [r["mean"] for r in sel], "o-", color="#d62728")
        ax2.set_ylim(0, 1.05)
        _style(ax2, x_name, "Share of slots with G Q > 2^θ − 1 (F > 1)", log=False)
        ax2.set_title("Generative AI helps only above the threshold", fontsize=9)
    return [_save(fig, run_dir / f"{name}.png")]


def _split_bars(ax, labels: list[str], parts: dict[str, np.ndarray], totals_note: bool) -> None:
    tot = sum(parts.values())
    safe = np.where(tot > 0, tot, 1.0)
    bottom = np.zeros(len(labels))
    for metric, label, color in SPLIT:
        share = np.where(tot > 0, parts[metric] / safe, 0.0)
        ax.bar(labels, share, bottom=bottom, color=color, label=label)
        bottom += share
    if totals_note:
        for j, t in enumerate(tot):
            ax.text(j, 1.01, f"mean {t:.3g}", ha="center", va="bottom", fontsize=7)
    ax.set_ylim(0, 1.1)


def plot_fig9(rows: list[dict[str, Any]], run_dir: Path) -> list[str]:
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(22, 4.8))
    for ax, stat, ylabel in ((axes[0], "mean", "Total surplus (mean, 95% bootstrap CI)"),
                             (axes[1], "median", "Total surplus (median)")):
        _mech_lines(ax, rows, stat)
        _style(ax, "n_tasks", ylabel)
        _int_ticks(ax, "n_tasks")
        ax.legend(fontsize=7, ncol=2)
    axes[0].set_title("(a) total surplus vs N: mean", fontsize=10)
    axes[1].set_title("(a) total surplus vs N: median", fontsize=10)
    xs = sorted({r["x"] for r in rows})
    nmax = xs[-1]
    mechs = registry.NAMES
    parts = {metric: np.array([_select(rows, mechanism=m, treatment="genai", metric=metric, x=nmax)[0]["mean"]
                               for m in mechs]) for metric, _, _ in SPLIT}
    _split_bars(axes[2], [registry.label(m) for m in mechs], parts, True)
    axes[2].set_ylabel("Share of mean surplus")
    axes[2].set_title(f"(b) DT / traffic / driving split per mechanism (N = {int(nmax)})", fontsize=10)
    axes[2].legend(fontsize=7, loc="lower right")
    parts = {metric: np.array([_select(rows, mechanism="mtepvisa", treatment="genai", metric=metric, x=x)[0]["mean"]
                               for x in xs]) for metric, _, _ in SPLIT}
    _split_bars(axes[3], [str(int(x)) for x in xs], parts, True)
    axes[3].set_xlabel(XLABEL["n_tasks"])
    axes[3].set_ylabel("Share of MTEPViSA's mean surplus")
    axes[3].set_title("(c) split vs N (MTEPViSA, generative AI)", fontsize=10)
    axes[3].legend(fontsize=7, loc="lower right")
    return [_save(fig, run_dir / "fig9.png")]


def plot_fig10(rows: list[dict[str, Any]], run_dir: Path) -> list[str]:
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(12.5, 9.0))
    for col, mech in enumerate(("mtepvisa", "epvisa")):
        for row, stat in enumerate(("mean", "median")):
            ax = axes[row, col]
            for treat, (color, marker, label) in THETA_STYLE.items():
                sel = _select(rows, mechanism=mech, treatment=treat, metric="total")
                if not sel:
                    continue
                x = np.array([r["x"] for r in sel], float)
                y = np.array([r[stat] for r in sel])
                ls = "-" if treat != "none" else "--"
                if stat == "mean":
                    lo = np.array([r["ci_low"] for r in sel])
                    hi = np.array([r["ci_high"] for r in sel])
                    ax.errorbar(x, y, yerr=[np.maximum(y - lo, 0), np.maximum(hi - y, 0)], color=color,
                                marker=marker, ls=ls, capsize=3, label=label, lw=1.6, ms=5)
                else:
                    ax.plot(x, y, color=color, marker=marker, ls=ls, label=label, lw=1.6, ms=5)
            _style(ax, "n_tasks", f"Total surplus ({stat}{', 95% bootstrap CI' if stat == 'mean' else ''})")
            _int_ticks(ax, "n_tasks")
            ax.set_title(f"{registry.label(mech)}: total surplus vs N by kind of generation ({stat})", fontsize=10)
            ax.legend(fontsize=7)
    return [_save(fig, run_dir / "fig10.png")]


def plot_figure(name: str, rows: list[dict[str, Any]], run_dir) -> list[str]:
    """Draw one figure's PNG(s) into ``run_dir``; returns the file names."""
    run_dir = Path(run_dir)
    fig = FIGURES[name]
    if name.startswith("fig8"):
        return plot_fig8(name, rows, run_dir, fig.x_name, fig.title)
    if name == "fig9":
        return plot_fig9(rows, run_dir)
    return plot_fig10(rows, run_dir)

"""Matplotlib figures in the style of the paper's Figs. 8-10, from experiments' summary rows.

Each function takes the rows of :func:`carla_mr.market.experiments.summary_rows` (mean, median,
bootstrap interval per point, series and metric) and writes a PNG atomically. Every panel shows
medians beside means (C ~ Zipf(2) has an infinite mean: means are dominated by rare draws);
surplus axes are logarithmic; legends sit below the panels, never over the data. matplotlib
is imported (with the Agg backend) only when a plot is drawn.
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
               "theta=recontextualised": ("#17becf", "^", "re-contextualised (θ=0.85)"),
               "none": ("#7f7f7f", "x", "without generative AI")}
XLABEL = {"n_avs": "Number of AVs I", "n_simulators": "Number of virtual simulators K + 1",
          "g_mean": "Generative score G (mean of U[g-0.1, g+0.1])", "n_tasks": "Number of DT tasks N"}
#: The surplus parts: metric, label, colour.
SPLIT = (("S_DT", "DT (R_acc v)", "#4c72b0"), ("S_T", "traffic simulators", "#55a868"),
         ("S_D", "driving simulator (γ S_D)", "#c44e52"))
SURPLUS = (("total", "total surplus"),) + tuple((m, label) for m, label, _ in SPLIT)
#: EPViSA is drawn with large hollow markers so that MTEPViSA (equal at N = 1) stays visible:
#: (mechanism, treatment) -> style.
MECH_STYLE = {("epvisa", "genai"): dict(ls="--", mfc="none", ms=9),
              ("epvisa", "none"): dict(ls="-.", marker="D", mfc="none", ms=8)}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, legend_rows: int = 1) -> str:
    """Save with the figure's legend below the panels (room reserved for ``legend_rows``)."""
    fig.tight_layout(rect=(0, min(0.3, (0.15 + 0.22 * legend_rows) / fig.get_figheight()), 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path.name


def _legend_below(fig, axes, ncol: int) -> None:
    """One legend for the figure, below every panel (labels deduplicated)."""
    seen: dict[str, Any] = {}
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="lower center", ncol=ncol, fontsize=8, frameon=False)


def _select(rows: list[dict[str, Any]], **kw: Any) -> list[dict[str, Any]]:
    return sorted((r for r in rows if all(r[k] == v for k, v in kw.items())), key=lambda r: r["x"])


def _style(ax, x_name: str, ylabel: str, log: bool = True) -> None:
    ax.set_xlabel(XLABEL.get(x_name, x_name), fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    if log:
        ax.set_yscale("log")
    ax.grid(True, which="major", alpha=0.3)
    ax.tick_params(labelsize=8)
    if x_name in ("n_tasks", "n_avs", "n_simulators"):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _series(ax, sel: list[dict[str, Any]], stat: str, *, color: str, label: str, marker: str = "o",
            **style: Any) -> None:
    """One series: the mean with its 95% CI as error bars, or the median as a plain line; points
    <= 0 are left out (log axes)."""
    if not sel:
        return
    x = np.array([r["x"] for r in sel], float)
    y = np.array([r[stat] for r in sel], float)
    ok = y > 0
    kw = {"marker": marker, "ms": 5, "lw": 1.5, "ls": "-", **style}
    if stat == "mean":
        lo = np.array([r["ci_low"] for r in sel])
        hi = np.array([r["ci_high"] for r in sel])
        ax.errorbar(x[ok], y[ok], yerr=[np.maximum(y - lo, 0)[ok], np.maximum(hi - y, 0)[ok]], color=color,
                    capsize=3, label=label, **kw)
    else:
        ax.plot(x[ok], y[ok], color=color, label=label, **kw)


def _mech_lines(ax, rows: list[dict[str, Any]], stat: str, metric: str = "total") -> None:
    """Every mechanism with (solid) and without (dotted, x) generative AI."""
    for mech in registry.NAMES:
        for treat, marker, ls, suffix in (("genai", "o", "-", "with generative AI"), ("none", "x", ":", "without")):
            style = {"ls": ls, "marker": marker, **MECH_STYLE.get((mech, treat), {})}
            _series(ax, _select(rows, mechanism=mech, treatment=treat, metric=metric), stat,
                    color=registry.colour(mech), label=f"{registry.label(mech)} {suffix}", **style)


def _stat_panels(axes, rows: list[dict[str, Any]], x_name: str, metric: str = "total") -> None:
    for ax, stat in zip(axes, ("mean", "median")):
        _mech_lines(ax, rows, stat, metric)
        _style(ax, x_name, f"Total surplus ({stat}{', 95% bootstrap CI' if stat == 'mean' else ''})")


def plot_fig8(name: str, rows: list[dict[str, Any]], run_dir: Path, x_name: str, title: str) -> list[str]:
    plt = _plt()
    ncols = 3 if name == "fig8c" else 2
    fig, axes = plt.subplots(1, ncols, figsize=(5.6 * ncols, 4.6), squeeze=False)
    _stat_panels(axes[0, :2], rows, x_name)
    axes[0, 0].set_title(f"{title}: mean\n(N = 1, so EPViSA = MTEPViSA: dashed, hollow)", fontsize=9)
    axes[0, 1].set_title("median", fontsize=9)
    if name == "fig8c":
        ax2 = axes[0, 2]
        sel = _select(rows, mechanism="mtepvisa", treatment="genai", metric="helped")
        ax2.plot([r["x"] for r in sel], [r["mean"] for r in sel], "o-", color="#d62728")
        ax2.set_ylim(0, 1.05)
        _style(ax2, x_name, "Share of slots with G Q > 2^θ − 1 (F > 1)", log=False)
        ax2.set_title("Generative AI helps only above the threshold", fontsize=9)
    _legend_below(fig, axes, ncol=6)
    return [_save(fig, run_dir / f"{name}.png")]


def _split_bars(ax, rows: list[dict[str, Any]], x: float) -> None:
    """(b) The DT / traffic / driving surplus of every mechanism at N = x: mean bars (log axis)
    with the median as a black diamond; a part that is 0 is written as 0."""
    mechs = registry.NAMES
    width = 0.8 / len(SPLIT)
    for j, (metric, label, color) in enumerate(SPLIT):
        pos = np.arange(len(mechs)) + (j - 1) * width
        mean = np.array([_select(rows, mechanism=m, treatment="genai", metric=metric, x=x)[0]["mean"] for m in mechs])
        med = np.array([_select(rows, mechanism=m, treatment="genai", metric=metric, x=x)[0]["median"] for m in mechs])
        ax.bar(pos[mean > 0], mean[mean > 0], width, color=color, label=f"{label} (mean)")
        ax.plot(pos[med > 0], med[med > 0], "D", color="black", ms=4, label="median" if j == 0 else None)
        for p in pos[mean <= 0]:
            ax.annotate("0", (p, 0), xycoords=("data", "axes fraction"), xytext=(0, 3), textcoords="offset points",
                        ha="center", fontsize=7)
    ax.set_xticks(np.arange(len(mechs)), [registry.label(m) for m in mechs], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("Surplus (log)", fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)


def plot_fig9(rows: list[dict[str, Any]], run_dir: Path, name: str = "fig9") -> list[str]:
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(22, 5.0))
    _stat_panels(axes[:2], rows, "n_tasks")
    for ax, stat in zip(axes[:2], ("mean", "median")):  # where the MTEPViSA-EPViSA gap comes from
        other = sorted({r["mechanism"] for r in rows if r["mechanism"].startswith("epvisa:")})
        for mech in other:
            _series(ax, _select(rows, mechanism=mech, treatment="genai", metric="total"), stat, color="#444444",
                    label=f"EPViSA serving {mech.split(':')[1]} windows", marker="v", ls="-.", mfc="none")
    axes[0].set_title("(a) total surplus vs N: mean", fontsize=10)
    axes[1].set_title("(a) total surplus vs N: median", fontsize=10)
    nmax = max(r["x"] for r in rows)
    _split_bars(axes[2], rows, nmax)
    axes[2].set_title(f"(b) DT / traffic / driving surplus per mechanism (N = {int(nmax)})", fontsize=10)
    ax = axes[3]
    for metric, label, color in SPLIT:
        for stat, ls in (("mean", "-"), ("median", ":")):
            _series(ax, _select(rows, mechanism="mtepvisa", treatment="genai", metric=metric), stat, color=color,
                    label=f"{label} ({stat})", ls=ls, mfc="none" if stat == "median" else color)
    _style(ax, "n_tasks", "Surplus part (mean with CI; dotted: median)")
    ax.set_title("(c) MTEPViSA's surplus parts vs N (generative AI)", fontsize=10)
    _legend_below(fig, axes, ncol=6)
    return [_save(fig, run_dir / f"{name}.png", legend_rows=3)]


def plot_fig10(rows: list[dict[str, Any]], run_dir: Path) -> list[str]:
    """Total, DT, traffic and driving surplus (rows) for every mechanism (columns), each kind of
    generation a colour: mean with CI (solid), median (dotted, hollow)."""
    plt = _plt()
    mechs = registry.NAMES
    fig, axes = plt.subplots(len(SURPLUS), len(mechs), figsize=(5.2 * len(mechs), 3.6 * len(SURPLUS)), squeeze=False)
    for i, (metric, mlabel) in enumerate(SURPLUS):
        for j, mech in enumerate(mechs):
            ax = axes[i, j]
            empty = True
            for treat, (color, marker, label) in THETA_STYLE.items():
                sel = _select(rows, mechanism=mech, treatment=treat, metric=metric)
                empty &= not any(r["mean"] > 0 for r in sel)
                _series(ax, sel, "mean", color=color, label=f"{label}, mean (95% CI)", marker=marker)
                _series(ax, sel, "median", color=color, label=f"{label}, median", marker=marker, ls=":", mfc="none")
            _style(ax, "n_tasks", mlabel, log=metric != "S_DT")  # S_DT = R_acc v lies in [0, 1]: linear
            if empty:
                ax.text(0.5, 0.5, "0 at every N", transform=ax.transAxes, ha="center", fontsize=9)
                ax.set_xlim(min(r["x"] for r in rows) - 0.2, max(r["x"] for r in rows) + 0.2)
            ax.set_title(f"{registry.label(mech)}: {mlabel}", fontsize=10)
    _legend_below(fig, axes, ncol=4)
    return [_save(fig, run_dir / "fig10.png", legend_rows=2)]


def plot_figure(name: str, rows: list[dict[str, Any]], run_dir) -> list[str]:
    """Draw one figure's PNG(s) into ``run_dir``; returns the file names."""
    run_dir = Path(run_dir)
    fig = FIGURES[name]
    if name.startswith("fig8"):
        return plot_fig8(name, rows, run_dir, fig.x_name, fig.title)
    if name.startswith("fig9"):
        return plot_fig9(rows, run_dir, name)
    return plot_fig10(rows, run_dir)

"""The market's section of report.md, from ``RUN_DIR/market/rounds.jsonl`` (MarketStage's log).

It states the market's setting (N tasks per AV, scoring), who won and what they paid, the
generative scores used, and the total surplus of every mechanism on the same bids, per round
(each line visible: distinct markers and line styles, log axis, legend outside the data).
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from carla_mr.io import atomic_write_bytes
from carla_mr.market import registry
from carla_mr.reporting import md_table, read_jsonl
from carla_mr.stages import ReportSection

#: Line styles per mechanism, in registry order, so that equal series stay visible.
_STYLES = (dict(ls="-", marker="o", ms=4), dict(ls="--", marker="s", ms=7, mfc="none"),
           dict(ls=":", marker="^", ms=4))


def market_section(run_dir: Path, summary: Mapping[str, Any], figs: Path) -> Optional[ReportSection]:
    """Setting, winners, payments, G and theta, and per-mechanism surplus (table and figure)."""
    rounds = read_jsonl(Path(run_dir) / "market" / "rounds.jsonl")
    if not rounds:
        return None
    mechs = registry.NAMES
    tot = {m: np.array([r["by_mechanism"][m]["total"] for r in rounds]) for m in mechs}
    winners = [r["winner_vehicle_id"] for r in rounds if r["winner_vehicle_id"] is not None]
    pays = np.array([r["payment_micro"] or 0 for r in rounds if r["winner_vehicle_id"] is not None]) / 1e6
    png = _figure(Path(figs) / "market_surplus.png", rounds, tot, winners)
    lat = np.array([r["latency_s"] for r in rounds]) * 1e3
    n_tasks = rounds[0].get("n_tasks", 1)
    base = mechs[0]  # the baseline (PViSA) comes first
    rows = []
    for m in mechs:
        parts = {k: float(np.mean([r["by_mechanism"][m][k] for r in rounds])) for k in ("S_DT", "S_T", "S_D")}
        rows.append((registry.label(m), float(tot[m].mean()), float(np.median(tot[m])),
                     _ratio(tot[m].mean(), tot[base].mean()), _ratio(np.median(tot[m]), np.median(tot[base])),
                     parts["S_DT"], parts["S_T"], parts["S_D"]))
    top = Counter(winners).most_common(5)
    g = (min(r.get("G_min", np.nan) for r in rounds), max(r.get("G_max", np.nan) for r in rounds))
    th = (min(r.get("theta_min", np.nan) for r in rounds), max(r.get("theta_max", np.nan) for r in rounds))
    text = (f"{len(rounds)} rounds over ZeroMQ ({registry.label(rounds[0]['mechanism'])} on the wire, "
            f"{(summary.get('stages') or {}).get('market', {}).get('scoring', 'reported')} scoring), **N = {n_tasks} DT task(s) per AV**; "
            f"{len(winners)} rounds with a winning AV, **{len(set(winners))} different winners** "
            f"(most wins: {', '.join(f'vehicle {v} x{c}' for v, c in top)}); the winner paid > 0 in "
            f"{int((pays > 0).sum())} rounds (median payment {float(np.median(pays)) if pays.size else 0:.3g}, "
            f"max {float(pays.max()) if pays.size else 0:.3g} units). G per (AV, traffic simulator) in "
            f"[{g[0]:.3g}, {g[1]:.3g}], theta per simulator in [{th[0]:.3g}, {th[1]:.3g}]. Round latency p50 "
            f"{np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms.\n\n"
            "The same bids cleared by every mechanism (pure functions):\n\n"
            + md_table(rows, ("mechanism", "mean total surplus", "median", f"mean / {registry.label(base)}",
                              f"median / {registry.label(base)}", "mean S_DT", "mean S_T", "mean S_D"))
            + _no_driving_note(rows)
            + f"\n\n![market](report/{png})\n")
    return ReportSection("Market", text, {"rounds": len(rounds), "n_tasks": n_tasks,
                                          "distinct_winners": len(set(winners)),
                                          "paid_rounds": int((pays > 0).sum()),
                                          "mean_total_surplus": {m: float(tot[m].mean()) for m in mechs},
                                          "median_total_surplus": {m: float(np.median(tot[m])) for m in mechs}})


def _no_driving_note(rows: list[tuple]) -> str:
    """A sentence when the driving simulator won no window under any mechanism (S_D = 0)."""
    if any(r[-1] > 0 for r in rows):
        return ""
    return ("\n\nS_D is 0: the driving simulator won no window under any mechanism. With this many "
            "traffic simulators the expected second-highest traffic match quality exceeds the driving "
            "term, so alpha = 1 and the highest traffic bid always wins the window (the market model's "
            "beta0 = 1; docs/market.md on alpha and beta0).")


def _ratio(a: float, b: float) -> float | None:
    return float(a / b) if b > 0 else None


def _figure(path: Path, rounds: list[dict], tot: dict[str, np.ndarray], winners: list[int]) -> str:
    """(a) total surplus per round by mechanism; (b) rounds won per vehicle; (c) the winner's
    payment per round. Legends sit outside the axes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    t = np.array([r["time"] for r in rounds])
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), dpi=100, gridspec_kw={"width_ratios": [2.2, 1.3, 1.5]})
    try:
        ax = axes[0]
        for m, style in zip(registry.NAMES, _STYLES):
            y = np.where(tot[m] > 0, tot[m], np.nan)  # log axis: a round without surplus is a gap
            ax.plot(t, y, color=registry.colour(m), label=registry.label(m), lw=1.2, **style)
        ax.set_yscale("log")
        ax.set_xlabel("simulation time (s)")
        ax.set_ylabel("total surplus per round")
        ax.set_title(f"(a) surplus by mechanism, same bids (N = {rounds[0].get('n_tasks', 1)})", fontsize=10)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize=8, frameon=False)
        ax = axes[1]
        counts = Counter(winners)
        ids = sorted(counts)
        ax.bar([str(v) for v in ids], [counts[v] for v in ids], color="#4c72b0")
        ax.set_xlabel("winning vehicle id")
        ax.set_ylabel("rounds won")
        ax.set_title(f"(b) {len(ids)} different winners", fontsize=10)
        ax.tick_params(axis="x", labelrotation=90, labelsize=7)
        ax = axes[2]
        pay = np.array([(r["payment_micro"] or 0) / 1e6 if r["winner_vehicle_id"] is not None else np.nan
                        for r in rounds])
        ax.plot(t, pay, "o", ms=4, color="#c44e52")
        ax.set_xlabel("simulation time (s)")
        ax.set_ylabel("winner's payment (units)")
        ax.set_title("(c) the winning AV's payment", fontsize=10)
        for a in axes:
            a.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        atomic_write_bytes(path, buf.getvalue())
    finally:
        plt.close(fig)
    return path.name

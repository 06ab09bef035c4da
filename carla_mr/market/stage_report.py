"""The market's section of report.md, from ``RUN_DIR/market/rounds.jsonl`` (MarketStage's log)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from carla_mr.market import registry
from carla_mr.reporting import md_table, plot_png, read_jsonl
from carla_mr.stages import ReportSection


def market_section(run_dir: Path, summary: Mapping[str, Any], figs: Path) -> Optional[ReportSection]:
    """Rounds, latency, and the total surplus per round of every mechanism on the same bids."""
    rounds = read_jsonl(Path(run_dir) / "market" / "rounds.jsonl")
    if not rounds:
        return None
    t = np.array([r["time"] for r in rounds])
    mechs = registry.NAMES
    tot = {m: np.array([r["by_mechanism"][m]["total"] for r in rounds]) for m in mechs}

    def draw(ax):
        for m in mechs:
            ax.plot(t, tot[m], marker=".", label=registry.label(m), color=registry.colour(m))
        ax.set_xlabel("simulation time (s)")
        ax.set_ylabel("total surplus per round")
        ax.set_title("Surplus per market round by mechanism (same bids)")
        ax.legend()

    png = plot_png(Path(figs) / "market_surplus.png", draw)
    lat = np.array([r["latency_s"] for r in rounds]) * 1e3
    means = {m: float(tot[m].mean()) for m in mechs}
    base = registry.NAMES[0]  # the baseline (PViSA) comes first
    rows = [(registry.label(m), means[m], float(np.median(tot[m])),
             means[m] / means[base] if means[base] > 0 else None) for m in mechs]
    winners = sum(r["winner_vehicle_id"] is not None for r in rounds)
    text = (f"{len(rounds)} rounds over ZeroMQ ({rounds[0]['mechanism']} on the wire), "
            f"{winners} with a winning AV; round latency p50 {np.percentile(lat, 50):.1f} ms, "
            f"p99 {np.percentile(lat, 99):.1f} ms.\n\n"
            + md_table(rows, ("mechanism", "mean total surplus", "median", f"ratio to {registry.label(base)}"))
            + f"\n\n![surplus](report/{png})\n")
    return ReportSection("Market", text, {"rounds": len(rounds), "mean_total_surplus": means})

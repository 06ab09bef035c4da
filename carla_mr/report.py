"""The run report: ``RUN_DIR/report.md`` with plots, from what the stages wrote.

Sections appear for the stages that ran: the world (summary, per-tick budget), the market
(surplus per round by mechanism, from ``market/rounds.jsonl``), the twin (prediction error
over time, from ``twin_eval.parquet``), generation (G per round, from
``genai/manifest.jsonl``) and perception (accuracy by texture source, from
``perception/report.json``). Plots are PNG files under ``RUN_DIR/report/``.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from carla_mr.io import atomic_write_bytes, atomic_write_text


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except ValueError:  # a line cut by a crash: the report shows what is whole
                continue
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(rows: list[tuple], header: tuple) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _plot(path: Path, draw) -> str:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    try:
        draw(ax)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        atomic_write_bytes(path, buf.getvalue())
    finally:
        plt.close(fig)
    return path.name


def market_section(run_dir: Path, figs: Path) -> tuple[str, dict]:
    rounds = _jsonl(run_dir / "market" / "rounds.jsonl")
    if not rounds:
        return "", {}
    t = np.array([r["time"] for r in rounds])
    mechs = ["pvisa", "epvisa", "mtepvisa"]
    tot = {m: np.array([r["by_mechanism"][m]["total"] for r in rounds]) for m in mechs}

    def draw(ax):
        for m in mechs:
            ax.plot(t, tot[m], marker=".", label=m.upper())
        ax.set_xlabel("simulation time (s)")
        ax.set_ylabel("total surplus per round")
        ax.set_title("Surplus per market round by mechanism (same bids)")
        ax.legend()

    png = _plot(figs / "market_surplus.png", draw)
    lat = np.array([r["latency_s"] for r in rounds]) * 1e3
    means = {m: float(tot[m].mean()) for m in mechs}
    rows = [(m.upper(), means[m], float(np.median(tot[m])),
             means[m] / means["pvisa"] if means["pvisa"] > 0 else None) for m in mechs]
    winners = sum(r["winner_vehicle_id"] is not None for r in rounds)
    text = (f"## Market\n\n{len(rounds)} rounds over ZeroMQ ({rounds[0]['mechanism']} on the wire), "
            f"{winners} with a winning AV; round latency p50 {np.percentile(lat, 50):.1f} ms, "
            f"p99 {np.percentile(lat, 99):.1f} ms.\n\n"
            + _table(rows, ("mechanism", "mean total surplus", "median", "ratio to PViSA"))
            + f"\n\n![surplus](report/{png})\n")
    return text, {"rounds": len(rounds), "mean_total_surplus": means}


def twin_section(run_dir: Path, figs: Path) -> tuple[str, dict]:
    path = run_dir / "twin_eval.parquet"
    if not path.is_file():
        return "", {}
    import pyarrow.parquet as pq

    tab = pq.read_table(path, columns=["frame", "ade", "fde"])
    frame = tab.column("frame").to_numpy()
    ade = tab.column("ade").to_numpy()
    fde = tab.column("fde").to_numpy()
    if frame.size == 0:
        return "## Digital twin\n\nNo prediction was scored (runs shorter than past + future steps).\n", {}
    bins = np.unique(frame)
    if bins.size > 60:
        edges = np.linspace(frame.min(), frame.max() + 1, 61)
        idx = np.digitize(frame, edges) - 1
        xs = 0.5 * (edges[:-1] + edges[1:])
    else:
        idx = np.searchsorted(bins, frame)
        xs = bins.astype(float)
    cnt = np.bincount(idx, minlength=len(xs))
    keep = cnt > 0
    a = np.bincount(idx, weights=ade, minlength=len(xs))[keep] / cnt[keep]
    f = np.bincount(idx, weights=fde, minlength=len(xs))[keep] / cnt[keep]

    def draw(ax):
        ax.plot(xs[keep], a, label="ADE")
        ax.plot(xs[keep], f, label="FDE")
        ax.set_xlabel("frame")
        ax.set_ylabel("error (m)")
        ax.set_title("Online prediction error over time")
        ax.legend()

    png = _plot(figs / "twin_error.png", draw)
    stats = {"scored": int(frame.size), "ade_m": float(ade.mean()), "fde_m": float(fde.mean()),
             "miss_rate": float((fde > 2.0).mean())}
    text = ("## Digital twin\n\n" + _table([(stats["scored"], stats["ade_m"], stats["fde_m"], stats["miss_rate"])],
                                           ("scored predictions", "ADE (m)", "FDE (m)", "miss rate (FDE > 2 m)"))
            + f"\n\n![twin](report/{png})\n")
    return text, stats


def genai_section(run_dir: Path, figs: Path) -> tuple[str, dict]:
    lines = _jsonl(run_dir / "genai" / "manifest.jsonl")
    if not lines:
        return "", {}
    rid = np.array([x["round_id"] for x in lines])
    rec = np.array([bool(x["recognised"]) for x in lines], dtype=float)
    rounds = np.unique(rid)
    g = np.array([rec[rid == r].mean() for r in rounds])

    def draw(ax):
        ax.plot(rounds, g, marker="o", label="G per round")
        ax.plot(rounds, np.cumsum([rec[rid == r].sum() for r in rounds]) / np.cumsum(
            [(rid == r).sum() for r in rounds]), label="running G")
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("market round")
        ax.set_ylabel("generative score G")
        ax.set_title("Validator-recognised share of generated signs")
        ax.legend()

    png = _plot(figs / "genai_G.png", draw)
    by_class: dict[str, list[float]] = {}
    for x, r in zip(lines, rec):
        by_class.setdefault(x["class"], []).append(r)
    rows = [(k, len(v), float(np.mean(v))) for k, v in sorted(by_class.items())]
    swapped = sum(bool(x.get("swapped")) for x in lines)
    stats = {"images": len(lines), "G": float(rec.mean()), "swapped": swapped}
    text = (f"## Generated signs\n\n{len(lines)} images in {rounds.size} rounds, G = {rec.mean():.3f}, "
            f"{swapped} swapped onto in-world signs.\n\n" + _table(rows, ("class", "images", "G"))
            + f"\n\n![G](report/{png})\n")
    return text, stats


def perception_section(run_dir: Path, figs: Path) -> tuple[str, dict]:
    path = run_dir / "perception" / "report.json"
    if not path.is_file():
        return "", {}
    rep = json.loads(path.read_text(encoding="utf-8"))
    table = rep.get("table", [])
    src = [r for r in table if r.get("group") == "source"]

    def draw(ax):
        ax.bar([r["bin"] for r in src], [r["accuracy"] for r in src], color=["tab:blue", "tab:orange"][: len(src)])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("accuracy")
        ax.set_title(f"Model under test ({rep.get('model')}) by texture source")

    png = _plot(figs / "perception_by_source.png", draw) if src else None
    rows = [(r["group"], r["bin"], r["n"], r["accuracy"]) for r in table]
    overall = rep.get("overall", {})
    text = (f"## Perception in the loop\n\nModel {rep.get('model')}: accuracy {_fmt(overall.get('accuracy'))} "
            f"on {overall.get('n')} crops.\n\n" + _table(rows, ("group", "bin", "crops", "accuracy"))
            + (f"\n\n![perception](report/{png})\n" if png else "\n"))
    return text, {"n": overall.get("n"), "accuracy": overall.get("accuracy"),
                  "accuracy_by_source": {r["bin"]: r["accuracy"] for r in src}}


def write_report(run_dir: str | os.PathLike) -> tuple[Path, dict]:
    """Write ``RUN_DIR/report.md`` (+ ``RUN_DIR/report/*.png``); returns (path, headline figures)."""
    run_dir = Path(run_dir)
    figs = run_dir / "report"
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8")) if (
        run_dir / "summary.json").is_file() else {}
    parts = [f"# Run report: {summary.get('scenario', run_dir.name)}\n"]
    rows = [(k, summary.get(k)) for k in ("status", "backend", "map", "seed", "ticks", "sim_time_s", "avs", "vehicles",
                                          "mean_speed", "distance_driven_m", "rsu_coverage_share", "wall_time_s",
                                          "ticks_per_s")]
    lm = summary.get("landmarks") or {}
    rows.append(("landmarks", f"{lm.get('total')} ({', '.join(f'{k}: {v}' for k, v in (lm.get('by_type') or {}).items())})"))
    parts.append("## World\n\n" + _table(rows, ("metric", "value")) + "\n")
    budget = summary.get("tick_budget_ms") or {}
    if budget:
        brows = [(k, v) for k, v in budget.items() if k not in ("total", "real_time_at_ms")]
        brows.append(("total", budget.get("total")))
        parts.append(f"### Tick budget (ms per tick; real time at {_fmt(budget.get('real_time_at_ms'))} ms)\n\n"
                     + _table(brows, ("stage", "ms per tick")) + "\n")
    headline: dict[str, Any] = {}
    for name, section in (("market", market_section), ("twin", twin_section), ("genai", genai_section),
                          ("perception", perception_section)):
        try:
            text, stats = section(run_dir, figs)
        except Exception as exc:  # noqa: BLE001 - one broken section must not lose the others
            text, stats = f"## {name}\n\nThis section could not be built: {type(exc).__name__}: {exc}\n", {}
        if text:
            parts.append(text)
        if stats:
            headline[name] = stats
    rec = (summary.get("stages") or {}).get("recorder")
    if rec:
        parts.append("## Dataset\n\n" + _table([(k, v) for k, v in rec.items() if not isinstance(v, (dict, list))],
                                               ("metric", "value")) + "\n")
    path = atomic_write_text(run_dir / "report.md", "\n".join(parts))
    return path, headline

"""The run report: ``RUN_DIR/report.md`` with plots, from what the run wrote.

The report opens with the world (the run's summary and its per-stage tick budget); then each
stage that ran adds its own section, in tick order, through the ``report_section`` of its
class in the stage registry (:mod:`carla_mr.pipeline`). Plots are PNG files under
``RUN_DIR/report/``. A section that fails is replaced by a line saying why; the others stay.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from carla_mr.io import atomic_write_text
from carla_mr.reporting import fmt, md_table

#: The summary's keys shown in the world table, in order.
WORLD_ROWS = ("status", "backend", "map", "seed", "ticks", "sim_time_s", "avs", "vehicles", "mean_speed",
              "distance_driven_m", "rsu_coverage_share", "wall_time_s", "ticks_per_s")


def world_section(summary: dict[str, Any]) -> str:
    rows = [(k, summary.get(k)) for k in WORLD_ROWS]
    lm = summary.get("landmarks") or {}
    by_type = ", ".join(f"{k}: {v}" for k, v in (lm.get("by_type") or {}).items())
    rows.append(("landmarks", f"{lm.get('total')} ({by_type})"))
    text = "## World\n\n" + md_table(rows, ("metric", "value")) + "\n"
    budget = summary.get("tick_budget_ms") or {}
    if budget:
        brows = [(k, v) for k, v in budget.items() if k not in ("total", "real_time_at_ms")]
        brows.append(("total", budget.get("total")))
        text += (f"\n### Tick budget (ms per tick; real time at {fmt(budget.get('real_time_at_ms'))} ms)\n\n"
                 + md_table(brows, ("stage", "ms per tick")) + "\n")
    return text


def write_report(run_dir: str | os.PathLike, registry: Any) -> tuple[Path, dict]:
    """Write ``RUN_DIR/report.md`` (+ ``RUN_DIR/report/*.png``); returns (path, headline figures
    by stage name). ``registry`` (a :class:`carla_mr.pipeline.StageRegistry`) maps the stage names
    recorded in ``summary.json`` to the classes whose ``report_section`` builds each section
    (:func:`carla_mr.pipeline.write_run_report` uses the built-in stages by default)."""
    run_dir = Path(run_dir)
    figs = run_dir / "report"
    spath = run_dir / "summary.json"
    summary = json.loads(spath.read_text(encoding="utf-8")) if spath.is_file() else {}
    parts = [f"# Run report: {summary.get('scenario', run_dir.name)}\n", world_section(summary)]
    headline: dict[str, Any] = {}
    for name in summary.get("stages") or {}:
        entry = registry.get(name)
        if entry is None:
            parts.append(f"## {name}\n\nNo report section: stage '{name}' is not in the stage registry.\n")
            continue
        try:
            section = entry.cls.report_section(run_dir, summary, figs)
        except Exception as exc:  # noqa: BLE001 - one broken section must not lose the others
            parts.append(f"## {name}\n\nThis section could not be built: {type(exc).__name__}: {exc}\n")
            continue
        if section is None:
            continue
        parts.append(f"## {section.title}\n\n{section.markdown}")
        if section.headline:
            headline[name] = dict(section.headline)
    path = atomic_write_text(run_dir / "report.md", "\n".join(parts))
    return path, headline

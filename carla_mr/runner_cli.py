"""``carla-mr run SCENARIO``: run a scenario file and write a run directory."""

from __future__ import annotations

from pathlib import Path

import click

from carla_mr.cli_common import common_options, emit, guarded, log, make_run_dir


@click.command(name="run")
@click.argument("scenario", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a scenario key, e.g. --set vehicles.avs=20 (repeatable; values are YAML).")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Simulated seconds (overrides duration_s).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@common_options
@guarded
def run_cmd(scenario: Path, overrides: tuple[str, ...], duration: float | None, quiet: bool, out, seed, as_json):
    """Run SCENARIO (a YAML file) for its duration and write the run directory: config.yaml,
    world.json, trajectories.parquet, each enabled stage's output (predictions, market ledger
    and schedules, generated signs, dataset, perception), summary.json and report.md."""
    from carla_mr.config import load_scenario
    from carla_mr.pipeline import run_scenario

    ovr = list(overrides)
    if duration is not None:
        ovr.append(f"duration_s={duration}")
    sc = load_scenario(scenario, ovr)
    run_dir = make_run_dir(out, "run")
    log(f"run {sc.name}: map {sc.map}, backend {sc.backend}, {sc.ticks} ticks of {sc.tick_s} s -> {run_dir}")
    summary = run_scenario(sc, run_dir, seed=seed, progress=not quiet)
    headline = summary["headline"]
    log(f"report: {summary['report']}")
    keys = ("status", "ticks", "avs", "vehicles", "mean_speed", "distance_driven_m", "rsu_coverage_share",
            "wall_time_s", "ticks_per_s", "seed", "run_dir")
    rows = [(k, summary.get(k)) for k in keys]
    lm = summary.get("landmarks", {})
    rows.append(("landmarks", f"{lm.get('total', 0)} (" + ", ".join(f"{k} {v}" for k, v in
                                                                   lm.get("by_type", {}).items()) + ")"))
    for stage, figures in headline.items():
        for k, v in figures.items():
            if not isinstance(v, (dict, list)):
                rows.append((f"{stage}.{k}", v))
    rows.append(("report", summary["report"]))
    emit(summary, as_json=as_json, rows=rows, title=f"carla-mr run {sc.name}")

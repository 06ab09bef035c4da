"""``carla-mr bench``: run every benchmark under bench/ and print one table of ratios.

Each ``bench/bench_*.py`` exposes ``run(quick: bool) -> list[dict]`` returning rows with
keys ``name``, ``value``, ``unit``, ``baseline``, ``ratio`` and ``target`` (a string), each
figure measured against a baseline in the same run. ``python -m bench`` is the same thing.
"""

from __future__ import annotations

import importlib.util
import time
import traceback
from pathlib import Path

import click

from carla_mr.cli_common import common_options, emit, guarded, log, make_run_dir
from carla_mr.errors import InputError
from carla_mr.io import atomic_write_json

BENCH_DIR_ENV = "CARLA_MR_BENCH_DIR"


def bench_dir() -> Path:
    import os

    env = os.environ.get(BENCH_DIR_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "bench"


def discover(directory: Path | None = None) -> dict[str, Path]:
    d = directory or bench_dir()
    if not d.is_dir():
        raise InputError(f"benchmark folder {d} not found; run from a source checkout or set {BENCH_DIR_ENV}",
                         field="bench")
    return {p.stem.removeprefix("bench_"): p for p in sorted(d.glob("bench_*.py"))}


def load(path: Path):
    spec = importlib.util.spec_from_file_location(f"carla_mr_bench_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def format_row(row: dict) -> str:
    """One benchmark row as a line: name, value unit, same-run baseline, ratio, target."""
    def num(v):
        return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))

    return (f"{row.get('name')}: {num(row.get('value'))} {row.get('unit', '')} | baseline {num(row.get('baseline'))}"
            f" | ratio {num(row.get('ratio'))} | target {row.get('target', '')}")


def main_for(run) -> None:
    """The ``__main__`` of a bench script: ``python bench/bench_x.py [--quick]`` prints its rows."""
    import sys

    for row in run(quick="--quick" in sys.argv[1:]):
        print(format_row(row))


def run_benchmarks(names: list[str] | None, *, quick: bool) -> tuple[list[dict], list[dict]]:
    """Run the named benchmarks (all by default); returns (rows, failures)."""
    found = discover()
    if names:
        unknown = [n for n in names if n not in found]
        if unknown:
            raise InputError(f"unknown benchmark(s) {unknown}; known: {sorted(found)}", field="--only")
        found = {n: found[n] for n in names}
    rows: list[dict] = []
    failures: list[dict] = []
    for name, path in found.items():
        log(f"bench {name} ...")
        t0 = time.perf_counter()
        try:
            mod = load(path)
            for row in mod.run(quick=quick):
                rows.append({"suite": name, **row})
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others
            failures.append({"suite": name, "error": f"{type(exc).__name__}: {exc}"})
            log(traceback.format_exc())
        log(f"bench {name} done in {time.perf_counter() - t0:.1f} s")
    return rows, failures


@click.command(name="bench")
@click.option("--only", multiple=True, help="Run only these benchmarks (e.g. --only market --only world).")
@click.option("--full", is_flag=True, help="Full sizes (default: quick sizes).")
@common_options
@guarded
def bench_cmd(only, full, out, seed, as_json):
    """Run the benchmarks and print ratios against their same-run baselines."""
    rows, failures = run_benchmarks(list(only) or None, quick=not full)
    run_dir = make_run_dir(out, "bench")
    result = {"rows": rows, "failures": failures, "quick": not full}
    atomic_write_json(run_dir / "bench.json", result)
    emit(result, as_json=as_json, title="carla-mr bench (ratio = value / same-run baseline)",
         columns=("suite", "name", "value", "unit", "baseline", "ratio", "target"),
         rows=[(r["suite"], r.get("name"), r.get("value"), r.get("unit", ""), r.get("baseline"), r.get("ratio"),
                r.get("target", "")) for r in rows])
    if failures:
        for f in failures:
            log(f"FAILED {f['suite']}: {f['error']}")
        raise click.exceptions.Exit(1)

"""``carla-mr market experiment fig8a|fig8b|fig8c|fig9|fig10|all``: the paper's experiments.

Writes CSVs, PNGs and summary.json into the run directory and prints the headline ratios
(ratios of mean total surplus): generative AI vs none, MTEPViSA vs PViSA, MTEPViSA vs
EPViSA by N. ``--json`` prints ``genai_gain``, ``mtepvisa_over_pvisa``,
``mtepvisa_over_epvisa_by_n`` (and the claims) as one JSON object.
"""

from __future__ import annotations

import contextlib
from typing import get_args

import click

from carla_mr.cli_common import common_options, emit, guarded, log, make_run_dir, progress
from carla_mr.config.vocab import ScoringName
from carla_mr.errors import InputError
from carla_mr.market.figures import ALL

DEFAULT_REPS = 500
FIGURE_CHOICES = ALL + ("all",)


def _fmt_ratio(d: dict | None) -> str:
    if not d:
        return "-"
    s = f"{d['ratio']:.3g}"
    if "ci_low" in d:
        s += f" [{d['ci_low']:.3g}, {d['ci_high']:.3g}]"
    return s + f" (medians: {d['ratio_of_medians']:.3g})"


@click.command(name="experiment")
@click.argument("figure", type=click.Choice(FIGURE_CHOICES))
@click.option("--reps", type=click.IntRange(min=2), default=DEFAULT_REPS, show_default=True,
              help="Market draws per point (each evaluated by every mechanism and treatment).")
@click.option("--c-max", type=float, default=None, help="Truncate C ~ Zipf(2) at this value (default: none).")
@click.option("--beta0", type=float, default=None, help="Scale of the driving simulator's match (default 1).")
@click.option("--size-unit", type=float, default=None, help="1: sizes in Mbit (default); 8: strict MB.")
@click.option("--noise-mode", type=click.Choice(["random", "fixed"]), default=None,
              help="Link noise: random sigma^2 = max(|N(0,1)|, 1e-3) (default) or fixed 1.")
@click.option("--scoring", type=click.Choice(list(get_args(ScoringName))), default="reported", show_default=True)
@click.option("--no-plots", is_flag=True, default=False, help="Write CSVs and summary.json only.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes (results are identical for any number).")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS|auto|local",
              help="Run the sweep as Ray tasks (local: start a cluster here; auto / HOST:PORT: join one). "
                   "Same results as without.")
@common_options
@guarded
def experiment_cmd(figure, reps, c_max, beta0, size_unit, noise_mode, scoring, no_plots, workers, ray_address, out,
                   seed, as_json):
    """Run the paper's experiment FIGURE (or all) with common random numbers; CSV + PNG + summary."""
    from carla_mr.market.experiments import make_tasks, run_experiments, write_outputs

    figures = list(ALL) if figure == "all" else [figure]
    if ray_address is not None:
        from carla_mr.scale import parse_ray_address

        ray_address = parse_ray_address(ray_address)
        if workers != 1:
            raise InputError("--workers and --ray both split the sweep; give one of them", field="--workers")
    overrides = {k: v for k, v in (("c_max", c_max), ("beta0", beta0), ("size_unit", size_unit),
                                   ("noise_mode", noise_mode)) if v is not None}
    base = 0 if seed is None else seed
    run_dir = make_run_dir(out, "market-experiment")
    n_tasks = len(make_tasks(figures, reps, base, overrides=overrides, scoring=scoring))
    log(f"market experiment {figure}: {reps} reps per point, seed {base} -> {run_dir}")
    with progress(n_tasks, f"market {figure}", enabled=True) as advance, _mapper(workers, ray_address) as map_fn:
        result = run_experiments(figures, reps=reps, base_seed=base, overrides=overrides, scoring=scoring,
                                 progress=advance, map_fn=map_fn)
    files = write_outputs(result, run_dir, plots=not no_plots)
    _report(figure, figures, reps, base, run_dir, result, files, as_json)


@contextlib.contextmanager
def _mapper(workers: int, ray_address: str | None):
    """The map the sweep runs with: Ray's (--ray), a process pool's (--workers > 1) or the builtin."""
    if ray_address is not None:
        from carla_mr.scale import ray_map

        yield lambda fn, tasks: ray_map(fn, tasks, ray_address)
    elif workers == 1:
        yield map
    else:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            yield pool.map


def _report(figure, figures, reps, base, run_dir, result, files, as_json) -> None:
    """The headline on stdout: one JSON object (--json) or a table."""
    from carla_mr.market.figures import FIGURES

    h = result.headline
    payload = {"figure": figure, "figures": figures, "reps": reps, "seed": base, "run_dir": str(run_dir),
               "seconds": round(result.seconds, 3), "genai_gain": h["genai_gain"],
               "mtepvisa_over_pvisa": h["mtepvisa_over_pvisa"],
               "mtepvisa_over_epvisa_by_n": h["mtepvisa_over_epvisa_by_n"],
               "mtepvisa_over_pvisa_by_n": h["mtepvisa_over_pvisa_by_n"], "claims": h["claims"],
               "claims_hold": h["claims_hold"], "files": files}
    if as_json:
        emit(payload, as_json=True)
        return
    det = h["details"]
    rows = [("figures", ", ".join(figures)), ("reps per point", reps), ("seconds", f"{result.seconds:.1f}"),
            ("genai gain (MTEPViSA, defaults)", _fmt_ratio(det.get("genai_gain"))),
            ("MTEPViSA / PViSA (defaults)", _fmt_ratio(det.get("mtepvisa_over_pvisa")))]
    for n in h["mtepvisa_over_epvisa_by_n"] or {}:
        rows.append((f"MTEPViSA / EPViSA, N = {n}", _fmt_ratio(det.get(f"mtepvisa_over_epvisa_N{n}"))))
    for claim, ok in h["claims"].items():
        rows.append((f"claim: {claim}", "holds" if ok else "FAILS"))
    rows.append(("run directory", str(run_dir)))
    emit(payload, as_json=False, title=f"market experiment {figure} (ratios of mean total surplus "
                                         f"[95% paired bootstrap CI])", rows=rows, columns=("headline", "value"))
    if not h["claims"]:
        log(f"(no headline for {figure} alone: the claims need a default-parameter point "
            f"({', '.join(n for n in FIGURES if FIGURES[n].default_x is not None)}) or fig9)")


COMMANDS = [experiment_cmd]

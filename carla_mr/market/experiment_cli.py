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
    """'means x [CI]; medians y [CI]'."""
    if not d:
        return "-"
    s = f"means {d['ratio']:.3g}"
    if "ci_low" in d:
        s += f" [{d['ci_low']:.3g}, {d['ci_high']:.3g}]"
    s += f"; medians {d['ratio_of_medians']:.3g}"
    if "median_ci_low" in d:
        s += f" [{d['median_ci_low']:.3g}, {d['median_ci_high']:.3g}]"
    return s


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
@click.option("--epvisa-windows", type=click.Choice(["first", "all"]), default="first", show_default=True,
              help="EPViSA serves its winner's first window only (the specification's reading) or all of them; "
                   "fig9 reports MTEPViSA / EPViSA for both either way.")
@click.option("--no-plots", is_flag=True, default=False, help="Write CSVs and summary.json only.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes (results are identical for any number).")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS|auto|local",
              help="Run the sweep as Ray tasks (local: start a cluster here; auto / HOST:PORT: join one). "
                   "Same results as without.")
@common_options
@guarded
def experiment_cmd(figure, reps, c_max, beta0, size_unit, noise_mode, scoring, epvisa_windows, no_plots, workers,
                   ray_address, out, seed, as_json):
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
                                 epvisa_windows=epvisa_windows, progress=advance, map_fn=map_fn)
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
    """The headline on stdout: one JSON object (--json) or a table beside the paper's claims."""
    from carla_mr.market.figures import FIGURES

    h = result.headline
    keys = ("genai_gain", "mtepvisa_over_pvisa", "mtepvisa_over_epvisa_by_n", "mtepvisa_over_epvisa_by_n_first",
            "mtepvisa_over_epvisa_by_n_all", "mtepvisa_over_pvisa_by_n", "details", "c_max_5", "paper", "claims",
            "claims_on_medians", "claims_hold")
    payload = {"figure": figure, "figures": figures, "reps": reps, "seed": base, "run_dir": str(run_dir),
               "epvisa_windows": result.epvisa_windows, "seconds": round(result.seconds, 3),
               **{k: h[k] for k in keys}, "files": files}
    if as_json:
        emit(payload, as_json=True)
        return
    emit(payload, as_json=False, title=f"market experiment {figure} (ratios of total surplus [95% paired "
                                         f"bootstrap CI]; EPViSA serves: {result.epvisa_windows})",
         rows=_headline_rows(h, figures, reps, result.seconds, run_dir), columns=("headline", "value"))
    if not h["claims"]:
        log(f"(no headline for {figure} alone: the claims need a default-parameter point "
            f"({', '.join(n for n in FIGURES if FIGURES[n].default_x is not None)}) or fig9)")


def _headline_rows(h: dict, figures: list, reps: int, seconds: float, run_dir) -> list[tuple]:
    det, paper, c5 = h["details"], h["paper"], h["c_max_5"] or {}
    rows = [("figures", ", ".join(figures)), ("reps per point", reps), ("seconds", f"{seconds:.1f}"),
            ("genai gain (MTEPViSA, defaults)", _fmt_ratio(det.get("genai_gain"))),
            ("  paper", paper["genai_gain"]),
            ("  with c_max = 5 (N = 1)", _fmt_ratio(c5.get("genai_gain"))),
            ("MTEPViSA / PViSA (defaults)", _fmt_ratio(det.get("mtepvisa_over_pvisa"))),
            ("  paper", paper["mtepvisa_over_pvisa"]),
            ("  with c_max = 5 (N = 1)", _fmt_ratio(c5.get("mtepvisa_over_pvisa")))]
    for n in h["mtepvisa_over_epvisa_by_n"] or {}:
        rows.append((f"MTEPViSA / EPViSA, N = {n}", _fmt_ratio(det.get(f"mtepvisa_over_epvisa_N{n}"))))
    for w in ("first", "all"):
        by_n = h[f"mtepvisa_over_epvisa_by_n_{w}"]
        if by_n:
            rows.append((f"  EPViSA serving {w} window(s), N = 1..5 (means)", ", ".join(f"{v:.3f}" for v in by_n.values())))
    if c5.get("mtepvisa_over_epvisa_by_n"):
        rows.append(("  with c_max = 5, N = 1..5 (means)",
                     ", ".join(f"{d['ratio']:.3f}" for d in c5["mtepvisa_over_epvisa_by_n"].values())))
    rows.append(("  paper", paper["mtepvisa_over_epvisa_by_n"]))
    for claim, ok in h["claims"].items():
        med = h["claims_on_medians"].get(claim)
        rows.append((f"claim: {claim}", ("holds" if ok else "FAILS") + " on means, "
                     + ("holds" if med else "fails") + " on medians"))
    rows.append(("run directory", str(run_dir)))
    return rows


COMMANDS = [experiment_cmd]

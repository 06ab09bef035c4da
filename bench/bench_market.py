"""Market clearing speed: the vectorised MTEPViSA vs the per-(AV, task) loop oracle, same run.

1. One MTEPViSA market at I = 1000 AVs, K = 1000 traffic simulators, N = 10 tasks (quick:
   I = 200): ``clear()`` (exact alpha, MSB, scores, payments, surplus; alpha recomputed, not
   cached) against ``oracle.clear_loop()`` (plain Python loops written from the specification)
   on the same public data and bids. Both are checked to give the same outcome. CPU time of
   this process (``time.process_time``), vectorised best of 3. Target: >= 50x.
2. The whole ``carla-mr market experiment all`` sweep at the default reps (CSV + PNG included;
   quick: 40 reps, the simulation part scaled linearly to the default), CPU time of this
   process (= wall time on an idle core; the sweep is single-process) against the 300 s budget.

Run: ``python bench/bench_market.py [--quick]``.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _fresh(market):
    """The same market with a fresh PublicMarket (no cached alpha)."""
    return dataclasses.replace(market, public=dataclasses.replace(market.public))


def bench_clear(n_avs: int, n_traffic: int = 1000, n_tasks: int = 10, seed: int = 1) -> dict:
    from carla_mr.market.mechanisms import clear
    from carla_mr.market.model import MarketParams, sample_market
    from carla_mr.market.oracle import clear_loop

    market = sample_market(MarketParams(n_avs=n_avs, n_traffic=n_traffic, n_tasks=n_tasks), seed)
    best = float("inf")
    for _ in range(3):
        m = _fresh(market)
        t = time.process_time()
        out = clear(m, mechanism="mtepvisa")
        best = min(best, time.process_time() - t)
    m = _fresh(market)
    t = time.process_time()
    ref = clear_loop(m, mechanism="mtepvisa")
    loop = time.process_time() - t
    same = (out.winner == ref.winner and abs(out.payment - ref.payment) <= 1e-9 * max(1, abs(ref.payment))
            and abs(out.total - ref.total) <= 1e-9 * max(1, abs(ref.total))
            and list(out.offline_winner) == list(ref.offline_winner))
    if not same:
        raise AssertionError(f"vectorised and loop outcomes differ: {out.to_dict()} vs {ref.to_dict()}")
    return {"vectorised_s": best, "loop_s": loop}


def bench_sweep(reps: int, scale_to: int) -> float:
    """CPU seconds of the sweep (simulation scaled by scale_to / reps; files written once)."""
    from carla_mr.market.experiments import ALL, run_experiments, write_outputs

    t = time.process_time()
    result = run_experiments(ALL, reps=reps, base_seed=0)
    t_run = time.process_time() - t
    t = time.process_time()
    with tempfile.TemporaryDirectory() as d:
        write_outputs(result, d)
    t_write = time.process_time() - t
    return t_run * scale_to / reps + t_write


def run(quick: bool) -> list[dict]:
    from carla_mr.market.experiment_cli import DEFAULT_REPS

    n_avs = 200 if quick else 1000
    c = bench_clear(n_avs)
    rows = [{"name": f"MTEPViSA clear, I={n_avs} K=1000 N=10 (vectorised vs loop oracle)",
             "value": round(c["vectorised_s"], 4), "unit": "s (CPU)", "baseline": round(c["loop_s"], 3),
             "ratio": round(c["loop_s"] / c["vectorised_s"], 1), "target": ">= 50x"}]
    reps = 40 if quick else DEFAULT_REPS
    secs = bench_sweep(reps, DEFAULT_REPS)
    rows.append({"name": f"experiment all, {DEFAULT_REPS} reps" + (" (scaled from 40)" if quick else ""),
                 "value": round(secs, 1), "unit": "s (CPU, one core)", "baseline": 300.0,
                 "ratio": round(300.0 / secs, 2), "target": "< 300 s (ratio > 1)"})
    return rows


if __name__ == "__main__":
    from carla_mr.bench_cli import main_for

    main_for(run)

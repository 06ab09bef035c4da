"""Market clearing speed: the vectorised MTEPViSA against two baselines, same run, same market.

1. One MTEPViSA market at I = 1000 AVs, K = 1000 traffic simulators, N = 10 tasks (quick:
   I = 200): ``clear()`` (exact alpha, MSB, scores, payments, surplus; alpha recomputed, not
   cached) against
   - the **fair loop** ``oracle.clear_rowwise()``: a Python loop over the (AV, task) windows,
     each step numpy over the K simulators with the same alpha method (the same shortcuts):
     the gain of vectorising over windows alone (target >= 10x);
   - the **pure-Python oracle** ``oracle.clear_loop()``: loops over everything, alpha by an
     exact sort per window: interpretation, algorithm and vectorisation together.
   All three are checked equal (winners, payments, prices, alpha, scores). CPU time of this
   process (``time.process_time``), best of 3 (the oracle once).
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


def _check_same(out, ref, what: str) -> None:
    import numpy as np

    ok = (out.winner == ref.winner and abs(out.payment - ref.payment) <= 1e-9 * max(1, abs(ref.payment))
          and np.array_equal(out.offline_winner, ref.offline_winner)
          and np.allclose(out.offline_price, ref.offline_price, rtol=1e-9, atol=0)
          and np.allclose(out.alpha, ref.alpha, rtol=1e-9, atol=0)
          and np.allclose(out.scores, ref.scores, rtol=1e-9, atol=0)
          and abs(out.total - ref.total) <= 1e-9 * max(1, abs(ref.total)))
    if not ok:
        raise AssertionError(f"vectorised and {what} outcomes differ: {out.to_dict()} vs {ref.to_dict()}")


def _best_of(fn, n: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(n):
        t = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t)
    return best, out


def bench_clear(n_avs: int, n_traffic: int = 1000, n_tasks: int = 10, seed: int = 1) -> dict:
    from carla_mr.market.mechanisms import clear
    from carla_mr.market.model import MarketParams, sample_market
    from carla_mr.market.oracle import clear_loop, clear_rowwise

    market = sample_market(MarketParams(n_avs=n_avs, n_traffic=n_traffic, n_tasks=n_tasks), seed)
    vec, out = _best_of(lambda: clear(_fresh(market), mechanism="mtepvisa"))
    fair, row = _best_of(lambda: clear_rowwise(_fresh(market), mechanism="mtepvisa"))
    _check_same(out, row, "fair-loop")
    loop, ref = _best_of(lambda: clear_loop(_fresh(market), mechanism="mtepvisa"), n=1)
    _check_same(out, ref, "pure-Python")
    return {"vectorised_s": vec, "fair_loop_s": fair, "loop_s": loop}


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
    rows = [{"name": f"MTEPViSA clear, I={n_avs} K=1000 N=10 (vectorised vs fair loop over windows)",
             "value": round(c["vectorised_s"], 4), "unit": "s (CPU)", "baseline": round(c["fair_loop_s"], 3),
             "ratio": round(c["fair_loop_s"] / c["vectorised_s"], 1), "target": ">= 10x"},
            {"name": f"MTEPViSA clear, I={n_avs} K=1000 N=10 (vectorised vs pure-Python oracle)",
             "value": round(c["vectorised_s"], 4), "unit": "s (CPU)", "baseline": round(c["loop_s"], 3),
             "ratio": round(c["loop_s"] / c["vectorised_s"], 1), "target": "report"}]
    reps = 40 if quick else DEFAULT_REPS
    secs = bench_sweep(reps, DEFAULT_REPS)
    rows.append({"name": f"experiment all, {DEFAULT_REPS} reps" + (" (scaled from 40)" if quick else ""),
                 "value": round(secs, 1), "unit": "s (CPU, one core)", "baseline": 300.0,
                 "ratio": round(300.0 / secs, 2), "target": "< 300 s (ratio > 1)"})
    return rows


if __name__ == "__main__":
    from carla_mr.bench_cli import main_for

    main_for(run)

"""Traffic-light phase offsets (issue 17): share of vehicles stopped at once, in phase vs staggered.

    PYTHONPATH=$PWD python -m bench.bench_signals --map mr_town --seconds 120

Runs the embedded world twice for each map with the same seed and traffic: SUMO's default
programs (every junction starts its cycle at t = 0) and the seeded per-junction offsets
(:func:`carla_mr.world.embedded.stagger_traffic_lights`). Reports the max and mean share of
vehicles with speed < 0.1 m/s per tick (after a 10 s warm-up) and the share of ticks where
more than half the vehicles stand. Not a timing: it measures traffic, not speed.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def stopped_shares(map_name: str, seconds: float, seed: int, stagger: bool, avs: int, background: int) -> np.ndarray:
    from carla_mr.config import scenario_from_dict
    from carla_mr.world.embedded import EmbeddedWorld

    sc = scenario_from_dict({"map": map_name, "backend": "embedded", "seed": seed, "duration_s": seconds,
                             "vehicles": {"avs": avs, "background": background}})
    old = EmbeddedWorld.stagger_signals
    EmbeddedWorld.stagger_signals = stagger
    try:
        w = EmbeddedWorld(sc)
        shares = []
        snap = w.reset()
        for _ in range(sc.ticks):
            snap = w.tick()
            if snap.time >= 10.0 and len(snap):
                shares.append(float(np.mean(snap.speed < 0.1)))
        w.close()
    finally:
        EmbeddedWorld.stagger_signals = old
    return np.array(shares)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--map", action="append", default=None)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--avs", type=int, default=20)
    ap.add_argument("--background", type=int, default=80)
    a = ap.parse_args()
    rows = []
    for m in a.map or ["mr_town", "Town01"]:
        for stagger in (False, True):
            s = stopped_shares(m, a.seconds, a.seed, stagger, a.avs, a.background)
            rows.append({"map": m, "offsets": "seeded" if stagger else "none (in phase)",
                         "max_stopped_share": round(float(s.max()), 3), "mean_stopped_share": round(float(s.mean()), 3),
                         "ticks_over_half_stopped": round(float(np.mean(s > 0.5)), 3)})
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()

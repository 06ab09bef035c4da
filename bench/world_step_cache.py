"""Diagnostic for ``bench_world``: does Python work between SUMO steps make SUMO's own step dearer?

The embedded world's SUMO step is 10-30% dearer than the bare loop's on the same net. This runs
the bare loop of ``bench_world`` twice, alternating, best of ``--repeats``: as it is, and with
about the embedded world's own per-tick work done between the steps on unrelated data (small
numpy arrays and dicts, nothing SUMO sees). If SUMO's step grows in the second case, the gap
is the CPU caches our work evicts, not a different traffic state.

Run: ``python bench/world_step_cache.py [--vehicles 50] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _work(junk, dicts) -> float:
    """About the embedded world's own per-tick Python work (~50 us at 50 vehicles), on data SUMO never sees."""
    s = 0.0
    for j in junk:
        d = j[:, None, :4] - j[None, :8, :4]
        s += float((d * d).sum(axis=2).argmin(axis=1).sum())
    flat: list = []
    for v in dicts:
        flat.extend(v["p"])
        flat.append(v["a"])
    return s + len(flat)


def run(vehicles: int, repeats: int) -> dict:
    import numpy as np

    import bench.bench_world as bw
    from carla_mr.world.embedded import EmbeddedWorld

    w = EmbeddedWorld(bw._scenario(vehicles), seed=1)
    w.reset()
    net, edges = w.net_path, w._edges
    w.close()
    rng = np.random.default_rng(0)
    junk = [rng.random((vehicles, 16)) for _ in range(3)]
    dicts = [{"p": (float(i), 2.0 * i, 0.5), "a": float(i)} for i in range(vehicles)]
    plain_timed = bw._timed

    def busy_timed(step, ticks):
        def stepped():
            out = step()
            _work(junk, dicts)
            return out
        return plain_timed(stepped, ticks)

    best = {"bare": None, "bare_plus_work": None}
    try:
        for _ in range(repeats):
            for name, timed in (("bare", plain_timed), ("bare_plus_work", busy_timed)):
                bw._timed = timed
                per_tick, step, _n = bw._bare(vehicles, 300, 400, net, edges)
                cur = best[name]
                best[name] = (per_tick, step) if cur is None or step < cur[1] else cur
    finally:
        bw._timed = plain_timed
    (_, s0), (_, s1) = best["bare"], best["bare_plus_work"]
    return {"vehicles": vehicles, "sumo_step_us_bare": s0 * 1e6, "sumo_step_us_with_work": s1 * 1e6,
            "step_increase": s1 / s0 - 1.0}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vehicles", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    r = run(a.vehicles, a.repeats)
    print(f"{r['vehicles']} vehicles: SUMO step {r['sumo_step_us_bare']:.0f} us bare, "
          f"{r['sumo_step_us_with_work']:.0f} us with unrelated work between steps "
          f"({100 * r['step_increase']:+.0f}%)")


if __name__ == "__main__":
    main()

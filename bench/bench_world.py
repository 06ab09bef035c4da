"""Ticks per second of EmbeddedWorld vs bare libsumo stepping with subscriptions (same net, same run).

For each population (50, 200, 1000 vehicles; quick: 50, 200) on the project's arterial map:

- ``embedded``: the :class:`~carla_mr.runner.Runner`'s loop (the only tick loop of the
  package) driving ``EmbeddedWorld.tick()`` (step, subscriptions -> numpy Snapshot in CARLA's
  frame, RSU association, route extension, constant population) with no stage but a clock, so
  the row includes everything the loop adds per tick (running statistics, per-stage timing).
  The world converts SUMO's results with its compiled pass when that is built
  (:mod:`carla_mr.world.sumo_columns`); the same world on the numpy pass is timed too
  (``ratio_numpy_pass``);
- ``bare``: the same SUMO net, vehicle count and traffic (the embedded world's vehicle types
  and traffic-light offsets, set up before timing), ``libsumo.simulationStep()`` plus
  subscribing departures, re-adding arrivals on a ready route, and ``getAllSubscriptionResults()``.

Both run after a warm-up so the network is filled; time is this process's CPU time (robust to
other load on a shared machine), best of 3 (quick) or 5 (full) alternating repeats. The ratio is embedded time
per tick over bare time per tick (target <= 1.5). SUMO's own step is timed on both sides too,
so the row also says how much of a difference is our work (``overhead_us``) and how much is
SUMO stepping a different traffic state; ``pair_ratio_min/median/max`` give the spread of the
back-to-back (embedded, bare) pairs, the machine's noise. Run: ``python bench/bench_world.py [--quick]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MAP = REPO / "maps" / "mr_arterial.xodr"
#: Alternating (embedded, bare) repeats per population; the best (lowest CPU time) of each side counts.
REPEATS_QUICK, REPEATS_FULL = 3, 5


def _scenario(n: int):
    from carla_mr.config import scenario_from_dict

    avs = max(1, n // 10)
    return scenario_from_dict({"name": f"bench{n}", "map": str(MAP), "tick_s": 0.05, "duration_s": 10.0,
                               "vehicles": {"avs": avs, "background": n - avs}})


class _StepClock:
    """Accumulates the CPU time spent inside ``libsumo.simulationStep`` (both sides wrapped alike)."""

    def __init__(self):
        from carla_mr.world.embedded import import_libsumo

        self.ls = import_libsumo()
        self.seconds = 0.0

    def __enter__(self):
        orig = self.orig = self.ls.simulationStep

        def timed(*args):
            t = time.process_time()
            try:
                return orig(*args)
            finally:
                self.seconds += time.process_time() - t

        self.ls.simulationStep = timed
        return self

    def __exit__(self, *exc):
        self.ls.simulationStep = self.orig


def _timed(step, ticks: int) -> tuple[float, float]:
    """CPU seconds per tick of this process (``time.process_time``; other processes' load does
    not count) and the part of it spent in SUMO's own step."""
    with _StepClock() as clock:
        t = time.process_time()
        for _ in range(ticks):
            step()
        total = time.process_time() - t
    return total / ticks, clock.seconds / ticks


class _LoopClock:
    """A stage that reads the CPU clock (and SUMO's step clock) at tick ``warm`` and at the end."""

    name = "clock"

    def __init__(self, warm: int, steps: _StepClock):
        self.warm, self.steps = warm, steps
        self.k = 0
        self.t0 = self.s0 = self.t1 = self.s1 = 0.0
        self.vehicles = 0

    def start(self, ctx) -> None:
        pass

    def on_tick(self, snapshot, ctx) -> None:
        if self.k == self.warm:
            self.t0, self.s0 = time.process_time(), self.steps.seconds
        self.k += 1
        self.t1, self.s1 = time.process_time(), self.steps.seconds
        self.vehicles = len(snapshot)

    def close(self) -> None:
        pass

    def summary(self) -> dict:
        return {}


def _embedded(n: int, warm: int, ticks: int, c_pass: bool = True):
    from carla_mr.runner import Runner
    from carla_mr.world.embedded import EmbeddedWorld

    sc = _scenario(n)
    w = EmbeddedWorld(sc, seed=1)
    w.c_pass = c_pass
    with _StepClock() as steps:
        clock = _LoopClock(warm, steps)
        Runner(sc, REPO, [clock], 1, progress=False, world=w, ticks=warm + ticks + 1, run_files=False).run()
    return (clock.t1 - clock.t0) / ticks, (clock.s1 - clock.s0) / ticks, clock.vehicles, (w.net_path, w._edges)


def _bare(n: int, warm: int, ticks: int, net_path, edges) -> tuple[float, int]:
    import numpy as np

    from carla_mr.world.embedded import (background_type, define_vehicle_types, import_libsumo,
                                         stagger_traffic_lights)

    ls = import_libsumo()
    ls.start(["sumo", "-n", str(net_path), "--step-length", "0.05", "--seed", "1", "--no-step-log", "true",
              "--no-warnings", "true", "--duration-log.disable", "true", "--time-to-teleport", "120",
              "--collision.action", "warn", "--collision.check-junctions", "false"])
    try:
        # the same traffic as the embedded world (set-up calls only, before any timing): its
        # vehicle types (lengths, widths, truck/bus speeds) and its traffic-light offsets
        define_vehicle_types(ls)
        stagger_traffic_lights(ls, 1)
        n_avs = max(1, n // 10)
        tc = ls.constants
        vars_ = (tc.VAR_POSITION3D, tc.VAR_ANGLE, tc.VAR_SPEED)
        rng = np.random.default_rng(1)
        routes = []
        while len(routes) < 2 * n:
            o, d = edges[int(rng.integers(len(edges)))], edges[int(rng.integers(len(edges)))]
            r = ls.simulation.findRoute(o, d)
            if len(r.edges) >= 2:
                rid = f"r{len(routes)}"
                ls.route.add(rid, list(r.edges))
                routes.append(rid)
        nxt = 0

        def add():
            nonlocal nxt
            vtype = "DEFAULT_VEHTYPE" if nxt < n_avs else f"cmr_bg_{background_type(1, nxt)}"
            ls.vehicle.add(str(nxt), routes[nxt % len(routes)], typeID=vtype, depart="now", departLane="best",
                           departPos="random_free", departSpeed="0")
            nxt += 1

        for _ in range(n):
            add()

        def step():
            ls.simulationStep()
            for vid in ls.simulation.getDepartedIDList():
                ls.vehicle.subscribe(vid, vars_)
            for _ in ls.simulation.getArrivedIDList():
                add()
            return ls.vehicle.getAllSubscriptionResults()

        for _ in range(warm):
            step()
        per_tick, sumo_step = _timed(step, ticks)
        return per_tick, sumo_step, len(ls.vehicle.getAllSubscriptionResults())
    finally:
        ls.close()


def run(quick: bool) -> list[dict]:
    """Rows {name, value, unit, baseline, ratio, target}: CPU microseconds per tick of the
    embedded world (value) and of bare libsumo (baseline); ratio = value / baseline."""
    from carla_mr.world.sumo_columns import c_pass_available

    sizes = (50, 200) if quick else (50, 200, 1000)
    c_pass = c_pass_available()
    rows = []
    for n in sizes:
        warm = 100 if quick else 300
        ticks = 200 if quick else (400 if n < 1000 else 200)
        best_e = best_b = best_np = None
        pair_ratios = []
        # alternate, keep the best of each: SUMO's own step time varies by tens of percent between
        # identical repeats on this machine (CPU caches and clocks), so one pair is not a measurement;
        # the spread of the back-to-back pairs' ratios is reported beside it
        for _ in range(REPEATS_QUICK if quick else REPEATS_FULL):
            te, se, n_emb, (net_path, edges) = _embedded(n, warm, ticks)
            tb, sb, n_bare = _bare(n, warm, ticks, net_path, edges)
            if c_pass:  # the same world with the numpy pass, for the comparison in this run
                tn = _embedded(n, warm, ticks, c_pass=False)[0]
                best_np = tn if best_np is None else min(best_np, tn)
            pair_ratios.append(te / tb)
            best_e = min(best_e or (te, se), (te, se))
            best_b = min(best_b or (tb, sb), (tb, sb))
        (t_emb, s_emb), (t_bare, s_bare) = best_e, best_b
        # our own work per tick (everything but SUMO's step) beyond what bare stepping does
        overhead = (t_emb - s_emb) - (t_bare - s_bare)
        rows.append({"name": f"world.tick_time.{n}veh", "value": t_emb * 1e6, "unit": "us/tick (CPU)",
                     "baseline": t_bare * 1e6, "ratio": t_emb / t_bare, "target": "<= 1.5 x bare libsumo",
                     "ticks_per_s": 1.0 / t_emb, "bare_ticks_per_s": 1.0 / t_bare,
                     "sumo_step_us": s_emb * 1e6, "bare_sumo_step_us": s_bare * 1e6,
                     "overhead_us": overhead * 1e6, "ratio_at_equal_step": (t_bare + overhead) / t_bare,
                     "pair_ratio_median": float(sorted(pair_ratios)[len(pair_ratios) // 2]),
                     "pair_ratio_min": min(pair_ratios), "pair_ratio_max": max(pair_ratios),
                     "vehicles_embedded": n_emb, "vehicles_bare": n_bare, "c_pass": c_pass,
                     # the embedded world converting with the numpy pass (None: no C pass built)
                     "ratio_numpy_pass": None if best_np is None else best_np / t_bare})
    return rows


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    quick = "--quick" in argv
    for r in run(quick):
        print(f"{r['name']:26s} embedded {r['ticks_per_s']:8.1f} ticks/s  bare libsumo {r['bare_ticks_per_s']:8.1f} "
              f"ticks/s  time ratio {r['ratio']:.2f} (target {r['target']}); SUMO step {r['sumo_step_us']:.0f} vs "
              f"{r['bare_sumo_step_us']:.0f} us, our overhead {r['overhead_us']:.0f} us/tick -> ratio at equal step "
              f"{r['ratio_at_equal_step']:.2f}; back-to-back pairs {r['pair_ratio_min']:.2f}-{r['pair_ratio_max']:.2f} "
              f"(median {r['pair_ratio_median']:.2f}); vehicles {r['vehicles_embedded']} vs {r['vehicles_bare']}; "
              + (f"numpy pass instead of C: ratio {r['ratio_numpy_pass']:.2f}" if r["c_pass"]
                 else "C pass not built: the numpy pass ran"))


if __name__ == "__main__":
    main()

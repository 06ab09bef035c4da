"""Scale-out on Ray (local cluster, 2 CPUs): speed-up of the market sweep and of recording
two worlds, against the same work done one item after another in this process.

Rows (wall clock, same run):
- Ray local cluster start (``ray.init(num_cpus=2)``), for scale; baseline: nothing (ratio 1).
- ``market experiment fig9`` sweep (chunks of 10 reps) via ``ray_map`` vs the builtin ``map``
  (cluster already up). Results are checked equal. Ratio = local / Ray (speed-up).
- ``record_shards``: 2 worlds (embedded Town01, 3 cameras 320x240) on 2 Ray actors vs the same
  2 shards one after another; the files are checked byte-equal. Ratio = local / Ray.

On N free cores the ideal ratio is N; on a shared 2-core box expect less (Ray's own
processes compete for the same cores). Needs the `scale` extra and Town01 (skipped otherwise).

Run: ``python bench/bench_scale.py [--quick]``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _town01() -> Path | None:
    from carla_mr.config import map_search_dirs

    for d in map_search_dirs():
        if (d / "Town01.xodr").is_file():
            return d / "Town01.xodr"
    return None


def run(quick: bool) -> list[dict]:
    import numpy as np

    try:
        import ray
    except ImportError:
        return [{"name": "scale (Ray not installed)", "value": None, "unit": "-", "baseline": None, "ratio": None,
                 "target": "pip install 'carla-mr[scale]'"}]
    from carla_mr.market.experiments import run_experiments
    from carla_mr.dataset.shards import record_shards
    from carla_mr.scale import ray_map

    rows = []
    started_here = not ray.is_initialized()
    t = time.perf_counter()
    if started_here:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    # warm the two workers (first task imports carla_mr there)
    list(ray_map(abs, [-1, -2], "local"))
    t_init = time.perf_counter() - t
    rows.append({"name": "Ray local cluster start (2 CPUs) + 2 warm workers", "value": round(t_init, 2),
                 "unit": "s (wall)", "baseline": None, "ratio": None, "target": "-"})
    try:
        reps = 40 if quick else 200
        t = time.perf_counter()
        local = run_experiments(["fig9"], reps=reps, base_seed=0, chunk=10)
        t_local = time.perf_counter() - t
        t = time.perf_counter()
        on_ray = run_experiments(["fig9"], reps=reps, base_seed=0, chunk=10,
                                 map_fn=lambda fn, tasks: ray_map(fn, tasks, "local"))
        t_ray = time.perf_counter() - t
        for p, q in zip(local.figures["fig9"], on_ray.figures["fig9"]):
            for label in p:
                for m in p[label]:
                    assert np.array_equal(p[label][m], q[label][m]), "Ray sweep differs from the local one"
        rows.append({"name": f"market sweep fig9, {reps} reps, on Ray vs builtin map (equal results)",
                     "value": round(t_ray, 2), "unit": "s (wall)", "baseline": round(t_local, 2),
                     "ratio": round(t_local / t_ray, 2), "target": "> 1 (ideal: cores)"})
        town = _town01()
        if town is not None:
            from carla_mr.config import scenario_from_dict

            frames = 10 if quick else 40
            sc = scenario_from_dict({"map": str(town), "seed": 3, "duration_s": 1.0,
                                     "vehicles": {"avs": 3, "background": 10},
                                     "recorder": {"enabled": True, "cameras": 3, "max_frames": frames, "every_k": 2,
                                                  "camera": {"width": 320, "height": 240, "fov_deg": 90.0}}})
            with tempfile.TemporaryDirectory() as d:
                t = time.perf_counter()
                record_shards(sc, Path(d) / "local", worlds=2)
                t_local = time.perf_counter() - t
                t = time.perf_counter()
                record_shards(sc, Path(d) / "ray", worlds=2, address="local")
                t_ray = time.perf_counter() - t
                assert _tree(Path(d) / "local") == _tree(Path(d) / "ray"), "Ray shards differ from the local ones"
            rows.append({"name": f"record 2 worlds x {frames} frames x 3 cameras on 2 Ray actors vs one after "
                                 f"another (byte-equal)", "value": round(t_ray, 2), "unit": "s (wall)",
                         "baseline": round(t_local, 2), "ratio": round(t_local / t_ray, 2),
                         "target": "> 1 (ideal: cores)"})
    finally:
        if started_here:
            ray.shutdown()
    return rows


if __name__ == "__main__":
    from carla_mr.bench_cli import main_for

    main_for(run)

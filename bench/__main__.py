"""``python -m bench`` (from the repository root): the same as ``carla-mr bench``."""

from carla_mr.bench_cli import bench_cmd

bench_cmd(prog_name="python -m bench")

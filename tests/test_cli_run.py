"""``carla-mr run``: the run directory, the trajectories file and the summary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from carla_mr.cli import main
from carla_mr.config import load_scenario

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = REPO / "scenarios"


def run_json(tmp_path, scenario, *extra):
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["run", str(scenario), "--out", str(out), "--json", "--quiet", *map(str, extra)])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout), out


def test_run_grid_writes_run_dir(tmp_path):
    s, out = run_json(tmp_path, SCENARIOS / "grid.yaml", "--duration", "3", "--seed", "11",
                      "--set", "vehicles.avs=3", "--set", "vehicles.background=9")
    assert s["status"] == "completed" and s["ticks"] == 60 and s["seed"] == 11
    assert s["avs"] == 3 and s["vehicles"] == 12
    assert 0 < s["mean_speed"] < 20 and s["distance_driven_m"] > 0
    assert 0.0 <= s["rsu_coverage_share"] <= 1.0 and s["ticks_per_s"] > 0 and s["wall_time_s"] > 0
    assert s["landmarks"]["total"] == 200 and s["landmarks"]["by_type"]["stop"] == 4
    assert s["stages"]["trajectories"]["rows"] > 0
    assert json.loads((out / "summary.json").read_text())["ticks"] == 60
    cfg = load_scenario(out / "config.yaml")  # the resolved copy loads again on its own
    assert cfg.seed == 11 and cfg.vehicles.avs == 3 and Path(cfg.map).is_absolute()
    t = pq.read_table(out / "trajectories.parquet")
    types = {f.name: str(f.type) for f in t.schema}
    assert types == {"frame": "int64", "time": "double", "id": "int64", "role": "uint8", "x": "double",
                     "y": "double", "z": "double", "yaw": "double", "speed": "double", "rsu": "int32"}
    assert t.num_rows == s["stages"]["trajectories"]["rows"]
    frames = t.column("frame").to_numpy()
    assert frames.min() == 0 and frames.max() == 59
    role = t.column("role").to_numpy()
    assert len(np.unique(t.column("id").to_numpy()[role == 1])) == 3
    # distance_driven_m equals the sum of speed * tick over every row
    assert np.isclose(t.column("speed").to_numpy().sum() * 0.05, s["distance_driven_m"])
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    world = json.loads((out / "world.json").read_text())
    assert len(world["rsus"]) == s["rsus"] > 0 and world["rsus"][0]["gpu_hz"] == 19e9
    assert len(world["signs"]) == s["landmarks"]["unique_signs"]
    assert {x["kind"] for x in world["signs"]} >= {"stop", "yield", "speed_limit", "traffic_light"}
    assert set(np.unique(t.column("rsu").to_numpy())) <= set(range(-1, len(world["rsus"])))


def test_summary_table_without_json(tmp_path):
    r = CliRunner().invoke(main, ["run", str(SCENARIOS / "arterial.yaml"), "--out", str(tmp_path / "r"), "--quiet",
                                  "--duration", "0.5", "--set", "vehicles.background=2"])
    assert r.exit_code == 0, r.output
    assert "ticks_per_s" in r.stdout and "landmarks" in r.stdout


def test_town01_landmarks_in_summary(town01, tmp_path):
    s, _ = run_json(tmp_path, SCENARIOS / "town01.yaml", "--duration", "1", "--set", f"map={town01}",
                    "--set", "vehicles.background=5")
    assert s["landmarks"]["total"] == 94
    assert s["landmarks"]["by_type"] == {"speed_limit": 22, "traffic_light": 72}


def test_town02_landmarks_in_summary(town02, tmp_path):
    s, _ = run_json(tmp_path, SCENARIOS / "town02.yaml", "--duration", "1", "--set", f"map={town02}",
                    "--set", "vehicles.background=5")
    assert s["landmarks"]["total"] > 0 and s["landmarks"]["by_type"]["traffic_light"] > 0
    assert s["status"] == "completed"


class Boom:
    name = "boom"

    def __init__(self):
        self.closed = 0

    def start(self, ctx):
        pass

    def on_tick(self, snapshot, ctx):
        if snapshot.frame == 5:
            raise ValueError("boom")

    def close(self):
        self.closed += 1

    def summary(self):
        return {"closed": self.closed}


def test_runner_closes_everything_on_exception(tmp_path):
    from carla_mr.runner import Runner
    from carla_mr.trajectories import TrajectoryStage
    from carla_mr.world import embedded

    sc = load_scenario(SCENARIOS / "grid.yaml", ["vehicles.avs=1", "vehicles.background=2", "duration_s=2"])
    boom, traj = Boom(), TrajectoryStage()
    r = Runner(sc, tmp_path / "run", [traj, boom], seed=1, progress=False)
    with pytest.raises(ValueError, match="boom"):
        r.run()
    assert boom.closed == 1 and embedded.live_world() is None
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == "failed" and "boom" in s["error"] and s["ticks"] == 6
    assert pq.read_table(tmp_path / "run" / "trajectories.parquet").num_rows > 0


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_closes_and_exits(tmp_path, sig, code):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "carla_mr", "run", str(SCENARIOS / "grid.yaml"), "--out", str(out),
                             "--duration", "36000", "--quiet", "--set", "vehicles.background=5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(REPO))
    try:
        deadline = time.time() + 60
        while not (out / ".trajectories.parquet.tmp").exists() and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(2.5)  # usually into the tick loop; a signal during start-up must give the same result
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err.decode()[-2000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "interrupted" and s["ticks"] >= 0 and "error" in s
    assert (out / "trajectories.parquet").is_file()
    assert b"Traceback" not in err

"""The quality target (slow): on held-apart vehicles of SUMO traffic on two maps (CARLA's Town01
and Town02 networks), the residual model beats constant velocity by >= 15% on ADE at every rate.

Runs `python -m carla_mr.twin.sumo_tracks` once per map (libsumo: one simulation per process),
then `carla-mr twin train` on both runs with a short recipe. About 2-4 minutes on one core.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from carla_mr.cli import main
from carla_mr.world.sumo_net import build_net

pytest.importorskip("torch")


@pytest.mark.slow
def test_residual_beats_constant_velocity_on_two_maps(tmp_path, town01, town02):
    runs = []
    for i, xodr in enumerate((town01, town02)):
        net = build_net(xodr).path  # SUMO's net of the committed town (netconvert, cached)
        out = tmp_path / f"map{i}.parquet"
        subprocess.run([sys.executable, "-m", "carla_mr.twin.sumo_tracks", str(net), str(out), "--vehicles", "100",
                        "--duration", "300", "--tick", "0.02", "--seed", str(i + 1)], check=True, capture_output=True, timeout=600)
        runs.append(str(out))
    res = CliRunner().invoke(main, ["twin", "train", *runs, "--epochs", "15", "--max-windows", "10000",
                                    "--rates", "2,5,10", "--out", str(tmp_path / "train"), "--seed", "0",
                                    "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(r["held_apart"]) == 6
    for t in r["held_apart"]:
        m, cv = t["metrics"]["residual"], t["metrics"]["constant_velocity"]
        assert m["ade"] <= 0.85 * cv["ade"], (t["source"], t["hz"], m["ade"], cv["ade"])
        assert t["metrics"]["zero_motion"]["ade"] > cv["ade"]

"""The SUMO track generator writes the runner's trajectory schema, readable by the twin."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq

from carla_mr.twin import data
from carla_mr.world.sumo_net import build_net


def test_sumo_tracks_schema_and_load(tmp_path, town01):
    net = build_net(town01).path  # SUMO's net of the committed town (netconvert, cached)
    out = tmp_path / "t.parquet"
    subprocess.run([sys.executable, "-m", "carla_mr.twin.sumo_tracks", str(net), str(out), "--vehicles", "15",
                    "--duration", "20", "--seed", "3"], check=True, capture_output=True, timeout=120)
    t = pq.read_table(out)
    assert t.column_names == ["frame", "time", "id", "role", "x", "y", "z", "yaw", "speed", "rsu"]
    assert str(t.schema.field("role").type) == "uint8" and str(t.schema.field("rsu").type) == "int32"
    d = t.to_pydict()
    assert set(d["role"]) <= {0, 1} and min(d["time"]) > 0
    tr, _ = data.load_tracks(out, sample_hz=20.0, min_samples=10)
    assert tr.n_tracks >= 10
    # 20 Hz positions of a car: no jumps beyond ~20 m/s * 0.05 s (SUMO speeds stay below 40 m/s)
    steps = np.linalg.norm(np.diff(tr.xy, axis=0), axis=1)
    inside = np.ones(steps.size, bool)
    inside[tr.offsets[1:-1] - 1] = False  # not across track boundaries
    assert steps[inside].max() < 2.0

"""`carla-mr twin train` and `twin eval` end to end on small CSVs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from carla_mr.cli import main
from twin_helpers import synthetic_rows, write_csv

pytest.importorskip("torch")


def _invoke(args):
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    return res


def _last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_train_then_eval(tmp_path):
    rows = synthetic_rows(n_vehicles=24, seconds=60, hz=10, seed=3)
    csv = tmp_path / "tracks.csv"
    write_csv(csv, rows, names={"id": "vehicle_id", "t": "timestamp"})
    out = tmp_path / "train"
    res = _invoke(["twin", "train", str(csv), "--past", "10", "--future", "3", "--epochs", "2", "--hidden", "8",
                   "--batch-size", "64", "--max-windows", "3000", "--out", str(out), "--seed", "1", "--json"])
    assert res.exit_code == 0, res.output
    r = _last_json(res.stdout)
    for k in ("lstm", "constant_velocity", "zero_motion"):
        assert {"ade", "fde", "per_step", "miss_rate", "r2_abs", "r2_disp"} <= set(r[k])
        assert len(r[k]["per_step"]) == 3
    assert r["data"]["test_vehicles"] == 5 and r["data"]["vehicles"] == 24
    assert r["training"]["epochs_run"] == 2
    assert (out / "model" / "config.json").is_file() and (out / "model" / "weights.npz").is_file()
    assert json.loads((out / "metrics.json").read_text())["lstm"]["ade"] == r["lstm"]["ade"]
    res = _invoke(["twin", "eval", str(out / "model"), str(csv), "--json", "--out", str(tmp_path / "ev"),
                   "--id-col", "vehicle_id", "--time-col", "timestamp"])
    assert res.exit_code == 0, res.output
    e = _last_json(res.stdout)
    assert set(e) >= {"lstm", "constant_velocity", "zero_motion", "model", "data"}
    assert e["model"]["past"] == 10 and e["data"]["windows"] > 0
    # a baseline by name; table output
    res = _invoke(["twin", "eval", "constant_velocity", str(csv), "--past", "5", "--future", "2",
                   "--out", str(tmp_path / "ev2")])
    assert res.exit_code == 0 and "constant_velocity" in res.output


def test_bad_data_is_reported(tmp_path):
    rows = synthetic_rows(n_vehicles=10, seconds=40, hz=2, seed=0)
    rows["x"][5] = np.nan
    csv = tmp_path / "t.csv"
    write_csv(csv, rows)
    with open(csv, "a") as fh:  # a 1-sample vehicle: skipped and counted
        fh.write("7777,0.0,1.0,1.0\n")
    res = _invoke(["twin", "eval", "constant_velocity", str(csv), "--past", "6", "--future", "2", "--json",
                   "--out", str(tmp_path / "e")])
    assert res.exit_code == 0, res.output
    skipped = _last_json(res.stdout)["data"]["skipped"]
    assert skipped["nan_rows"] == 1 and skipped["short_segments"] == 1
    # unknown columns -> exit 2 naming the columns and the flags
    bad = tmp_path / "bad.csv"
    write_csv(bad, {"who": np.zeros(3), "when": np.arange(3.0), "x": np.zeros(3), "y": np.zeros(3)})
    res = _invoke(["twin", "eval", "constant_velocity", str(bad), "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "no vehicle id column" in res.output and "--id-col" in res.output
    # tracks too short for the window -> exit 2
    res = _invoke(["twin", "train", str(csv), "--past", "200", "--out", str(tmp_path / "s")])
    assert res.exit_code == 2 and "samples" in res.output
    # a missing model -> exit 2
    res = _invoke(["twin", "eval", str(tmp_path / "nomodel"), str(csv), "--out", str(tmp_path / "m")])
    assert res.exit_code == 2 and "not a model directory" in res.output

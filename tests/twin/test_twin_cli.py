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
    other = tmp_path / "other.csv"
    write_csv(other, synthetic_rows(n_vehicles=6, seconds=60, hz=5, seed=9))
    out = tmp_path / "train"
    res = _invoke(["twin", "train", str(csv), "--past", "10", "--future", "3", "--epochs", "2", "--hidden", "8",
                   "--rates", "2,5,20", "--max-windows", "3000", "--out", str(out), "--seed", "1", "--json",
                   "--test-fraction", "0.25", "--test-data", str(other)])
    assert res.exit_code == 0, res.output
    r = _last_json(res.stdout)
    assert [t["hz"] for t in r["held_apart"]] == [2.0, 5.0]  # 20 Hz is above the data's 10 Hz: skipped
    assert r["test_data"][0]["hz"] == 5.0  # the test data at its own rate
    for t in r["held_apart"] + r["test_data"]:
        for k in ("residual", "constant_velocity", "zero_motion"):
            m = t["metrics"][k]
            assert {"ade", "fde", "per_step", "ade_ci", "fde_ci", "ade_gain_ci", "r2_disp"} <= set(m)
            assert m["ade_ci"][0] <= m["ade"] <= m["ade_ci"][1] and len(m["per_step"]) == 3
    assert r["training"]["epochs_run"] == 2 and r["training"]["rates_hz"] == [2.0, 5.0, 20.0]
    assert (out / "model" / "config.json").is_file() and (out / "model" / "weights.npz").is_file()
    assert json.loads((out / "metrics.json").read_text())["summary"] == r["summary"]
    # eval: the training data holds the model's training vehicles -> exit 2, unless allowed
    ev = ["twin", "eval", str(out / "model"), str(csv), "--json", "--id-col", "vehicle_id", "--time-col", "timestamp"]
    res = _invoke(ev + ["--out", str(tmp_path / "ev")])
    assert res.exit_code == 2 and "training data" in res.output and "--allow-train-overlap" in res.output
    res = _invoke(ev + ["--out", str(tmp_path / "ev"), "--allow-train-overlap"])
    assert res.exit_code == 0, res.output
    e = _last_json(res.stdout)
    assert e["train_overlap_vehicles"] > 0 and e["results"][0]["hz"] == 10.0 and e["upsampled"] is False
    # separate test data, at its own rate, no overlap; upsampling only when asked, and said
    res = _invoke(["twin", "eval", str(out / "model"), "--test-data", str(other), "--json", "--out",
                   str(tmp_path / "ev3")])
    assert res.exit_code == 0, res.output
    e = _last_json(res.stdout)
    assert e["train_overlap_vehicles"] == 0 and e["model"]["past"] == 10 and e["results"][0]["hz"] == 5.0
    res = _invoke(["twin", "eval", str(out / "model"), str(other), "--sample-hz", "10", "--out", str(tmp_path / "u")])
    assert res.exit_code == 2 and "--allow-upsample" in res.output
    res = _invoke(["twin", "eval", str(out / "model"), str(other), "--sample-hz", "10", "--allow-upsample", "--json",
                   "--out", str(tmp_path / "u")])
    assert res.exit_code == 0 and _last_json(res.stdout)["upsampled"] is True
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
    skipped = _last_json(res.stdout)["results"][0]["skipped"]
    assert skipped["nan_rows"] == 1 and skipped["single_sample_tracks"] == 1
    # time going backwards -> exit 2 naming the column and the vehicle; --sort-time repairs and counts
    back = tmp_path / "back.csv"
    r2 = {k: v.copy() for k, v in rows.items()}
    r2["t"][[10, 11]] = r2["t"][[11, 10]]
    write_csv(back, r2)
    res = _invoke(["twin", "eval", "constant_velocity", str(back), "--past", "6", "--future", "2",
                   "--out", str(tmp_path / "bk")])
    assert res.exit_code == 2 and "t: time is not increasing for vehicle 100" in res.output
    res = _invoke(["twin", "eval", "constant_velocity", str(back), "--past", "6", "--future", "2", "--sort-time",
                   "--json", "--out", str(tmp_path / "bk")])
    assert res.exit_code == 0 and _last_json(res.stdout)["results"][0]["skipped"]["unsorted_tracks"] == 1
    # a rate outside 1-25 Hz -> exit 2 naming the value
    res = _invoke(["twin", "eval", "constant_velocity", str(csv), "--sample-hz", "0.5", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "sample_hz" in res.output and "0.5 Hz is outside 1-25 Hz" in res.output
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

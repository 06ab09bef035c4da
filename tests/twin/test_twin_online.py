"""The twin stage inside the runner, on a scripted world: predictions, scoring, R, files."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from carla_mr.config import scenario_from_dict
from carla_mr.errors import InputError
from carla_mr.pipeline import build_stages
from carla_mr.runner import Runner
from carla_mr.stages import RunContext, Stage
from carla_mr.stages import TwinAccuracy
from carla_mr.config.twin import TwinConfig
from carla_mr.twin.online import TwinStage, stride_for
from carla_mr.testing.fake_world import FakeWorld
from carla_mr.world.base import ROLE_AV, ROLE_BACKGROUND, RsuTable, Snapshot


def _script(frame: int) -> Snapshot:
    """AVs 1..3 drive straight at constant velocity; AV 4 zig-zags by 6 m every tick; AV 5 leaves
    at tick 120; background car 99 is never predicted. RSU = 0 west of x = 50, else 1."""
    t = frame * 0.05
    ids = [1, 2, 3, 4, 99] + ([5] if frame < 120 else [])
    x = np.array([t * 10.0, 20 + t * 5.0, -t * 8.0, 30.0 + 6.0 * (frame % 2), 0.0, t * 3.0][:len(ids)])
    y = np.array([0.0, t * 2.0, 5.0, 0.0, 0.0, 1.0][:len(ids)])
    role = np.array([ROLE_AV] * 4 + [ROLE_BACKGROUND] + [ROLE_AV] * (len(ids) - 5), np.uint8)
    z = np.zeros(len(ids))
    return Snapshot(frame, t, np.array(ids, np.int64), role, x, y, z, z.copy(), z.copy(),
                    np.where(x < 50, 0, 1).astype(np.int32))


def ScriptedWorld() -> FakeWorld:
    """The scripted world above with two RSUs (x = 0 and x = 100, 250 m range)."""
    f = np.zeros(2)
    return FakeWorld(_script, rsus=RsuTable(np.array([0.0, 100.0]), f, f, np.full(2, 250.0), f, f, f, f))


def _scenario(tmp_path, **twin):
    sc = scenario_from_dict({"map": "nowhere.xodr", "duration_s": 10.0, "twin": {"enabled": True, **twin}})
    sc.source_path = str(tmp_path / "scenario.yaml")
    return sc


def test_config_section():
    assert TwinConfig().enabled is False
    sc = scenario_from_dict({"map": "x.xodr"})
    assert not any(isinstance(s, TwinStage) for s in build_stages(sc))
    sc = scenario_from_dict({"map": "x.xodr", "twin": {"enabled": True, "past": 8}})
    assert any(isinstance(s, TwinStage) for s in build_stages(sc))
    with pytest.raises(InputError, match="twin.past"):
        scenario_from_dict({"map": "x.xodr", "twin": {"past": 1}})
    with pytest.raises(InputError, match="unknown key"):
        scenario_from_dict({"map": "x.xodr", "twin": {"modle": "x"}})


def test_stride():
    assert stride_for(2.0, 0.05) == 10 and stride_for(20.0, 0.05) == 1
    with pytest.raises(InputError, match="does not divide"):
        stride_for(3.0, 0.05)


def test_online_constant_velocity_run(tmp_path):
    sc = _scenario(tmp_path, past=4, future=3, sample_hz=2.0, accuracy_window=5)
    stages = build_stages(sc)  # the trajectory stream, then the twin
    stage = stages[-1]
    assert isinstance(stage, TwinStage) and isinstance(stage, Stage)
    world = ScriptedWorld()
    runner = Runner(sc, tmp_path / "run", stages=stages, world=world, progress=False, ticks=200)
    summary = runner.run()
    tw = summary["stages"]["twin"]
    # 200 ticks at stride 10 -> 20 samples; AVs 1-4 predicted from sample 4 on (17 each), AV 5 until it left
    assert tw["samples"] == 20 and tw["stride_ticks"] == 10
    assert tw["predictions"] == 4 * 17 + 9
    assert tw["lost_before_truth"] == 3  # AV 5's last three predictions never matured
    acc = runner.ctx.board.twin_accuracy
    assert isinstance(acc, TwinAccuracy)
    assert acc.ids.tolist() == [1, 2, 3, 4]  # AVs present now; background 99 and departed 5 are not
    r = dict(zip(acc.ids.tolist(), acc.r.tolist()))
    assert r[1] == r[2] == r[3] == 1.0  # exact constant velocity -> always a hit
    # the zig-zagger is sampled on even frames only -> looks parked -> zero motion, also exact
    assert r[4] == 1.0
    assert ((acc.r >= 0) & (acc.r <= 1)).all() and (acc.n > 0).all()
    assert acc.rsu.tolist() == [1, 1, 0, 0]  # x at t = 9.5 s: 95, 67.5, -76, 30
    pred = pq.read_table(tmp_path / "run" / "predictions.parquet").to_pydict()
    traj = pq.read_table(tmp_path / "run" / "trajectories.parquet").to_pydict()
    truth = {(f, i): (x, y) for f, i, x, y in zip(traj["frame"], traj["id"], traj["x"], traj["y"])}
    matched = 0
    for f, i, x, y in zip(pred["target_frame"], pred["id"], pred["x"], pred["y"]):
        if (f, i) in truth and i != 4:
            assert np.hypot(x - truth[(f, i)][0], y - truth[(f, i)][1]) < 1e-9
            matched += 1
    assert matched > 100
    assert set(np.asarray(pred["frame"]) % 10) == {0}
    assert 99 not in set(pred["id"])
    ev = pq.read_table(tmp_path / "run" / "twin_eval.parquet").to_pydict()
    assert len(ev["id"]) == tw["scored"] and all(ev["hit"])
    stage.close()  # idempotent


def test_missed_predictions_lower_r(tmp_path):
    """Sampled every tick (20 Hz), the zig-zag AV defeats constant velocity: R falls towards 0."""
    sc = _scenario(tmp_path, past=4, future=2, sample_hz=20.0, accuracy_window=10)
    runner = Runner(sc, tmp_path / "run", stages=[TwinStage(sc.twin)], world=ScriptedWorld(), progress=False,
                    ticks=80)
    runner.run()
    acc = runner.ctx.board.twin_accuracy
    r = dict(zip(acc.ids.tolist(), acc.r.tolist()))
    assert r[4] < 0.05 and r[1] == 1.0
    assert acc.get(np.array([4, 12345]), default=0.5).tolist() == [r[4], 0.5]


def test_all_vehicles_and_no_files(tmp_path):
    sc = _scenario(tmp_path, past=3, future=1, vehicles="all", write_predictions=False)
    runner = Runner(sc, tmp_path / "run", stages=[TwinStage(sc.twin)], world=ScriptedWorld(), progress=False,
                    ticks=60)
    runner.run()
    assert 99 in runner.ctx.board.twin_accuracy.ids.tolist()
    assert not (tmp_path / "run" / "predictions.parquet").exists()


def _biased_model(path, past=4, future=2):
    """A residual model whose correction is always +bound along x: wrong for every vehicle."""
    from carla_mr.twin.residual import ResidualPredictor, n_features

    d = n_features()
    params = {"W0": np.zeros((d, 4), np.float32), "b0": np.zeros(4, np.float32),
              "W1": np.zeros((4, 2 * future), np.float32), "b1": np.tile([20.0, 0.0], future).astype(np.float32)}
    m = ResidualPredictor(past, future, 2.0, params=params, norm={"mean": np.zeros(d), "std": np.ones(d)})
    m.save(path)


def test_gating_serves_the_better_predictor_and_r_counts_what_was_served(tmp_path):
    """A model from the scenario's folder that is worse than constant velocity on every vehicle:
    after the first scores, constant velocity serves; R and the files say what was served."""
    _biased_model(tmp_path / "models" / "m1")
    sc = _scenario(tmp_path, model="models/m1")
    runner = Runner(sc, tmp_path / "run", stages=[TwinStage(sc.twin)], world=ScriptedWorld(), progress=False,
                    ticks=200)
    summary = runner.run()
    tw = summary["stages"]["twin"]
    assert tw["model"] == "residual" and tw["past"] == 4 and tw["scored"] > 0
    share = tw["served_share"]
    assert share["constant_velocity"] > 0.5 and share["model"] > 0 and abs(sum(share.values()) - 1) < 1e-9
    acc = runner.ctx.board.twin_accuracy
    assert acc.served_by is not None and set(acc.served_by.tolist()) == {"constant_velocity"}
    ev = pq.read_table(tmp_path / "run" / "twin_eval.parquet").to_pydict()
    served = np.array(ev["served_by"])
    ade, am, ab = (np.array(ev[k]) for k in ("ade", "ade_model", "ade_baseline"))
    np.testing.assert_allclose(ade, np.where(served == "model", am, ab))
    assert (am[served == "constant_velocity"] > ab[served == "constant_velocity"]).all()
    pr = pq.read_table(tmp_path / "run" / "predictions.parquet").to_pydict()
    assert set(pr["served_by"]) == {"model", "constant_velocity"}
    # straight-driving AVs 1..3: once constant velocity serves, every served prediction hits, so R -> 1
    r = dict(zip(acc.ids.tolist(), acc.r.tolist()))
    assert r[1] > 0.8 and r[2] > 0.8
    sec = TwinStage.report_section(tmp_path / "run", summary, tmp_path / "figs")
    assert "served by" in sec.markdown and "constant_velocity" in sec.markdown
    assert sec.headline["served_share_constant_velocity"] > 0.5


def test_bad_model_and_rate(tmp_path):
    world = ScriptedWorld()
    sc = _scenario(tmp_path, model="models/missing")
    ctx = RunContext(scenario=sc, world=world, run_dir=tmp_path / "r", seed=0)
    with pytest.raises(InputError, match="twin.model.*not found"):
        TwinStage(sc.twin).start(ctx)
    sc = _scenario(tmp_path, sample_hz=3.0)
    with pytest.raises(InputError, match="twin.sample_hz"):
        TwinStage(sc.twin).start(RunContext(scenario=sc, world=world, run_dir=tmp_path / "r", seed=0))


def test_spreading_the_batch_changes_nothing_but_timing(tmp_path):
    """With spread on, each sample's batch is predicted over the stride's ticks: same rows."""
    out = {}
    for spread in (True, False):
        sc = _scenario(tmp_path, past=4, future=3, sample_hz=5.0, spread=spread)
        run = tmp_path / f"run{spread}"
        # 148 ticks = 37 whole strides of 4, so the last batch is complete in both runs
        runner = Runner(sc, run, stages=[TwinStage(sc.twin)], world=ScriptedWorld(), progress=False, ticks=148)
        summary = runner.run()
        t = pq.read_table(run / "predictions.parquet").sort_by([("frame", "ascending"), ("id", "ascending"),
                                                                ("step", "ascending")])
        out[spread] = (t.to_pydict(), summary["stages"]["twin"]["scored"],
                       runner.ctx.board.twin_accuracy.r.tolist())
    assert out[True] == out[False]

"""GenaiStage: market windows -> generation jobs in their slots -> scored, swapped onto signs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from carla_mr.config.genai import GenaiConfig
from carla_mr.genai.stage import GenaiStage
from carla_mr.stages import MarketRound, RunContext
from carla_mr.testing.fake_world import FakeWorld, sign_table
from carla_mr.world.base import Snapshot


def _SignWorld() -> FakeWorld:
    return FakeWorld(signs=sign_table(["a", "b", "c", "tl"], ["stop", "yield", "stop", "traffic_light"],
                                      x=[5.0, 20.0, 400.0, 1.0]))


def _snap(t):
    return Snapshot(int(t / 0.05), t, np.array([11, 12]), np.array([1, 1], np.uint8), np.array([0.0, 300.0]),
                    np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(2, np.int32))


@pytest.mark.timeout(120)
def test_windows_become_jobs_in_their_slots(tmp_path, tiny_model_dir):
    cfg = GenaiConfig(enabled=True, checkpoint=str(tiny_model_dir), steps=2, signs_per_job=2,
                      swap_only_recognised=False, theta_value=0.8, worker=False, simulators=[])
    world = _SignWorld()
    ctx = RunContext(scenario=None, world=world, run_dir=tmp_path, seed=1)
    stage = GenaiStage(cfg, n_simulators=5)
    stage.start(ctx)
    scores = ctx.board.generation_scores
    assert np.isnan(scores.G).all() and scores.theta.tolist() == [0.8] * 5
    ctx.board.market_round = MarketRound.from_windows(round_id=1, frame=20, time=1.0, participants=1,
                                                      winner_vehicle_id=11, payment_micro=10, mechanism="mtepvisa",
                                                      windows=[
        {"sim_id": "sim-003", "sim_index": 3, "vehicle_id": 11, "task": 0, "start_s": 0.5, "duration_s": 0.4,
         "payment_micro": 10},
        {"sim_id": "sim-000", "sim_index": 0, "vehicle_id": None, "task": 0, "start_s": 0.0, "duration_s": 1.0,
         "payment_micro": 0}])
    stage.on_tick(_snap(1.0), ctx)
    assert stage.summary()["jobs"] == 0 and stage.summary()["pending_jobs"] == 1  # slot not reached yet
    stage.on_tick(_snap(1.5), ctx)
    stage.on_tick(_snap(1.55), ctx)  # the same round is not queued twice
    s = stage.summary()
    assert s["jobs"] == 1 and s["images"] == 2 and s["pending_jobs"] == 0
    lines = [json.loads(x) for x in (tmp_path / "genai" / "manifest.jsonl").read_text().splitlines()]
    # the two signs nearest vehicle 11 (traffic light excluded), with its preferred colour
    assert [x["sign_id"] for x in lines] == ["a", "b"]
    assert lines[0]["prompt"].startswith("a stop sign on a ") and lines[1]["prompt"].startswith("a yield sign")
    assert all((tmp_path / x["image"]).is_file() for x in lines)
    tex = world.sign_textures()
    assert tex["a"].source == "generated" and tex["a"].ref == lines[0]["image"]
    assert tex["a"].image.shape == (128, 128, 3) and tex["c"].source == "original"
    G = s["G"]
    assert G == pytest.approx(sum(x["recognised"] for x in lines) / 2)
    scores = ctx.board.generation_scores
    # G per simulator: only simulator 3 generated
    assert scores.G[3] == G and np.isnan(scores.G[[0, 1, 2, 4]]).all() and scores.round_id == 1
    stage.close()
    stage.close()


def test_only_recognised_images_are_swapped(tmp_path, tiny_model_dir, monkeypatch):
    import carla_mr.genai.api as api

    monkeypatch.setattr(api, "score", lambda v, images, kinds: {
        "G": 0.5, "recognised": [True, False], "predicted": list(kinds), "confidence": [0.9, 0.1]})
    cfg = GenaiConfig(enabled=True, checkpoint=str(tiny_model_dir), steps=1, signs_per_job=2, worker=False,
                      measure_theta={"enabled": False})
    world = _SignWorld()
    ctx = RunContext(scenario=None, world=world, run_dir=tmp_path, seed=1)
    stage = GenaiStage(cfg)
    stage.start(ctx)
    ctx.board.market_round = MarketRound.from_windows(round_id=4, frame=0, time=0.0, participants=1,
                                                      winner_vehicle_id=11, payment_micro=1, mechanism="mtepvisa",
                                                      windows=[
        {"sim_id": "sim-001", "sim_index": 1, "vehicle_id": 11, "task": 0, "start_s": 0.0, "duration_s": 0.1,
         "payment_micro": 1}])
    stage.on_tick(_snap(0.0), ctx)
    tex = world.sign_textures()
    assert tex["a"].source == "generated" and tex["b"].source == "original"
    assert stage.summary()["G"] == 0.5 and stage.summary()["signs_swapped"] == 1


def _round(rid, sims):
    return MarketRound.from_windows(round_id=rid, frame=0, time=0.0, participants=1, winner_vehicle_id=11,
                                    payment_micro=1, mechanism="mtepvisa", windows=[
        {"sim_id": f"sim-{k:03d}", "sim_index": k, "vehicle_id": 11, "task": t, "start_s": 0.0, "duration_s": 0.1,
         "payment_micro": 1} for t, k in enumerate(sims)])


@pytest.mark.timeout(180)
def test_worker_thread_matches_inline_and_scores_per_simulator(tmp_path, tiny_model_dir):
    """Jobs generated off the tick thread give the same images, G and theta as inline jobs;
    each simulator gets its own settings, G and theta."""
    out = {}
    for worker in (False, True):
        cfg = GenaiConfig(enabled=True, checkpoint=str(tiny_model_dir), steps=2, signs_per_job=2, worker=worker,
                          jobs_per_round=4, swap_only_recognised=False, measure_theta={"steps": 3},
                          simulators=[{"seed_offset": 0, "guidance": 7.5}, {"seed_offset": 99, "steps": 1,
                                                                            "guidance": 2.0}])
        world = _SignWorld()
        ctx = RunContext(scenario=None, world=world, run_dir=tmp_path / str(worker), seed=1)
        stage = GenaiStage(cfg, n_simulators=3)
        stage.start(ctx)
        assert stage.sim_settings(1)["steps"] == 2 and stage.sim_settings(2)["steps"] == 1
        assert stage.sim_settings(2)["guidance"] == 2.0
        ctx.board.market_round = _round(1, [1, 2])
        stage.on_tick(_snap(0.0), ctx)
        stage.wait(ctx)
        s = stage.summary()
        assert s["jobs"] == 2 and s["images"] == 4 and s["pending_jobs"] == 0
        lines = [json.loads(x) for x in (tmp_path / str(worker) / "genai" / "manifest.jsonl").read_text().splitlines()]
        assert sorted({(x["sim_index"], x["steps"]) for x in lines}) == [(1, 2), (2, 1)]
        assert lines[0]["seed"] != lines[2]["seed"]  # each simulator its own seed stream
        sc = ctx.board.generation_scores
        assert np.isnan(sc.G[0]) and sc.images.tolist() == [0, 2, 2]
        assert all(0 < t <= 1 for t in sc.theta[1:]) and np.isnan(sc.theta[0])
        # each manifest line carries its simulator's theta measured after the job (one job each)
        assert [x["theta"] for x in lines] == pytest.approx([float(sc.theta[x["sim_index"]]) for x in lines])
        out[worker] = (lines, sc)
        stage.close()
    (a, sa), (b, sb) = out[False], out[True]
    assert [x["predicted"] for x in a] == [x["predicted"] for x in b]
    np.testing.assert_allclose(sa.theta[1:], sb.theta[1:])
    np.testing.assert_array_equal(sa.G, sb.G)


def test_generated_speed_limit_labels_carry_the_value_read():
    stage = GenaiStage(GenaiConfig(enabled=True))
    assert stage._label_class("speed_limit", "speed_limit_30", True) == "speed_limit_30"
    assert stage._label_class("speed_limit", "speed_limit_30", True, 0.6) == "speed_limit"  # not sure enough
    assert stage._label_class("speed_limit", "reject", False) == "speed_limit"
    assert stage._label_class("speed_limit", "stop", False) == "speed_limit"
    assert stage._label_class("stop", "stop", True) is None


@pytest.mark.timeout(120)
def test_a_busy_worker_skips_jobs_instead_of_falling_behind(tmp_path, tiny_model_dir):
    cfg = GenaiConfig(enabled=True, checkpoint=str(tiny_model_dir), steps=2, signs_per_job=1, worker=True,
                      jobs_per_round=3, max_backlog=1, measure_theta={"enabled": False})
    ctx = RunContext(scenario=None, world=_SignWorld(), run_dir=tmp_path, seed=1)
    stage = GenaiStage(cfg, n_simulators=3)
    stage.start(ctx)
    ctx.board.market_round = _round(1, [1, 2, 1])
    stage.on_tick(_snap(0.0), ctx)  # three jobs come due at once; the worker takes one
    stage.close()  # applies the running job
    s = stage.summary()
    assert s["jobs"] == 1 and s["skipped_jobs"] == 2 and s["pending_jobs"] == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("use_lead", [True, False])
def test_a_run_ahead_of_real_time_spends_its_lead_on_the_worker(tmp_path, tiny_model_dir, use_lead):
    """Simulated time 100 s ahead of the wall clock: the tick thread waits for the busy worker
    (within that lead) instead of skipping windows; without use_real_time_lead it skips."""
    cfg = GenaiConfig(enabled=True, checkpoint=str(tiny_model_dir), steps=2, signs_per_job=1, worker=True,
                      jobs_per_round=3, max_backlog=1, measure_theta={"enabled": False},
                      use_real_time_lead=use_lead)
    ctx = RunContext(scenario=None, world=_SignWorld(), run_dir=tmp_path, seed=1)
    stage = GenaiStage(cfg, n_simulators=3)
    stage.start(ctx)
    stage.on_tick(_snap(0.0), ctx)  # the run's clocks start
    ctx.board.market_round = _round(1, [1, 2, 1])
    stage.on_tick(_snap(100.0), ctx)  # three jobs come due at once, 100 s of simulated time later
    stage.wait(ctx)
    stage.close()
    s = stage.summary()
    if use_lead:
        assert s["jobs"] == 3 and s["skipped_jobs"] == 0 and 0 < s["lead_wait_s"] < 100
    else:
        assert s["jobs"] == 1 and s["skipped_jobs"] == 2 and s["lead_wait_s"] == 0


def _speed_and_stop_job(tmp_path, tiny_model_dir, **genai):
    """One inline job on a 30 km/h speed-limit sign and a stop sign, upsampled; returns the
    world, the started stage and the manifest lines."""
    world = FakeWorld(signs=sign_table(["s", "t"], ["speed_limit", "stop"], x=[5.0, 20.0], values=[30.0, np.nan]))
    cfg = GenaiConfig(enabled=True, checkpoint=str(tiny_model_dir), steps=2, signs_per_job=2, worker=False,
                      swap_only_recognised=False, measure_theta={"enabled": False}, upsample=True,
                      upsample_steps=2, simulators=[], **genai)
    ctx = RunContext(scenario=None, world=world, run_dir=tmp_path, seed=1)
    stage = GenaiStage(cfg, n_simulators=2)
    stage.start(ctx)
    ctx.board.market_round = _round(1, [1])
    stage.on_tick(_snap(0.0), ctx)
    return world, stage, [json.loads(x) for x in (tmp_path / "genai" / "manifest.jsonl").read_text().splitlines()]


@pytest.mark.timeout(300)
def test_swapped_textures_come_from_the_super_resolution_stage(tmp_path, tiny_model_dir):
    """With genai.upsample the stage lifts each image with the upsampler (prompted with the
    sign's own speed value), scores it and swaps that image, not a resize of the base output."""
    import cv2

    from carla_mr.genai.api import generate, upsample

    world, stage, lines = _speed_and_stop_job(tmp_path, tiny_model_dir, value_candidates=1)
    assert [x["sign_id"] for x in lines] == ["s", "t"]
    assert lines[0]["prompt"].startswith("a speed limit 30 sign on a ")
    assert lines[1]["prompt"].startswith("a stop sign on a ")
    assert all(x["upsampled"] and x["px"] == 64 for x in lines)  # 16 px tiny model x 4
    prompts = [x["prompt"] for x in lines]
    low = generate(stage.models[str(tiny_model_dir)], prompts, seed=lines[0]["seed"], steps=2)
    high = upsample(stage.upsampler, low, prompts, seed=lines[0]["seed"], steps=2)
    saved = cv2.cvtColor(cv2.imread(str(tmp_path / lines[0]["image"])), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(saved, high[0])
    tex = world.sign_textures()["s"].image
    assert tex.shape == (128, 128, 3)
    np.testing.assert_array_equal(tex, cv2.resize(high[0], (128, 128), interpolation=cv2.INTER_CUBIC))
    assert not np.array_equal(tex, cv2.resize(low[0], (128, 128), interpolation=cv2.INTER_CUBIC))
    stage.close()


@pytest.mark.timeout(300)
def test_speed_limit_faces_are_the_rankers_pick_of_k(tmp_path, tiny_model_dir):
    """genai.value_candidates = 3: a speed-limit sign's face is best_of_k's pick among 3 samples
    of its value prompt (then upsampled); a sign without a value is sampled once."""
    import cv2

    from carla_mr.genai.api import upsample
    from carla_mr.genai.ranker import best_of_k, load_ranker

    world, stage, lines = _speed_and_stop_job(tmp_path, tiny_model_dir, value_candidates=3, value_confidence=1.0)
    assert [x["candidates"] for x in lines] == [3, 1]
    prompts = [x["prompt"] for x in lines]
    pick = best_of_k(stage.models[str(tiny_model_dir)], prompts, [30, None], seed=lines[0]["seed"], k=3,
                     confidence=1.0, ranker=load_ranker(), steps=2)
    assert pick.picked.tolist() == [2, 0]  # the pick is not candidate 0 here: plain sampling would differ
    high = upsample(stage.upsampler, pick.images, prompts, seed=lines[0]["seed"], steps=2)
    saved = cv2.cvtColor(cv2.imread(str(tmp_path / lines[0]["image"])), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(saved, high[0])
    stage.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("read, expected", [("speed_limit_30", 1), ("speed_limit_50", 0)])
def test_summary_reports_how_many_prompted_speed_values_were_read_back(tmp_path, tiny_model_dir, monkeypatch,
                                                                        read, expected):
    """summary()["speed_values"]: of the speed-limit images whose prompt named a value (the 30
    km/h sign; the stop sign has none), those the validator read as that value; G counts any
    value as a recognised speed limit. The manifest records the value and the report says it."""
    import carla_mr.genai.api as api
    from carla_mr.genai.stage import GenaiStage as Stage

    monkeypatch.setattr(api, "score", lambda v, images, kinds: {
        "G": 1.0, "recognised": [True, True], "predicted": [read, "stop"], "confidence": [0.95, 0.9]})
    world, stage, lines = _speed_and_stop_job(tmp_path, tiny_model_dir, value_candidates=1)
    assert [x["value"] for x in lines] == [30, None]
    s = stage.summary()
    assert s["G"] == 1.0
    v = s["speed_values"]
    assert (v["images"], v["read_as_prompted"], v["accuracy"]) == (1, expected, float(expected))
    assert v["accuracy_low"] <= v["accuracy"] <= v["accuracy_high"]
    assert s["per_simulator"]["1"]["value_images"] == 1 and s["per_simulator"]["1"]["value_read"] == expected
    section = Stage.report_section(tmp_path, s, tmp_path / "figs")
    assert f"Speed values: {expected} of 1 " in section.markdown
    stage.close()

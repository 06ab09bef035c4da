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
                      swap_only_recognised=False, theta_value=0.8)
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
    assert np.isnan(scores.G[0]) and scores.G[1:].tolist() == [G] * 4 and scores.round_id == 1
    stage.close()
    stage.close()


def test_only_recognised_images_are_swapped(tmp_path, tiny_model_dir, monkeypatch):
    import carla_mr.genai.api as api

    monkeypatch.setattr(api, "score", lambda v, images, kinds: {
        "G": 0.5, "recognised": [True, False], "predicted": list(kinds), "confidence": [0.9, 0.1]})
    cfg = GenaiConfig(enabled=True, checkpoint=str(tiny_model_dir), steps=1, signs_per_job=2)
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

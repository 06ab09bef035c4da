"""`carla-mr genai` verbs: outputs and the exit code 2 on bad input."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")

from carla_mr.cli import main  # noqa: E402


def _run(args):
    return CliRunner().invoke(main, ["genai", *args], catch_exceptions=False)


def test_generate_writes_manifest_scores_and_market_params(tiny_model_dir, tmp_path):
    out = tmp_path / "gen"
    r = _run(["generate", "--checkpoint", str(tiny_model_dir), "--prompt", "a stop sign on a blue background",
              "--prompt", "a yield sign on a red background", "--per-prompt", "2", "--steps", "2", "--theta",
              "--threads", "1", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    man = json.loads((out / "manifest.json").read_text())
    assert len(man["items"]) == 4 and len(list((out / "images").glob("*.png"))) == 4
    it = man["items"][1]
    assert it["class"] == "stop" and it["colour"] == "blue" and it["seed"] == 1 and it["subset"] == "background"
    assert set(it["verdict"]) == {"predicted", "confidence", "recognised"}
    scores = json.loads((out / "scores.json").read_text())
    assert 0 <= scores["G"] <= 1 and 0 <= scores["theta"] <= 1
    assert scores["frechet"] is None  # 4 samples are far too few for the feature size: not reported
    assert scores["G_low"] <= scores["G"] <= scores["G_high"] and scores["diversity"] >= 0
    r = _run(["market-params", "--run", str(out), "--json"])
    assert r.exit_code == 0
    p = json.loads(r.output.strip().splitlines()[-1])
    assert p["G"] == pytest.approx(scores["G"]) and 0 < p["theta"] <= 1


def test_bad_input_exits_2(tiny_model_dir, tmp_path):
    r = _run(["generate", "--checkpoint", str(tiny_model_dir), "--prompt", "a unicorn sign", "--out", str(tmp_path / "a")])
    assert r.exit_code == 2 and "no known sign class" in r.output
    r = _run(["generate", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = _run(["generate", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "model_index.json" in r.output
    (tmp_path / "empty").mkdir()
    r = _run(["dreambooth", "--base", str(tiny_model_dir), "--instance-dir", str(tmp_path / "empty"), "--class", "stop",
              "--out", str(tmp_path / "d")])
    assert r.exit_code == 2 and "holds no images" in r.output
    r = _run(["dreambooth", "--base", str(tiny_model_dir), "--instance-dir", str(tmp_path / "empty"), "--class", "zebra",
              "--out", str(tmp_path / "e")])
    assert r.exit_code == 2 and "unknown sign class" in r.output
    r = _run(["generate", "--checkpoint", str(tiny_model_dir), "--signs", "stop,zebra", "--out", str(tmp_path / "f")])
    assert r.exit_code == 2 and "zebra" in r.output
    r = _run(["market-params", "--run", str(tmp_path / "nope")])
    assert r.exit_code == 2


def test_run_from_config_with_the_committed_models(tmp_path):
    from carla_mr.genai.api import run_from_config
    from carla_mr.config.genai import GenaiConfig

    cfg = GenaiConfig(enabled=True, steps=4, theta=False,
                      preferences={"signs": ["stop", "parking"], "colours": ["blue"], "contexts": []})
    res = run_from_config(cfg, tmp_path / "g", seed=3)
    assert res["n"] == 2 and res["market"] is None and 0 <= res["G"] <= 1
    man = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert [it["prompt"] for it in man["items"]] == ["a stop sign on a blue background",
                                                     "a parking sign on a blue background"]
    assert man["steps"] == 4 and man["guidance"] == 7.5


def test_bad_input_exits_2_for_training_verbs(tiny_model_dir, tmp_path):
    inst = tmp_path / "mixed"
    inst.mkdir()
    cv2.imwrite(str(inst / "a.png"), np.zeros((24, 24, 3), np.uint8))
    cv2.imwrite(str(inst / "b.png"), np.zeros((16, 16, 3), np.uint8))
    r = _run(["dreambooth", "--base", str(tiny_model_dir), "--instance-dir", str(inst), "--class", "stop",
              "--out", str(tmp_path / "a")])
    assert r.exit_code == 2 and "mixed sizes" in r.output
    same = tmp_path / "same"
    same.mkdir()
    cv2.imwrite(str(same / "a.png"), np.zeros((24, 24, 3), np.uint8))
    notmodel = tmp_path / "notmodel"
    (notmodel / "unet").mkdir(parents=True)
    (notmodel / "model_index.json").write_text("{}")
    r = _run(["dreambooth", "--base", str(notmodel), "--instance-dir", str(same), "--class", "stop",
              "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "unet has no config.json" in r.output and "--base" in r.output
    r = _run(["dreambooth", "--base", str(tmp_path / "same"), "--instance-dir", str(same), "--class", "stop",
              "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "not a diffusers model directory" in r.output
    r = _run(["dreambooth", "--base", str(tiny_model_dir), "--instance-dir", str(same), "--class", "stop",
              "--device", "tpu", "--out", str(tmp_path / "d")])
    assert r.exit_code == 2 and "unknown device" in r.output
    r = _run(["train-base", "--init", str(notmodel), "--steps", "1", "--out", str(tmp_path / "e")])
    assert r.exit_code == 2 and "--init" in r.output and "unet has no config.json" in r.output
    assert not (tmp_path / "b").exists() and not (tmp_path / "e").exists()  # nothing made for bad input
    r = _run(["train-upsampler", "--base", str(notmodel), "--steps", "1", "--out", str(tmp_path / "f")])
    assert r.exit_code == 2
    r = _run(["train-upsampler", "--init", str(notmodel), "--steps", "1", "--out", str(tmp_path / "g")])
    assert r.exit_code == 2 and "--init" in r.output and "not an upsampler directory" in r.output
    r = _run(["train-upsampler", "--value-swap", "1.5", "--steps", "1", "--out", str(tmp_path / "h")])
    assert r.exit_code == 2 and "--value-swap" in r.output
    assert not (tmp_path / "g").exists() and not (tmp_path / "h").exists()


def test_evaluate_values_with_the_committed_upsampler_and_bad_input(tmp_path):
    out = tmp_path / "ev"
    r = _run(["evaluate", "--values", "--upsampler", "default", "--per-prompt", "1", "--steps", "2",
              "--threads", "1", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output.strip().splitlines()[-1])
    assert res["n"] == 9 and res["px"] == 128 and res["upsampled"] is True
    assert 0 <= res["value_accuracy_low"] <= res["value_accuracy"] <= res["value_accuracy_high"] <= 1
    assert json.loads((out / "evaluate.json").read_text())["value_accuracy"] == res["value_accuracy"]
    r = _run(["evaluate", "--per-prompt", "0", "--out", str(tmp_path / "bad"), "--json"])
    assert r.exit_code == 2 and "--per-prompt" in r.output

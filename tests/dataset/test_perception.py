"""Perception in the loop: models under test, the accuracy table, the CLI on recordings and scenarios."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from carla_mr.cli import main
from carla_mr.config import scenario_from_dict
from carla_mr.config.dataset import PerceptionConfig
from carla_mr.dataset.models import DEFAULT_CLASSES, TemplateMatcher, load_model
from carla_mr.dataset.perception import Evaluator, PerceptionStage, crop
from carla_mr.dataset.recorder import record
from carla_mr.testing.fake_world import KinematicWorld, start_before_sign
from carla_mr.errors import InputError
from carla_mr.stages import RunContext
from carla_mr.world.sign_geometry import original_face

SPEC = {"width": 320, "height": 240, "fov_deg": 60.0}


def on_grey(face):
    a = face[:, :, 3:4] / 255.0
    return (face[:, :, :3] * a + 110 * (1 - a)).astype(np.uint8)


def test_template_matcher_recognises_clean_faces():
    tm = TemplateMatcher()
    crops, truth = [], []
    for c in DEFAULT_CLASSES:
        kind, _, v = c.rpartition("_") if c[-1].isdigit() else (c, "", "")
        face = original_face(kind, float(v) if v else None, 64)
        img = np.full((80, 80, 3), 110, np.uint8)
        img[8:72, 8:72] = on_grey(face)
        crops.append(img)
        truth.append(c)
    assert tm.predict(crops) == truth


def test_crop_grows_by_margin_and_clips():
    img = np.zeros((100, 100, 3), np.uint8)
    assert crop(img, [10, 10, 30, 30], 0.5).shape == (40, 40, 3)
    assert crop(img, [0, 0, 10, 10], 0.5).shape == (15, 15, 3)


def _labels(kind="speed_limit", cls="speed_limit_30", source="original", distance=12.0, visible=1.0):
    return {"id": "s", "kind": kind, "class": cls, "value": 30.0, "box": [10, 10, 40, 40], "visible": visible,
            "distance": distance, "source": source, "ref": None}


class _Fixed:
    """A crop classifier that gives scripted answers, one per crop."""

    name = "fixed"

    def __init__(self, answers):
        self.answers = list(answers)

    def predict(self, crops):
        return [self.answers.pop(0) for _ in crops]


def test_evaluator_groups_and_correctness_rule():
    ev = Evaluator(PerceptionConfig(), _Fixed(["speed_limit", "speed_limit_30", "stop", "speed_limit_60"]))
    img = np.zeros((60, 60, 3), np.uint8)
    ev.add_frame(img, [_labels(source="original", distance=5), _labels(source="generated", distance=15)], frame=0,
                 camera="c")
    ev.add_frame(img, [_labels(source="generated", distance=50, visible=0.3),
                       _labels(source="original", distance=90, visible=0.8)], frame=1, camera="c")
    # Too small / traffic light: skipped.
    ev.add_frame(img, [dict(_labels(), box=[0, 0, 3, 3]), _labels(kind="traffic_light", cls="traffic_light")],
                 frame=2, camera="c")
    rep = ev.report()
    assert rep["overall"] == {"n": 4, "accuracy": 0.5}
    by = {(r["group"], r["bin"]): (r["n"], r["accuracy"]) for r in rep["table"]}
    assert by[("source", "original")] == (2, 0.5) and by[("source", "generated")] == (2, 0.5)
    assert by[("distance", "0-10 m")] == (1, 1.0) and by[("distance", ">=80 m")] == (1, 0.0)
    assert by[("visibility", "0.25-0.5")] == (1, 0.0) and by[("visibility", "1 (unoccluded)")] == (2, 1.0)


def test_dotted_path_models(tmp_path, monkeypatch):
    (tmp_path / "mut_models.py").write_text(textwrap.dedent("""
        def always_speed(crops):
            return ["speed_limit"] * len(crops)
        class ByIndex:
            class_names = ["stop", "speed_limit"]
            def __call__(self, crops):
                return [1] * len(crops)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    img = np.zeros((60, 60, 3), np.uint8)
    for spec in ("mut_models:always_speed", "mut_models:ByIndex"):
        m = load_model(spec)
        assert m.predict([img, img]) == ["speed_limit", "speed_limit"]
    with pytest.raises(InputError, match="perception.model"):
        load_model("mut_models:nope")
    with pytest.raises(InputError, match="perception.model"):
        load_model("no_such_module_xyz:f")


def test_torch_module_model(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    (tmp_path / "mut_torch.py").write_text(textwrap.dedent("""
        import torch
        class Net(torch.nn.Module):
            class_names = ["stop", "speed_limit"]
            input_size = 16
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(3, 2)
            def forward(self, x):
                assert x.shape[1:] == (3, 16, 16) and 0 <= float(x.min()) and float(x.max()) <= 1
                return self.lin(x.mean(dim=(2, 3)))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import mut_torch

    net = mut_torch.Net()
    with torch.no_grad():
        net.lin.weight.zero_()
        net.lin.bias.copy_(torch.tensor([0.0, 1.0]))
    from safetensors.torch import save_file

    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    m = load_model("mut_torch:Net", str(tmp_path / "w.safetensors"))
    assert m.predict([np.zeros((30, 20, 3), np.uint8)]) == ["speed_limit"]


def test_eval_cli_on_a_recording(tmp_path, town01, town01_map, town01_signs):
    sc = scenario_from_dict({"map": str(town01), "seed": 2, "recorder": {"enabled": True, "camera": SPEC,
                                                                          "swap_share": 0.5,
                                                                          "texture_source": "procedural"}})
    ds = tmp_path / "ds"
    world = KinematicWorld(town01_map, town01_signs, seed=2, start=start_before_sign(town01_map, town01_signs,
                                                                                      back_m=30))
    record(sc, ds, world=world, ticks=40)
    res = CliRunner().invoke(main, ["dataset", "eval", str(ds), "--model", "template", "--out", str(tmp_path / "ev"),
                                    "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    groups = {r["group"] for r in out["table"]}
    assert {"source", "distance", "visibility"} <= groups and out["n"] > 0
    assert (tmp_path / "ev" / "accuracy.png").stat().st_size > 1000
    rep = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert rep["model"] == "template" and rep["overall"]["n"] == out["n"]
    # Count the eligible labels independently: every one was scored exactly once.
    metas = [json.loads(p.read_text()) for p in (ds / "meta" / "cam0").glob("*.json")]
    eligible = sum(1 for m in metas for lab in m["labels"] if lab["kind"] != "traffic_light"
                   and min(lab["box"][2] - lab["box"][0], lab["box"][3] - lab["box"][1]) >= 8)
    assert rep["overall"]["n"] == eligible
    bad = CliRunner().invoke(main, ["dataset", "eval", str(tmp_path), "--out", str(tmp_path / "ev2")])
    assert bad.exit_code == 2 and "manifest.json" in bad.stderr


def test_perception_stage_in_the_loop(tmp_path, town01, town01_map, town01_signs):
    sc = scenario_from_dict({"map": str(town01), "seed": 1,
                             "perception": {"enabled": True, "model": "template", "camera": SPEC, "min_box_px": 4}})
    world = KinematicWorld(town01_map, town01_signs, seed=1, start=start_before_sign(town01_map, town01_signs,
                                                                                      back_m=30))
    stage = PerceptionStage(sc.perception)
    ctx = RunContext(scenario=sc, world=world, run_dir=tmp_path, seed=1)
    snap = world.reset()
    stage.start(ctx)
    for t in range(30):
        if t:
            snap = world.tick()
        stage.on_tick(snap, ctx)
    stage.close()
    stage.close()  # idempotent
    s = stage.summary()
    assert s["n"] > 0 and "original" in s["accuracy_by_source"]
    assert (tmp_path / "perception" / "report.json").is_file() and (tmp_path / "perception" / "crops.csv").is_file()


def test_perception_reuses_recorder_frames(tmp_path, town01, town01_map, town01_signs):
    from carla_mr.dataset.recorder import RecorderStage

    sc = scenario_from_dict({"map": str(town01), "seed": 1,
                             "recorder": {"enabled": True, "camera": SPEC, "every_k": 2},
                             "perception": {"enabled": True, "model": "template", "every_k": 2, "min_box_px": 4}})
    world = KinematicWorld(town01_map, town01_signs, seed=1, start=start_before_sign(town01_map, town01_signs,
                                                                                      back_m=30))
    reads = []
    real = world.read_camera
    world.read_camera = lambda name: (reads.append(name), real(name))[1]
    stages = [RecorderStage(sc.recorder), PerceptionStage(sc.perception)]
    ctx = RunContext(scenario=sc, world=world, run_dir=tmp_path, seed=1)
    for st in stages:
        st.start(ctx)
    snap = world.reset()
    for t in range(20):
        if t:
            snap = world.tick()
        for st in stages:
            st.on_tick(snap, ctx)
    for st in reversed(stages):
        st.close()
    assert reads == ["cam0"] * 10  # perception rendered nothing itself
    assert stages[1].summary()["n"] > 0
    assert (tmp_path / "dataset" / "annotations.json").is_file()


def test_default_model_loads_a_genai_validator_checkpoint(tmp_path):
    pytest.importorskip("torch")
    from carla_mr.genai.signs import SIGN_CLASSES
    from carla_mr.genai.validator import build_validator

    v = build_validator("small", SIGN_CLASSES)
    v.save(tmp_path / "val")
    m = load_model("default", str(tmp_path / "val"))
    assert m.name == "validator:val"
    preds = m.predict([np.zeros((20, 30, 3), np.uint8), np.full((50, 50, 3), 200, np.uint8)])
    assert len(preds) == 2 and set(preds) <= set(SIGN_CLASSES)


def test_a_value_answer_on_a_label_without_value_is_correct_a_wrong_value_is_not():
    """A generated face whose value the validator could not read is labelled the generic
    ``speed_limit``: any speed-limit value is a right answer there; on ``speed_limit_30`` only 30."""
    ev = Evaluator(PerceptionConfig(), _Fixed(["speed_limit_50", "speed_limit_50", "yield", "speed_limit_300x"]))
    img = np.zeros((60, 60, 3), np.uint8)
    ev.add_frame(img, [_labels(cls="speed_limit", source="generated"), _labels(cls="speed_limit_30"),
                       _labels(cls="speed_limit", source="generated"), _labels(cls="speed_limit")], frame=0, camera="c")
    assert [r["correct"] for r in ev.records] == [True, False, False, False]

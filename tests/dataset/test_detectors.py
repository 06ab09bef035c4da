"""Issue 17 item 5: the detector protocol, its adapters, and COCOeval scoring by group."""

from __future__ import annotations

import json
import textwrap

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from carla_mr.config.dataset import PerceptionConfig
from carla_mr.dataset.detection_eval import DetectionEvaluator
from carla_mr.dataset.detectors import (Detections, TorchvisionDetector, UltralyticsDetector, load_detector,
                                        wrap_detector)

torch = pytest.importorskip("torch")
pytest.importorskip("pycocotools")


class TinyTorchvisionModel(torch.nn.Module):
    """Follows torchvision's detection interface: list of (3, H, W) in [0, 1] -> list[dict]."""

    class_names = ["__background__", "stop", "speed_limit_30"]

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.seen = []

    def forward(self, images):
        out = []
        for im in images:
            self.seen.append((tuple(im.shape), float(im.min()), float(im.max())))
            out.append({"boxes": torch.tensor([[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 5.0, 5.0]]) * self.w,
                        "labels": torch.tensor([2, 1]), "scores": torch.tensor([0.9, 0.05])})
        return out


class _Boxes:
    def __init__(self, xyxy, cls, conf):
        self.xyxy, self.cls, self.conf = xyxy, cls, conf


class _Result:
    def __init__(self, boxes):
        self.boxes = boxes


class TinyYolo:
    """Follows Ultralytics' interface: model(list of BGR arrays, verbose=False) -> results."""

    names = {0: "stop", 1: "yield"}

    def __init__(self):
        self.calls = []

    def __call__(self, images, verbose=True):
        self.calls.append((len(images), verbose, images[0][0, 0].tolist()))
        return [_Result(_Boxes(torch.tensor([[1.0, 2.0, 11.0, 12.0]]), torch.tensor([1.0]), torch.tensor([0.7])))
                for _ in images]


def test_torchvision_adapter_maps_labels_and_filters_scores():
    m = TinyTorchvisionModel()
    det = TorchvisionDetector(m, m.class_names, min_score=0.1)
    img = np.zeros((48, 64, 3), np.uint8)
    img[0, 0] = 255
    (d,) = det.detect([img])
    assert m.seen == [((3, 48, 64), 0.0, 1.0)]
    assert d.classes == ["speed_limit_30"] and d.boxes.tolist() == [[10, 20, 30, 40]] and d.scores.tolist() == pytest.approx([0.9])
    assert isinstance(wrap_detector(m, "m"), TorchvisionDetector)


def test_ultralytics_adapter_gets_bgr_and_reads_boxes():
    y = TinyYolo()
    det = wrap_detector(y, "yolo")
    assert isinstance(det, UltralyticsDetector)
    img = np.zeros((8, 8, 3), np.uint8)
    img[0, 0] = (255, 0, 0)  # red in RGB
    (d,) = det.detect([img])
    assert y.calls == [(1, False, [0, 0, 255])]  # ... is BGR for Ultralytics, quiet
    assert d.classes == ["yield"] and d.boxes.tolist() == [[1, 2, 11, 12]] and d.scores.tolist() == pytest.approx([0.7])


def test_load_detector_from_dotted_path_with_checkpoint(tmp_path, monkeypatch):
    (tmp_path / "mut_det.py").write_text(textwrap.dedent("""
        from tests.dataset.test_detectors import TinyTorchvisionModel as Model
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    from safetensors.torch import save_file

    save_file({"w": torch.full((1,), 2.0)}, str(tmp_path / "w.safetensors"))
    det = load_detector("mut_det:Model", str(tmp_path / "w.safetensors"))
    (d,) = det.detect([np.zeros((10, 10, 3), np.uint8)])
    assert d.boxes[0].tolist() == [20, 40, 60, 80]  # the checkpoint's weight was loaded


def _lab(box, source="original", distance=10.0, visible=1.0, cls="stop", kind="stop"):
    return {"id": "s", "kind": kind, "value": None, "class": cls, "box": box, "visible": visible,
            "distance": distance, "source": source, "ref": None}


class Scripted:
    name = "scripted"

    def __init__(self, per_frame):
        self.per_frame = list(per_frame)

    def detect(self, images):
        return [self.per_frame.pop(0) for _ in images]


def _run(frames, cfg=None):
    cfg = cfg or PerceptionConfig(min_box_px=4, distance_bands_m=[20.0], visibility_bands=[0.5])
    ev = DetectionEvaluator(cfg, Scripted([f[1] for f in frames]))
    for i, (labels, _det, weather) in enumerate(frames):
        ev.add_frame(np.zeros((100, 100, 3), np.uint8), labels, frame=i, camera="cam0", weather=weather)
    return ev.report()


def _row(rep, group, name):
    return next(r for r in rep["table"] if r["group"] == group and r["bin"] == name)


def test_perfect_detections_score_one_everywhere():
    a, b = _lab([10, 10, 30, 30]), _lab([50, 50, 70, 80], source="generated", distance=30.0, visible=0.3)
    frames = [([a, b], Detections([a["box"], b["box"]], ["stop", "stop"], [0.9, 0.8]), "clear"),
              ([a], Detections([a["box"]], ["stop"], [0.9]), "fog")]
    rep = _run(frames)
    for r in rep["table"]:
        assert r["mAP"] == pytest.approx(1.0) and r["recall50"] == pytest.approx(1.0), r
    assert _row(rep, "overall", "all")["n_gt"] == 3 and _row(rep, "weather", "fog")["n_gt"] == 1
    assert rep["false_positives_per_image"] == 0


def test_groups_separate_hits_misses_and_false_positives():
    orig, gen = _lab([10, 10, 30, 30]), _lab([50, 50, 70, 70], source="generated")
    tiny = _lab([80, 80, 82, 82])  # below min_box_px: ignored, a detection on it is not a false positive
    dets = Detections([orig["box"], tiny["box"], [0, 60, 20, 80]], ["stop", "stop", "stop"], [0.9, 0.9, 0.8])
    rep = _run([([orig, gen, tiny], dets, "clear")])
    assert _row(rep, "source", "original")["recall50"] == 1.0 and _row(rep, "source", "generated")["recall50"] == 0.0
    assert _row(rep, "source", "generated")["mAP"] == 0.0
    assert 0 < _row(rep, "overall", "all")["mAP"] < 1  # one of two found, and a false positive ranks in between
    assert _row(rep, "overall", "all")["n_gt"] == 2
    assert rep["false_positives_per_image"] == 1.0
    # the wrong class is a miss (and a false positive)
    rep2 = _run([([orig], Detections([orig["box"]], ["yield"], [0.9]), "clear")])
    assert _row(rep2, "overall", "all")["recall50"] == 0.0


def test_kind_level_detector_is_scored_on_kinds():
    lab = _lab([10, 10, 30, 30], cls="speed_limit_30", kind="speed_limit")
    rep = _run([([lab], Detections([lab["box"]], ["speed_limit"], [0.9]), "clear")])
    assert _row(rep, "overall", "all")["mAP"] == pytest.approx(1.0)


def test_label_without_value_is_ignored_by_a_value_level_detector():
    """A generated face labelled plain speed_limit (no legible value): a value-level detector is
    neither credited nor charged on it, whatever value it names there."""
    known = _lab([10, 10, 30, 30], cls="speed_limit_30", kind="speed_limit")
    unknown = _lab([50, 50, 70, 70], cls="speed_limit", kind="speed_limit", source="generated")
    dets = Detections([known["box"], unknown["box"]], ["speed_limit_30", "speed_limit_80"], [0.9, 0.95])
    rep = _run([([known, unknown], dets, "clear")])
    overall = _row(rep, "overall", "all")
    assert overall["n_gt"] == 1
    assert overall["mAP"] == pytest.approx(1.0)  # the speed_limit_80 box on the unknown face is no false positive
    assert not any(r["group"] == "source" and r["bin"] == "generated" for r in rep["table"])
    # a kind-level detector still scores the same label as a hit
    rep2 = _run([([unknown], Detections([unknown["box"]], ["speed_limit"], [0.9]), "clear")])
    assert _row(rep2, "overall", "all")["n_gt"] == 1 and _row(rep2, "overall", "all")["mAP"] == pytest.approx(1.0)


def test_no_detections_at_all_scores_zero():
    rep = _run([([_lab([10, 10, 30, 30])], Detections(), "clear")])
    assert _row(rep, "overall", "all")["recall50"] == 0.0 and rep["detections"] == 0


class MagentaBlobs:
    """A real (if simple) detector: connected magenta regions are speed limit signs."""

    name = "magenta"

    def detect(self, images):
        out = []
        for im in images:
            mask = ((im[:, :, 0] > 200) & (im[:, :, 1] < 60) & (im[:, :, 2] > 200)).astype(np.uint8)
            n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
            boxes = [[x, y, x + w, y + h] for x, y, w, h, a in stats[1:] if a >= 4]
            out.append(Detections(boxes, ["speed_limit"] * len(boxes), [1.0] * len(boxes)))
        return out


def test_eval_cli_scores_a_detector_on_a_recording(tmp_path, town01, town01_map, town01_signs, monkeypatch):
    """Magenta textures on half the signs: the blob detector finds generated ones, not originals."""
    from carla_mr.config import scenario_from_dict
    from carla_mr.dataset.recorder import record
    from carla_mr.testing.fake_world import KinematicWorld, start_before_sign

    tex = tmp_path / "tex" / "speed_limit"
    tex.mkdir(parents=True)
    img = np.zeros((64, 64, 3), np.uint8)
    img[:] = (255, 0, 255)
    cv2.imwrite(str(tex / "m.png"), img)
    sc = scenario_from_dict({"map": str(town01), "seed": 5, "duration_s": 3.0, "recorder": {
        "enabled": True, "camera": {"width": 320, "height": 240, "fov_deg": 60.0}, "swap_share": 1.0,
        "texture_dir": str(tmp_path / "tex"), "min_box_px": 2}})
    ds = tmp_path / "ds"
    record(sc, ds, world=KinematicWorld(town01_map, town01_signs, seed=5,
                                        start=start_before_sign(town01_map, town01_signs)), ticks=30)
    (tmp_path / "mut_blob.py").write_text("from tests.dataset.test_detectors import MagentaBlobs\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    res = CliRunner().invoke(__import__("carla_mr.cli", fromlist=["main"]).main,
                             ["dataset", "eval", str(ds), "--model", "template", "--detector", "mut_blob:MagentaBlobs",
                              "--no-plots", "--json", "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    d = out["detection"]
    assert d["n_gt"] > 0 and d["recall50_by_source"]["generated"] > 0.8, d
    assert (tmp_path / "ev" / "detection.json").is_file() and (tmp_path / "ev" / "detection.csv").is_file()

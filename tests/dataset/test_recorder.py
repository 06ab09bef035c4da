"""The recorder: COCO/YOLO exports that match the pixels, resume after a kill, clean stops."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from carla_mr.config import scenario_from_dict
from carla_mr.config.dataset import RecorderConfig
from carla_mr.dataset.recorder import record
from carla_mr.testing.fake_world import KinematicWorld, start_before_sign
from carla_mr.errors import InputError, RunError
from carla_mr.config.camera import CameraSpec
from carla_mr.world.render import carla_matrix

SPEC = {"width": 320, "height": 240, "fov_deg": 60.0}


def scenario(town01, **rec):
    return scenario_from_dict({"map": str(town01), "seed": 5, "duration_s": 3.0,
                               "recorder": {"enabled": True, "camera": SPEC, **rec}})


def world(town01_map, town01_signs, seed=5):
    return KinematicWorld(town01_map, town01_signs, seed=seed, start=start_before_sign(town01_map, town01_signs))


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _magenta(rgb: np.ndarray) -> np.ndarray:
    """Magenta under the scene's light (OpenGL camera) or exact (CPU camera)."""
    im = rgb.astype(int)
    return (im[:, :, 0] > 120) & (im[:, :, 2] > 120) & (im[:, :, 1] < 60)


@pytest.fixture
def magenta_dir(tmp_path):
    d = tmp_path / "tex" / "speed_limit"
    d.mkdir(parents=True)
    img = np.zeros((64, 64, 3), np.uint8)
    img[:] = (255, 0, 255)  # BGR magenta == RGB magenta
    cv2.imwrite(str(d / "magenta.png"), img)
    return tmp_path / "tex"


def test_record_exports_match_pixels_and_poses(tmp_path, town01, town01_map, town01_signs, magenta_dir):
    pycoco = pytest.importorskip("pycocotools.coco")
    sc = scenario(town01, swap_share=1.0, texture_dir=str(magenta_dir), min_box_px=2)
    out = tmp_path / "ds"
    summary = record(sc, out, world=world(town01_map, town01_signs), ticks=50)
    assert summary["frames_recorded"] == 50 and summary["complete"]
    coco = pycoco.COCO(str(out / "annotations.json"))
    assert len(coco.getImgIds()) == 50
    n_yolo = sum(len(p.read_text().splitlines()) for p in (out / "labels" / "cam0").glob("*.txt"))
    assert len(coco.getAnnIds()) == n_yolo == summary["labels_exported"] > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 5 and manifest["recorder"]["swap_share"] == 1.0
    assert all(v["ref"] == "speed_limit/magenta.png" for v in manifest["swaps"].values())
    spec = CameraSpec(**SPEC)
    checked = 0
    for img_info in coco.loadImgs(coco.getImgIds()):
        meta = json.loads((out / "meta" / "cam0" / f"{img_info['frame']:06d}.json").read_text())
        np.testing.assert_allclose(meta["intrinsics"], spec.intrinsics())
        e = meta["ego"]
        pose = carla_matrix(e["x"], e["y"], e["z"], 0, e["yaw"], 0) @ np.array(meta["extrinsics"]["cam_to_vehicle"])
        np.testing.assert_allclose(meta["cam_to_world"], pose, atol=1e-9)
        rgb = cv2.imread(str(out / img_info["file_name"]))[:, :, ::-1]
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img_info["id"]])):
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= 320 and y + h <= 240
            if ann["source"] == "generated" and min(w, h) >= 6 and ann["visible"] == 1.0:
                sub = rgb[y:y + h, x:x + w]
                magenta = _magenta(sub)
                # The generated texture is on the sign: the disc fills ~pi/4 of its box.
                assert magenta.mean() > 0.5, ann
                # ... and exactly inside the box: no magenta pixel in a 1-px ring outside it.
                pad = np.zeros((242, 322, 3), np.uint8)
                pad[1:-1, 1:-1] = rgb
                ring = pad[y:y + h + 2, x:x + w + 2].copy()
                ring[1:-1, 1:-1] = 0
                assert not _magenta(ring).any(), ann
                # The mask is the visible pixels: inside the box, as many as the area.
                m = coco.annToMask(ann)
                assert m.sum() == ann["area"] and m[y:y + h, x:x + w].sum() == m.sum(), ann
                checked += 1
    assert checked >= 5
    # YOLO agrees with COCO for one frame.
    first = coco.loadImgs(coco.getImgIds())[-1]
    lines = (out / "labels" / "cam0" / f"{first['frame']:06d}.txt").read_text().split("\n")[:-1]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[first["id"]]))
    for line, ann in zip(lines, anns):
        c, cx, cy, w, h = line.split()
        assert int(c) + 1 == ann["category_id"]
        assert float(w) * 320 == pytest.approx(ann["bbox"][2], abs=1e-3)


def test_every_k_and_min_box(tmp_path, town01, town01_map, town01_signs):
    sc = scenario(town01, every_k=3, min_box_px=10_000, warmup_s=0.1)
    out = tmp_path / "ds"
    s = record(sc, out, world=world(town01_map, town01_signs), ticks=20)
    frames = sorted(int(p.stem) for p in (out / "meta" / "cam0").glob("*.json"))
    assert frames == list(range(2, 20, 3)) and s["labels_exported"] == 0
    metas = [json.loads(p.read_text()) for p in (out / "meta" / "cam0").glob("*.json")]
    assert any(m["labels"] for m in metas) and all(not lab["exported"] for m in metas for lab in m["labels"])


CHILD = textwrap.dedent("""
    import sys, carla
    from carla_mr.config import scenario_from_dict
    from carla_mr.dataset.recorder import record
    from carla_mr.testing.fake_world import KinematicWorld, start_before_sign
    from carla_mr.world.maps import landmarks_to_signs
    town, out = sys.argv[1], sys.argv[2]
    m = carla.Map("Town01", open(town).read()); s = landmarks_to_signs(m)
    sc = scenario_from_dict({{"map": town, "seed": 5, "duration_s": 3.0, "recorder": {{"enabled": True,
        "camera": {spec!r}, "swap_share": 0.5, "max_frames": 60, "durable_every": 7,
        "texture_source": "procedural"}}}})
    record(sc, out, world=KinematicWorld(m, s, seed=5, start=start_before_sign(m, s)), ticks=1000)
""")


def test_killed_then_resumed_equals_uninterrupted(tmp_path, town01, town01_map, town01_signs):
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(spec=SPEC))
    killed = tmp_path / "killed"
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.Popen([sys.executable, str(script), str(town01), str(killed)], env=env)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            d = killed / "meta" / "cam0"
            if d.is_dir() and len(list(d.glob("*.json"))) >= 12:
                break
            if proc.poll() is not None:
                pytest.fail("the child finished before it could be killed")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    n_before = len(list((killed / "meta" / "cam0").glob("*.json")))
    assert 12 <= n_before < 60
    assert not (killed / "annotations.json").exists()
    sc = scenario(town01, swap_share=0.5, max_frames=60, durable_every=7, texture_source="procedural")
    s = record(sc, killed, world=world(town01_map, town01_signs), ticks=1000)
    assert s["resume_from_frame"] >= 12 and s["frames_recorded"] == 60 - s["frames_resumed_over"]
    whole = tmp_path / "whole"
    record(sc, whole, world=world(town01_map, town01_signs), ticks=1000)
    a, b = tree(killed), tree(whole)
    assert sorted(a) == sorted(b)  # no temp file of the killed write is left either
    assert all(a[k] == b[k] for k in b), [k for k in b if a[k] != b[k]][:5]


@pytest.mark.parametrize("err", [OSError(errno.ENOSPC, "No space left on device"),
                                 PermissionError(errno.EACCES, "Permission denied")])
def test_disk_full_stops_cleanly_then_resumes(tmp_path, town01, town01_map, town01_signs, monkeypatch, err):
    import carla_mr.dataset.recorder as recmod

    real = recmod.atomic_write
    calls = {"n": 0}

    def flaky(path, writer, **kw):
        calls["n"] += 1
        if Path(path).name == "000009.txt" and calls.setdefault("hit", 0) == 0:  # the 10th frame's YOLO file
            calls["hit"] = 1
            raise err
        return real(path, writer, **kw)

    monkeypatch.setattr(recmod, "atomic_write", flaky)
    sc = scenario(town01, max_frames=15)
    out = tmp_path / "ds"
    with pytest.raises(RunError, match=f"{err.strerror}.*9 frame"):
        record(sc, out, world=world(town01_map, town01_signs), ticks=100)
    metas = sorted((out / "meta" / "cam0").glob("*.json"))
    assert [int(p.stem) for p in metas] == list(range(9))
    for p in metas:  # what was saved is intact
        m = json.loads(p.read_text())
        assert (out / m["image"]).stat().st_size == m["image_bytes"]
        assert cv2.imread(str(out / m["image"])) is not None
    monkeypatch.setattr(recmod, "atomic_write", real)
    s = record(sc, out, world=world(town01_map, town01_signs), ticks=100)
    assert s["resume_from_frame"] == 9 and s["frames_recorded"] == 6
    whole = tmp_path / "whole"
    record(sc, whole, world=world(town01_map, town01_signs), ticks=100)
    assert tree(out) == tree(whole)


def test_other_config_in_out_dir_is_input_error(tmp_path, town01, town01_map, town01_signs):
    out = tmp_path / "ds"
    record(scenario(town01, max_frames=2), out, world=world(town01_map, town01_signs), ticks=5)
    with pytest.raises(InputError, match="--out"):
        record(scenario(town01, max_frames=2, every_k=2), out, world=world(town01_map, town01_signs), ticks=5)


def test_bad_texture_dir_is_input_error(tmp_path, town01, town01_map, town01_signs):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="texture_dir"):
        record(scenario(town01, swap_share=0.5, texture_dir=str(tmp_path / "empty")), tmp_path / "ds",
               world=world(town01_map, town01_signs), ticks=2)


def test_recorder_config_validation():
    with pytest.raises(Exception):
        RecorderConfig(every_k=0)
    with pytest.raises(Exception):
        RecorderConfig(swap_share=1.5)
    assert RecorderConfig().enabled is False


def test_extending_a_recording_equals_recording_it_whole(tmp_path, town01, town01_map, town01_signs):
    ext, whole = tmp_path / "ext", tmp_path / "whole"
    record(scenario(town01, max_frames=6, every_k=2), ext, world=world(town01_map, town01_signs))
    s = record(scenario(town01, max_frames=10, every_k=2), ext, world=world(town01_map, town01_signs))
    assert s["resume_from_frame"] == 12 and s["frames_recorded"] == 4
    record(scenario(town01, max_frames=10, every_k=2), whole, world=world(town01_map, town01_signs))
    assert tree(ext) == tree(whole)
    assert json.loads((whole / "progress.json").read_text()) == {"frames": 10, "last_frame": 18, "complete": True}


def test_labels_from_a_minimal_backend_are_completed():
    from carla_mr.dataset.recorder import normalise_label

    lab = normalise_label({"id": "7", "kind": "speed_limit", "value": 50.0, "box": [1, 2, 11, 22], "visible": 0.5,
                           "distance": 9.0, "source": "original", "ref": None})
    assert lab["class"] == "speed_limit_50" and lab["visible_box"] == [1, 2, 11, 22] and lab["pixels"] == 100
    assert normalise_label(dict(lab, value=float("nan"), kind="stop", **{"class": "stop"}))["value"] is None
    # Float boxes (the CARLA backend's projected boxes) cover their pixels.
    f = normalise_label(dict(lab, box=[1.2, 2.7, 10.1, 21.0], visible_box=[3.5, 4.0, 9.9, 20.2]))
    assert f["box"] == [1, 2, 11, 21] and f["visible_box"] == [3, 4, 10, 21]


def test_missed_camera_frames_are_skipped_and_counted(tmp_path, town01, town01_map, town01_signs):
    """A CARLA camera attached this tick delivers from the next one: that tick is skipped, not fatal."""
    from carla_mr.world.base import FrameMissed

    w = world(town01_map, town01_signs)
    real = w.read_camera
    calls = {"n": 0}

    def first_read_misses(name):
        calls["n"] += 1
        if calls["n"] == 1:
            raise FrameMissed("no image for frame 0 within 2 s")
        return real(name)

    w.read_camera = first_read_misses
    s = record(scenario(town01, max_frames=4), tmp_path / "ds", world=w, ticks=10)
    assert s["frames_missed"] == 1
    assert s["frames_recorded"] == 3  # the missed tick has no frame, the rest are whole
    assert len(json.loads((tmp_path / "ds" / "annotations.json").read_text())["images"]) == 3

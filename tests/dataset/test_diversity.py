"""Issue 17 item 4: stationary frames skipped and counted; `complete`; why a dataset is empty."""

from __future__ import annotations

import json

import numpy as np
import pytest

from carla_mr.config import scenario_from_dict
from carla_mr.dataset.diversity import StationaryGate
from carla_mr.dataset.recorder import record
from carla_mr.testing.fake_world import KinematicWorld, start_before_sign
from carla_mr.world.base import SignTable, Snapshot

SPEC = {"width": 160, "height": 120, "fov_deg": 60.0}
STOP = range(10, 70)  # ticks during which the AV stands still (3 s at 0.05 s a tick)


class StopAndGo(KinematicWorld):
    """A KinematicWorld whose vehicles stand still (speed 0, no motion) during the STOP ticks."""

    def _advance(self, frame):
        if frame in STOP:
            snap = self._last_snap
            return Snapshot(frame, frame * self.tick_s, snap.ids, snap.role, snap.x, snap.y, snap.z, snap.yaw,
                            np.zeros(len(snap.ids)), snap.rsu)
        self._last_snap = super()._advance(frame)
        return self._last_snap


def scenario(town01, **rec):
    return scenario_from_dict({"map": str(town01), "seed": 5, "duration_s": 5.0,
                               "recorder": {"enabled": True, "camera": SPEC, **rec}})


def snap_at(frame, speed, vid=0):
    return Snapshot(frame, frame * 0.1, np.array([vid]), np.zeros(1, np.uint8), np.zeros(1), np.zeros(1),
                    np.zeros(1), np.zeros(1), np.array([speed], float), np.full(1, -1, np.int32))


def test_gate_skips_only_after_the_threshold_and_resets_on_motion_or_new_vehicle():
    g = StationaryGate(1.0, 0.3)
    skips = []
    for f, v in enumerate([5, 0, 0, 0, 0, 0, 0, 0.1, 4, 0, 0]):
        g.update(snap_at(f, v), {"cam0": 0})
        skips.append(g.skip("cam0", f * 0.1))
    # stopped at t=0.1; skipped once more than 1.0 s have passed (t=1.2 is past the series) ...
    assert not any(skips)
    for f in range(11, 25):
        g.update(snap_at(f, 0.0), {"cam0": 0})
        skips.append(g.skip("cam0", f * 0.1))
    assert skips.index(True) == 20  # stopped again at t=0.9: t=2.0 is the first frame more than 1 s later
    g.update(snap_at(25, 0.0, vid=7), {"cam0": 7})  # the slot moved to another vehicle: its clock restarts
    assert not g.skip("cam0", 2.5)
    assert not StationaryGate(None, 0.3).skip("cam0", 100.0)


def test_recorder_skips_stationary_frames_and_counts_them(tmp_path, town01, town01_map, town01_signs):
    def world():
        return StopAndGo(town01_map, town01_signs, seed=5, start=start_before_sign(town01_map, town01_signs))

    on = record(scenario(town01, skip_stationary_after_s=1.0), tmp_path / "on", world=world(), ticks=100)
    off = record(scenario(town01, skip_stationary_after_s=None), tmp_path / "off", world=world(), ticks=100)
    assert off["frames_recorded"] == 100 and off["frames_skipped_stationary"] == 0
    # stopped at t=0.5 s (frame 10); frames more than 1.0 s later (frames 31..69) are skipped
    assert on["frames_skipped_stationary"] == 39 and on["frames_recorded"] == 61
    frames = sorted(int(p.stem) for p in (tmp_path / "on" / "meta" / "cam0").glob("*.json"))
    assert 30 in frames and 31 not in frames and 69 not in frames and 70 in frames
    assert on["complete"] and json.loads((tmp_path / "on" / "progress.json").read_text())["complete"]
    # a resumed recording with skipped frames comes out identical to the uninterrupted one
    again = record(scenario(town01, skip_stationary_after_s=1.0), tmp_path / "on", world=world(), ticks=100)
    assert again["complete"] and sorted(int(p.stem) for p in (tmp_path / "on" / "meta" / "cam0").glob("*.json")) \
        == frames


def test_interrupted_recording_is_not_complete(tmp_path, town01, town01_map, town01_signs):
    w = KinematicWorld(town01_map, town01_signs, seed=5, start=start_before_sign(town01_map, town01_signs))
    calls = {"n": 0}
    orig = w.tick

    def tick():
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return orig()

    w.tick = tick
    with pytest.raises(KeyboardInterrupt):
        record(scenario(town01, max_frames=20), tmp_path / "ds", world=w)
    assert json.loads((tmp_path / "ds" / "progress.json").read_text())["complete"] is False


def test_map_without_signs_says_why(tmp_path, town01, town01_map):
    s = record(scenario(town01, max_frames=3), tmp_path / "ds",
               world=KinematicWorld(town01_map, SignTable.empty(), seed=5))
    assert s["labels_exported"] == 0 and "no signs or traffic lights" in s["no_labels_because"]


def test_map_with_only_traffic_lights_and_sign_kinds_says_why(tmp_path, town01, town01_map, town01_signs):
    import dataclasses

    mask = np.asarray(town01_signs.kind).astype(str) == "traffic_light"
    assert mask.any()
    tl = SignTable(**{f.name: getattr(town01_signs, f.name)[mask] for f in dataclasses.fields(SignTable)})
    s = record(scenario(town01, max_frames=3, kinds=["stop"]), tmp_path / "ds",
               world=KinematicWorld(town01_map, tl, seed=5))
    assert s["labels_exported"] == 0 and "traffic_light" in s["no_labels_because"] \
        and "recorder.kinds" in s["no_labels_because"]


def test_filtered_labels_say_which_filter(tmp_path, town01, town01_map, town01_signs):
    s = record(scenario(town01, max_frames=20, min_box_px=10_000), tmp_path / "ds",
               world=KinematicWorld(town01_map, town01_signs, seed=5,
                                    start=start_before_sign(town01_map, town01_signs)))
    assert s["labels_exported"] == 0 and "box_below_min_box_px" in s["no_labels_because"]
    assert s["labels_filtered"]["box_below_min_box_px"] == s["labels_in_view"] > 0


def test_recording_that_reached_max_frames_is_complete_even_if_the_run_is_interrupted(
        tmp_path, town01, town01_map, town01_signs):
    """The recorder inside a longer run: max_frames recorded, then the run stops early."""
    from carla_mr.dataset.recorder import RecorderStage
    from carla_mr.runner import Runner

    sc = scenario(town01, max_frames=3)
    w = KinematicWorld(town01_map, town01_signs, seed=5, start=start_before_sign(town01_map, town01_signs))
    orig, calls = w.tick, {"n": 0}

    def tick():
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return orig()

    w.tick = tick
    stage = RecorderStage(sc.recorder, subdir="ds")
    with pytest.raises(KeyboardInterrupt):
        Runner(sc, tmp_path, [stage], 5, progress=False, world=w, ticks=50, run_files=False).run()
    assert stage.summary()["complete"] is True
    assert json.loads((tmp_path / "ds" / "progress.json").read_text())["complete"] is True

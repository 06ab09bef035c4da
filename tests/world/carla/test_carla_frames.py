"""Cameras are matched to ticks by frame number: queues, timeout, missed and stale frames."""

from __future__ import annotations

import numpy as np
import pytest

from carla_mr.world.base import Snapshot
from carla_mr.config.camera import CameraSpec
from carla_mr.world.base import FrameMissed
from carla_mr.world.carla_api import bgra_to_rgb
from carla_mr.world.carla_backend import CarlaWorld
from carla_mr.testing.carla_standin import frame_tag


def _world(srv, sc, timeout=0.3):
    w = CarlaWorld(sc, client_factory=srv.client_factory, owns_signals=False, sensor_timeout_s=timeout)
    snap = w.reset()
    w.attach_camera("front", CameraSpec(width=64, height=48), int(snap.ids[snap.role == 1][0]))
    return w


def test_every_tick_gets_its_own_frame(make_server, town_scenario):
    srv = make_server()
    with _world(srv, town_scenario()) as w:
        for _ in range(6):
            snap = w.tick()
            fr = w.read_camera("front")
            assert frame_tag(fr.image) == srv.frame  # the pixels are this tick's
            assert fr.frame == snap.frame
            assert fr.image.shape == (48, 64, 3) and fr.image.dtype == np.uint8
        assert w.camera_stats()["front"] == {"matched": 6, "missed": 0, "dropped": 0, "depth_matched": 6,
                                             "depth_missed": 0}
    assert w.summary()["cameras"]["front"]["matched"] == 6  # still reported after close()


def test_dropped_frame_is_counted_and_the_next_one_matches(make_server, town_scenario):
    srv = make_server()
    with _world(srv, town_scenario()) as w:
        w.tick()
        srv.drop_frames.add(srv.frame + 1)
        w.tick()
        with pytest.raises(FrameMissed, match="1 missed"):
            w.read_camera("front")
        w.tick()
        assert frame_tag(w.read_camera("front").image) == srv.frame
        st = w.camera_stats()["front"]
        assert st["missed"] == 1 and st["matched"] == 2


def test_late_frame_times_out_then_is_dropped_as_stale(make_server, town_scenario):
    srv = make_server()
    with _world(srv, town_scenario(), timeout=0.15) as w:
        w.tick()
        srv.delay_frames[srv.frame + 1] = 0.4  # arrives after the timeout
        w.tick()
        with pytest.raises(FrameMissed):
            w.read_camera("front")
        import time

        time.sleep(0.5)  # the late image is in the queue now
        w.tick()
        fr = w.read_camera("front")
        assert frame_tag(fr.image) == srv.frame
        st = w.camera_stats()["front"]
        assert st["missed"] == 1 and st["dropped"] >= 1


def test_delay_within_timeout_still_matches(make_server, town_scenario):
    srv = make_server()
    with _world(srv, town_scenario(), timeout=1.0) as w:
        srv.delay_frames[srv.frame + 1] = 0.1
        w.tick()
        assert frame_tag(w.read_camera("front").image) == srv.frame
        assert w.camera_stats()["front"]["missed"] == 0


def test_bgra_to_rgb_swaps_channels():
    bgra = np.zeros((2, 3, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2], bgra[..., 3] = 10, 20, 30, 255
    rgb = bgra_to_rgb(bgra.tobytes(), 3, 2)
    assert rgb.shape == (2, 3, 3) and (rgb[0, 0] == (30, 20, 10)).all()
    from carla_mr.errors import RunError

    with pytest.raises(RunError):
        bgra_to_rgb(bgra.tobytes()[:-4], 3, 2)


def test_snapshot_arrays_come_from_one_world_snapshot_per_tick(make_server, town_scenario):
    srv = make_server()
    with CarlaWorld(town_scenario(), client_factory=srv.client_factory, owns_signals=False) as w:
        first = w.reset()
        # synchronous with the scenario's fixed step; the Traffic Manager synchronous and seeded
        assert srv.settings["synchronous_mode"] is True and srv.settings["fixed_delta_seconds"] == 0.05
        assert srv.tms[8000].sim_synchronous is True and srv.tms[8000].sim_seed == 3
        n_snap = srv.counts.get("World.get_snapshot", 0)
        n_calls = len(srv.fault_points)
        s = w.tick()
        # one tick: exactly one World.tick and one World.get_snapshot round trip, nothing per actor
        assert srv.counts["World.get_snapshot"] == n_snap + 1
        assert len(srv.fault_points) == n_calls + 2
        assert isinstance(s, Snapshot) and s.frame == first.frame + 1
        assert np.isclose(s.time - first.time, 0.05)
        truth = srv._snapshot()
        for k, vid in enumerate(s.ids):
            t = truth.find(int(vid)).get_transform()
            assert np.isclose(s.x[k], t.location.x) and np.isclose(s.y[k], t.location.y)
        assert (s.speed > 7.9).all()  # autopilot moves everyone


def test_vanished_vehicle_is_dropped_from_snapshots(make_server, town_scenario):
    srv = make_server()
    with CarlaWorld(town_scenario(), client_factory=srv.client_factory, owns_signals=False) as w:
        s = w.reset()
        gone = int(s.ids[-1])
        srv._destroy(gone)
        s2 = w.tick()
        assert gone not in set(s2.ids.tolist()) and len(s2) == len(s) - 1
        assert w.stats["vanished"] == 1

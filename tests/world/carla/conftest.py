"""Fixtures for the CARLA backend tests: the stand-in server on CARLA's Town01 and a scripted run."""

from __future__ import annotations

import numpy as np
import pytest

from carla_mr.config import scenario_from_dict
from carla_mr.config.camera import CameraSpec

PREFIX = "carla_mr/"


@pytest.fixture(scope="session")
def town01_text(town01) -> str:
    return town01.read_text(encoding="utf-8")


@pytest.fixture
def make_server(town01_text):
    from carla_mr.testing.carla_standin import StandinServer

    servers = []

    def make(**kw):
        srv = StandinServer(town01_text, "Town01", **kw)
        servers.append(srv)
        return srv

    yield make


#: Heartbeats off during a test's few ticks (deterministic call sequences for the fault sweeps),
#: and every other session of the prefix taken as crashed (a "crash" in a test is seconds old).
#: The heartbeat tests set their own values.
TEST_HEARTBEAT = {"heartbeat_s": 1.0e6, "heartbeat_stale_s": 0.0}


def _town_scenario(**over):
    data = {"name": "t", "map": "Town01", "backend": "carla", "seed": 3, "tick_s": 0.05,
            "vehicles": {"avs": 2, "background": 3}, "rsus": {"mode": "auto", "spacing_m": 150.0}}
    carla_over = over.pop("carla", {})
    data.update(over)
    data["carla"] = {**TEST_HEARTBEAT, **carla_over}
    return scenario_from_dict(data)


def _full_run(world, srv, *, ticks: int = 3, camera: bool = True, textures: bool = True):
    """reset, attach a camera to the first AV, tick, read frames, push a texture, close."""
    snap = world.reset()
    if camera:
        av = int(snap.ids[snap.role == 1][0])
        world.attach_camera("front", CameraSpec(width=96, height=64, fov_deg=90.0), av)
    for _ in range(ticks):
        world.tick()
        if camera:
            try:
                world.read_camera("front")
            except Exception as exc:  # FrameMissed is allowed in fault runs
                from carla_mr.world.base import FrameMissed

                if not isinstance(exc, FrameMissed):
                    raise
    if textures:
        sid = next(str(s) for s, k in zip(world.signs.ids, world.signs.kind) if k == "speed_limit")
        world.apply_sign_textures({sid: np.full((8, 8, 3), (10, 200, 10), np.uint8)})
        world.tick()
    world.close()


@pytest.fixture
def town_scenario():
    return _town_scenario


@pytest.fixture
def full_run():
    return _full_run


def _face_sign(srv, vehicle_id: int, box_index: int, dist: float = 12.0):
    """Park a stand-in vehicle ``dist`` metres in front of sign box ``box_index``, looking at it."""
    import math

    import carla

    bb, _ = srv.sign_boxes[box_index]
    face = math.radians(bb.rotation.yaw)
    x = bb.location.x + dist * math.cos(face)
    y = bb.location.y + dist * math.sin(face)
    a = srv.actors[int(vehicle_id)]
    a._autopilot = False
    a._speed = 0.0
    a._tf = carla.Transform(carla.Location(x, y, bb.location.z - 2.2),
                            carla.Rotation(0.0, math.degrees(face) + 180.0, 0.0))


@pytest.fixture
def face_sign():
    return _face_sign

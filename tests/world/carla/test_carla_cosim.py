"""SUMO co-simulation: SUMO drives the background, CARLA twins follow with physics off."""

from __future__ import annotations

import numpy as np
import pytest

from carla_mr.world.carla_backend import CarlaWorld
from carla_mr.world.cosim import bumper_to_centre


def test_bumper_to_centre_moves_back_along_the_heading():
    x, y = bumper_to_centre([10.0, 0.0], [0.0, 0.0], [0.0, 90.0], length_m=4.0)
    assert np.allclose(x, [8.0, 0.0]) and np.allclose(y, [0.0, -2.0])  # yaw 90 = +y (south) in CARLA


def test_cosim_mirrors_sumo_into_carla(make_server, town_scenario, tmp_path, monkeypatch):
    monkeypatch.setenv("CARLA_MR_CACHE", str(tmp_path))
    srv = make_server()
    sc = town_scenario(carla={"cosim_sumo": True}, vehicles={"avs": 2, "background": 4})
    with CarlaWorld(sc, client_factory=srv.client_factory, install_handlers=False) as w:
        w.reset()
        for _ in range(40):
            s = w.tick()
        cos = w.cosim
        sumo_snap = cos._last
        assert len(sumo_snap) == 4
        assert cos.summary()["mirrored"] == 4
        # AVs on the Traffic Manager, the background as physics-off twins
        bg = s.ids[s.role == 0]
        assert bg.size == 4 and (s.role == 1).sum() == 2
        for aid in bg:
            a = srv.actors[int(aid)]
            assert a._physics is False and not a._autopilot
            assert a.attributes["role_name"] == f"{w.tag}bg"
        for aid in s.ids[s.role == 1]:
            assert srv.actors[int(aid)]._autopilot
        # each twin stands where SUMO says the vehicle is (centre = bumper - half a length)
        cx, cy = bumper_to_centre(sumo_snap.x, sumo_snap.y, sumo_snap.yaw)
        for k, sid in enumerate(sumo_snap.ids):
            t = srv.actors[cos.carla_of[int(sid)]]._tf
            assert t.location.x == pytest.approx(cx[k], abs=1e-3) and t.location.y == pytest.approx(cy[k], abs=1e-3)
            assert t.rotation.yaw == pytest.approx(sumo_snap.yaw[k], abs=1e-3)
        assert np.any(sumo_snap.speed > 0.5), "SUMO traffic moves"
        sumo = cos.sumo.sumo
    assert not sumo.simulation.isLoaded()  # SUMO closed with the world
    assert not srv.tagged("carla_mr/") and srv.settings["synchronous_mode"] is False

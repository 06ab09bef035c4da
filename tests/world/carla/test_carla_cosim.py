"""SUMO co-simulation: SUMO drives the background, CARLA twins follow with physics off, in step."""

from __future__ import annotations

import numpy as np
import pytest

from carla_mr.world.carla_backend import CarlaWorld
from carla_mr.world.cosim import MAX_SPAWN_ATTEMPTS, bumper_to_centre, carla_signal_state


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CARLA_MR_CACHE", str(tmp_path))


def _cosim(town_scenario, **carla):
    return town_scenario(carla={"cosim_sumo": True, **carla}, vehicles={"avs": 2, "background": 4})


def test_bumper_to_centre_moves_back_along_the_heading_and_the_slope():
    x, y, z = bumper_to_centre([10.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 90.0], [0.0, 0.0], 4.0)
    assert np.allclose(x, [8.0, 0.0]) and np.allclose(y, [0.0, -2.0]) and np.allclose(z, 0.0)  # yaw 90 = +y
    x, y, z = bumper_to_centre([10.0], [0.0], [1.0], [0.0], [30.0], 4.0)  # uphill: the centre is lower
    assert np.allclose(x, 10.0 - 2.0 * np.cos(np.radians(30))) and np.allclose(z, 1.0 - 1.0)


def test_signal_state_is_the_most_restrictive_of_its_links():
    assert carla_signal_state("GGr") == "Red"
    assert carla_signal_state("gy") == "Yellow"
    assert carla_signal_state("Gg") == "Green"
    assert carla_signal_state("O") == "Off" and carla_signal_state("u") == "Red"


def test_cosim_mirrors_sumo_into_carla(make_server, town_scenario):
    srv = make_server()
    with CarlaWorld(_cosim(town_scenario), client_factory=srv.client_factory, owns_signals=False) as w:
        w.reset()
        for _ in range(40):
            s = w.tick()
        cos = w.cosim
        sumo_snap = cos.last
        assert len(sumo_snap) == 4 and cos.summary()["mirrored"] == 4
        # AVs on the Traffic Manager, the background as physics-off twins
        bg = s.ids[s.role == 0]
        assert bg.size == 4 and (s.role == 1).sum() == 2
        for aid in bg:
            a = srv.actors[int(aid)]
            assert a._physics is False and not a._autopilot
            assert a.attributes["role_name"] == f"{w.tag}bg"
            # a 5 m SUMO passenger car is a car of about that length, never the bus the server also has
            assert a.type_id == "vehicle.tesla.model3"
        for aid in s.ids[s.role == 1]:
            assert srv.actors[int(aid)]._autopilot
        # each twin stands where SUMO says the vehicle is (centre = bumper - half the SUMO length)
        pitch = cos.sumo.slopes(sumo_snap.ids)
        cx, cy, cz = bumper_to_centre(sumo_snap.x, sumo_snap.y, sumo_snap.z, sumo_snap.yaw, pitch, 5.0)
        for k, sid in enumerate(sumo_snap.ids):
            t = srv.actors[cos.carla_of[int(sid)]]._tf
            assert t.location.x == pytest.approx(cx[k], abs=1e-3) and t.location.y == pytest.approx(cy[k], abs=1e-3)
            assert t.location.z == pytest.approx(cz[k], abs=1e-3)
            assert t.rotation.yaw == pytest.approx(sumo_snap.yaw[k], abs=1e-3)
            assert t.rotation.pitch == pytest.approx(pitch[k], abs=1e-3)
        assert np.any(sumo_snap.speed > 0.5), "SUMO traffic moves"
        sumo = cos.sumo.sumo
    assert not sumo.simulation.isLoaded()  # SUMO closed with the world
    assert not srv.tagged("carla_mr/") and srv.settings["synchronous_mode"] is False


def test_carla_and_sumo_stay_in_step_through_spawns_and_arrivals(make_server, town_scenario):
    srv = make_server()
    with CarlaWorld(_cosim(town_scenario), client_factory=srv.client_factory, owns_signals=False) as w:
        w.reset()
        cos = w.cosim
        frame0 = srv.frame
        ticks = 60
        for k in range(1, ticks + 1):
            if k in (10, 30):  # a vehicle leaves SUMO; the embedded world sends a new one: spawns and arrivals
                cos.sumo.remove_vehicle(int(cos.last.ids[0]))
            s = w.tick()
            # one server frame per tick, and CARLA's simulated time is SUMO's
            assert srv.frame == frame0 + k
            assert s.time == pytest.approx(cos.last.time, abs=1e-9)
            assert s.time == pytest.approx((k + 1) * 0.05, abs=1e-6)
        c = cos.summary()
        assert c["arrived"] >= 2 and c["spawned"] >= 6, c
        assert c["mirrored"] == len(cos.last) == 4
        assert srv.elapsed == pytest.approx((ticks + 1) * 0.05)


def test_a_blocked_twin_is_retried_with_backoff_not_every_tick(make_server, town_scenario):
    srv = make_server()
    with CarlaWorld(_cosim(town_scenario), client_factory=srv.client_factory, owns_signals=False) as w:
        refused: dict = {}

        def refuse(bp, tf):  # every twin (spawned lifted, high above the road) is refused three times
            key = (round(tf.location.x, 3), round(tf.location.y, 3))
            if tf.location.z < 10.0 or sum(refused.values()) >= 12:
                return False
            refused[key] = refused.get(key, 0) + 1
            return True

        srv.refuse_spawn = refuse
        w.reset()
        cos = w.cosim
        attempts = []
        for _ in range(12):
            attempts.append(cos.counts["spawn_attempts"])
            w.tick()
        # attempts at SUMO frames 0, 1, 3, 7 (backoff 1, 2, 4 ticks): 4 twins x 4 tries, nothing in between
        per_tick = np.diff(attempts + [cos.counts["spawn_attempts"]])
        assert cos.counts["spawn_retries"] == 12 and cos.counts["spawned"] == 4, cos.counts
        assert (per_tick > 0).sum() == 3, per_tick
        assert cos.summary()["mirrored"] == 4


def test_a_twin_that_never_spawns_is_given_up_and_counted(make_server, town_scenario):
    srv = make_server()
    with CarlaWorld(_cosim(town_scenario), client_factory=srv.client_factory, owns_signals=False) as w:
        w.reset()  # AVs and twins in place
        cos = w.cosim
        srv.refuse_spawn = lambda bp, tf: tf.location.z > 10.0  # no twin can spawn any more
        cos.sumo.remove_vehicle(int(cos.last.ids[0]))
        for _ in range(80):
            w.tick()
        assert cos.counts["spawn_gave_up"] >= 1
        assert cos.counts["spawn_attempts"] - 4 <= MAX_SPAWN_ATTEMPTS * (1 + cos.counts["spawn_gave_up"])
        assert cos.summary()["mirrored"] == 3


def test_traffic_lights_follow_sumo_and_are_released_on_close(make_server, town_scenario):
    srv = make_server()
    w = CarlaWorld(_cosim(town_scenario, cosim_traffic_lights=True), client_factory=srv.client_factory,
                   owns_signals=False)
    w.reset()
    lights = {lid: srv.actors[aid] for lid, aid in srv.light_of.items()}
    assert w.traffic_lights is not None and len(w.traffic_lights.lights) == len(lights) > 0
    seen = set()
    for _ in range(30):
        w.tick()
        links = w.cosim.sumo.signal_link_states()
        for lid, chars in links.items():
            if lid in lights:
                assert lights[lid].get_state().name == carla_signal_state(chars), lid
                assert lights[lid].is_frozen()
                seen.add(lid)
    assert len(seen) >= 10  # most of Town01's signals are driven by SUMO
    w.close()
    assert "release traffic lights" in w.close_report.done
    assert not any(tl.is_frozen() for tl in lights.values())

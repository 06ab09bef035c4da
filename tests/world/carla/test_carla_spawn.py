"""Actors: blueprint fallback tables, tags per kind, collision retries, shortfall, RSU props."""

from __future__ import annotations

import numpy as np

from carla_mr.testing import carla_standin
from carla_mr.world.carla_backend import CarlaWorld


def _kinds(srv, w):
    return {a.id: a.attributes["role_name"].rsplit("/", 1)[-1] for a in srv.tagged(w.tag)}


def test_fallback_blueprints_and_tags(make_server, town_scenario, monkeypatch):
    # a server without the AV table's cars: AVs fall back to "vehicle.*", sharing the blueprint
    # object with the background; every actor must still carry its own kind
    bps = {k: v for k, v in carla_standin.BLUEPRINTS.items()
           if k not in ("vehicle.tesla.model3", "vehicle.audi.a2", "vehicle.mitsubishi.fusorosa")}
    monkeypatch.setattr(carla_standin, "BLUEPRINTS", bps)
    srv = make_server(foreign=())
    with CarlaWorld(town_scenario(), client_factory=srv.client_factory, owns_signals=False) as w:
        s = w.reset()
        kinds = _kinds(srv, w)
        for vid, role in zip(s.ids, s.role):
            assert kinds[int(vid)] == ("av" if role == 1 else "bg")
            assert srv.actors[int(vid)].type_id == "vehicle.nissan.micra"  # never the 2-wheeled yamaha
        assert sum(1 for k in kinds.values() if k == "rsu") == len(w.rsus) == w.stats["rsu_props"]
        assert sum(1 for k in kinds.values() if k.startswith("marker")) == 1


def test_blocked_spawn_points_are_retried(make_server, town_scenario):
    srv = make_server(foreign=())
    # other clients' cars parked on every other spawn point
    sp = srv.map.get_spawn_points()
    for t in sp[::2]:
        srv._spawn(srv._bp("vehicle.audi.a2", "parked"), t, None)
    with CarlaWorld(town_scenario(vehicles={"avs": 5, "background": 25}), client_factory=srv.client_factory,
                    owns_signals=False) as w:
        s = w.reset()
        assert len(s) == 30
        assert w.stats["spawn_retries"] > 0 and w.stats["spawn_shortfall"] == 0
    assert sum(1 for a in srv.actors.values() if a.attributes.get("role_name") == "parked") == len(sp[::2])


def test_more_vehicles_than_spawn_points_is_a_shortfall_not_a_crash(make_server, town_scenario):
    srv = make_server(foreign=())
    n_points = len(srv.map.get_spawn_points())
    with CarlaWorld(town_scenario(vehicles={"avs": 2, "background": n_points + 10}),
                    client_factory=srv.client_factory, owns_signals=False) as w:
        s = w.reset()
        assert len(s) + w.stats["spawn_shortfall"] == n_points + 12
        assert len(s) <= n_points and w.stats["spawn_shortfall"] >= 12
        assert (s.role == 1).sum() == 2  # AVs first


def test_rsu_props_stand_at_the_curb_and_can_be_off(make_server, town_scenario):
    srv = make_server(foreign=())
    with CarlaWorld(town_scenario(), client_factory=srv.client_factory, owns_signals=False) as w:
        w.reset()
        props = [a for a in srv.tagged(w.tag) if a.attributes["role_name"].endswith("/rsu")]
        assert len(props) == len(w.rsus) > 0
        for a in props:
            loc = a._tf.location
            d = np.hypot(w.rsus.x - loc.x, w.rsus.y - loc.y).min()
            wp = srv.map.get_waypoint(loc)
            assert 1.0 <= d <= wp.lane_width / 2 + 1.0 + 1e-3 + 0.5
    srv = make_server(foreign=())
    with CarlaWorld(town_scenario(carla={"rsu_props": False}), client_factory=srv.client_factory,
                    owns_signals=False) as w:
        w.reset()
        assert w.stats["rsu_props"] == 0 and len(w.rsus) > 0  # logical RSUs, same table

"""The same scenario file runs on both backends up to the backend line: same Snapshot fields
(dtypes, shapes), same SignTable and RsuTable data for the same map."""

from __future__ import annotations

import numpy as np
import pytest

from carla_mr.config import load_scenario
from carla_mr.world.base import SignTable, Snapshot
from carla_mr.world.carla_backend import CarlaWorld

SCENARIO = """\
name: parity
backend: embedded
map: {map}
seed: 5
tick_s: 0.05
duration_s: 1.0
vehicles: {{avs: 2, background: 4}}
rsus: {{mode: auto, spacing_m: 180.0, range_m: 200.0}}
signs:
  inject:
    - {{kind: stop}}
    - {{kind: speed_limit, value: 50}}
carla: {{port: 2000, tm_port: 8000}}
"""


@pytest.fixture
def scenario_file(tmp_path, town01):
    p = tmp_path / "parity.yaml"
    p.write_text(SCENARIO.format(map=str(town01)), encoding="utf-8")
    return p


def _fields(s: Snapshot):
    return {k: (getattr(s, k).dtype, getattr(s, k).ndim) for k in ("ids", "role", "x", "y", "z", "yaw", "speed", "rsu")}


def test_same_file_both_backends(scenario_file, town01_text, tmp_path, monkeypatch):
    monkeypatch.setenv("CARLA_MR_CACHE", str(tmp_path / "cache"))
    from carla_mr.testing.carla_standin import StandinServer
    from carla_mr.world.factory import make_world

    emb_sc = load_scenario(scenario_file)
    car_sc = load_scenario(scenario_file, ["backend=carla"])
    assert emb_sc.model_dump(exclude={"backend"}) == car_sc.model_dump(exclude={"backend"})

    from carla_mr.config.camera import CameraSpec

    spec = CameraSpec(width=96, height=64, fov_deg=80.0)
    with make_world(emb_sc) as emb:
        e0 = emb.reset()
        emb.attach_camera("front", spec, int(e0.ids[e0.av_mask][0]))
        e1 = emb.tick()
        ef = emb.read_camera("front")
        emb_signs, emb_rsus = emb.signs, emb.rsus

    srv = StandinServer(town01_text, "Town01")
    with CarlaWorld(car_sc, client_factory=srv.client_factory, owns_signals=False) as car:
        c0 = car.reset()
        car.attach_camera("front", spec, int(c0.ids[c0.av_mask][0]))
        c1 = car.tick()
        cf = car.read_camera("front")
        car_signs, car_rsus = car.signs, car.rsus
        summary = car.landmark_summary()
    # the map the server got is the scenario's map with the scenario's signs injected
    assert srv.map.name.endswith("OpenDriveMap")
    assert summary["total"] == len(srv.map.get_all_landmarks())

    for a, b in ((e0, c0), (e1, c1)):
        assert _fields(a) == _fields(b)
        assert len(a) == len(b) == 6
        assert sorted(a.role.tolist()) == sorted(b.role.tolist()) == [0, 0, 0, 0, 1, 1]
    assert (e0.frame, c0.frame) == (0, 0) and (e1.frame, c1.frame) == (1, 1)
    assert e0.time == pytest.approx(c0.time) and e1.time == pytest.approx(c1.time)

    # camera frames: same image format, intrinsics, pose matrix and frame numbering
    assert ef.image.shape == cf.image.shape == (64, 96, 3) and ef.image.dtype == cf.image.dtype == np.uint8
    assert np.allclose(ef.intrinsics, cf.intrinsics) and ef.cam_to_world.shape == cf.cam_to_world.shape == (4, 4)
    assert ef.frame == e1.frame and cf.frame == c1.frame and len(ef.ego) == len(cf.ego) == 4
    label_keys = {"id", "kind", "value", "box", "visible", "distance", "source", "ref"}
    for lab in ef.labels + cf.labels:
        assert label_keys <= set(lab)

    assert len(emb_signs) == len(car_signs) > 0
    assert {"stop", "speed_limit"} <= set(car_signs.kind.tolist())
    for f in SignTable.__dataclass_fields__:
        a, b = getattr(emb_signs, f), getattr(car_signs, f)
        assert a.dtype == b.dtype, f
        if a.dtype.kind == "f":
            assert np.allclose(a, b, equal_nan=True), f
        else:
            assert (a == b).all(), f
    for f in emb_rsus.__dataclass_fields__:
        assert np.array_equal(getattr(emb_rsus, f), getattr(car_rsus, f)), f
    assert len(car_rsus) > 1


def test_make_world_builds_the_carla_backend_lazily(scenario_file, monkeypatch):
    # the factory's import path works (the server itself is unreachable here)
    from carla_mr.errors import RunError
    from carla_mr.world.factory import make_world

    sc = load_scenario(scenario_file, ["backend=carla", "carla.port=1", "carla.timeout_s=0.5"])
    w = make_world(sc)
    assert isinstance(w, CarlaWorld)
    with pytest.raises(RunError, match="cannot reach a CARLA server at 127.0.0.1:1"):
        w.reset()


def test_map_names_resolve_to_towns_or_xodr_files(make_server, town_scenario, tmp_path):
    from carla_mr.errors import InputError

    # a town of the server is loaded by name (no OpenDRIVE generation)
    srv = make_server()
    srv.towns_text["Town02"] = srv.towns_text["Town01"]
    with CarlaWorld(town_scenario(map="Town02"), client_factory=srv.client_factory, owns_signals=False) as w:
        w.reset()
        assert srv.map.name == "Carla/Maps/Town02" and w.town == "Town02"
        assert srv.counts.get("Client.generate_opendrive_world", 0) == 0
    # a bare name the server lacks but the map search path has -> generated from the .xodr
    srv = make_server()
    srv.towns_text.pop("Town01")
    with CarlaWorld(town_scenario(map="Town01"), client_factory=srv.client_factory, owns_signals=False) as w:
        w.reset()
        assert srv.counts["Client.generate_opendrive_world"] == 1
    # neither: a clear error naming the field
    srv = make_server()
    w = CarlaWorld(town_scenario(map="NoSuchTown"), client_factory=srv.client_factory, owns_signals=False)
    with pytest.raises(InputError, match="map: map 'NoSuchTown' is neither a town of this server"):
        w.reset()
    # signs cannot be injected into a town's level
    w = CarlaWorld(town_scenario(signs={"inject": [{"kind": "stop"}]}), client_factory=make_server().client_factory,
                   owns_signals=False)
    with pytest.raises(InputError, match="signs"):
        w.reset()


def test_the_runner_drives_the_carla_backend(make_server, town_scenario, tmp_path):
    from carla_mr.runner import Runner

    srv = make_server()
    sc = town_scenario()
    w = CarlaWorld(sc, client_factory=srv.client_factory, owns_signals=False)
    summary = Runner(sc, tmp_path / "run", stages=[], world=w, ticks=20, progress=False).run()
    assert summary["status"] == "completed" and summary["ticks"] == 20
    assert summary["avs"] == 2 and summary["vehicles"] == 5
    assert summary["landmarks"]["total"] == 94  # Town01's landmarks, read from the server's map
    assert summary["mean_speed"] > 5.0
    assert (tmp_path / "run" / "summary.json").is_file()
    assert srv.settings["synchronous_mode"] is False and not srv.tagged("carla_mr/")


def test_cli_reports_an_unreachable_server(tmp_path):
    from click.testing import CliRunner

    from carla_mr.cli import main

    scen = tmp_path / "s.yaml"
    scen.write_text("map: Town01\nbackend: carla\nduration_s: 1\ncarla: {port: 1, timeout_s: 0.5}\n")
    res = CliRunner().invoke(main, ["run", str(scen), "--out", str(tmp_path / "out")])
    assert res.exit_code == 1, res.output
    assert "cannot reach a CARLA server at 127.0.0.1:1" in res.output

"""Maps: offline loading with libcarla, landmarks -> SignTable, sign injection, project maps."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from carla_mr.errors import InputError
from carla_mr.world.maps import (PROJECT_MAPS, classify, inject_text, landmark_counts, landmarks_to_signs, load_map,
                                 map_from_text)
from carla_mr.world.opendrive import SignPlacement, candidate_roads, parse_xodr, random_placements, roads

REPO = Path(__file__).resolve().parents[2]
MAPS = REPO / "maps"


def test_classify_codes():
    assert classify("206") == "stop"
    assert classify("205") == "yield"
    assert classify("274") == "speed_limit"
    assert classify("267") == "no_entry"
    assert classify("306") == "priority_road"
    assert classify("314") == "parking"
    assert classify("101") == "warning" and classify("138") == "warning"
    assert classify("209") == "mandatory_arrow" and classify("222") == "mandatory_arrow"
    assert classify("1000001") == "traffic_light"
    assert classify("274", is_dynamic=True) == "traffic_light"
    assert classify("999") == "other"


def test_town01_landmarks(town01):
    m = load_map(town01)
    counts = landmark_counts(m)
    assert counts["total"] == 94
    assert counts["by_type"] == {"speed_limit": 22, "traffic_light": 72}
    signs = landmarks_to_signs(m)
    assert len(set(signs.ids)) == len(signs) == counts["unique_signs"]
    sl = signs.kind == "speed_limit"
    assert set(np.unique(signs.value[sl])) <= {30.0, 60.0, 90.0}
    assert np.all(np.isnan(signs.value[~sl]))
    # landmark poses are already in CARLA's frame: they lie on Town01's extent (y >= 0 in CARLA)
    assert signs.y.min() > -5 and signs.y.max() < 340 and signs.x.min() > -5 and signs.x.max() < 400
    assert np.all((signs.width > 0) & (signs.height > 0) & (signs.z > 0))


def test_landmark_frame_matches_waypoints(town01):
    """A landmark's libcarla transform is in CARLA's frame: it lies beside its road's lanes."""
    import carla

    m = load_map(town01)
    for lm in m.get_all_landmarks()[:20]:
        loc = lm.transform.location
        wp = m.get_waypoint(carla.Location(x=loc.x, y=loc.y, z=0.0), project_to_road=True)
        assert wp.transform.location.distance(carla.Location(x=loc.x, y=loc.y, z=wp.transform.location.z)) < 15.0
        # with y mirrored (the OpenDRIVE frame) the sign would be far from any road in most cases
    ys = np.array([lm.transform.location.y for lm in m.get_all_landmarks()])
    assert (ys > 0).mean() > 0.9


def _grid_text() -> str:
    return (MAPS / "mr_town.xodr").read_text()


def test_project_maps_are_committed_and_have_signs():
    for name in PROJECT_MAPS:
        p = MAPS / f"{name}.xodr"
        assert p.is_file(), f"run 'carla-mr maps build' ({p} missing)"
        counts = landmark_counts(load_map(p))
        for kind in ("stop", "yield", "speed_limit", "traffic_light"):
            assert counts["by_type"].get(kind, 0) > 0, (name, kind, counts)


def test_inject_signs_valid_and_counted():
    text = _grid_text()
    tree = parse_xodr(text)
    cands = candidate_roads(tree)
    r = cands[0]
    before = landmark_counts(map_from_text("t", text))["total"]
    out, ids = inject_text(text, [SignPlacement("stop", r.id, r.length - 3, "+" if r.right else "-"),
                                  SignPlacement("speed_limit", r.id, 5.0, "+" if r.right else "-", value=40)])
    assert len(ids) == 2
    m = map_from_text("t2", out)
    assert landmark_counts(m)["total"] == before + 2
    root = ET.fromstring(out)
    junction_roads = {x.get("id") for x in root.findall("road") if x.get("junction", "-1") != "-1"}
    for sig in root.iter("signal"):
        v = sig.find("validity")
        assert v is not None and int(v.get("fromLane")) <= int(v.get("toLane"))
    for road in root.findall("road"):
        for sig in road.iter("signal"):
            if sig.get("id") in ids:
                assert road.get("id") not in junction_roads
    new = {lm.id: lm for lm in m.get_all_landmarks() if lm.id in ids}
    assert new[ids[1]].type == "274" and float(new[ids[1]].value) == 40.0
    signs = landmarks_to_signs(m)
    k = dict(zip(signs.ids, signs.kind))
    assert k[ids[0]] == "stop" and k[ids[1]] == "speed_limit"


def test_injected_sign_beside_its_lane_and_facing_traffic():
    import carla

    text = _grid_text()
    tree = parse_xodr(text)
    r = next(c for c in candidate_roads(tree) if c.right)
    out, ids = inject_text(text, [SignPlacement("yield", r.id, r.length / 2, "+")])
    m = map_from_text("t3", out)
    signs = landmarks_to_signs(m)
    i = list(signs.ids).index(ids[0])
    wp = m.get_waypoint_xodr(int(r.id), min(r.right), r.length / 2)
    lane_yaw = wp.transform.rotation.yaw
    # the face points against the traffic it governs
    assert abs((signs.yaw[i] - (lane_yaw + 180) + 180) % 360 - 180) < 1.0
    d = np.hypot(signs.x[i] - wp.transform.location.x, signs.y[i] - wp.transform.location.y)
    assert 1.0 < d < 4 * sum(r.right.values())
    # on the right-hand side of the travel direction (CARLA's right vector is (-sin, cos) rotated: yaw+90)
    right = np.radians(lane_yaw + 90.0)
    side = (signs.x[i] - wp.transform.location.x) * np.cos(right) + (signs.y[i] - wp.transform.location.y) * np.sin(right)
    assert side > 0.5
    assert isinstance(wp, carla.Waypoint)


def test_inject_rejects_bad_placements():
    text = _grid_text()
    tree = parse_xodr(text)
    junction_road = next(r for r in roads(tree) if r.in_junction)
    good = candidate_roads(tree)[0]
    with pytest.raises(InputError, match="junction"):
        inject_text(text, [SignPlacement("stop", junction_road.id, 0.5, "+")])
    with pytest.raises(InputError, match="not in the map"):
        inject_text(text, [SignPlacement("stop", "no-such-road", 1.0, "+")])
    with pytest.raises(InputError, match="outside road"):
        inject_text(text, [SignPlacement("stop", good.id, good.length + 10, "+")])
    with pytest.raises(InputError, match="speed_limit"):
        inject_text(text, [SignPlacement("speed_limit", good.id, 2.0, "+")])


def test_random_injection_into_carla_town(town02):
    text = town02.read_text()
    tree = parse_xodr(text)
    pl = random_placements(tree, 12, np.random.default_rng(3))
    out, ids = inject_text(text, pl, name="Town02")
    assert len(ids) == 12
    assert landmark_counts(map_from_text("Town02i", out))["total"] == landmark_counts(load_map(town02))["total"] + 12


def test_load_map_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_map(tmp_path / "nope.xodr")
    bad = tmp_path / "bad.xodr"
    bad.write_text("<html/>")
    with pytest.raises(InputError):
        load_map(bad)


def test_maps_cli_landmarks_and_inject(town01, tmp_path):
    from carla_mr.cli import main

    r = CliRunner().invoke(main, ["maps", "landmarks", str(town01), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["total"] == 94 and data["by_type"]["traffic_light"] == 72
    assert len(data["signs"]) == data["unique_signs"]
    out = tmp_path / "t1s.xodr"
    r = CliRunner().invoke(main, ["maps", "inject", str(town01), "--out", str(out), "--random", "4", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["landmarks"]["total"] == 98
    r = CliRunner().invoke(main, ["maps", "inject", str(town01), "--out", str(out), "--sign", "stop:999999:3"])
    assert r.exit_code == 2 and "999999" in r.output and "Traceback" not in r.output


def test_maps_build_is_deterministic(tmp_path):
    from carla_mr.cli import main

    r = CliRunner().invoke(main, ["maps", "build", "--out", str(tmp_path), "--only", "mr_arterial", "--json"])
    assert r.exit_code == 0, r.output
    built = (tmp_path / "mr_arterial.xodr").read_bytes()
    committed = (MAPS / "mr_arterial.xodr").read_bytes()
    vendor = parse_xodr(committed.decode()).getroot().find("header").get("vendor")
    if vendor == parse_xodr(built.decode()).getroot().find("header").get("vendor"):
        assert built == committed, "maps/ is stale: run 'carla-mr maps build'"
    else:  # another SUMO version writes other geometry details; the signs must still agree
        a = landmark_counts(map_from_text("a", built.decode()))
        b = landmark_counts(map_from_text("b", committed.decode()))
        assert a["by_type"] == b["by_type"]


def _face_vs_governed_lane(cmap, only=None):
    """For each landmark: |face yaw - (governed lane heading + 180)| in degrees."""
    signs = landmarks_to_signs(cmap)
    yaw = dict(zip(signs.ids, signs.yaw))
    errs = []
    for lm in cmap.get_all_landmarks():
        if only is not None and lm.id not in only:
            continue
        lane = lm.get_lane_validities()[0][0]
        wp = cmap.get_waypoint_xodr(int(lm.road_id), int(lane), float(lm.s))
        if wp is None:
            continue
        errs.append(abs((yaw[lm.id] - wp.transform.rotation.yaw - 180.0 + 180.0) % 360.0 - 180.0))
    return np.array(errs)


@pytest.mark.parametrize("which", ["town01", "town02", "mr_town"])
def test_sign_faces_point_against_governed_traffic(which, request):
    path = MAPS / "mr_town.xodr" if which == "mr_town" else request.getfixturevalue(which)
    errs = _face_vs_governed_lane(load_map(path))
    assert len(errs) > 50 and errs.max() < 5.0


def test_injected_faces_both_orientations(town02):
    text = town02.read_text()
    tree = parse_xodr(text)
    r = next(c for c in candidate_roads(tree) if c.left and c.right)
    out, ids = inject_text(text, [SignPlacement("stop", r.id, 5.0, "-"), SignPlacement("yield", r.id, r.length - 5, "+")])
    errs = _face_vs_governed_lane(map_from_text("t2o", out), only=set(ids))
    assert len(errs) == 2 and errs.max() < 1.0

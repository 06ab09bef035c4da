"""SUMO nets from OpenDRIVE: content-hash cache, netOffset, coordinates against libcarla."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from carla_mr.errors import InputError
from carla_mr.world.coords import sumo_to_carla
from carla_mr.world.maps import load_map
from carla_mr.world.sumo_net import build_net, read_net_offset


def _lane_shapes(net_path):
    out = {}
    for _, el in ET.iterparse(str(net_path)):
        if el.tag == "lane" and not el.get("id", "").startswith(":"):
            pts = np.array([[float(v) for v in p.split(",")[:2]] for p in el.get("shape").split()])
            out[el.get("id")] = pts
    return out


def _dist_to_polyline(points: np.ndarray, line: np.ndarray) -> np.ndarray:
    p0, p1 = line[:-1], line[1:]
    seg = p1 - p0
    L2 = np.maximum((seg ** 2).sum(1), 1e-12)
    t = np.clip((((points[:, None, :] - p0[None]) * seg[None]).sum(-1)) / L2[None], 0, 1)
    proj = p0[None] + t[..., None] * seg[None]
    return np.sqrt(((points[:, None, :] - proj) ** 2).sum(-1)).min(1)


def test_cache_by_content_hash(town02, tmp_path, monkeypatch):
    monkeypatch.setenv("CARLA_MR_CACHE", str(tmp_path / "cache"))
    a = build_net(town02)
    assert a.path.is_file() and str(a.path).startswith(str(tmp_path / "cache"))
    mtime = a.path.stat().st_mtime_ns
    b = build_net(town02)
    assert b.path == a.path and b.key == a.key and b.path.stat().st_mtime_ns == mtime  # reused, not rebuilt
    # a changed map (one more signal) gets a new net
    edited = tmp_path / "Town02.xodr"
    text = town02.read_text().replace("</OpenDRIVE>", "<!-- edited --></OpenDRIVE>")
    edited.write_text(text)
    c = build_net(edited)
    assert c.key != a.key


def test_net_offset_and_frames_agree_with_libcarla(town01, tmp_path, monkeypatch):
    """Our net (offset 0) and CARLA's shipped net (offset applied) map to the same CARLA
    coordinates, and lane centres lie on libcarla's lanes."""
    import carla

    monkeypatch.setenv("CARLA_MR_CACHE", str(tmp_path / "cache"))
    ours = build_net(town01)
    assert ours.net_offset == (0.0, 0.0)
    shared = town01.with_suffix(".net.xml")
    cmap = load_map(town01)
    checked = 0
    lanes = _lane_shapes(ours.path)
    for lane_id, pts in list(lanes.items())[::3]:
        cx, cy = sumo_to_carla(pts[:, 0], pts[:, 1], net_offset=ours.net_offset)
        mid = len(cx) // 2
        loc = carla.Location(x=float(cx[mid]), y=float(cy[mid]), z=0.0)
        wp = cmap.get_waypoint(loc, project_to_road=True)
        d = wp.transform.location.distance(carla.Location(x=loc.x, y=loc.y, z=wp.transform.location.z))
        assert d < 0.5 * wp.lane_width + 0.3, (lane_id, d)
        checked += 1
    assert checked > 10
    if shared.is_file():
        off = read_net_offset(shared)
        assert off != (0.0, 0.0)
        theirs = _lane_shapes(shared)
        common = [k for k in lanes if k in theirs][:40]
        assert len(common) > 10
        for k in common:  # their lane's points lie on our lane (ends differ with options; offsets ~330 m)
            a = np.stack(sumo_to_carla(lanes[k][:, 0], lanes[k][:, 1], net_offset=ours.net_offset), axis=1)
            b = np.stack(sumo_to_carla(theirs[k][:, 0], theirs[k][:, 1], net_offset=off), axis=1)
            assert np.median(_dist_to_polyline(b, a)) < 0.5, k


def test_bad_map_is_input_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CARLA_MR_CACHE", str(tmp_path / "cache"))
    with pytest.raises(InputError):
        build_net(tmp_path / "missing.xodr")
    bad = tmp_path / "bad.xodr"
    bad.write_text("<OpenDRIVE><road/></OpenDRIVE>")
    with pytest.raises(InputError):
        build_net(bad)
    assert not list((tmp_path / "cache" / "nets").iterdir())  # no half-written net left behind


def test_stop_signs_become_stop_junctions(tmp_path, monkeypatch):
    """Stop signs on some approaches -> priority_stop; on every approach -> allway_stop;
    lane geometry is unchanged by the patch."""
    from pathlib import Path

    from carla_mr.world.maps import inject_text
    from carla_mr.world.opendrive import SignPlacement, parse_xodr, roads
    from carla_mr.world.sumo_net import _net_graph, stop_controlled_nodes

    monkeypatch.setenv("CARLA_MR_CACHE", str(tmp_path / "cache"))
    text = (Path(__file__).resolve().parents[2] / "maps" / "mr_town.xodr").read_text()
    tree = parse_xodr(text)
    root = tree.getroot()
    jname = {j.get("id"): j.get("name") for j in root.findall("junction")}
    into: dict[str, list] = {}
    for r in roads(tree):
        suc = r.element.find("link/successor")
        if not r.in_junction and r.right and suc is not None and suc.get("elementType") == "junction":
            into.setdefault(jname[suc.get("elementId")], []).append(r)
    # a border T-junction of the town grid (no lights; its side street already has a stop sign)
    target = into["n0_2"]
    assert len(target) == 3
    out, _ = inject_text(text, [SignPlacement("stop", r.id, r.length - 3, "+") for r in target])
    xodr = tmp_path / "allway.xodr"
    xodr.write_text(out)
    net = build_net(xodr)
    types = stop_controlled_nodes(out, net.path)
    assert sorted(types.values()) == ["allway_stop"] + ["priority_stop"] * 3  # + the map's other 3
    edges, nodes = _net_graph(net.path)
    for node, typ in types.items():
        assert nodes[node] == typ
    plain = build_net(Path(__file__).resolve().parents[2] / "maps" / "mr_town.xodr")
    a, b = _lane_shapes(plain.path), _lane_shapes(net.path)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

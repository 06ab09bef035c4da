"""The map's OpenDRIVE ``<object>``s: poses in CARLA's frame, repeats, outlines, which are
skipped (signs already, no size), their meshes, and that they occlude signs in the OpenGL
camera. The shipped towns carry speed-sign objects only, so the drawing of other types is
checked on a small synthetic map here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from carla_mr.errors import InputError
from carla_mr.world.gl_objects import category, ear_clip
from carla_mr.world.gl_props import map_objects
from carla_mr.world.gl_scene import Mesh
from carla_mr.world.xodr_objects import read_objects, reference_pose

#: A straight road from (10, 20) heading north in OpenDRIVE (pi/2), 100 m, elevation
#: 1 + 0.01 s. A point (s, t) lies at x_odr = 10 - t, y_odr = 20 + s, so in CARLA's frame at
#: x = 10 - t, y = -(20 + s), z = 1 + 0.01 s + zOffset, yaw = -(90 + hdg in degrees).
POLE = '<object id="1" type="pole" name="pole1" s="30" t="-6" zOffset="0" hdg="0" height="5" radius="0.15"/>'
BUILDING = ('<object id="2" type="building" name="house" s="50" t="-12" zOffset="0" hdg="0.5" '
            'length="10" width="6" height="8"/>')
CROSSWALK = ('<object id="3" type="crosswalk" name="cw" s="80" t="0" zOffset="0" hdg="0" length="3" width="8">'
             '<outline><cornerLocal u="-1.5" v="-4" z="0" height="0"/><cornerLocal u="1.5" v="-4" z="0" height="0"/>'
             '<cornerLocal u="1.5" v="4" z="0" height="0"/><cornerLocal u="-1.5" v="4" z="0" height="0"/></outline>'
             '</object>')
BOLLARDS = ('<object id="4" type="pole" name="bollard" s="10" t="6" height="1" radius="0.1">'
            '<repeat s="10" length="20" distance="5" tStart="6" tEnd="7" heightStart="1" heightEnd="1"/></object>')
GUARD = ('<object id="5" type="barrier" name="guard" s="0" t="8" height="0.8" width="0.2">'
         '<repeat s="0" length="10" distance="0"/></object>')
SPEED = ('<object id="6" type="-1" name="Speed_30" s="60" t="-6" zOffset="0.15" hdg="0" height="0" width="0" '
         'length="0"/>')
MYSTERY = '<object id="7" type="-1" name="mystery" s="5" t="-9" height="0" width="0" length="0"/>'
ALL = (POLE, BUILDING, CROSSWALK, BOLLARDS, GUARD, SPEED, MYSTERY)


def _lane(lid: int, kind: str, width: float) -> str:
    return (f'<lane id="{lid}" type="{kind}" level="false"><link/><width sOffset="0" a="{width}" b="0" c="0" d="0"/>'
            f'<roadMark sOffset="0" type="solid" weight="standard" color="standard" width="0.15"/></lane>')


def road_xml(rid: int, geometry: str, length: float, objects=(), signals: str = "", elevation: str = "") -> str:
    """One road with a 3.5 m driving lane and a 2 m sidewalk each side."""
    lanes = ('<lanes><laneSection s="0"><left>' + _lane(2, "sidewalk", 2.0) + _lane(1, "driving", 3.5) + '</left>'
             '<center><lane id="0" type="none" level="false"><roadMark sOffset="0" type="solid" weight="standard" '
             'color="yellow" width="0.15"/></lane></center><right>'
             + _lane(-1, "driving", 3.5) + _lane(-2, "sidewalk", 2.0) + '</right></laneSection></lanes>')
    objs = f"<objects>{''.join(objects)}</objects>" if objects else ""
    return (f'<road name="r{rid}" length="{length}" id="{rid}" junction="-1"><link/><planView>{geometry}</planView>'
            f'<elevationProfile>{elevation}</elevationProfile><lateralProfile/>{lanes}{objs}{signals}</road>')


def xodr(objects=ALL, signals: str = "", extra: str = "") -> str:
    geometry = '<geometry s="0" x="10" y="20" hdg="1.5707963267948966" length="100"><line/></geometry>'
    elevation = '<elevation s="0" a="1" b="0.01" c="0" d="0"/>'
    return ('<?xml version="1.0"?><OpenDRIVE><header revMajor="1" revMinor="4" name="synthetic"/>'
            + road_xml(1, geometry, 100.0, objects, signals, elevation) + extra + '</OpenDRIVE>')


def carla_pose(s: float, t: float, z_offset: float = 0.0, hdg: float = 0.0) -> tuple[float, float, float, float]:
    """The hand-computed pose (CARLA frame) of road coordinates on the synthetic road."""
    return 10.0 - t, -(20.0 + s), 1.0 + 0.01 * s + z_offset, -(90.0 + math.degrees(hdg))


def rows(objs, name: str) -> np.ndarray:
    return np.nonzero(objs.name == name)[0]


def test_poses_are_in_carlas_frame():
    objs = read_objects(xodr())
    for name, (s, t, zo, hdg) in {"pole1": (30, -6, 0, 0), "house": (50, -12, 0, 0.5), "cw": (80, 0, 0, 0),
                                  "Speed_30": (60, -6, 0.15, 0)}.items():
        (i,) = rows(objs, name)
        got = (objs.x[i], objs.y[i], objs.z[i], objs.yaw[i])
        np.testing.assert_allclose(got, carla_pose(s, t, zo, hdg), atol=1e-9, err_msg=name)
    (i,) = rows(objs, "house")
    assert (objs.length[i], objs.width[i], objs.height[i]) == (10.0, 6.0, 8.0)
    (i,) = rows(objs, "pole1")
    assert objs.radius[i] == 0.15 and objs.height[i] == 5.0


def test_outline_corners_follow_the_object_and_road():
    objs = read_objects(xodr())
    (i,) = rows(objs, "cw")
    corners, heights = objs.outline(i)
    # u runs along the road (-y in CARLA), v to its left (-x in CARLA, the road heads north)
    want = [(10 + 4, -100 + 1.5), (10 + 4, -100 - 1.5), (10 - 4, -100 - 1.5), (10 - 4, -100 + 1.5)]
    np.testing.assert_allclose(corners[:, :2], want, atol=1e-9)
    np.testing.assert_allclose(corners[:, 2], 1.8) and np.testing.assert_allclose(heights, 0.0)
    assert objs.outline(int(rows(objs, "pole1")[0]))[0].shape == (0, 3)


def test_corner_road_outline_is_placed_in_road_coordinates():
    obj = ('<object id="9" type="roadMark" name="patch" s="40" t="0"><outline>'
           '<cornerRoad s="40" t="-1" dz="0" height="0"/><cornerRoad s="42" t="-1" dz="0" height="0"/>'
           '<cornerRoad s="42" t="1" dz="0.1" height="0"/></outline></object>')
    objs = read_objects(xodr([obj]))
    corners, _ = objs.outline(0)
    np.testing.assert_allclose(corners, [(11, -60, 1.4), (11, -62, 1.42), (9, -62, 1.52)], atol=1e-9)


def test_repeat_expands_to_its_count_and_interpolates():
    objs = read_objects(xodr())
    idx = rows(objs, "bollard")
    assert len(idx) == 5  # s = 10, 15, 20, 25, 30
    np.testing.assert_allclose(objs.s[idx], [10, 15, 20, 25, 30])
    np.testing.assert_allclose(objs.t[idx], [6, 6.25, 6.5, 6.75, 7])
    np.testing.assert_allclose(objs.x[idx], 10 - objs.t[idx])
    guard = rows(objs, "guard")  # continuous: 2 m pieces along the road
    assert len(guard) == 5
    np.testing.assert_allclose(objs.s[guard], [1, 3, 5, 7, 9]) and np.testing.assert_allclose(objs.length[guard], 2)
    np.testing.assert_allclose(objs.yaw[guard], -90.0)
    assert len(objs) == 15


def test_which_objects_are_drawn_and_counted():
    objs = read_objects(xodr())
    counts = map_objects(objs, Mesh())
    assert counts == {"parsed": 15, "drawn": {"barrier": 5, "building": 1, "crosswalk": 1, "pole": 6},
                      "skipped_signs": 1, "skipped_unsized": 1, "references": 0}
    # a sign nearby (the sign table's positions) skips an object whatever its name
    near = np.array([[objs.x[rows(objs, "house")[0]] + 0.5, objs.y[rows(objs, "house")[0]]]])
    assert map_objects(objs, Mesh(), near)["drawn"].get("building", 0) == 0


def _extent(mesh: Mesh) -> tuple[np.ndarray, np.ndarray]:
    p = mesh.interleaved()[:, :3]
    return p.min(axis=0), p.max(axis=0)


def test_pole_and_building_triangles_stand_where_the_objects_are():
    mesh = Mesh()
    map_objects(read_objects(xodr([POLE])), mesh)
    lo, hi = _extent(mesh)
    x, y, z, _ = carla_pose(30, -6)
    assert lo[0] < x < hi[0] and lo[1] < y < hi[1] and hi[0] - lo[0] <= 0.31
    assert lo[2] == pytest.approx(z, abs=1e-5) and hi[2] - lo[2] == pytest.approx(5.0, abs=1e-5)
    mesh = Mesh()
    map_objects(read_objects(xodr([BUILDING])), mesh)
    lo, hi = _extent(mesh)
    x, y, z, yaw = carla_pose(50, -12, 0, 0.5)
    a = math.radians(yaw)
    half = 0.5 * np.abs(np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])) @ [10, 6]
    np.testing.assert_allclose(lo[:2], [x - half[0], y - half[1]], atol=1e-4)
    np.testing.assert_allclose(hi[:2], [x + half[0], y + half[1]], atol=1e-4)
    assert hi[2] - lo[2] == pytest.approx(8.0, abs=1e-4)


def test_continuous_barrier_is_a_thin_wall_along_the_road():
    mesh = Mesh()
    map_objects(read_objects(xodr([GUARD])), mesh)
    lo, hi = _extent(mesh)  # t = 8 (x = 2), 0.2 m thick, s = 0..10 (y = -20..-30), 0.8 m high
    np.testing.assert_allclose([lo[0], hi[0], lo[1], hi[1]], [1.9, 2.1, -30, -20], atol=1e-4)
    # 2 m pieces, each at the elevation of its centre (s = 1, 3, ..., 9)
    assert lo[2] == pytest.approx(1.01, abs=1e-5) and hi[2] == pytest.approx(1.09 + 0.8, abs=1e-5)


def test_crosswalk_is_white_stripes_just_above_the_road():
    mesh = Mesh()
    map_objects(read_objects(xodr([CROSSWALK])), mesh)
    rows_ = mesh.interleaved()
    assert len(rows_) and np.allclose(rows_[:, 2], 1.8 + 0.015, atol=1e-5) and (rows_[:, 6:9] > 0.9).all()
    lo, hi = _extent(mesh)
    assert lo[0] >= 6 - 1e-4 and hi[0] <= 14 + 1e-4 and lo[1] >= -101.5 - 1e-4 and hi[1] <= -98.5 + 1e-4
    # 8 stripes of 0.5 m with 0.5 m gaps across the 8 m (along x), each 3 m long: 12 m^2 painted
    tri = rows_[:, :3].reshape(-1, 3, 3)
    area = 0.5 * np.abs(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])[:, 2]).sum()
    assert area == pytest.approx(12.0, abs=1e-3)
    cx = tri[:, :, 0].mean(axis=1)
    assert len(np.unique(np.floor(cx - 6.25))) == 8 and (((cx - 6.25) % 1.0) < 0.5).all()


def test_lamps_trees_marks_and_unknown_boxes():
    lamp = '<object id="1" type="streetLamp" name="lamp" s="20" t="-6"/>'
    tree = '<object id="2" type="-1" name="Tree_3" s="40" t="-8"/>'
    box = '<object id="3" type="-1" name="Kiosk" s="60" t="-9" length="2" width="2" height="2.5"/>'
    mark = ('<object id="4" type="roadMark" name="arrow" s="70" t="-1.75"><outline>'
            '<cornerLocal u="0" v="0" z="0" height="0"/><cornerLocal u="2" v="0" z="0" height="0"/>'
            '<cornerLocal u="2" v="0.5" z="0" height="0"/></outline></object>')
    objs = read_objects(xodr([lamp, tree, box, mark]))
    counts = map_objects(objs, Mesh())
    assert counts["drawn"] == {"other": 1, "road_mark": 1, "street_lamp": 1, "tree": 1}
    for obj, check in ((lamp, "lamp"), (box, "box"), (mark, "mark")):
        mesh = Mesh()
        map_objects(read_objects(xodr([obj])), mesh)
        lo, hi = _extent(mesh)
        col = mesh.interleaved()[:, 6:9]
        if check == "lamp":  # 8 m by default, its head glows (colours above 1)
            assert hi[2] - lo[2] == pytest.approx(8.0, abs=1e-5) and (col > 1.0).any()
        elif check == "box":
            assert hi[2] - lo[2] == pytest.approx(2.5, abs=1e-5) and np.allclose(col, 0.5)
        else:  # a flat white triangle, 0.5 m^2, just above the road
            tri = mesh.interleaved()[:, :3].reshape(-1, 3, 3)
            area = 0.5 * np.abs(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])[:, 2]).sum()
            assert area == pytest.approx(0.5) and np.allclose(tri[..., 2], 1.7 + 0.015, atol=1e-5)


def test_ear_clip_handles_concave_outlines():
    ell = np.array([(0, 0, 0), (4, 0, 0), (4, 1, 0), (1, 1, 0), (1, 3, 0), (0, 3, 0)], float)
    tri = ell[ear_clip(ell)]
    area = 0.5 * np.abs(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])[:, 2]).sum()
    assert len(tri) == 4 and area == pytest.approx(6.0)


def test_categories_by_type_then_name():
    assert category("streetLamp") == "street_lamp" and category("pole") == "pole"
    assert category("-1", "Tree_01") == "tree" and category("-1", "Speed_30") == "other"
    assert category("railing") == category("soundBarrier") == "barrier" and category("roadMark") == "road_mark"


def test_bad_xml_and_numbers_are_input_errors():
    with pytest.raises(InputError):
        read_objects("<nope/>")
    with pytest.raises(InputError):
        read_objects(xodr(['<object id="1" type="pole" s="abc" t="0"/>']))


def test_town01_objects_are_all_signs_already(town01):
    carla = pytest.importorskip("carla")
    from carla_mr.world.gl_props import map_sign_xy

    text = town01.read_text()
    objs = read_objects(text)
    assert len(objs) == 22 and objs.references == 0
    mesh = Mesh()
    counts = map_objects(objs, mesh, map_sign_xy(carla.Map("Town01", text)))
    assert counts["drawn"] == {} and counts["skipped_signs"] == 22 and len(mesh) == 0


def _chained(kinds: list[tuple[str, float]]) -> str:
    """``<geometry>``s of the given kinds and lengths, each starting where the previous ends."""
    import xml.etree.ElementTree as ET

    out, s0, pose = "", 0.0, (0.0, 0.0, 0.3)
    for kind, length in kinds:
        out += (f'<geometry s="{s0}" x="{pose[0]!r}" y="{pose[1]!r}" hdg="{pose[2]!r}" length="{length}">'
                f'{kind}</geometry>')
        s0 += length
        x, y, h = reference_pose(ET.fromstring(road_xml(2, out, s0)), [s0 - 1e-9])
        pose = (float(x[0]), float(y[0]), float(h[0]))
    return out


def test_reference_line_matches_libcarla_on_every_geometry_kind():
    carla = pytest.importorskip("carla")
    import xml.etree.ElementTree as ET

    geometry = _chained([("<line/>", 30.0), ('<spiral curvStart="0" curvEnd="0.02"/>', 40.0),
                         ('<arc curvature="0.02"/>', 20.0), ('<spiral curvStart="0.02" curvEnd="-0.01"/>', 20.0),
                         ('<poly3 a="0" b="0" c="0.01" d="-0.0002"/>', 30.0),
                         ('<paramPoly3 aU="0" bU="30" cU="0" dU="0" aV="0" bV="0" cV="3" dV="-1" pRange="normalized"/>',
                          30.0)])
    text = ('<?xml version="1.0"?><OpenDRIVE><header revMajor="1" revMinor="4" name="g"/>'
            + road_xml(2, geometry, 170.0) + '</OpenDRIVE>')
    cmap = carla.Map("g", text)
    road = ET.fromstring(text).find("road")
    for s in (5.0, 35.0, 50.0, 69.0, 80.0, 100.0, 115.0, 125.0, 135.0, 150.0, 165.0):
        wp = cmap.get_waypoint_xodr(2, -1, s)
        x, y, h = reference_pose(road, [s])
        xr, yr = x[0] + math.sin(h[0]) * 1.75, y[0] - math.cos(h[0]) * 1.75  # lane -1's centre, t = -1.75
        loc = wp.transform.location
        assert (xr, -yr) == pytest.approx((loc.x, loc.y), abs=0.02), s
        assert ((-math.degrees(h[0]) - wp.transform.rotation.yaw + 180) % 360 - 180) == pytest.approx(0, abs=0.2), s


def test_a_building_object_hides_the_sign_behind_it():
    from carla_mr.config.camera import CameraSpec
    from carla_mr.world.gl_render import GLSceneRenderer
    from carla_mr.world.render import camera_pose
    from carla_mr.world.sign_geometry import build_sign_geometry

    from tests.world.render.test_render import one_sign

    spec = CameraSpec(width=160, height=120, fov_deg=90.0)
    x, y, z, _ = carla_pose(50, -12)  # the house: 10 x 6 x 8 m
    signs = one_sign(x=x, y=y - 30.0, z=z + 2.0, yaw=90.0)  # 30 m beyond it, facing the camera
    pose = camera_pose(spec, x, y + 30.0, z, -90.0)  # 30 m before it, looking down the road (-y)
    mesh = Mesh()
    map_objects(read_objects(xodr([BUILDING])), mesh)
    _, _, free = GLSceneRenderer(Mesh(), build_sign_geometry(signs)).render(spec, pose, None, {})
    _, ids, hidden = GLSceneRenderer(mesh, build_sign_geometry(signs)).render(spec, pose, None, {})
    assert len(free) == 1 and free[0]["visible"] == 1.0
    assert not hidden or hidden[0]["visible"] < 0.05
    assert (ids == 1).sum() < 0.05 * free[0]["pixels"]


def test_props_mesh_draws_the_maps_objects_and_reports_them():
    carla = pytest.importorskip("carla")
    from carla_mr.world.gl_props import map_sign_xy, props_mesh, town_mesh
    from carla_mr.world.scene import build_road_scene

    cmap = carla.Map("synthetic", xodr())
    # libcarla makes the Speed_ object a speed-limit landmark: a sign of the sign table
    np.testing.assert_allclose(map_sign_xy(cmap), [carla_pose(60, -6)[:2]], atol=1e-4)
    scene = build_road_scene(cmap)
    _, counts = props_mesh(scene, cmap, seed=1)
    got = counts["map_objects"]
    assert got["drawn"] == {"barrier": 5, "building": 1, "crosswalk": 1, "pole": 6}
    assert got["skipped_signs"] == 1 and got["skipped_unsized"] == 1 and counts["crosswalk_stripes"] == 0
    filled: dict = {}
    town_mesh(scene, cmap, seed=1, counts=filled)
    assert filled["map_objects"] == got


def test_a_lane_without_road_marks_builds_a_scene_with_no_marks_for_it():
    """A user's map may give a lane no ``<roadMark>``; libcarla then returns no marking and the
    scene draws none there instead of failing."""
    import re

    carla = pytest.importorskip("carla")
    from carla_mr.world.scene import build_road_scene

    bare = re.sub(r"<roadMark [^>]*/>", "", xodr(objects=()))
    assert "roadMark" not in bare
    scene = build_road_scene(carla.Map("nomarks", bare))
    assert len(scene.road) > 0 and len(scene.marks) == 0

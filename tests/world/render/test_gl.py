"""The OpenGL camera: labels agree with the instance-id pass, occlusion by anything drawn,
depth in metres, traffic-light state, and the CPU fallback when no context can be made.

These tests need an EGL context (Mesa llvmpipe is enough): they fail, not skip, without one,
except the fallback tests, which simulate a missing context."""

from __future__ import annotations

import numpy as np
import pytest

from carla_mr.config.camera import CameraSpec
from carla_mr.errors import RunError
from carla_mr.world.base import SignTable, SignTexture
from carla_mr.world.gl_scene import Mesh
from carla_mr.world.render import SceneRenderer, camera_pose, make_renderer
from carla_mr.world.scene import RoadScene
from carla_mr.world.sign_geometry import build_sign_geometry

from tests.world.render.test_render import bbox, one_sign, snapshot, solid

SPEC = CameraSpec(width=320, height=240, fov_deg=90.0)
MAGENTA = (255, 0, 255)


def gl(signs, **kw):
    from carla_mr.world.gl_render import GLSceneRenderer

    return GLSceneRenderer(Mesh(), build_sign_geometry(signs), **kw)


def signs_table(rows) -> SignTable:
    a = list(zip(*rows))
    o = lambda v: np.array(v, dtype=object)  # noqa: E731
    f = lambda v: np.array(v, dtype=np.float64)  # noqa: E731
    n = len(rows)
    return SignTable(o(a[0]), o(a[1]), f([np.nan] * n), o(["x"] * n), f(a[2]), f(a[3]), f(a[4]), f([180.0] * n),
                     f([1.0] * n), f([1.0] * n), np.arange(n))


def check_labels_match_id_pass(ids: np.ndarray, labels: list[dict]) -> None:
    for lab in labels:
        m = ids == lab["instance"]
        assert m.sum() == lab["pixels"] > 0
        assert lab["visible_box"] == bbox(m)
        x0, y0, x1, y1 = lab["amodal_bbox"]
        v0, w0, v1, w1 = lab["visible_box"]
        assert x0 <= v0 and y0 <= w0 and v1 <= x1 and w1 <= y1
        assert lab["visible"] == pytest.approx(lab["pixels"] / lab["face_pixels"])


def test_unoccluded_sign_matches_cpu_renderer_and_id_pass():
    signs = one_sign(x=20.0, z=2.0, w=1.0, h=1.0)
    pose = camera_pose(SPEC, 0.0, 0.0, 0.0, 0.0)
    tex = {"s1": SignTexture("generated", "t", solid(MAGENTA))}
    img, ids, labels = gl(signs).render(SPEC, pose, None, tex)
    assert len(labels) == 1 and labels[0]["visible"] == 1.0
    check_labels_match_id_pass(ids, labels)
    _, _, cpu = SceneRenderer(RoadScene(np.zeros((0, 4, 3)), np.zeros((0, 3), np.uint8), np.zeros((0, 4, 3)),
                                        np.zeros((0, 3), np.uint8), (-1, -1, 1, 1), []),
                              build_sign_geometry(signs)).render(SPEC, pose, None, tex)
    assert np.abs(np.array(labels[0]["box"]) - np.array(cpu[0]["box"])).max() <= 1
    px = img[ids == 1].astype(int)
    assert (px[:, 0] > 150).all() and (px[:, 1] < 40).all() and (px[:, 2] > 150).all()


@pytest.mark.parametrize("label_class, want_class, want_value", [
    ("speed_limit_80", "speed_limit_80", 80.0),  # the validator read 80 on the generated face
    ("speed_limit", "speed_limit", None),  # it read no value: the generic class, never the sign's 30
    (None, "speed_limit_30", 30.0)])  # no generated face: the in-world sign's own value
def test_both_renderers_label_a_generated_face_with_what_the_validator_read(label_class, want_class, want_value):
    signs = one_sign(x=20.0, z=2.0, kind="speed_limit")
    signs.value[0] = 30.0
    pose = camera_pose(SPEC, 0.0, 0.0, 0.0, 0.0)
    tex = {"s1": SignTexture("generated", "t", solid(MAGENTA), label_class=label_class)}
    empty = RoadScene(np.zeros((0, 4, 3)), np.zeros((0, 3), np.uint8), np.zeros((0, 4, 3)), np.zeros((0, 3), np.uint8),
                      (-1, -1, 1, 1), [])
    for renderer in (gl(signs), SceneRenderer(empty, build_sign_geometry(signs))):
        _, _, labels = renderer.render(SPEC, pose, None, tex)
        assert [(lab["class"], lab["value"], lab["source"]) for lab in labels] == [(want_class, want_value,
                                                                                   "generated")]


def test_vehicle_occludes_sign_and_box_follows_visible_pixels():
    signs = one_sign(x=30.0, y=0.0, z=1.0, w=2.0, h=2.0)
    pose = camera_pose(SPEC, 0.0, 0.0, 0.0, 0.0)
    r = gl(signs)
    _, _, free = r.render(SPEC, pose, None, {})
    img, ids, labels = r.render(SPEC, pose, snapshot([15.0], [1.2], [0.0]), {})
    lab = labels[0]
    assert 0.05 < lab["visible"] < 0.99
    assert lab["amodal_bbox"] == free[0]["amodal_bbox"] and lab["face_pixels"] == free[0]["face_pixels"]
    assert lab["pixels"] < free[0]["pixels"]
    check_labels_match_id_pass(ids, labels)


def test_signs_occlude_each_other_and_back_faces_are_not_labelled():
    rows = [("a", "parking", 20.0, 0.0, 1.8), ("b", "stop", 30.0, 0.4, 1.8)]
    signs = signs_table(rows)
    pose = camera_pose(SPEC, 0.0, 0.0, 0.0, 0.0)
    img, ids, labels = gl(signs).render(SPEC, pose, None, {})
    by = {lab["id"]: lab for lab in labels}
    assert by["a"]["visible"] == 1.0 and 0.0 < by["b"]["visible"] < 0.9
    check_labels_match_id_pass(ids, labels)
    behind = camera_pose(SPEC, 50.0, 0.0, 0.0, 180.0)  # looking at the backs
    _, ids2, labels2 = gl(signs).render(SPEC, behind, None, {})
    assert labels2 == [] and not ids2.any()


def test_depth_is_metres_along_the_camera_axis():
    signs = one_sign(x=25.0, y=2.0, z=1.6, w=1.0, h=1.0)
    r = gl(signs)
    spec = CameraSpec(width=160, height=120, fov_deg=90.0)
    pose = camera_pose(spec, 0.0, 0.0, 0.0, 0.0)  # camera at x = 1.5
    _, ids, labels = r.render(spec, pose, None, {})
    d = r.depth[ids == 1]
    assert d.size and np.allclose(d, 25.0 - 1.5, atol=0.02)
    assert r.depth[0, 0] == 0.0  # sky


def test_traffic_light_shows_and_labels_its_state():
    signs = one_sign(x=12.0, z=1.6, kind="traffic_light", w=0.5, h=1.2)
    r = gl(signs)
    pose = camera_pose(SPEC, 0.0, 0.0, 0.0, 0.0)
    out = {}
    for st in ("red", "green"):
        img, ids, labels = r.render(SPEC, pose, None, {}, tl_state={"s1": st})
        assert labels[0]["state"] == st
        x0, y0, x1, y1 = labels[0]["box"]
        out[st] = img[y0:y1, x0:x1].astype(int)
    h = out["red"].shape[0]
    top_red = out["red"][: h // 3, :, 0].max()
    top_green = out["green"][: h // 3, :, 0].max()
    assert top_red > 150 and top_green < 0.5 * top_red  # the red lamp is lit only when red
    _, _, labels = r.render(SPEC, pose, None, {})
    assert labels[0]["state"] == "unknown"


def test_fallback_warns_and_names_what_to_install(monkeypatch):
    import carla_mr.world.gl_context as glc

    monkeypatch.setattr(glc, "gl_available", lambda: (False, "no OpenGL context: simulated"))
    signs = one_sign()
    scene = RoadScene(np.zeros((0, 4, 3)), np.zeros((0, 3), np.uint8), np.zeros((0, 4, 3)),
                      np.zeros((0, 3), np.uint8), (-1, -1, 1, 1), [])
    with pytest.warns(RuntimeWarning, match="moderngl.*EGL/Mesa"):
        r = make_renderer(scene, build_sign_geometry(signs), renderer="auto")
    assert isinstance(r, SceneRenderer)
    with pytest.raises(RunError, match="simulated"):
        make_renderer(scene, build_sign_geometry(signs), renderer="gl")
    assert isinstance(make_renderer(scene, build_sign_geometry(signs), renderer="cpu"), SceneRenderer)


def test_gl_context_reports_llvmpipe_or_a_gpu():
    from carla_mr.world.gl_context import gl_available

    ok, what = gl_available()
    assert ok, what  # this machine must have EGL: see README (system libraries)
    assert "OpenGL" in what


def test_world_sign_poses_are_the_rendered_ones(town01):
    pytest.importorskip("libsumo")
    from carla_mr.config import scenario_from_dict
    from carla_mr.world.embedded import EmbeddedWorld

    sc = scenario_from_dict({"map": str(town01), "seed": 1, "vehicles": {"avs": 1, "background": 0},
                             "signs": {"random_count": 20}})
    with EmbeddedWorld(sc, seed=1) as w:
        snap = w.reset()
        w.attach_camera("c", SPEC, int(snap.ids[0]))
        geom = w._camera_rig.geom
        np.testing.assert_allclose(geom.center, np.stack([w.signs.x, w.signs.y, w.signs.z], 1), atol=1e-9)
        np.testing.assert_allclose(geom.width, w.signs.width)
        fr = w.read_camera("c")
        for lab in fr.labels:
            i = list(w.signs.ids).index(lab["id"])
            assert lab["position"] == pytest.approx([w.signs.x[i], w.signs.y[i], w.signs.z[i]])
        # the world summary reports the town's props, the map's <object>s among them
        objs = w.summary()["scene"]["map_objects"]
        assert objs["parsed"] == 22 and objs["drawn"] == {} and objs["skipped_signs"] == 22


def test_tl_state_of_sumo_link_strings():
    from carla_mr.world.gl_render import tl_state_of

    assert tl_state_of("GGg") == "green" and tl_state_of("rrGg") == "red" and tl_state_of("yyr") == "yellow"
    assert tl_state_of("") == tl_state_of(None) == tl_state_of("oO") == "unknown"


def test_weather_presets_change_light_and_fog():
    from carla_mr.config.camera import WEATHER_PRESETS
    from carla_mr.world.gl_render import GLSceneRenderer
    from carla_mr.world.gl_scene import road_mesh, terrain_mesh, merged

    quads = np.array([[[x, -4, 0], [x + 10, -4, 0], [x + 10, 4, 0], [x, 4, 0]] for x in range(0, 400, 10)], float)
    scene = RoadScene(quads, np.tile(np.array([70, 70, 74], np.uint8), (len(quads), 1)), np.zeros((0, 4, 3)),
                      np.zeros((0, 3), np.uint8), (0, -4, 400, 4), [])
    r = GLSceneRenderer(merged(road_mesh(scene), terrain_mesh(scene)), build_sign_geometry(one_sign(x=1e6)))
    pose = camera_pose(SPEC, 0.0, 0.0, 0.0, 0.0)
    mean = {}
    for w in WEATHER_PRESETS:
        img, _, _ = r.render(SPEC.model_copy(update={"weather": w}), pose)
        mean[w] = img.astype(float).mean()
        if w == "fog":  # the road 100+ m ahead takes the fog's colour
            far = img[SPEC.height // 2 + 2, SPEC.width // 2].astype(float)
            assert np.abs(far - np.array(WEATHER_PRESETS["fog"]["fog"])).max() < 25
    assert mean["night"] < 0.35 * mean["clear"] and mean["dusk"] < mean["clear"]
    assert len(set(round(v) for v in mean.values())) == len(mean)  # every preset looks different


def test_props_are_seeded_and_stay_off_driving_lanes(town01):
    carla = pytest.importorskip("carla")
    import cv2

    from carla_mr.world.gl_props import RoadRaster, props_mesh
    from carla_mr.world.gl_scene import SIDEWALK
    from carla_mr.world.scene import build_road_scene

    cmap = carla.Map("Town01", town01.read_text())
    scene = build_road_scene(cmap)
    a, counts = props_mesh(scene, None, seed=3)
    b, _ = props_mesh(scene, None, seed=3)
    c, _ = props_mesh(scene, None, seed=4)
    assert counts["buildings"] > 50 and counts["street_trees"] > 50 and counts["verge_trees"] > 50
    np.testing.assert_array_equal(a.interleaved(), b.interleaved())
    assert a.interleaved().shape != c.interleaved().shape or not np.array_equal(a.interleaved(), c.interleaved())
    # No prop vertex stands inside a driving lane (sidewalks may hold street trees).
    lanes = scene.road[~(scene.road_color == SIDEWALK).all(axis=1)]
    rr = RoadRaster(lanes, scene.extent)
    inner = cv2.erode(rr.road, np.ones((3, 3), np.uint8))  # 1 m inside the lanes' edges
    pos = a.interleaved()[:, :3]
    r, cc = ((pos[:, 1] - rr.y0) / 1.0).astype(int), ((pos[:, 0] - rr.x0) / 1.0).astype(int)
    ok = (r >= 0) & (r < rr.h) & (cc >= 0) & (cc < rr.w)
    low = pos[ok, 2] < 2.5  # crowns may overhang a lane above 2.5 m
    bad = inner[r[ok][low], cc[ok][low]] > 0
    assert not bad.any(), pos[ok][low][bad][:5]

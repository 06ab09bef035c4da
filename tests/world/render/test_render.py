"""The embedded camera: CARLA-exact transforms and intrinsics, labels that match the pixels,
occlusion shares, back faces, near-plane clipping."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carla_mr.world.base import SignTable, SignTexture, Snapshot
from carla_mr.config.camera import CameraSpec
from carla_mr.world.render import (EmbeddedCameraRig, SceneRenderer, camera_pose, carla_matrix, clip_polygon)
from carla_mr.world.scene import RoadScene
from carla_mr.world.sign_geometry import build_sign_geometry

MAGENTA = (255, 0, 255)


def empty_scene() -> RoadScene:
    z = np.zeros((0, 4, 3))
    c = np.zeros((0, 3), np.uint8)
    return RoadScene(z, c, z.copy(), c.copy(), (-10, -10, 10, 10), [])


def one_sign(x=20.0, y=0.0, z=2.0, yaw=180.0, kind="parking", w=1.0, h=1.0) -> SignTable:
    o = lambda v: np.array([v], dtype=object)  # noqa: E731
    f = lambda v: np.array([v], dtype=np.float64)  # noqa: E731
    return SignTable(o("s1"), o(kind), f(np.nan), o("x"), f(x), f(y), f(z), f(yaw), f(w), f(h), np.array([1]))


def solid(colour, size=64, alpha=True) -> np.ndarray:
    img = np.zeros((size, size, 4 if alpha else 3), np.uint8)
    img[:, :, :3] = colour
    if alpha:
        img[:, :, 3] = 255
    return img


def snapshot(xs, ys, yaws, ids=None) -> Snapshot:
    n = len(xs)
    ids = np.arange(n) if ids is None else np.asarray(ids)
    return Snapshot(0, 0.0, ids.astype(np.int64), np.zeros(n, np.uint8), np.asarray(xs, float), np.asarray(ys, float),
                    np.zeros(n), np.asarray(yaws, float), np.zeros(n), np.full(n, -1, np.int32))


def render(signs, pose, tex=None, vehicles=None, spec=CameraSpec()):
    r = SceneRenderer(empty_scene(), build_sign_geometry(signs))
    textures = {} if tex is None else {"s1": SignTexture("generated", "test", tex)}
    return r.render(spec, pose, vehicles, textures)


def magenta_mask(img):
    return (img[:, :, 0] == 255) & (img[:, :, 1] == 0) & (img[:, :, 2] == 255)


def bbox(mask):
    rows = np.nonzero(mask.any(axis=1))[0]
    cols = np.nonzero(mask.any(axis=0))[0]
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


@settings(max_examples=60, deadline=None)
@given(st.floats(-180, 180), st.floats(-89, 89), st.floats(-180, 180), st.floats(-50, 50), st.floats(-50, 50))
def test_carla_matrix_matches_libcarla(yaw, pitch, roll, x, y):
    carla = pytest.importorskip("carla")
    ours = carla_matrix(x, y, 1.5, pitch, yaw, roll)
    theirs = np.array(carla.Transform(carla.Location(x, y, 1.5), carla.Rotation(pitch, yaw, roll)).get_matrix())
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_known_texture_box_covers_exactly_its_pixels():
    """A sign painted a colour found nowhere else: the label box is the bbox of those pixels."""
    pose = camera_pose(CameraSpec(), 0.0, 0.0, 0.0, 0.0)
    img, ids, labels = render(one_sign(), pose, solid(MAGENTA))
    m = magenta_mask(img)
    assert m.sum() > 100
    assert len(labels) == 1
    lab = labels[0]
    assert lab["box"] == bbox(m) == lab["visible_box"]
    assert lab["pixels"] == int(m.sum()) == int((ids == 1).sum())
    assert lab["visible"] == 1.0 and lab["source"] == "generated" and lab["ref"] == "test"
    assert lab["distance"] == pytest.approx(math.dist((1.5, 0, 1.6), (20, 0, 2)), rel=1e-6)
    # Perspective: a 1 m face 18.5 m ahead spans f * 1 / 18.5 px (f = 320 at 640 px, 90 deg).
    x0, y0, x1, y1 = lab["box"]
    assert abs((x1 - x0) - 320 / 18.5) <= 1.5 and abs((y1 - y0) - 320 / 18.5) <= 1.5
    # Centre: 0.4 m above the camera -> 320 * 0.4 / 18.5 px above the image centre.
    assert abs((y0 + y1) / 2 - (240 - 320 * 0.4 / 18.5)) <= 1.0
    assert abs((x0 + x1) / 2 - 320) <= 1.0


def test_texture_orientation_left_right_top_bottom():
    tex = np.zeros((64, 64, 4), np.uint8)
    tex[:, :, 3] = 255
    tex[:32, :32, :3] = (255, 0, 0)  # top-left red
    tex[:32, 32:, :3] = (0, 255, 0)  # top-right green
    tex[32:, :, :3] = (0, 0, 255)  # bottom blue
    pose = camera_pose(CameraSpec(), 14.0, 0.0, 0.0, 0.0)  # 4.5 m in front of the face
    img, _, labels = render(one_sign(w=2.0, h=2.0), pose, tex)
    x0, y0, x1, y1 = labels[0]["box"]
    q = lambda fx, fy: tuple(img[int(y0 + fy * (y1 - y0)), int(x0 + fx * (x1 - x0))])  # noqa: E731
    assert q(0.25, 0.25) == (255, 0, 0) and q(0.75, 0.25) == (0, 255, 0) and q(0.5, 0.75) == (0, 0, 255)


def test_sign_shape_alpha_defines_the_label():
    """An RGB (no alpha) generated image takes the kind's silhouette; a disc covers ~pi/4 of its box."""
    pose = camera_pose(CameraSpec(), 8.0, 0.0, 0.0, 0.0)
    img, _, labels = render(one_sign(kind="speed_limit"), pose, solid(MAGENTA, 128, alpha=False))
    m = magenta_mask(img)
    lab = labels[0]
    assert lab["box"] == bbox(m) and lab["pixels"] == m.sum()
    x0, y0, x1, y1 = lab["box"]
    assert 0.70 < m.sum() / ((x1 - x0) * (y1 - y0)) < 0.85


def test_occlusion_share_is_exact():
    pose = camera_pose(CameraSpec(), 0.0, 0.0, 0.0, 0.0)
    sign = one_sign(x=30.0, y=0.0, z=1.0, w=2.0, h=2.0)
    img0, _, lab0 = render(sign, pose, solid(MAGENTA))
    full = magenta_mask(img0)
    car = snapshot([15.0], [1.2], [0.0])  # a car half in front of the sign
    img1, ids1, lab1 = render(sign, pose, solid(MAGENTA), vehicles=car)
    vis = magenta_mask(img1)
    assert 0 < vis.sum() < full.sum()
    lab = lab1[0]
    assert lab["box"] == lab0[0]["box"]  # the box is the unoccluded face
    assert lab["visible_box"] == bbox(vis)
    assert lab["visible"] == pytest.approx(vis.sum() / full.sum())
    # Fully hidden: no label at all.
    car2 = snapshot([15.0, 15.0], [1.2, -0.7], [0.0, 0.0])
    sign_low = one_sign(x=30.0, y=0.0, z=1.0, w=0.6, h=0.6)
    _, _, lab2 = render(sign_low, pose, solid(MAGENTA), vehicles=car2)
    assert lab2 == []


def test_back_face_and_behind_camera_give_no_label():
    pose = camera_pose(CameraSpec(), 0.0, 0.0, 0.0, 0.0)
    img, _, labels = render(one_sign(yaw=0.0), pose, solid(MAGENTA))  # face points away
    assert labels == [] and not magenta_mask(img).any()
    pose_back = camera_pose(CameraSpec(), 40.0, 0.0, 0.0, 0.0)  # sign behind the camera
    img, _, labels = render(one_sign(), pose_back, solid(MAGENTA))
    assert labels == [] and not magenta_mask(img).any()


def test_clip_polygon_against_near_plane():
    quad = np.array([[-1.0, -1, 0], [1.0, -1, 0], [1.0, 1, 0], [-1.0, 1, 0]])
    out = clip_polygon(quad, np.array([[1.0, 0, 0]]), np.array([0.1]))
    assert (out[:, 0] >= 0.1 - 1e-12).all() and len(out) == 4
    assert out[:, 0].min() == pytest.approx(0.1)
    assert len(clip_polygon(quad - [5, 0, 0], np.array([[1.0, 0, 0]]), np.array([0.1]))) == 0


@settings(max_examples=40, deadline=None)
@given(st.floats(5.0, 29.5), st.floats(-6, 6), st.floats(-60, 60), st.floats(-15, 15))
def test_labels_always_match_id_buffer(cx, cy, cyaw, pitch):
    """Any pose (incl. signs crossing the near plane or the image border): labels agree with pixels."""
    spec = CameraSpec(pitch=pitch)
    pose = camera_pose(spec, cx, cy, 0.0, cyaw)
    img, ids, labels = render(one_sign(x=30.0, w=1.5, h=1.5), pose, solid(MAGENTA), spec=spec)
    m = magenta_mask(img)
    assert ((ids == 1) == m).all()
    if labels:
        lab = labels[0]
        x0, y0, x1, y1 = lab["box"]
        assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480
        assert lab["visible_box"] == bbox(m) and lab["pixels"] == m.sum() and lab["visible"] == 1.0
    else:
        assert not m.any()


@pytest.mark.parametrize("renderer", ["cpu", "gl"])
def test_town01_frame_has_road_sky_and_signs(town01, renderer):
    carla = pytest.importorskip("carla")
    from carla_mr.world.maps import landmarks_to_signs

    cmap = carla.Map("Town01", town01.read_text())
    signs = landmarks_to_signs(cmap)
    rig = EmbeddedCameraRig(cmap, signs, renderer=renderer)
    assert rig.is_gl == (renderer == "gl")
    assert len(rig.scene.road) > 300 and len(rig.scene.marks) > 100
    # Stand 20 m before a speed-limit sign, on its lane, facing it.
    i = int(np.nonzero(signs.kind == "speed_limit")[0][0])
    wp = cmap.get_waypoint(carla.Location(float(signs.x[i]), float(signs.y[i]), 0.0))
    back = wp.previous(20.0)[0].transform
    snap = snapshot([back.location.x], [back.location.y], [back.rotation.yaw], ids=[7])
    rig.attach("front", CameraSpec(), 7)
    fr = rig.render("front", snap, {})
    assert fr.image.shape == (480, 640, 3) and fr.image.dtype == np.uint8
    np.testing.assert_allclose(fr.intrinsics, CameraSpec().intrinsics())
    assert tuple(fr.image[5, 320]) != tuple(fr.image[470, 320])  # sky above, road below
    if renderer == "cpu":
        assert tuple(fr.image[470, 320]) in {(70, 70, 74), (78, 78, 82)}
        assert fr.depth is None
    else:  # lit asphalt: grey; depth: the road 1.6 m below the camera, seen 16 px above the bottom
        r, g, b = (int(c) for c in fr.image[470, 320])
        assert abs(r - g) <= 6 and 50 <= g <= 130 and b >= g
        assert fr.depth[470, 320] == pytest.approx(1.6 * 320 / (470.5 - 240), rel=0.1)
        assert fr.depth[5, 320] == 0.0
    ids = [lab["id"] for lab in fr.labels]
    assert str(signs.ids[i]) in ids
    lab = fr.labels[ids.index(str(signs.ids[i]))]
    assert lab["kind"] == "speed_limit" and lab["source"] == "original" and 15 < lab["distance"] < 25
    assert (fr.instance == lab["instance"]).sum() == lab["pixels"]
    with pytest.raises(KeyError):
        rig.render("nope", snap, {})


def test_merged_road_strips_draw_the_same_pixels(town01):
    carla = pytest.importorskip("carla")
    from carla_mr.world.scene import build_road_scene

    cmap = carla.Map("Town01", town01.read_text())
    raw, merged = build_road_scene(cmap, merge_tol_m=0), build_road_scene(cmap)
    assert len(merged.road) < len(raw.road) / 3
    signs = one_sign(x=1e6)  # far away: roads only
    geom = build_sign_geometry(signs)
    spec = CameraSpec()
    for wp in cmap.generate_waypoints(50.0)[::7][:6]:
        tf = wp.transform
        pose = camera_pose(spec, tf.location.x, tf.location.y, 0.0, tf.rotation.yaw)
        a = SceneRenderer(raw, geom).render(spec, pose)[0]
        b = SceneRenderer(merged, geom).render(spec, pose)[0]
        assert (a != b).any(axis=2).mean() < 0.003  # polygon seams only


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(3, 28), st.floats(-4, 4), st.floats(-180, 180)), min_size=1, max_size=6),
       st.floats(-20, 20))
def test_occlusion_share_law(cars, cam_yaw):
    """With any cars in the way: ID buffer == sign pixels, visible == visible px / unoccluded px."""
    pose = camera_pose(CameraSpec(), 0.0, 0.0, 0.0, cam_yaw)
    sign = one_sign(x=30.0, y=0.0, z=1.2, w=1.8, h=1.8)
    img0, _, lab0 = render(sign, pose, solid(MAGENTA))
    xs, ys, yaws = zip(*cars)
    img1, ids1, lab1 = render(sign, pose, solid(MAGENTA), vehicles=snapshot(xs, ys, yaws))
    m0, m1 = magenta_mask(img0), magenta_mask(img1)
    assert ((ids1 == 1) == m1).all()
    assert not (m1 & ~m0).any()  # occluders only remove sign pixels
    if not m1.any():
        assert lab1 == []
    else:
        lab = lab1[0]
        assert lab["face_pixels"] == m0.sum() and lab["pixels"] == m1.sum()
        assert lab["visible"] == pytest.approx(m1.sum() / m0.sum())
        assert lab["box"] == lab0[0]["box"] and lab["visible_box"] == bbox(m1)


def test_sign_crossing_the_near_plane_is_clipped_not_wrapped():
    """A 10 m wall-like sign on the camera's left, half of it behind the camera: rays of the
    image's right half meet its plane behind the camera, so an unclipped homography would
    paint a mirrored texture there. Only the left half may show it; labels still match."""
    spec = CameraSpec()
    pose = camera_pose(spec, 0.0, 0.0, 0.0, 0.0)  # camera at x=1.5, y=0, z=1.6 looking along +x
    sign = one_sign(x=1.5, y=-1.0, z=1.6, yaw=90.0, w=10.0, h=2.0)  # face points +y, at the camera
    img, ids, labels = render(sign, pose, solid(MAGENTA), spec=spec)
    m = magenta_mask(img)
    assert m.any() and ((ids == 1) == m).all()
    cols = np.nonzero(m.any(axis=0))[0]
    assert cols[0] == 0 and cols[-1] < 320  # left half only
    assert labels[0]["box"] == bbox(m) and labels[0]["box"][0] == 0


def _ray_hits_box_before(origin, dirs, t_max, x, y, yaw, size):
    """For rays origin + t * dirs (t in (0, t_max)): does each hit the car box first? (slab test)"""
    length, width, height = size
    c, s = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
    rot = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1.0]])  # world -> box frame
    o = rot @ (origin - np.array([x, y, 0.0]))
    d = dirs @ rot.T
    lo, hi = np.array([-length / 2, -width / 2, 0.0]), np.array([length / 2, width / 2, height])
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (lo - o) / d, (hi - o) / d
    tmin = np.nanmax(np.minimum(t1, t2), axis=1)
    tmax = np.nanmin(np.maximum(t1, t2), axis=1)
    return (tmax >= np.maximum(tmin, 0)) & (tmin < t_max)


@pytest.mark.parametrize("car_x,car_y", [(11.0, 2.2), (9.0, 2.6), (12.5, 1.9), (6.0, 1.2)])
def test_passing_car_occludes_sign_like_a_ray_cast(car_x, car_y):
    """Sign pixels hidden by a car beside the road agree with an exact ray cast (edges aside)."""
    spec = CameraSpec()
    pose = camera_pose(spec, 0.0, 0.0, 0.0, 0.0)
    sign = one_sign(x=10.0, y=3.0, z=1.2, w=0.6, h=0.6)
    img0, _, lab0 = render(sign, pose, solid(MAGENTA))
    full = magenta_mask(img0)
    img1, ids1, lab1 = render(sign, pose, solid(MAGENTA), vehicles=snapshot([car_x], [car_y], [0.0]))
    vis = magenta_mask(img1)
    # Ray cast through the centre of every face pixel.
    rows, cols = np.nonzero(full)
    f = spec.focal_px
    d_cam = np.stack([np.ones(len(rows)), (cols + 0.5 - 320) / f, -(rows + 0.5 - 240) / f], 1)
    dirs = d_cam @ pose[:3, :3].T
    origin = pose[:3, 3]
    # Distance along each ray to the sign plane (normal -x here: the plane x = 10).
    t_sign = (10.0 - origin[0]) / dirs[:, 0]
    hidden = _ray_hits_box_before(origin, dirs, t_sign, car_x, car_y, 0.0, (4.6, 1.9, 1.5))
    expect = np.zeros_like(full)
    expect[rows[~hidden], cols[~hidden]] = True
    # Any disagreement is a rasterisation-rule difference on the car's silhouette edge.
    car = (img1 != img0).any(axis=2) & ~vis
    edge = cv2.morphologyEx(car.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    off_edge = (expect ^ vis) & ~edge
    assert off_edge.sum() == 0, (off_edge.sum(), full.sum(), vis.sum(), expect.sum())
    assert abs(int(expect.sum()) - int(vis.sum())) <= max(2, 0.05 * full.sum())
    if lab1:
        assert lab1[0]["visible"] == pytest.approx(vis.sum() / full.sum())


def test_painter_order_puts_a_box_in_front_of_a_face_last():
    """Two boxes where B lies entirely in front of A's camera-facing rear face: B is drawn
    after A even when the distance key says otherwise (the key here is deliberately wrong)."""
    from carla_mr.world.render import _painter_order
    from carla_mr.world.scene import BOX_FACES, vehicle_boxes

    pos = np.array([0.0, 0.0, 1.6])
    vbox, vnorm = vehicle_boxes(np.array([20.0, 12.0]), np.array([0.0, 0.0]), np.zeros(2), np.zeros(2))
    fc = vbox[:, BOX_FACES].mean(axis=2)
    facing = np.einsum("vfk,vfk->vf", vnorm, pos[None, None, :] - fc) > 0
    geom = build_sign_geometry(one_sign(x=1e5))
    objects = [(5.0, 0, 0), (50.0, 0, 1)]  # keys claim A (index 0) is nearer than B
    order = _painter_order(objects, pos, geom, vbox, vnorm, fc, facing)
    assert [o[2] for o in order] == [0, 1]  # A first, then B (which is in front of A's rear face)
    # Without geometry to go by (far apart), the key decides.
    vbox2, vnorm2 = vehicle_boxes(np.array([20.0, 60.0]), np.array([0.0, 30.0]), np.zeros(2), np.zeros(2))
    fc2 = vbox2[:, BOX_FACES].mean(axis=2)
    facing2 = np.einsum("vfk,vfk->vf", vnorm2, pos[None, None, :] - fc2) > 0
    assert [o[2] for o in _painter_order(objects, pos, geom, vbox2, vnorm2, fc2, facing2)] == [1, 0]

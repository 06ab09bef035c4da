"""Sign geometry: CARLA's rotation convention, projection, boxes joined to the right landmarks,
facing filter, occlusion, and labels that match the pixels the stand-in server renders."""

from __future__ import annotations


import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

carla = pytest.importorskip("carla")

from carla_mr.world import carla_signs as cs  # noqa: E402
from carla_mr.config.camera import CameraSpec  # noqa: E402
from carla_mr.world.carla_backend import CarlaWorld  # noqa: E402

angle = st.floats(-180.0, 180.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(angle, angle, angle)
def test_rotation_matrix_equals_carla_get_matrix(p, y, r):
    tf = carla.Transform(carla.Location(1.0, -2.0, 3.0), carla.Rotation(p, y, r))
    ours = cs.pose_matrix(1.0, -2.0, 3.0, p, y, r)
    assert np.allclose(ours, np.array(tf.get_matrix()), atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(angle, st.floats(0.1, 3.0), st.floats(0.1, 3.0), st.floats(0.1, 3.0))
def test_box_corners_equal_carla_world_vertices(yaw, ex, ey, ez):
    bb = carla.BoundingBox(carla.Location(5.0, -3.0, 2.0), carla.Vector3D(ex, ey, ez))
    bb.rotation = carla.Rotation(0.0, yaw, 0.0)
    theirs = np.array([[v.x, v.y, v.z] for v in bb.get_world_vertices(carla.Transform())])
    ours = cs.box_corners([[5.0, -3.0, 2.0]], [[ex, ey, ez]], [[0.0, yaw, 0.0]])[0]
    # same set of points (the order of vertices is libcarla's own)
    d = np.linalg.norm(ours[:, None, :] - theirs[None, :, :], axis=2)
    assert np.allclose(d.min(axis=1), 0.0, atol=1e-4)


def test_projection_follows_carla_intrinsics():
    spec = CameraSpec(width=200, height=100, fov_deg=90.0)
    K = spec.intrinsics()
    cam = cs.pose_matrix(0, 0, 0, 0, 0, 0)
    uv, depth = cs.project_points(np.array([[10.0, 0.0, 0.0], [10.0, 10.0, 0.0], [10.0, 0.0, 5.0]]), cam, K)
    assert np.allclose(uv[0], (100, 50)) and np.allclose(uv[1], (200, 50)) and np.allclose(uv[2], (100, 0))
    assert np.allclose(depth, 10.0)


@settings(max_examples=40, deadline=None)
@given(st.floats(-3.0, 3.0), st.floats(-1.0, 1.0))
def test_near_plane_clipping_keeps_boxes_that_straddle_the_camera(x, y):
    # a box around the camera: part behind, part ahead -> a valid box in the image, never NaN
    K = CameraSpec(width=64, height=48).intrinsics()
    corners = cs.box_corners([[x, y, 0.0]], [[4.0, 0.5, 0.5]], [[0.0, 0.0, 0.0]])
    boxes, valid, depth = cs.boxes_2d(corners, np.eye(4), K, 64, 48)
    assert np.isfinite(boxes).all()
    if x + 4.0 > 0.1:
        assert valid[0] and depth[0, 0] >= cs.NEAR_M - 1e-9
    boxes, valid, _ = cs.boxes_2d(cs.box_corners([[-10.0, 0, 0]], [[1, 1, 1]], [[0, 0, 0]]), np.eye(4), K, 64, 48)
    assert not valid[0]


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 25), st.integers(0, 10_000))
def test_join_recovers_a_shuffled_noisy_matching(n, seed):
    rng = np.random.default_rng(seed)
    signs = rng.uniform(-200, 200, size=(n, 3))
    signs[:, 2] = 0.0
    # keep signs at least 10 m apart so the nearest box is unambiguous
    keep = [0]
    for i in range(1, n):
        if np.min(np.linalg.norm(signs[keep, :2] - signs[i, :2], axis=1)) > 10.0:
            keep.append(i)
    signs = signs[keep]
    perm = rng.permutation(len(signs))
    boxes = signs[perm] + np.c_[rng.normal(0, 0.8, (len(signs), 2)), np.full(len(signs), 2.2)]
    decoys = signs[:2] + np.array([40.0, 40.0, 2.0])
    j = cs.join_boxes_to_signs(signs, np.vstack([boxes, decoys]))
    expect = np.argsort(perm)
    assert (j == expect).all()


def test_join_rejects_far_boxes():
    j = cs.join_boxes_to_signs([[0, 0, 0], [100, 0, 0]], [[0.5, 0.0, 2.0], [150.0, 0.0, 2.0]], max_dist_m=6.0)
    assert j.tolist() == [0, -1]


def test_facing_filter():
    cam = np.array([0.0, 0.0, 2.0])
    fwd = np.array([1.0, 0.0, 0.0])
    signs = np.array([[20.0, 0.0, 2.0]] * 3 + [[-20.0, 0.0, 2.0]])
    # faces: towards the camera (180), away (0), sideways (90), behind the camera facing it (0)
    m = cs.facing_mask([180.0, 0.0, 90.0, 0.0], signs, cam, fwd)
    assert m.tolist() == [True, False, False, False]


def test_depth_encoding_round_trip_and_visible_share():
    d = np.array([[0.0, 1.5, 12.25, 999.0]], dtype=np.float64)
    back = cs.decode_depth_bgra(cs.encode_depth_bgra(d))
    assert np.allclose(back, d, atol=1e-3)
    depth = np.full((10, 10), 50.0, np.float32)
    depth[:, :5] = 2.0  # a wall on the left half, nearer than the sign at 20 m
    assert cs.visible_share_depth(depth, [0, 0, 10, 10], 20.0) == pytest.approx(0.5)
    assert cs.visible_share_depth(depth, [5, 0, 10, 10], 20.0) == pytest.approx(1.0)
    assert cs.visible_share_depth(depth, [0, 0, 5, 10], 20.0) == pytest.approx(0.0)
    share, vbox, n = cs.visible_region_depth(depth, [2, 1, 9, 8], 20.0)
    assert vbox == [5, 1, 9, 8] and n == 4 * 7 and share == pytest.approx(28 / 49)
    assert cs.visible_region_depth(depth, [0, 0, 5, 10], 20.0) == (0.0, None, 0)


# -- against the stand-in server ----------------------------------------------------------------

def test_level_boxes_are_joined_to_the_right_landmarks(make_server, town_scenario):
    srv = make_server(decoy_boxes=4)
    with CarlaWorld(town_scenario(), client_factory=srv.client_factory, owns_signals=False) as w:
        w.reset()
        truth = [lid for _, lid in srv.sign_boxes]  # the landmark each box was made for ("" = decoy)
        static = [i for i, k in enumerate(w.signs.kind) if k != "traffic_light"]
        assert static, "Town01 has static signs"
        for i in static:
            k = int(w._box_index[i])
            assert k >= 0, f"sign {w.signs.ids[i]} was not joined"
            assert truth[k] == str(w.signs.ids[i]), f"sign {w.signs.ids[i]} joined to the box of {truth[k]!r}"
        joined = set(int(k) for k in w._box_index if k >= 0)
        assert not any(truth[k] == "" for k in joined), "a decoy box was joined"
        assert all(w._box_index[i] == -1 for i, k in enumerate(w.signs.kind) if k == "traffic_light")


def _speed_limit(w, srv):
    i = next(i for i, k in enumerate(w.signs.kind) if k == "speed_limit")
    return i, int(w._box_index[i])


def test_labels_match_the_rendered_pixels(make_server, town_scenario, face_sign):
    srv = make_server()
    with CarlaWorld(town_scenario(), client_factory=srv.client_factory, owns_signals=False) as w:
        snap = w.reset()
        av = int(snap.ids[snap.role == 1][0])
        w.attach_camera("front", CameraSpec(width=160, height=120, fov_deg=60.0), av)
        i, k = _speed_limit(w, srv)
        face_sign(srv, av, k, dist=10.0)
        w.tick()
        fr = w.read_camera("front")
        lab = next((l for l in fr.labels if l["id"] == str(w.signs.ids[i])), None)
        assert lab is not None, fr.labels
        assert lab["kind"] == "speed_limit" and lab["visible"] == pytest.approx(1.0)
        assert lab["pixels"] > 0 and lab["visible_box"] is not None
        assert lab["distance"] == pytest.approx(10.0 - 1.5, abs=0.3)  # the camera is 1.5 m ahead of the car
        x0, y0, x1, y1 = lab["box"]
        red = (fr.image[..., 0] == 200) & (fr.image[..., 1] == 30)
        ys, xs = np.nonzero(red)
        assert xs.size > 20
        # the label box covers the sign's pixels to within a pixel
        assert abs(xs.min() - x0) <= 1.5 and abs(xs.max() + 1 - x1) <= 1.5
        assert abs(ys.min() - y0) <= 1.5 and abs(ys.max() + 1 - y1) <= 1.5
        assert fr.ego[3] == pytest.approx(srv.actors[av]._tf.rotation.yaw, abs=1e-3)
        assert np.allclose(fr.intrinsics, CameraSpec(width=160, height=120, fov_deg=60.0).intrinsics())
        assert lab["visible_box"] == [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
        # a wall over the left half of the view: the label keeps its box, the visible part shrinks
        srv.occluder_share = 0.5
        w.tick()
        half = next(l for l in w.read_camera("front").labels if l["id"] == str(w.signs.ids[i]))
        assert half["box"][0] < 80 < half["box"][2]  # the sign straddles the wall's edge (image centre)
        assert 0.0 < half["visible"] < 1.0 and half["visible_box"][0] == 80
        # an occluding wall over the whole view hides it: the label goes
        srv.occluder_share = 1.0
        w.tick()
        fr = w.read_camera("front")
        assert not any(l["id"] == str(w.signs.ids[i]) for l in fr.labels)
        # turned away from the sign: no label either
        srv.occluder_share = 0.0
        srv.actors[av]._tf.rotation.yaw += 180.0
        w.tick()
        assert not any(l["id"] == str(w.signs.ids[i]) for l in w.read_camera("front").labels)

"""Predictors: exact baselines, the local frame, the residual model (zero output == constant velocity,
bounded correction, learns curvature across rates, rigid-motion equivariance), persistence."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carla_mr.errors import InputError
from carla_mr.twin import data
from carla_mr.twin.frames import heading_from_past, to_local, to_world
from carla_mr.twin.metrics import compare
from carla_mr.twin.predictors import ConstantVelocity, ZeroMotion, load_predictor
from carla_mr.twin.residual import CORRECTION_BOUND, ResidualPredictor, bounds, n_features
from carla_mr.twin.residual_train import ResidualRecipe, fit, prepare
from twin_helpers import synthetic_rows

torch = pytest.importorskip("torch")


def _line(m=4, p=6, v=(1.5, -0.5)):
    t = np.arange(p)[None, :, None]
    start = np.arange(m)[:, None, None] * 10.0
    return start + t * np.asarray(v)


def test_constant_velocity_and_zero_motion_are_exact():
    past = _line()
    cv = ConstantVelocity(6, 3, 2.0).predict(past)
    np.testing.assert_allclose(cv, past[:, -1:, :] + np.arange(1, 4)[None, :, None] * np.array([1.5, -0.5]))
    zm = ZeroMotion(6, 3, 2.0).predict(past)
    np.testing.assert_array_equal(zm, np.repeat(past[:, -1:], 3, axis=1))
    cv3 = ConstantVelocity(6, 2, 2.0, velocity_steps=3).predict(past)
    np.testing.assert_allclose(cv3[:, 0], past[:, -1] + [1.5, -0.5])
    with pytest.raises(InputError, match="shape"):
        ConstantVelocity(6, 3).predict(np.zeros((3, 1, 2)))


@settings(max_examples=50, deadline=None)
@given(st.floats(-np.pi, np.pi), st.floats(-1e3, 1e3), st.floats(-1e3, 1e3), st.integers(0, 2**31))
def test_local_frame_round_trip_and_heading(angle, ox, oy, seed):
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(3, 7, 2)) * 20
    origin = np.array([[ox, oy]] * 3)
    h = np.full(3, angle)
    np.testing.assert_allclose(to_world(to_local(pts, origin, h), origin, h), pts, atol=1e-9)
    # a straight drive along `angle`: heading recovered, local points lie on -x
    line = np.array([ox, oy]) + np.arange(8)[:, None] * 2.0 * np.array([np.cos(angle), np.sin(angle)])
    hd = heading_from_past(line[None])
    assert np.cos(hd[0] - angle) == pytest.approx(1.0, abs=1e-9)
    loc = to_local(line[None], line[None, -1], hd)
    np.testing.assert_allclose(loc[0, :, 1], 0.0, atol=1e-8)
    assert (loc[0, :-1, 0] < 0).all()


def test_heading_of_a_parked_vehicle_is_zero():
    assert heading_from_past(np.zeros((2, 5, 2))).tolist() == [0.0, 0.0]


def _curvy(hz=2.0, past=12, future=4, seconds=80, n=40, seed=0):
    r = synthetic_rows(n_vehicles=n, seconds=seconds, hz=10, seed=seed)
    tr = data.resample(r["id"], r["t"], r["x"], r["y"], sample_hz=hz)
    return data.windows(tr, past, future, step=1)


def _trained(rates=(1.0, 2.0, 5.0), future=4, epochs=8, n=30, seed=0):
    parts, groups = [], []
    for hz in rates:
        pa, fu, g = _curvy(hz, 12, future, n=n, seed=seed)
        parts.append(prepare(pa, fu, 1 / hz))
        groups.append(g)
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    params, norm, facts = fit(arrays, np.concatenate(groups), ResidualRecipe(epochs=epochs, hidden=32, patience=3))
    return ResidualPredictor(12, future, rates[0], params=params, norm=norm, info=facts, train_keys=["a", "b"])


def test_untrained_and_zero_output_residual_is_constant_velocity():
    pa, _, _ = _curvy(2.0, n=5, seconds=30)
    m = ResidualPredictor(12, 4, 2.0)
    np.testing.assert_allclose(m.predict(pa), ConstantVelocity(12, 4, 2.0).predict(pa), atol=1e-9)
    params = {"W0": np.zeros((n_features(), 8), np.float32), "b0": np.zeros(8, np.float32),
              "W1": np.zeros((8, 8), np.float32), "b1": np.zeros(8, np.float32)}
    z = ResidualPredictor(12, 4, 2.0, params=params, norm={"mean": np.zeros(n_features()),
                                                            "std": np.ones(n_features())})
    np.testing.assert_allclose(z.predict(pa), ConstantVelocity(12, 4, 2.0).predict(pa), atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31), st.sampled_from([1.0, 2.0, 5.0, 10.0, 25.0]))
def test_residual_correction_is_bounded(seed, hz):
    """Whatever the weights, no correction exceeds its bound: the model stays near physics."""
    rng = np.random.default_rng(seed)
    d = n_features()
    params = {"W0": rng.normal(size=(d, 16)).astype(np.float32) * 10, "b0": np.zeros(16, np.float32),
              "W1": rng.normal(size=(16, 8)).astype(np.float32) * 10, "b1": np.zeros(8, np.float32)}
    m = ResidualPredictor(30, 4, hz, params=params, norm={"mean": np.zeros(d), "std": np.ones(d)})
    past = np.cumsum(rng.normal(size=(20, 30, 2)) * 2, axis=1)
    diff = np.abs(m.predict(past) - ConstantVelocity(30, 4, hz).predict(past))
    b = bounds(1 / hz, 4)
    assert (diff <= np.sqrt(2) * b[None, :, None] + 1e-9).all() and b.max() <= CORRECTION_BOUND


def test_residual_learns_curvature_at_every_rate_and_round_trips(tmp_path):
    m = _trained()
    for hz in (1.0, 2.0, 5.0):
        tp, tf, _ = _curvy(hz, 12, 4, n=10, seed=5)  # other vehicles
        m.sample_hz = hz
        res = compare({"m": m.predict(tp), "constant_velocity": ConstantVelocity(12, 4, hz).predict(tp)}, tp, tf)
        assert res["m"]["ade"] < 0.8 * res["constant_velocity"]["ade"], (hz, res)
    d = m.save(tmp_path / "res")
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["kind"] == "residual" and cfg["train_vehicle_keys"] == ["a", "b"]
    with np.load(d / "weights.npz", allow_pickle=False) as z:
        assert all(z[k].dtype == np.float32 for k in z.files)
    back = load_predictor(d, sample_hz=5.0)
    assert isinstance(back, ResidualPredictor) and back.sample_hz == 5.0
    np.testing.assert_allclose(back.predict(tp[:50]), m.predict(tp[:50]), atol=1e-6)


def test_residual_is_equivariant_to_rigid_motions():
    """Inputs live in the window's local frame, so rotating/translating the world moves the
    prediction the same way."""
    m = _trained(rates=(2.0,), epochs=1, n=6)
    pa, _, _ = _curvy(2.0, n=4, seconds=30, seed=3)
    a = 0.7
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    shift = np.array([1234.0, -567.0])
    p0 = m.predict(pa[:20])
    p1 = m.predict(pa[:20] @ rot.T + shift)
    np.testing.assert_allclose(p1, p0 @ rot.T + shift, atol=1e-6)


def test_baselines_save_and_load(tmp_path):
    cv = ConstantVelocity(10, 3, 5.0, velocity_steps=2)
    back = load_predictor(cv.save(tmp_path / "cv"))
    assert isinstance(back, ConstantVelocity) and back.velocity_steps == 2 and back.sample_hz == 5.0
    zm = load_predictor("zero_motion", past=7, future=2, sample_hz=1.0)
    assert isinstance(zm, ZeroMotion) and zm.future == 2


def test_model_errors(tmp_path):
    with pytest.raises(InputError, match="not a model directory"):
        load_predictor(tmp_path / "none")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"kind": "magic"}')
    with pytest.raises(InputError, match="unknown model kind"):
        load_predictor(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{nope")
    with pytest.raises(InputError, match="not valid JSON"):
        load_predictor(tmp_path / "m")
    with pytest.raises(InputError, match="not trained"):
        ResidualPredictor(5, 2).save(tmp_path / "x")
    m = _trained(rates=(2.0,), epochs=1, n=4)
    d = m.save(tmp_path / "res")
    (d / "weights.npz").unlink()
    with pytest.raises(InputError, match="weights.npz"):
        load_predictor(d)

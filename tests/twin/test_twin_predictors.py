"""Predictors: exact baselines, the local frame, a tiny LSTM that learns curvature, persistence."""

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
from carla_mr.twin.predictors import (ConstantVelocity, LSTMPredictor, LSTMRecipe, ZeroMotion, load_predictor)
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


def _curvy(past=12, future=4, seconds=80, n=40, seed=0):
    r = synthetic_rows(n_vehicles=n, seconds=seconds, hz=2, seed=seed)
    tr = data.resample(r["id"], r["t"], r["x"], r["y"], sample_hz=2.0)
    return data.windows(tr, past, future, step=1)


def test_tiny_lstm_learns_curvature_and_round_trips(tmp_path):
    torch.manual_seed(0)
    pa, fu, g = _curvy(seed=0)
    tp, tf, _ = _curvy(seed=1, n=10)
    recipe = LSTMRecipe(epochs=6, batch_size=64, hidden=16, lr=3e-3, patience=None)
    m = LSTMPredictor(12, 4, 2.0, recipe)
    info = m.fit(pa, fu, groups=g, seed=0)
    assert info["epochs_run"] == 6 and info["val_windows"] > 0
    res = compare({"lstm": m.predict(tp), "constant_velocity": ConstantVelocity(12, 4, 2.0).predict(tp)}, tp, tf)
    assert res["lstm"]["ade"] < 0.8 * res["constant_velocity"]["ade"], res
    d = m.save(tmp_path / "model")
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["kind"] == "lstm" and cfg["recipe"]["dropout"] == 0.05 and "f_mean" in cfg["norm"]
    with np.load(d / "weights.npz", allow_pickle=False) as z:
        assert all(z[k].dtype == np.float32 for k in z.files)
    back = load_predictor(d)
    assert isinstance(back, LSTMPredictor)
    np.testing.assert_allclose(back.predict(tp[:50]), m.predict(tp[:50]), atol=1e-5)


def test_lstm_is_equivariant_to_rigid_motions():
    """Inputs live in the window's local frame, so rotating/translating the world moves the
    prediction the same way."""
    pa, fu, g = _curvy(n=8, seconds=30)
    m = LSTMPredictor(12, 4, 2.0, LSTMRecipe(epochs=1, hidden=8, patience=None))
    m.fit(pa, fu, groups=g)
    a = 0.7
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    shift = np.array([1234.0, -567.0])
    p0 = m.predict(pa[:20])
    p1 = m.predict(pa[:20] @ rot.T + shift)
    np.testing.assert_allclose(p1, p0 @ rot.T + shift, atol=2e-3)


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
        LSTMPredictor(5, 2).predict(np.zeros((1, 5, 2)))
    with pytest.raises(InputError, match="dropout"):
        LSTMRecipe(dropout=1.5)
    m = LSTMPredictor(12, 4, 2.0, LSTMRecipe(epochs=1, hidden=8))
    pa, fu, _ = _curvy(n=3, seconds=20)
    m.fit(pa, fu)
    d = m.save(tmp_path / "lstm")
    (d / "weights.npz").unlink()
    with pytest.raises(InputError, match="weights.npz"):
        load_predictor(d)


def test_predict_threads_are_set_and_restored():
    pa, fu, _ = _curvy(n=3, seconds=20)
    m = LSTMPredictor(12, 4, 2.0, LSTMRecipe(epochs=1, hidden=8))
    m.fit(pa, fu)
    before = torch.get_num_threads()
    seen = []
    net = m.net
    m.net = lambda x: (seen.append(torch.get_num_threads()), net(x))[1]
    try:
        torch.set_num_threads(2)
        m.threads = 1
        m.predict(pa[:3])
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

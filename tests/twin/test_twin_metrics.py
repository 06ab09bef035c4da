"""Metrics on hand-computed cases, and the rolling accuracy R."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carla_mr.errors import InputError
from carla_mr.stages import TwinAccuracy
from carla_mr.twin.accuracy import RollingAccuracy
from carla_mr.twin.metrics import compare, evaluate


def test_metrics_by_hand():
    rng = np.random.default_rng(0)
    past = rng.normal(size=(10, 4, 2)) * 50
    fut = past[:, -1:, :] + rng.normal(size=(10, 3, 2)) * 5
    r = evaluate(fut + np.array([3.0, 4.0]), past, fut)
    assert r["ade"] == pytest.approx(5.0) and r["fde"] == pytest.approx(5.0)
    assert r["per_step"] == pytest.approx([5.0] * 3) and r["miss_rate"] == 1.0
    perfect = evaluate(fut, past, fut)
    assert perfect["ade"] == 0 and perfect["r2_abs"] == 1.0 and perfect["r2_disp"] == 1.0 and perfect["miss_rate"] == 0
    # predicting the mean displacement gives R2 on displacements 0 exactly
    disp = fut - past[:, -1:, :]
    mean_pred = np.broadcast_to(past[:, -1:, :], fut.shape) + disp.reshape(-1, 2).mean(0)
    assert evaluate(mean_pred, past, fut)["r2_disp"] == pytest.approx(0.0, abs=1e-12)
    # final error only: one window misses by 2.5 m at the last step
    pred = fut.copy()
    pred[0, -1] += [2.5, 0]
    r = evaluate(pred, past, fut)
    assert r["miss_rate"] == pytest.approx(0.1) and r["fde"] == pytest.approx(0.25)
    assert r["per_step"][-1] == pytest.approx(0.25) and r["per_step"][0] == 0


def test_r2_abs_matches_the_sklearn_formula():
    rng = np.random.default_rng(1)
    past = rng.normal(size=(20, 3, 2))
    fut = rng.normal(size=(20, 4, 2)) * [10, 1]
    pred = fut + rng.normal(size=fut.shape)
    r = evaluate(pred, past, fut)
    p, t = pred.reshape(-1, 2), fut.reshape(-1, 2)
    per = [1 - ((t[:, j] - p[:, j]) ** 2).sum() / ((t[:, j] - t[:, j].mean()) ** 2).sum() for j in range(2)]
    assert r["r2_abs"] == pytest.approx(np.mean(per))


def test_compare_gains_and_errors():
    rng = np.random.default_rng(2)
    past = rng.normal(size=(5, 3, 2))
    fut = rng.normal(size=(5, 2, 2))
    res = compare({"a": fut + 1.0, "constant_velocity": fut + 2.0}, past, fut)
    assert res["a"]["ade_gain_vs_cv"] == pytest.approx(0.5)
    with pytest.raises(InputError, match="shape|must both"):
        evaluate(fut[:, :1], past, fut)
    bad = fut.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        evaluate(bad, past, fut)
    with pytest.raises(InputError, match="no windows"):
        evaluate(fut[:0], past[:0], fut[:0])


def test_rolling_accuracy_definition():
    acc = RollingAccuracy(window=4, hit_radius_m=2.0, prior=0.5)
    r, n = acc.lookup(np.array([7]), np.array([0]))
    assert r.tolist() == [0.5] and n.tolist() == [0]
    hits = [1, 0, 1, 1, 0, 0, 1]
    ref, cnt = 0.5, 0
    for h in hits:
        acc.update(np.array([7]), np.array([0]), np.array([1.0 if h else 3.0]))
        cnt += 1
        ref += max(1 / cnt, 1 / 4) * (h - ref)
        assert acc.lookup(np.array([7]), np.array([0]))[0][0] == pytest.approx(ref)
    # first 4 are an exact mean
    acc2 = RollingAccuracy(window=10)
    for h in [1, 1, 0]:
        acc2.update(np.array([1]), np.array([2]), np.array([0.0 if h else 9.0]))
    assert acc2.lookup(np.array([1]), np.array([2]))[0][0] == pytest.approx(2 / 3)
    # per RSU: the same AV at another RSU has its own R, and RSU -1 works
    assert acc2.lookup(np.array([1, 1]), np.array([3, -1]))[0].tolist() == [0.5, 0.5]
    acc2.update(np.array([1]), np.array([-1]), np.array([0.0]))
    assert acc2.lookup(np.array([1]), np.array([-1]))[0][0] == 1.0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(-1, 2), st.floats(0, 10)), max_size=60),
       st.integers(1, 8))
def test_rolling_accuracy_stays_in_unit_interval(events, window):
    acc = RollingAccuracy(window=window)
    for vid, rsu, err in events:
        acc.update(np.array([vid]), np.array([rsu]), np.array([err]))
    r, n = acc.lookup(np.arange(6).repeat(4), np.tile(np.arange(-1, 3), 6))
    assert ((r >= 0) & (r <= 1)).all()
    assert n.sum() == len(events)


def test_twin_accuracy_lookup():
    ta = TwinAccuracy(3, 0.15, np.array([2, 5, 9]), np.array([0, 0, 1], np.int32), np.array([0.1, 0.9, 1.0]),
                      np.array([1, 2, 3]), 0.5, 2.0, 20)
    assert ta.get(np.array([9, 4, 2])).tolist() == [1.0, 0.5, 0.1]
    assert ta.get(np.array([4]), default=0.0).tolist() == [0.0]
    assert ta.as_dict() == {2: 0.1, 5: 0.9, 9: 1.0}
    assert ta.per_rsu()[0]["mean_r"] == pytest.approx(0.5) and ta.per_rsu()[1]["vehicles"] == 1

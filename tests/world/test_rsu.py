"""RSU placement along roads and vectorised nearest-in-range association."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from carla_mr.config import RsusConfig
from carla_mr.world.base import RsuTable
from carla_mr.world.rsu import RsuAssociator, assign_rsu, farthest_points, grid_placement, make_rsus, road_points


def brute(rx, ry, rr, x, y):
    out = []
    for px, py in zip(x, y):
        best, bd = -1, np.inf
        for j in range(len(rx)):
            d = (px - rx[j]) ** 2 + (py - ry[j]) ** 2
            if d <= rr[j] ** 2 and d < bd:
                best, bd = j, d
        out.append(best)
    return np.array(out, dtype=np.int32)


def table(rx, ry, rr):
    j = len(rx)
    one = np.ones(j)
    return RsuTable(np.asarray(rx, float), np.asarray(ry, float), 5 * one, np.asarray(rr, float), 2e7 * one,
                    2e7 * one, 3.6e9 * one, 1.9e10 * one)


xy = st.floats(-500, 500, allow_nan=False)


@given(st.lists(st.tuples(xy, xy, st.floats(1, 400)), min_size=0, max_size=12),
       st.lists(st.tuples(xy, xy), min_size=0, max_size=60), st.booleans())
@settings(max_examples=150, deadline=None)
def test_assign_is_nearest_in_range(rsus, cars, uniform):
    rx = [r[0] for r in rsus]
    ry = [r[1] for r in rsus]
    rr = [rsus[0][2]] * len(rsus) if (uniform and rsus) else [r[2] for r in rsus]
    x = np.array([c[0] for c in cars], float)
    y = np.array([c[1] for c in cars], float)
    got = RsuAssociator(table(rx, ry, rr), chunk=7).assign(x, y)
    want = brute(rx, ry, rr, x, y)
    assert got.dtype == np.int32
    # ties (equal distances) may pick either; compare distances instead of indices
    for g, w, px, py in zip(got, want, x, y):
        if w == -1:
            assert g == -1
        else:
            assert g != -1
            dg = (px - rx[g]) ** 2 + (py - ry[g]) ** 2
            dw = (px - rx[w]) ** 2 + (py - ry[w]) ** 2
            assert np.isclose(dg, dw) and dg <= rr[g] ** 2 * (1 + 1e-12)


def test_larger_range_wins_when_nearest_cannot_reach():
    t = table([0.0, 100.0], [0.0, 0.0], [10.0, 200.0])
    assert list(assign_rsu(t, np.array([30.0, 5.0, 400.0]), np.zeros(3))) == [1, 0, -1]


def test_grid_placement_covers_roads(town01):
    from carla_mr.world.maps import load_map

    m = load_map(town01)
    pts = road_points(m)
    spacing = 150.0
    rs = grid_placement(pts, spacing)
    assert 2 <= len(rs) < len(pts)
    # every road point is within one cell diagonal of an RSU, and RSUs sit on road points
    d = np.sqrt(((pts[:, None, :] - rs[None, :, :]) ** 2).sum(-1)).min(1)
    assert d.max() <= spacing * np.sqrt(2) + 1e-6
    assert all(np.any(np.all(np.isclose(pts, r), axis=1)) for r in rs)


def test_make_rsus_auto_and_explicit(town02):
    from carla_mr.world.maps import load_map

    m = load_map(town02)
    auto = make_rsus(RsusConfig(mode="auto", spacing_m=100, range_m=120), m)
    assert len(auto) >= 2 and np.all(auto.range_m == 120) and np.all(auto.gpu_hz == 19e9)
    assert np.all(auto.bandwidth_up_hz == 20e6) and np.all(auto.cpu_hz == 3.6e9)
    counted = make_rsus(RsusConfig(mode="auto", count=3), m)
    assert len(counted) == 3
    exp = make_rsus(RsusConfig(mode="explicit", positions=[{"x": 1, "y": 2}, {"x": 5, "y": 6, "range_m": 50}]))
    assert list(exp.x) == [1, 5] and list(exp.range_m) == [250.0, 50.0]


def test_farthest_points_spread():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 100, (500, 2))
    f = farthest_points(pts, 5)
    assert len(f) == 5 and len({tuple(p) for p in f}) == 5
    d = np.sqrt(((f[:, None] - f[None]) ** 2).sum(-1)) + np.eye(5) * 1e9
    assert d.min() > 20

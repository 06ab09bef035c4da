"""The exact alpha: closed form vs literal quadrature vs Monte Carlo; the top-L shortcut is exact."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carla_mr.market.alpha import alpha_factor, expected_second_max, msb_win_stats
from carla_mr.market.oracle import msb_win_quad, second_max_pair, second_max_quad

arrays = st.lists(st.floats(0.0, 50.0, allow_nan=False), min_size=2, max_size=7)


@settings(max_examples=40, deadline=None)
@given(a=arrays)
def test_second_max_closed_form_equals_literal_quadrature(a):
    got = float(expected_second_max(np.array(a)))
    assert got == pytest.approx(second_max_quad(a), rel=1e-9, abs=1e-9)
    assert got == pytest.approx(second_max_pair(a), rel=1e-10, abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(a=arrays.filter(lambda x: sum(v > 0 for v in x) >= 2), alpha=st.floats(1.0, 4.0))
def test_msb_win_stats_equal_literal_quadrature(a, alpha):
    p, e = msb_win_stats(np.array(a), np.array(alpha))
    pq, eq = msb_win_quad(a, alpha)
    assert float(p) == pytest.approx(pq, rel=1e-8, abs=1e-9)
    assert float(e) == pytest.approx(eq, rel=1e-8, abs=1e-9)


def test_closed_forms_against_monte_carlo():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.5, 3.0, (3, 6))
    x = a[..., None] * (1.0 - rng.random(a.shape + (400_000,)))
    srt = np.sort(x, axis=1)
    x1, x2 = srt[:, -1], srt[:, -2]
    np.testing.assert_allclose(expected_second_max(a), x2.mean(-1), rtol=3e-3)
    alpha = np.array([1.0, 1.3, 2.0])
    win = x1 > alpha[:, None] * x2
    p, e = msb_win_stats(a, alpha)
    np.testing.assert_allclose(p, win.mean(-1), atol=3e-3)
    se = (x1 * win).std(-1) / np.sqrt(x1.shape[-1])
    assert np.all(np.abs(e - (x1 * win).mean(-1)) < 5 * se)


def test_known_values():
    # E[min of two U(0,1)] = 1/3; K equal: (K-1)/(K+1)
    assert float(expected_second_max(np.array([1.0, 1.0]))) == pytest.approx(1 / 3, abs=1e-15)
    for K in (3, 10, 500):
        assert float(expected_second_max(np.ones(K))) == pytest.approx((K - 1) / (K + 1), rel=1e-12)
    # only one positive: X_(2) = 0, alpha = inf if the driving term is positive, else 1
    assert float(expected_second_max(np.array([0.0, 2.0, 0.0]))) == 0.0
    assert np.isinf(alpha_factor(np.array([0.0, 2.0]), np.array(1.0)))
    assert float(alpha_factor(np.array([0.0, 2.0]), np.array(0.0))) == 1.0


def test_alpha_formula_and_bounds():
    rng = np.random.default_rng(1)
    Ft = rng.uniform(0, 5, (20, 3, 8))
    F0 = rng.uniform(0, 30, (20, 3))
    al = alpha_factor(Ft, F0, gamma=0.7, beta0=2.5)
    np.testing.assert_allclose(al, np.maximum(1, 0.7 * 2.5 * F0 / 2 / expected_second_max(Ft)), rtol=1e-13)
    assert np.all(al >= 1) and (al > 1).any() and (al == 1).any()
    # scale-free (C cancels)
    np.testing.assert_allclose(alpha_factor(7 * Ft, 7 * F0, gamma=0.7, beta0=2.5), al, rtol=1e-12)


@pytest.mark.parametrize("spread", ["wide", "narrow", "equal", "zeros"])
def test_top_l_shortcut_is_exact(spread):
    rng = np.random.default_rng(2)
    K = 300
    if spread == "wide":
        a = np.exp(rng.uniform(-3, 3, (40, K)))
    elif spread == "narrow":
        a = rng.uniform(9, 10, (40, K))
    elif spread == "equal":
        a = np.full((40, K), 2.0)
    else:
        a = np.zeros((40, K))
        a[:, :3] = rng.uniform(1, 2, (40, 3))
    full = expected_second_max(a, top=None)
    np.testing.assert_allclose(expected_second_max(a), full, rtol=1e-12, atol=1e-300)
    F0 = rng.uniform(0, 4 * a.max(), 40)
    for beta0 in (1.0, 5.0):
        np.testing.assert_array_equal(alpha_factor(a, F0, beta0=beta0), alpha_factor(a, F0, beta0=beta0, top=None))


def test_large_k_matches_scalar_oracle():
    rng = np.random.default_rng(3)
    a = np.log2(1 + rng.uniform(0.4, 0.6, (5, 1000)) * np.exp(rng.uniform(-1, 9, (5, 1000)))) / 0.53
    got = expected_second_max(a)
    for r in range(5):
        assert got[r] == pytest.approx(second_max_pair(a[r].tolist()), rel=1e-11)


def test_top_two_equals_a_partial_sort_with_ties():
    from carla_mr.market.auctions import top_two

    rng = np.random.default_rng(4)
    a = rng.integers(0, 4, (200, 7)).astype(float)  # many ties
    a[0] = 3.0
    b1, b2 = top_two(a)
    part = np.partition(a, 5, axis=-1)
    np.testing.assert_array_equal(b1, part[:, 6])
    np.testing.assert_array_equal(b2, part[:, 5])
    b1, b2 = top_two(a[:, None, :])  # any leading shape
    assert b1.shape == (200, 1) and np.array_equal(b2[:, 0], part[:, 5])


def test_rowwise_baseline_equals_the_vectorised_clear():
    """The benchmark's fair baseline (loop over windows, numpy over K) gives the same outcome."""
    import dataclasses

    from carla_mr.market.mechanisms import clear
    from carla_mr.market.model import MarketParams, sample_market
    from carla_mr.market.oracle import clear_rowwise

    for seed, K, scoring, mech in ((0, 80, "reported", "mtepvisa"), (1, 120, "expected", "mtepvisa"),
                                   (2, 90, "reported", "epvisa")):
        m = sample_market(MarketParams(n_avs=12, n_traffic=K, n_tasks=3, beta0=3.0), seed)
        v = clear(dataclasses.replace(m, public=dataclasses.replace(m.public)), mechanism=mech, scoring=scoring)
        r = clear_rowwise(m, mechanism=mech, scoring=scoring)
        assert v.winner == r.winner and v.payment == pytest.approx(r.payment, rel=1e-12, abs=1e-12)
        np.testing.assert_allclose(r.scores, v.scores, rtol=1e-12)
        np.testing.assert_array_equal(r.offline_winner, v.offline_winner)
        np.testing.assert_allclose(r.offline_price, v.offline_price, rtol=1e-12)
        np.testing.assert_array_equal(r.alpha, v.alpha)
        assert r.total == pytest.approx(v.total, rel=1e-12)

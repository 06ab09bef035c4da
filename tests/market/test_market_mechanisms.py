"""The mechanisms: agreement with the loop oracle and every law of docs/mechanism.md's last section."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from market_helpers import TOL, assert_same_outcome, av_utility, close, small_market

from carla_mr.errors import InputError
from carla_mr.market.auctions import msb, score_auction, second_price
from carla_mr.market.mechanisms import clear
from carla_mr.market.model import public_market
from carla_mr.market.oracle import clear_loop

MECHS = ["pvisa", "epvisa", "mtepvisa"]
SCORE_MECHS = ["epvisa", "mtepvisa"]


# ---------------------------------------------------------------------------------------------
# Vectorised == loop oracle
# ---------------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), mech=st.sampled_from(MECHS), scoring=st.sampled_from(["reported", "expected"]),
       windows=st.sampled_from(["first", "all"]), beta0=st.sampled_from([1.0, 3.0, 20.0]),
       dt_weight=st.sampled_from(["unit", "r_acc"]), genai=st.booleans(), n_tasks=st.integers(1, 3))
def test_clear_equals_oracle(seed, mech, scoring, windows, beta0, dt_weight, genai, n_tasks):
    m = small_market(seed, beta0=beta0, genai=genai, n_tasks=n_tasks, c_max=20)
    r_acc = np.random.default_rng(seed).uniform(0, 1, m.params.n_avs)
    kw = dict(mechanism=mech, scoring=scoring, epvisa_windows=windows, r_acc=r_acc, dt_weight=dt_weight)
    out = clear(m, **kw)
    assert_same_outcome(out, clear_loop(m, **kw))
    assert json.loads(json.dumps(out.to_dict(), allow_nan=False)) == out.to_dict()


def test_clear_equals_oracle_with_untruthful_bids_and_public_market():
    m = small_market(11, n_avs=8, n_traffic=5)
    rng = np.random.default_rng(0)
    b = rng.uniform(0, 2, 8)
    U = m.U * rng.uniform(0, 3, m.U.shape)
    for mech in MECHS:
        assert_same_outcome(clear(m.public, b, U, mechanism=mech), clear_loop(m.public, b, U, mechanism=mech))
        o = clear(m.public, b, U, mechanism=mech, values=(m.v, m.U))
        assert_same_outcome(o, clear(m, b, U, mechanism=mech))


def test_clear_rejects_bad_input():
    m = small_market(0)
    with pytest.raises(InputError, match="mechanism"):
        clear(m, mechanism="vcg")
    with pytest.raises(InputError, match="scoring"):
        clear(m, scoring="guess")
    with pytest.raises(InputError, match="av_bids"):
        clear(m, av_bids=np.ones(3))
    with pytest.raises(InputError, match="sim_bids"):
        clear(m, sim_bids=-m.U)
    with pytest.raises(InputError, match="sim_bids"):
        clear(m.public, m.v)
    with pytest.raises(InputError, match="r_acc"):
        clear(m, r_acc=np.ones(2))


# ---------------------------------------------------------------------------------------------
# Payment (9) regression (error 1 of the specification)
# ---------------------------------------------------------------------------------------------


def test_payment_9_regression_individual_rationality():
    """v = (0.3, 0.7), phi = (0.5, 0): AV 0 wins with 0.8; the paper's eq. (9) would charge 0.7 > 0.3."""
    v = np.array([0.3, 0.7])
    w, p = score_auction(v + np.array([0.5, 0.0]), np.ones(2), np.array([0.5, 0.0]))
    assert w == 0 and p == pytest.approx(0.2) and p <= v[0]
    # the same through clear(): beta0 = 0 makes a_i = 1, and AV 0's traffic window is worth 0.5
    pub = public_market(rate_up=np.ones(2), rate_down=np.ones(2), s_dt=np.zeros((2, 1)), e_dt=np.zeros((2, 1)),
                        d=np.ones((2, 1)), s_sim=np.full(3, 0.5), e_sim=np.ones(3), C=np.ones(2), G=0.5, beta0=0.0)
    sim = np.zeros((2, 1, 3))
    sim[0, 0, 1] = 0.5  # T = d = 1, b_(2) = 0: traffic wins, c_0 = 0.5
    out = clear(pub, v, sim, mechanism="mtepvisa")
    assert out.winner == 0 and out.payment == pytest.approx(0.2) and out.payment <= v[0]
    assert out.offline_winner[0] == 1 and out.offline_price[0] == 0.0


# ---------------------------------------------------------------------------------------------
# Law 1-2: AV truthfulness, Myerson
# ---------------------------------------------------------------------------------------------


def _critical_bid(m, i, kw, hi=None):
    """Smallest bid of AV i that wins, by bisection (inf if it never wins)."""
    b = m.v.copy()
    hi = hi or 1e6
    b[i] = hi
    if clear(m, b, **kw).winner != i:
        return np.inf
    lo = 0.0
    b[i] = 0.0
    if clear(m, b, **kw).winner == i:
        return 0.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        b[i] = mid
        if clear(m, b, **kw).winner == i:
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return hi


@pytest.mark.parametrize("mech", MECHS)
@pytest.mark.parametrize("scoring", ["reported", "expected"])
def test_av_truthfulness_and_myerson(mech, scoring):
    kw = dict(mechanism=mech, scoring=scoring)
    rng = np.random.default_rng(7)
    for seed in range(4):
        m = small_market(100 + seed, n_avs=5, c_max=20)
        truth = clear(m, **kw)
        if truth.winner >= 0:
            # Myerson: the payment is the critical bid, and utility(truth) = v - p >= 0
            crit = _critical_bid(m, truth.winner, kw)
            assert close(truth.payment, crit, 1e-9), (truth.payment, crit)
            assert truth.payment <= m.v[truth.winner] + TOL
        for i in range(m.params.n_avs):
            u0 = av_utility(truth, i, m.v[i])
            crit = _critical_bid(m, i, kw)
            wins = []
            grid = np.linspace(0, 3, 31)
            for x in grid:  # allocation monotone in the bid
                b = m.v.copy()
                b[i] = x
                wins.append(clear(m, b, **kw).winner == i)
            assert all(not a or b_ for a, b_ in zip(wins, wins[1:])), wins
            lies = [0.0, m.v[i] / 2, 2 * m.v[i], rng.uniform(0, 3)]
            if np.isfinite(crit):
                lies += [max(crit - 1e-7, 0.0), crit + 1e-7]
            for x in lies:
                b = m.v.copy()
                b[i] = x
                assert av_utility(clear(m, b, **kw), i, m.v[i]) <= u0 + TOL


# ---------------------------------------------------------------------------------------------
# Law 3: individual rationality
# ---------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), mech=st.sampled_from(MECHS), scoring=st.sampled_from(["reported", "expected"]))
def test_individual_rationality(seed, mech, scoring):
    m = small_market(seed, n_avs=8, n_traffic=6, c_max=50)
    rng = np.random.default_rng(seed)
    b = m.v * rng.uniform(0.5, 1.5, 8)
    out = clear(m, b, mechanism=mech, scoring=scoring)
    if out.winner < 0:
        assert out.payment == 0 and out.revenue == 0
        return
    assert 0 <= out.payment <= b[out.winner] + TOL
    U_w = m.U[out.winner]
    for n in np.flatnonzero(out.served):
        k = out.offline_winner[n]
        if k >= 1:  # the traffic winner pays T alpha b_(2) <= T b_(1)
            assert out.offline_payment[n] <= out.T[n] * U_w[n, k] + TOL
        assert out.offline_payment[n] >= 0
    assert out.revenue == pytest.approx(out.payment + out.offline_payment.sum())


# ---------------------------------------------------------------------------------------------
# Law 4: simulator truthfulness offline (online winner fixed)
# ---------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), K=st.integers(2, 6), alpha=st.sampled_from([1.0, 1.25, 2.0]))
def test_msb_truthful_for_traffic_simulators(seed, K, alpha):
    rng = np.random.default_rng(seed)
    val = rng.uniform(0, 1, K)
    w, p = msb(val, alpha)
    for k in range(K):
        u0 = (val[k] - p) if w == k + 1 else 0.0
        assert u0 >= -TOL
        b2 = np.sort(np.delete(val, k))[-1]
        for x in [0.0, val[k] / 2, 2 * val[k], rng.uniform(0, 2), alpha * b2 - 1e-9, alpha * b2 + 1e-9]:
            bids = val.copy()
            bids[k] = x
            w2, p2 = msb(bids, alpha)
            u = (val[k] - p2) if w2 == k + 1 else 0.0
            assert u <= u0 + TOL


@pytest.mark.parametrize("mech", SCORE_MECHS)
def test_simulators_truthful_in_the_winners_windows(mech):
    rng = np.random.default_rng(5)
    for seed in range(6):
        m = small_market(300 + seed, n_traffic=5)
        out = clear(m, mechanism=mech, scoring="expected")
        w = out.winner
        for n in range(m.params.n_tasks):
            al = m.alpha[w, n]
            val = m.U[w, n, 1:]
            k0, p0 = msb(val, al)
            for k in range(5):
                u0 = (val[k] - p0) if k0 == k + 1 else 0.0
                for x in (0.0, 0.5 * val[k], 3 * val[k], rng.uniform(0, 3 * val.max() + 1e-9)):
                    bids = val.copy()
                    bids[k] = x
                    k1, p1 = msb(bids, al)
                    assert ((val[k] - p1) if k1 == k + 1 else 0.0) <= u0 + TOL


# Law 5 (cross-stage simulator truthfulness) and every setting of laws 1 and 4: test_market_truthfulness.py


# ---------------------------------------------------------------------------------------------
# Law 6: false names
# ---------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), K=st.integers(2, 6), alpha=st.sampled_from([1.0, 1.5, 3.0]))
def test_false_name_bids(seed, K, alpha):
    rng = np.random.default_rng(seed)
    val = rng.uniform(0, 1, K)
    w, p = msb(val, alpha)
    srt = np.sort(val)
    b1, b2 = srt[-1], srt[-2]
    x = rng.uniform(0, b1)
    w2, p2 = msb(np.append(val, x), alpha)
    if w >= 1 and w2 == w:  # the winner still wins: its price rises to alpha max(b2, x)
        assert p2 == pytest.approx(alpha * max(b2, x)) and p2 >= p - TOL
    for j in range(K):  # any simulator j adding shill x: own gain plus shill's (value 0) <= truthful
        u0 = (val[j] - p) if w == j + 1 else 0.0
        for y in (rng.uniform(0, 2), 0.5 * val[j], b1 * 0.999):
            bids = val.copy()
            w3, p3 = msb(np.append(bids, y), alpha)
            u = ((val[j] - p3) if w3 == j + 1 else 0.0) + ((0.0 - p3) if w3 == K + 1 else 0.0)
            assert u <= u0 + TOL


# ---------------------------------------------------------------------------------------------
# Law 7: determinism, equivariance, ties
# ---------------------------------------------------------------------------------------------


def test_outcome_determinism():
    a, b = small_market(9), small_market(9)
    for mech in MECHS:
        assert clear(a, mechanism=mech).to_dict() == clear(b, mechanism=mech).to_dict()


@pytest.mark.parametrize("mech", MECHS)
def test_permutation_equivariance(mech):
    rng = np.random.default_rng(1)
    for seed in range(5):
        m = small_market(500 + seed, n_avs=7, n_traffic=5, n_tasks=2)
        out = clear(m, mechanism=mech)
        pa = rng.permutation(7)
        pk = np.concatenate([[0], 1 + rng.permutation(5)])  # the driving simulator stays 0
        pm = m.rederive(g=m.g[pa], p_av=m.p_av[pa], s2_rsu=m.s2_rsu[pa], s2_av=m.s2_av[pa], s_dt=m.public.s_dt[pa],
                        e_dt=m.public.e_dt[pa], d=m.public.d[pa], v=m.v[pa], C=m.C[pa], u=m.u[pa][:, pk],
                        G=m.G[pa][:, pk], s_sim=m.public.s_sim[0][pk], e_sim=m.public.e_sim[0][pk])
        po = clear(pm, mechanism=mech)
        np.testing.assert_allclose(po.scores, out.scores[pa], rtol=1e-12)
        assert pa[po.winner] == out.winner
        inv_k = np.argsort(pk)
        assert [int(pk[k]) if k >= 0 else -1 for k in po.offline_winner] == list(out.offline_winner)
        assert np.array_equal(inv_k[pk], np.arange(6))
        for f in ("payment", "total", "revenue", "S_T", "S_D", "S_DT"):
            assert close(getattr(po, f), getattr(out, f), 1e-12), f


def test_ties_go_to_the_lowest_index():
    assert score_auction(np.array([1.0, 2.0, 2.0]), np.ones(3), np.zeros(3)) == (1, 2.0)
    assert second_price(np.array([[0.5, 0.5, 0.1]]))[0][0] == 0
    w, p = msb(np.array([0.7, 0.3, 0.7]), 1.0)  # b1 = b2: not strictly above alpha b2 -> driving
    assert w == 0 and p == 0
    w, p = msb(np.array([0.3, 0.7, 0.2]), 1.0)
    assert w == 2 and p == pytest.approx(0.3)
    m = small_market(3, n_avs=2)
    twin = m.rederive(**{k: np.repeat(getattr(m, k)[:1], 2, axis=0) for k in ("g", "p_av", "s2_rsu", "s2_av", "v",
                                                                             "u", "G")},
                      s_dt=np.repeat(m.public.s_dt[:1], 2, 0), e_dt=np.repeat(m.public.e_dt[:1], 2, 0),
                      d=np.repeat(m.public.d[:1], 2, 0), C=np.repeat(m.C[:1], 2))
    for mech in MECHS:
        out = clear(twin, mechanism=mech)
        if twin.public.av_feasible[0]:
            assert out.winner == 0 and out.payment == pytest.approx(twin.v[0])


# ---------------------------------------------------------------------------------------------
# Law 8: free of adverse selection
# ---------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), c=st.floats(1e-3, 1e3), alpha=st.floats(1.0, 3.0))
def test_msb_scale_invariance(seed, c, alpha):
    val = np.random.default_rng(seed).uniform(0, 1, (4, 6))
    w, p = msb(val, alpha)
    w2, p2 = msb(c * val, alpha)
    assert np.array_equal(w, w2)
    np.testing.assert_allclose(p2, c * p, rtol=1e-12)


def test_adverse_selection_statistics():
    """Over many (AV, task) windows: E[v | driving wins] ~ E[v] under the MSB, < E[v] under PViSA."""
    vs_msb, vs_sp, v_all = [], [], []
    for seed in range(60):
        m = small_market(seed, n_avs=50, n_traffic=10, n_tasks=2, c_max=20, beta0=3.0)
        pub = m.public
        ok = pub.feasible
        w_msb, _ = msb(m.U[:, :, 1:], pub.alpha)
        bids = np.concatenate([pub.b0[..., None], m.U[:, :, 1:]], axis=-1)
        w_sp, _ = second_price(bids)
        vv = np.broadcast_to(m.v[:, None], ok.shape)
        vs_msb.append(vv[ok & (w_msb == 0)])
        vs_sp.append(vv[ok & (w_sp == 0)])
        v_all.append(vv[ok])
    v_all = np.concatenate(v_all)
    ev = v_all.mean()
    for arr, adverse in ((np.concatenate(vs_msb), False), (np.concatenate(vs_sp), True)):
        assert arr.size > 200
        se = v_all.std() / np.sqrt(arr.size)
        if adverse:
            assert arr.mean() < ev - 4 * se
        else:
            assert abs(arr.mean() - ev) < 4 * se


@pytest.mark.parametrize("beta0", [1.0, 40.0])
def test_clear_equals_oracle_above_the_top_l_shortcut(beta0):
    """K = 150 > TOP_L: the bounded alpha shortcut is used and must not change the outcome."""
    m = small_market(77, n_avs=4, n_traffic=150, n_tasks=2, beta0=beta0)
    for mech in SCORE_MECHS:
        assert_same_outcome(clear(m, mechanism=mech), clear_loop(m, mechanism=mech))
    from carla_mr.market.alpha import alpha_factor

    np.testing.assert_array_equal(m.alpha, alpha_factor(m.F[:, :, 1:], m.F[:, :, 0], beta0=beta0, top=None))
    if beta0 > 1:
        assert (m.alpha > 1).any()

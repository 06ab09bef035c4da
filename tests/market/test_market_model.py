"""System model: validation, determinism, derivations against the element-by-element oracle."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carla_mr.errors import InputError
from carla_mr.market.model import MarketParams, public_market, rates, sample_market
from carla_mr.market.oracle import derive_loop


@pytest.mark.parametrize("field,value", [
    ("n_avs", -1), ("n_avs", 0), ("n_traffic", 1), ("n_traffic", -3), ("n_tasks", 0), ("n_tasks", -2),
    ("theta", 0.0), ("theta", 1.2), ("theta", -0.5), ("g_lo", -0.1), ("g_hi", 1.5), ("gamma", -1.0),
    ("beta0", -0.1), ("size_unit", 0.0), ("noise_mode", "loud"), ("c_max", 0.5), ("zipf_a", 1.0),
    ("bandwidth_up_mhz", -20.0), ("f_g_ghz", 0.0), ("s_sim_lo_mb", 0.0), ("r_acc", float("nan")), ("n_avs", 2.5),
])
def test_invalid_params_name_the_field(field, value):
    with pytest.raises(InputError) as exc:
        dataclasses.replace(MarketParams(), **{field: value}).validate()
    assert exc.value.field == field
    assert field in str(exc.value)


def test_g_range_order():
    with pytest.raises(InputError, match="g_lo"):
        MarketParams(g_lo=0.7, g_hi=0.6).validate()


def test_defaults_are_the_specification():
    p = MarketParams().validate()
    assert (p.n_avs, p.n_traffic, p.n_tasks) == (30, 29, 1)
    assert (p.bandwidth_up_mhz, p.bandwidth_down_mhz, p.f_c_ghz, p.f_g_ghz) == (20, 20, 3.6, 19)
    assert (p.gamma, p.theta, p.r_acc, p.g_lo, p.g_hi, p.beta0, p.size_unit) == (1, 0.53, 0.5, 0.4, 0.6, 1, 1)
    m = sample_market(p, 0)
    assert m.U.shape == (30, 1, 30) and m.public.alpha.shape == (30, 1)


def test_determinism_bit_identical():
    p = MarketParams(n_tasks=3)
    a, b = sample_market(p, 123), sample_market(p, np.random.SeedSequence(123))
    for f in dataclasses.fields(a.public):
        x, y = getattr(a.public, f.name), getattr(b.public, f.name)
        if isinstance(x, np.ndarray):
            assert x.tobytes() == y.tobytes(), f.name
    for name in ("g", "p_av", "s2_rsu", "s2_av", "v", "u", "h", "G", "m", "U"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes(), name
    assert np.array_equal(a.public.alpha, b.public.alpha)
    c = sample_market(p, 124)
    assert not np.array_equal(a.v, c.v)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), genai=st.booleans(), noise=st.sampled_from(["random", "fixed"]),
       size_unit=st.sampled_from([1.0, 8.0]), n_tasks=st.integers(1, 3))
def test_vectorised_model_matches_loop(seed, genai, noise, size_unit, n_tasks):
    p = MarketParams(n_avs=5, n_traffic=3, n_tasks=n_tasks, genai=genai, noise_mode=noise, size_unit=size_unit,
                     beta0=2.0)
    m = sample_market(p, seed)
    ref = derive_loop(m)
    got = {"R_u": m.public.rate_up, "R_d": m.public.rate_down, "t": m.public.t, "l": m.public.l,
           "rem": m.public.rem, "T": m.public.T, "tau": m.public.tau, "Q": m.public.Q, "F": m.public.F,
           "m": m.m, "U": m.U}
    for k, arr in got.items():
        np.testing.assert_allclose(arr, ref[k], rtol=1e-12, atol=1e-12, err_msg=k)
    # feasibility and the driving expectation
    assert np.array_equal(m.public.feasible, m.public.rem > 0)
    np.testing.assert_allclose(m.public.e_m0, m.public.F[:, :, 0] * p.beta0 * m.C[:, None] / 2)
    np.testing.assert_allclose(m.public.b0, 0.5 * m.public.e_m0)
    assert np.all(m.h <= m.C[:, None] * np.where(np.arange(4) == 0, p.beta0, 1.0))  # (5c)


def test_total_time_equals_deadline_for_feasible_tasks():
    m = sample_market(MarketParams(n_avs=40, n_tasks=3), 5)
    pub = m.public
    # one simulation batch takes Q * tau = rem, so T_total = t + l + Q tau = d (fix 4)
    total = pub.t[:, :, None] + pub.l[:, :, None] + pub.Q * pub.tau[:, None, :]
    f = pub.feasible
    np.testing.assert_allclose(total[f], np.broadcast_to(pub.d[:, :, None], total.shape)[f], rtol=1e-12)


def test_genai_threshold():
    """F > 1 (generative AI helps) exactly where G Q > 2^theta - 1."""
    m = sample_market(MarketParams(n_avs=50, n_traffic=20, g_lo=0.0, g_hi=0.2), 3)
    pub = m.public
    thr = 2 ** 0.53 - 1
    gq = pub.G * pub.Q
    assert np.array_equal(pub.F > 1, gq > thr)
    assert (gq > thr).any() and (gq < thr).any()


def test_without_genai_is_common_random_numbers():
    m = sample_market(MarketParams(n_tasks=2), 9)
    n = m.with_genai(False)
    assert np.array_equal(n.v, m.v) and np.array_equal(n.u, m.u) and np.array_equal(n.public.T, m.public.T)
    assert np.all(n.F == 1.0)
    np.testing.assert_allclose(n.m, np.broadcast_to(n.h[:, None, :], n.m.shape))


def test_c_max_truncates():
    m = sample_market(MarketParams(n_avs=2000, c_max=5), 1)
    assert m.C.max() <= 5 and m.C.min() >= 1
    assert sample_market(MarketParams(n_avs=2000), 1).C.max() > 5


def test_public_market_from_arrays_matches_sampled():
    m = sample_market(MarketParams(n_avs=4, n_traffic=3, n_tasks=2), 2)
    r_u, r_d = rates(m.g, m.p_av, m.p_rsu, m.s2_rsu, m.s2_av)
    pub = public_market(rate_up=r_u, rate_down=r_d, s_dt=m.public.s_dt, e_dt=m.public.e_dt, d=m.public.d,
                        s_sim=m.public.s_sim[0], e_sim=m.public.e_sim[0], C=m.C, G=m.G[:, None, :], theta=0.53)
    np.testing.assert_array_equal(pub.F, m.public.F)
    np.testing.assert_array_equal(pub.alpha, m.public.alpha)
    # per-AV theta array accepted (the genai stage feeds it)
    pub2 = public_market(rate_up=r_u, rate_down=r_d, s_dt=m.public.s_dt, e_dt=m.public.e_dt, d=m.public.d,
                         s_sim=m.public.s_sim, e_sim=m.public.e_sim, C=m.C, G=0.5,
                         theta=np.array([0.4, 0.5, 0.6, 1.0])[:, None, None])
    assert pub2.F.shape == (4, 2, 4)


@pytest.mark.parametrize("kw,field", [
    (dict(s_dt=np.ones(3)), "s_dt"), (dict(s_sim=np.ones(2)), "s_sim"), (dict(G=1.5), "G"),
    (dict(theta=0.0), "theta"), (dict(C=-np.ones(2)), "C"), (dict(d=np.full((2, 1), np.nan)), "d"),
    (dict(rate_up=np.ones(5)), "rate_up"), (dict(s_sim=np.array([1.0, 0.0, 1.0])), "s_sim"),
])
def test_public_market_rejects_bad_arrays(kw, field):
    base = dict(rate_up=np.ones(2), rate_down=np.ones(2), s_dt=np.full((2, 1), 0.1), e_dt=np.ones((2, 1)),
                d=np.ones((2, 1)), s_sim=np.ones(3), e_sim=np.ones(3), C=np.ones(2), G=0.5)
    base.update(kw)
    with pytest.raises(InputError) as exc:
        public_market(**base)
    assert exc.value.field == field


def test_theta_and_G_per_simulator_in_make_public():
    """theta (K+1,) and G (K+1,) per simulator broadcast into F = log2(1 + G Q) / theta."""
    from carla_mr.market.clearing import make_public, public_market_of

    m = sample_market(MarketParams(n_avs=4, n_traffic=3, n_tasks=2), 6)
    theta = np.array([0.53, 0.3, 0.8, 1.0])
    G = np.array([0.5, 1.0, 0.2, 0.7])
    pub = make_public(rate_up=m.public.rate_up, rate_down=m.public.rate_down, s_sim=m.public.s_sim,
                      e_sim=m.public.e_sim, C=m.C, G=G, theta=theta)
    assert pub["theta"].shape == (1, 1, 4) and pub["G"].shape == (1, 1, 4)
    pm = public_market_of(pub, m.public.s_dt, m.public.e_dt, m.public.d)
    np.testing.assert_allclose(pm.F, np.log2(1 + G * m.public.Q) / theta, rtol=1e-12)
    per_av = make_public(rate_up=m.public.rate_up, rate_down=m.public.rate_down, s_sim=m.public.s_sim,
                         e_sim=m.public.e_sim, C=m.C, G=np.tile(G, (4, 1)), theta=np.tile(theta, (4, 1)))
    assert per_av["theta"].shape == (4, 1, 4)
    np.testing.assert_array_equal(public_market_of(per_av, m.public.s_dt, m.public.e_dt, m.public.d).F, pm.F)
    with pytest.raises(InputError, match="theta"):
        make_public(rate_up=m.public.rate_up, rate_down=m.public.rate_down, s_sim=m.public.s_sim,
                    e_sim=m.public.e_sim, C=m.C, G=0.5, theta=np.array([0.5, 0.5]))
    with pytest.raises(InputError, match="theta"):
        make_public(rate_up=m.public.rate_up, rate_down=m.public.rate_down, s_sim=m.public.s_sim,
                    e_sim=m.public.e_sim, C=m.C, G=0.5, theta=np.array([0.5, 0.0, 0.5, 0.5]))

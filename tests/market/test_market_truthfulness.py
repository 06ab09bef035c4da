"""Truthfulness under every setting: beta0 in {1, 3, 10}, N in {2, 3}, both scorings.

AV prices, AV deadlines (under-reports only: deadlines are verifiable upward), simulator bids
(offline with the online winner fixed, and across stages), and the AVs' task sizes and cycles
(verified by the RSU: a misreport is refused on the wire or ignored by clearing).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from market_helpers import TOL, av_utility, sim_utility, small_market

from carla_mr.market.auctions import msb
from carla_mr.market.mechanisms import clear
from carla_mr.market.model import MarketParams, sample_market

MECHS = ["pvisa", "epvisa", "mtepvisa"]
SCORINGS = ["reported", "expected"]
BETA0S = [1.0, 3.0, 10.0]
NS = [2, 3]
SEEDS = range(3)


def _market(seed: int, beta0: float, n_tasks: int, **kw):
    return small_market(1000 + seed, n_avs=5, n_traffic=4, n_tasks=n_tasks, c_max=20, beta0=beta0, **kw)


# ---------------------------------------------------------------------------------------------
# AV prices
# ---------------------------------------------------------------------------------------------


def _critical(m, i: int, kw: dict) -> float:
    """The smallest bid of AV i that wins (bisection; inf if none up to 1e3)."""
    b = m.v.copy()
    b[i] = 1e3
    if clear(m, b, **kw).winner != i:
        return np.inf
    lo, hi = 0.0, 1e3
    b[i] = 0.0
    if clear(m, b, **kw).winner == i:
        return 0.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        b[i] = mid
        if clear(m, b, **kw).winner == i:
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return hi


@pytest.mark.parametrize("beta0,n_tasks,scoring,mech", list(itertools.product(BETA0S, NS, SCORINGS, MECHS)))
def test_av_price_truthful_every_setting(beta0, n_tasks, scoring, mech):
    """No misreport b' in {0, v/2, 2v, critical -/+ eps, random} beats the truth; the winner pays
    its critical bid (Myerson)."""
    kw = dict(mechanism=mech, scoring=scoring)
    rng = np.random.default_rng(int(beta0 * 10 + n_tasks))
    for seed in SEEDS:
        m = _market(seed, beta0, n_tasks)
        truth = clear(m, **kw)
        for i in range(m.params.n_avs):
            u0 = av_utility(truth, i, m.v[i])
            crit = _critical(m, i, kw)
            if truth.winner == i:
                assert truth.payment == pytest.approx(crit, rel=1e-9, abs=1e-9)
            lies = [0.0, m.v[i] / 2, 2 * m.v[i], rng.uniform(0, 3)]
            if np.isfinite(crit):
                lies += [max(crit - 1e-7, 0.0), crit + 1e-7]
            for x in lies:
                b = m.v.copy()
                b[i] = x
                assert av_utility(clear(m, b, **kw), i, m.v[i]) <= u0 + TOL


# ---------------------------------------------------------------------------------------------
# AV deadlines (under-reports)
# ---------------------------------------------------------------------------------------------


def _deadline_gains(beta0: float, n_tasks: int, scoring: str, mech: str, seeds) -> list[tuple]:
    """(seed, AV, factor, gain) of every profitable deadline under-report found."""
    found = []
    for seed in seeds:
        m = _market(seed, beta0, n_tasks)
        truth = clear(m, mechanism=mech, scoring=scoring)
        for i in range(m.params.n_avs):
            u0 = av_utility(truth, i, m.v[i])
            for x in (0.5, 0.6, 0.8, 0.95):
                d = m.public.d.copy()
                d[i] *= x
                lie = m.rederive(d=d)  # simulators bid truthfully on the reported window
                gain = av_utility(clear(lie, mechanism=mech, scoring=scoring), i, m.v[i]) - u0
                if gain > TOL:
                    found.append((seed, i, x, gain))
    return found


_MSB = ("epvisa", "mtepvisa")


@pytest.mark.parametrize("beta0,n_tasks,scoring,mech", [
    c for c in itertools.product(BETA0S, NS, SCORINGS, MECHS)
    if not (c[2] == "reported" and c[0] > 1 and c[3] in _MSB)])
def test_deadline_under_reports_do_not_pay_every_setting(beta0, n_tasks, scoring, mech):
    assert _deadline_gains(beta0, n_tasks, scoring, mech, range(12)) == []


def test_deadline_under_reports_can_pay_with_reported_scoring_above_beta0_1():
    """Reported scoring at beta0 > 1: a shorter window can move a task from the driving simulator
    to a traffic simulator (and change alpha), which moves the AV's score terms a and c, hence its
    critical bid. Such profitable under-reports exist but are rare (< 1% of tries)."""
    tries = gains = 0
    for beta0, n_tasks, mech in itertools.product((3.0, 10.0), NS, _MSB):
        found = _deadline_gains(beta0, n_tasks, "reported", mech, range(40))
        tries += 40 * 5 * 4
        gains += len(found)
    assert 0 < gains < 0.01 * tries, (gains, tries)


@pytest.mark.xfail(strict=True, reason=(
    "kept as specified (docs/market.md, choice 7): under reported scoring with beta0 = 3 AV 1 "
    "reports 60% of its deadline, its window flips from the driving simulator (the MSB's alpha "
    "and the driving term change with the window) to traffic simulator 3, c_1 grows and a_1 "
    "shrinks, and its payment drops from 0.232 to 0; expected scoring is immune"))
@pytest.mark.parametrize("mech", _MSB)
def test_seed_1015_deadline_counterexample(mech):
    m = sample_market(MarketParams(n_avs=5, n_traffic=3, n_tasks=1, beta0=3), 1015)
    truth = clear(m, mechanism=mech)
    assert truth.winner == 1 and truth.offline_winner[0] == 0
    d = m.public.d.copy()
    d[1] *= 0.6
    lie = clear(m.rederive(d=d), mechanism=mech)
    assert lie.winner == 1 and lie.offline_winner[0] == 3
    assert av_utility(lie, 1, m.v[1]) <= av_utility(truth, 1, m.v[1]) + TOL


def test_seed_1015_expected_scoring_does_not_pay():
    m = sample_market(MarketParams(n_avs=5, n_traffic=3, n_tasks=1, beta0=3), 1015)
    d = m.public.d.copy()
    d[1] *= 0.6
    for mech in _MSB:
        truth = clear(m, mechanism=mech, scoring="expected")
        lie = clear(m.rederive(d=d), mechanism=mech, scoring="expected")
        assert av_utility(lie, 1, m.v[1]) <= av_utility(truth, 1, m.v[1]) + TOL


# ---------------------------------------------------------------------------------------------
# Simulator bids
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta0,n_tasks,scoring", list(itertools.product(BETA0S, NS, SCORINGS)))
def test_simulators_truthful_offline_every_setting(beta0, n_tasks, scoring):
    """With the online winner fixed, no traffic simulator gains by misreporting in any window."""
    rng = np.random.default_rng(int(beta0) * 7 + n_tasks)
    for seed in SEEDS:
        m = _market(seed, beta0, n_tasks)
        out = clear(m, mechanism="mtepvisa", scoring=scoring)
        w = out.winner
        for n in range(n_tasks):
            al, val = m.alpha[w, n], m.U[w, n, 1:]
            k0, p0 = msb(val, al)
            for k in range(val.size):
                u0 = (val[k] - p0) if k0 == k + 1 else 0.0
                b2 = np.sort(np.delete(val, k))[-1]
                for x in (0.0, 0.5 * val[k], 3 * val[k], rng.uniform(0, 3 * val.max() + 1e-9),
                          al * b2 * (1 - 1e-9), al * b2 * (1 + 1e-9)):
                    bids = val.copy()
                    bids[k] = x
                    k1, p1 = msb(bids, al)
                    assert ((val[k] - p1) if k1 == k + 1 else 0.0) <= u0 + TOL


def _cross_stage_gain(scoring: str, beta0: float, n_tasks: int, seeds=range(6)) -> float:
    """The largest gain of a traffic simulator inflating its bids for one AV (across stages)."""
    best = 0.0
    for seed in seeds:
        m = small_market(400 + seed, n_avs=6, n_traffic=4, n_tasks=n_tasks, c_max=20, beta0=beta0)
        truth = clear(m, mechanism="mtepvisa", scoring=scoring)
        for k in range(1, 5):
            u0 = sim_utility(truth, k, m.U[truth.winner])
            for i in range(6):
                for factor in (1.5, 3.0, 10.0, 100.0):
                    bids = m.U.copy()
                    bids[i, :, k] *= factor
                    out = clear(m, sim_bids=bids, mechanism="mtepvisa", scoring=scoring)
                    best = max(best, sim_utility(out, k, m.U[out.winner]) - u0)
    return best


@pytest.mark.parametrize("beta0,n_tasks", list(itertools.product(BETA0S, NS)))
def test_cross_stage_simulator_truthful_with_expected_scoring(beta0, n_tasks):
    assert _cross_stage_gain("expected", beta0, n_tasks) <= TOL


@pytest.mark.parametrize("beta0,n_tasks", [(1.0, 2), (1.0, 3), (3.0, 2), (3.0, 3), (10.0, 3)])
@pytest.mark.xfail(strict=True, reason="documented (spec law 5): with reported scoring a simulator inflates "
                                      "its bid for an AV it matches well to make that AV win the online stage")
def test_cross_stage_simulator_truthful_with_reported_scoring(beta0, n_tasks):
    assert _cross_stage_gain("reported", beta0, n_tasks) <= TOL


# ---------------------------------------------------------------------------------------------
# Task sizes and cycles: verified by the RSU
# ---------------------------------------------------------------------------------------------


def _task_misreport_gains(verified: bool, seeds=range(20)) -> list[float]:
    """Gains of AVs under-reporting their task size or cycles, cleared through the auction's
    adapter with (verified) or without (self-reported) the RSU's task spec."""
    from carla_mr.market.clearing import clear_round, sample_round, truthful_bids

    av = [f"av-{i}" for i in range(5)]
    sims = [f"sim-{k}" for k in range(5)]
    gains = []
    for seed in seeds:
        pub, priv = sample_round(5, 5, 2, seed=seed, params={"model": {"c_max": 20}})
        if verified:
            pub = {**pub, "s_dt": priv["s_dt"], "e_dt": priv["e_dt"]}
        bids = truthful_bids(priv, av, sims)
        kw = dict(round_id=1, mechanism="mtepvisa", scoring="reported", public=pub, params={}, av_ids=av,
                  sim_ids=sims, n_tasks=2)
        truth = clear_round(bids=bids, **kw)[0]
        for i, a in enumerate(av):
            v = priv["v"][i]
            u0 = v - truth["core"]["payment"] if truth["winner_id"] == a else 0.0
            for key, factor in (("size", 0.0), ("size", 0.5), ("cycles", 0.0), ("cycles", 0.5)):
                kind, body = bids[a]
                lie = {"price": body["price"], "tasks": [dict(t, **{key: t[key] * factor}) for t in body["tasks"]]}
                out = clear_round(bids={**bids, a: (kind, lie)}, **kw)[0]
                u = v - out["core"]["payment"] if out["winner_id"] == a else 0.0
                gains.append(u - u0)
    return gains


def test_task_size_and_cycles_misreports_pay_when_unverified():
    """Why the RSU verifies them: self-reported, a smaller size or workload leaves more time
    for simulation (rem = d - t - l), raises F and the AV's score, and can pay."""
    assert max(_task_misreport_gains(verified=False)) > 1e-3


def test_task_size_and_cycles_misreports_cannot_pay_when_verified():
    """With the RSU's task spec, clearing uses the spec's sizes and cycles: a misreport changes
    nothing (and the auctioneer refuses it on the wire, tests/market/auction)."""
    assert max(abs(g) for g in _task_misreport_gains(verified=True)) <= TOL

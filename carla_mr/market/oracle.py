"""The reference implementation: plain Python loops over (AV, task, simulator), read straight
off docs/mechanism.md. It is the test oracle on small markets and the benchmark baseline.

Nothing here is vectorised on purpose; keep it simple rather than fast.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from carla_mr.market.outcome import Outcome
from carla_mr.market.model import EV, Market, MarketParams, PublicMarket

# ---------------------------------------------------------------------------------------------
# Model, element by element
# ---------------------------------------------------------------------------------------------


def derive_loop(market: Market) -> dict[str, np.ndarray]:
    """Recompute the derived arrays of a sampled market element by element from its primitives."""
    p: MarketParams = market.params
    pub = market.public
    I, N, K1 = pub.shape
    out = {k: np.zeros(s) for k, s in (("R_u", I), ("R_d", I), ("t", (I, N)), ("l", (I, N)), ("rem", (I, N)),
                                        ("T", (I, N)), ("tau", (I, K1)), ("Q", (I, N, K1)), ("F", (I, N, K1)),
                                        ("m", (I, N, K1)), ("U", (I, N, K1)))}
    for i in range(I):
        g = float(market.g[i])
        r_u = p.bandwidth_up_mhz * math.log2(1 + g * float(market.p_av[i]) / float(market.s2_rsu[i]))
        r_d = p.bandwidth_down_mhz * math.log2(1 + g * market.p_rsu / float(market.s2_av[i]))
        out["R_u"][i], out["R_d"][i] = r_u, r_d
        for k in range(K1):
            s_k, e_k = float(pub.s_sim[i, k]), float(pub.e_sim[i, k])
            out["tau"][i, k] = (s_k * p.size_unit / r_d if r_d > 0 else math.inf) + s_k * e_k / p.f_g_ghz
        for n in range(N):
            s, e, d = float(pub.s_dt[i, n]), float(pub.e_dt[i, n]), float(pub.d[i, n])
            t = s * p.size_unit / r_u if r_u > 0 else math.inf
            l = s * e / p.f_c_ghz
            rem = d - t - l
            out["t"][i, n], out["l"][i, n], out["rem"][i, n] = t, l, rem
            out["T"][i, n] = d if rem > 0 else 0.0
            for k in range(K1):
                Q = max(rem, 0.0) / out["tau"][i, k] if rem > 0 else 0.0
                F = math.log2(1 + float(market.G[i, k]) * Q) / p.theta if p.genai else 1.0
                h = float(pub.C[i]) * float(market.u[i, k]) * (p.beta0 if k == 0 else 1.0)
                out["Q"][i, n, k], out["F"][i, n, k] = Q, F
                out["m"][i, n, k] = F * h
                out["U"][i, n, k] = float(market.v[i]) * F * h
    return out


# ---------------------------------------------------------------------------------------------
# alpha and the MSB's expected surplus, one (AV, task) at a time
# ---------------------------------------------------------------------------------------------


def second_max_pair(a: list[float]) -> float:
    """E[X_(2)] for X_k ~ U[0, a_k]: 1 - CDF integrated exactly, interval by interval, from the top."""
    s = sorted(a)
    K = len(s)
    if sum(1 for x in s if x > 0) < 2:
        return 0.0
    integral = 0.0  # of P(X_(2) <= x) over (0, max a]
    log_a = 0.0
    ssum = 0.0
    for j in range(K - 1, -1, -1):
        hi = s[j]
        if hi <= 0:
            break
        log_a += math.log(hi)
        ssum += hi
        m = K - j
        lo = s[j - 1] if j > 0 else 0.0
        if hi <= lo:
            continue
        e_hi = math.exp(min(m * math.log(hi) - log_a, 0.0))
        e_lo = math.exp(min(m * math.log(lo) - log_a, 0.0)) if lo > 0 else 0.0
        integral += (1 - m) / (m + 1) * (hi * e_hi - lo * e_lo) + ssum / m * (e_hi - e_lo)
    return min(max(s[-1] - integral, 0.0), s[-2])


def alpha_pair(F_traffic: list[float], F0: float, gamma: float, beta0: float) -> float:
    """alpha_{i,n} = max(1, gamma beta0 F_0 / 2 / E[X_(2)]) (inf when E = 0 and the driving term is > 0)."""
    e2 = second_max_pair(F_traffic)
    num = gamma * beta0 * F0 / 2.0
    if e2 <= 0:
        return math.inf if num > 0 else 1.0
    return max(1.0, num / e2)


def second_max_quad(a: list[float]) -> float:
    """E[X_(2)] by adaptive quadrature of the specification's literal formula (small K only)."""
    from scipy import integrate

    a = [float(x) for x in a]
    K = len(a)

    def cdf2(x: float) -> float:
        Fk = [min(1.0, x / ak) if ak > 0 else 1.0 for ak in a]
        prod_all = math.prod(Fk)
        return prod_all + sum((1 - Fk[k]) * math.prod(Fk[:k] + Fk[k + 1:]) for k in range(K))

    top = max(a)
    if top <= 0:
        return 0.0
    pts = sorted({x for x in a if 0 < x < top})
    val, _ = integrate.quad(lambda x: 1.0 - cdf2(x), 0.0, top, points=pts or None, limit=500,
                            epsabs=1e-14, epsrel=1e-13)
    return val


def msb_win_quad(a: list[float], alpha: float) -> tuple[float, float]:
    """(P(X_(1) > alpha X_(2)), E[X_(1) 1{...}]) by quadrature of the literal definition (small K)."""
    from scipy import integrate

    if not math.isfinite(alpha):
        return 0.0, 0.0
    a = [float(x) for x in a]
    K = len(a)
    p = e = 0.0
    for k in range(K):
        if a[k] <= 0:
            continue
        others = a[:k] + a[k + 1:]

        def g(x: float) -> float:
            return math.prod(min(1.0, x / (alpha * o)) if o > 0 else 1.0 for o in others)

        pts = sorted({alpha * o for o in others if 0 < alpha * o < a[k]})
        p += integrate.quad(lambda x: g(x) / a[k], 0.0, a[k], points=pts or None, limit=500,
                            epsabs=1e-14, epsrel=1e-13)[0]
        e += integrate.quad(lambda x: x * g(x) / a[k], 0.0, a[k], points=pts or None, limit=500,
                            epsabs=1e-14, epsrel=1e-13)[0]
    return p, e


# ---------------------------------------------------------------------------------------------
# Clearing, one (AV, task) at a time
# ---------------------------------------------------------------------------------------------


def _msb_scan(bids: list[float], alpha: float) -> tuple[int, float]:
    """(winner 0..K, traffic price per unit time) scanning the traffic bids (index 1..K)."""
    best, b1, b2 = -1, -math.inf, -math.inf
    for k, x in enumerate(bids):
        if x > b1:
            best, b1, b2 = k, x, b1
        elif x > b2:
            b2 = x
    if math.isfinite(alpha) and b1 > alpha * b2:
        return best + 1, alpha * b2
    return 0, 0.0


def clear_loop(market: Market | PublicMarket, av_bids: Any = None, sim_bids: Any = None, *,
               mechanism: str = "mtepvisa", scoring: str = "reported", epvisa_windows: str = "first",
               r_acc: Any = 0.5, dt_weight: str = "unit", values: tuple[Any, Any] | None = None,
               kappa_by_quad: bool = True) -> Outcome:
    """The same contract as :func:`carla_mr.market.mechanisms.clear`, written as loops."""
    if isinstance(market, Market):
        pub = market.public
        tv, tU = market.v, market.U
    else:
        pub, tv, tU = market, None, None
    I, N, K1 = pub.shape
    b = (tv if av_bids is None else np.asarray(av_bids, float)).tolist()
    U = (tU if sim_bids is None else np.asarray(sim_bids, float)).tolist()
    if values is not None:
        tv, tU = values
    if tv is None:
        tv, tU = b, U
    tv = np.asarray(tv, float).tolist()
    tU = np.asarray(tU, float).tolist()
    racc = np.broadcast_to(np.asarray(r_acc, float), (I,)).tolist()
    F = pub.F.tolist()
    T = pub.T.tolist()
    e_m0 = pub.e_m0.tolist()
    b0 = pub.b0.tolist()
    C = pub.C.tolist()
    rem = pub.rem.tolist()
    gamma, beta0 = pub.gamma, pub.beta0
    eligible = [all(rem[i][n] > 0 for n in range(N)) for i in range(I)]
    n_inf = sum(1 for e in eligible if not e)

    scores = [-math.inf] * I
    a_coef = [1.0] * I
    c_coef = [0.0] * I
    if mechanism == "pvisa":
        for i in range(I):
            if eligible[i]:
                scores[i] = b[i]
    else:
        S = [0] if mechanism == "epvisa" else list(range(N))
        for i in range(I):
            a_i = racc[i] if dt_weight == "r_acc" else 1.0
            c_i = 0.0
            for n in S:
                al = alpha_pair(F[i][n][1:], F[i][n][0], gamma, beta0)
                if scoring == "reported":
                    w, _ = _msb_scan(U[i][n][1:], al)
                    if w == 0:
                        a_i += gamma * T[i][n] * e_m0[i][n]
                    else:
                        c_i += T[i][n] * U[i][n][w]
                else:
                    if kappa_by_quad:
                        p_win, e_win = msb_win_quad(F[i][n][1:], al)
                        kappa = e_win + gamma * beta0 * F[i][n][0] / 2 * (1 - p_win)
                    else:
                        kappa = float(pub.kappa[i, n])
                    a_i += T[i][n] * C[i] * kappa
            a_coef[i], c_coef[i] = a_i, c_i
            if eligible[i]:
                scores[i] = a_i * b[i] + c_i
    winner, best = -1, -math.inf
    for i in range(I):
        if scores[i] > best:
            winner, best = i, scores[i]
    if winner < 0:
        return Outcome(mechanism=mechanism, scoring=scoring, winner=-1, payment=0.0, served=np.zeros(N, bool),
                       offline_winner=np.full(N, -1), offline_price=np.zeros(N), offline_payment=np.zeros(N),
                       T=np.zeros(N), alpha=np.full(N, np.nan), S_DT=0.0, S_T=0.0, S_D=0.0, total=0.0,
                       revenue=0.0, n_infeasible=n_inf, scores=np.array(scores))
    other = max([scores[i] for i in range(I) if i != winner], default=-math.inf)
    if not math.isfinite(other) or a_coef[winner] <= 0:
        payment = 0.0
    else:
        payment = max(0.0, (other - c_coef[winner]) / a_coef[winner])

    served = [True] * N
    if mechanism == "epvisa" and epvisa_windows == "first":
        served = [n == 0 for n in range(N)]
    ow, price, alphas = [-1] * N, [0.0] * N, [1.0] * N
    for n in range(N):
        if mechanism == "pvisa":
            bids = [b0[winner][n]] + U[winner][n][1:]
            best_k, b1, b2 = 0, -math.inf, -math.inf
            for k, x in enumerate(bids):
                if x > b1:
                    best_k, b1, b2 = k, x, b1
                elif x > b2:
                    b2 = x
            w, pr = best_k, b2
        else:
            alphas[n] = alpha_pair(F[winner][n][1:], F[winner][n][0], gamma, beta0)
            w, pr = _msb_scan(U[winner][n][1:], alphas[n])
            if w == 0:
                pr = b0[winner][n]
        if served[n]:
            ow[n], price[n] = w, pr
    s_t = s_d = 0.0
    pay = [0.0] * N
    for n in range(N):
        if not served[n]:
            continue
        pay[n] = T[winner][n] * price[n]
        if ow[n] >= 1:
            s_t += T[winner][n] * tU[winner][n][ow[n]]
        else:
            s_d += T[winner][n] * tU[winner][n][0]
    s_dt = racc[winner] * tv[winner]
    return Outcome(mechanism=mechanism, scoring=scoring, winner=winner, payment=payment,
                   served=np.array(served), offline_winner=np.array(ow), offline_price=np.array(price),
                   offline_payment=np.array(pay), T=np.array([T[winner][n] if served[n] else 0.0 for n in range(N)]),
                   alpha=np.array(alphas), S_DT=s_dt, S_T=s_t, S_D=s_d, total=s_dt + gamma * s_d + s_t,
                   revenue=payment + sum(pay), n_infeasible=n_inf, scores=np.array(scores))





# ---------------------------------------------------------------------------------------------
# The fair baseline: a Python loop over (AV, task), numpy over the K simulators
# ---------------------------------------------------------------------------------------------


def clear_rowwise(market: Market | PublicMarket, av_bids: Any = None, sim_bids: Any = None, *,
                  mechanism: str = "mtepvisa", scoring: str = "reported", r_acc: Any = 0.5) -> Outcome:
    """EPViSA / MTEPViSA cleared one (AV, task) window at a time: the loop over windows is Python,
    each window's step is numpy over the K simulators with the same exact alpha (top-L shortcut
    included) as the vectorised ``clear``. The benchmark's fair baseline: it separates the gain of
    vectorising over (AV, task) from the algorithm (bench/bench_market.py). Served windows as
    ``epvisa_windows = "first"``; ``dt_weight = "unit"``."""
    from carla_mr.market.alpha import alpha_factor, msb_expected_surplus
    from carla_mr.market.auctions import msb, score_auction

    pub = market.public if isinstance(market, Market) else market
    b = market.v if av_bids is None else np.asarray(av_bids, float)
    U = market.U if sim_bids is None else np.asarray(sim_bids, float)
    tv, tU = (market.v, market.U) if isinstance(market, Market) else (b, U)
    I, N, K1 = pub.shape
    racc = np.broadcast_to(np.asarray(r_acc, float), (I,))
    scored = range(1) if mechanism == "epvisa" else range(N)
    a, c = np.ones(I), np.zeros(I)
    for i in range(I):
        for n in scored:
            F = pub.F[i, n]
            al = alpha_factor(F[1:], F[0], gamma=pub.gamma, beta0=pub.beta0)
            if scoring == "reported":
                w, _ = msb(U[i, n, 1:], al)
                if w == 0:
                    a[i] += pub.gamma * pub.T[i, n] * pub.e_m0[i, n]
                else:
                    c[i] += pub.T[i, n] * U[i, n, int(w)]
            else:
                kappa = msb_expected_surplus(F[1:], F[0], al, gamma=pub.gamma, beta0=pub.beta0)
                a[i] += pub.T[i, n] * pub.C[i] * kappa
    scores = np.where(pub.av_feasible, a * b + c, -np.inf)
    n_inf = int(I - pub.av_feasible.sum())
    winner, payment = score_auction(scores, a, c)
    if winner < 0:
        return Outcome.nobody(mechanism, scoring, N, n_inf, scores)
    served = np.array([n in scored if mechanism == "epvisa" else True for n in range(N)])
    ow, price, alphas = np.full(N, -1), np.zeros(N), np.zeros(N)
    for n in range(N):
        F = pub.F[winner, n]
        alphas[n] = alpha_factor(F[1:], F[0], gamma=pub.gamma, beta0=pub.beta0)
        w, p = msb(U[winner, n, 1:], alphas[n])
        if served[n]:
            ow[n], price[n] = int(w), (pub.b0[winner, n] if w == 0 else float(p))
    T_w = np.where(served, pub.T[winner], 0.0)
    pay = T_w * price
    val = np.array([tU[winner, n, max(ow[n], 0)] for n in range(N)])
    s_t = float(np.sum(np.where(ow >= 1, T_w * val, 0.0)))
    s_d = float(np.sum(np.where(ow == 0, T_w * val, 0.0)))
    s_dt = float(racc[winner] * tv[winner])
    return Outcome(mechanism=mechanism, scoring=scoring, winner=winner, payment=payment, served=served,
                   offline_winner=ow, offline_price=price, offline_payment=pay, T=T_w, alpha=alphas, S_DT=s_dt,
                   S_T=s_t, S_D=s_d, total=s_dt + pub.gamma * s_d + s_t, revenue=float(payment + pay.sum()),
                   n_infeasible=n_inf, scores=scores)


__all__ = ["EV", "derive_loop", "second_max_pair", "alpha_pair", "second_max_quad", "msb_win_quad", "clear_loop",
           "clear_rowwise"]

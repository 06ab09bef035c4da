"""PViSA, EPViSA and MTEPViSA as pure functions from public data and bids to an Outcome.

The online stage sells the RSU's DT slot to one AV; the offline stage sells each of that AV's
task windows (length T seconds) to one simulator. See docs/mechanism.md and docs/market.md.

Bids:
  av_bids (I,)          b_i, the AV's value per DT slot (truthful: v_i)
  sim_bids (I, N, K+1)  the simulators' values per unit time for (AV i, task n); truthful:
                        U = v m. Column 0 (the driving simulator) is never a bid: it is
                        served at the public contract price b0 = E[v] E[m_0]; the column is
                        only used as the driving value when no true values are given.

Money: the online payment is in the units of b; an offline payment is T (s) times a price
per unit time. Surplus (realised, true values):
  S_DT = R_acc v_w,  S_T = sum T U[w,n,k] 1{k >= 1},  S_D = sum T v_w m[w,n,0] 1{k = 0},
  total = S_DT + gamma S_D + S_T; revenue (the sum of payments) is a transfer, reported apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from carla_mr.errors import InputError
from carla_mr.market.alpha import alpha_factor, msb_expected_surplus
from carla_mr.market.model import Market, PublicMarket

MECHANISMS = ("pvisa", "epvisa", "mtepvisa")
SCORINGS = ("reported", "expected")
EPVISA_WINDOWS = ("first", "all")
DT_WEIGHTS = ("unit", "r_acc")


@dataclass(frozen=True, eq=False)
class Outcome:
    """The result of clearing one market.

    winner: the online winner's index (-1 when no AV is eligible); payment: what it pays.
    Per task window n of the winner (N,): served (bool), offline_winner (simulator 0..K; -1
    when not served), offline_price (per unit time), offline_payment (T x price), T (s),
    alpha. Surplus S_DT, S_T, S_D, total; revenue (all payments); n_infeasible (AVs with an
    infeasible task, scored -inf); scores (I,) the online scores (-inf: ineligible).
    """

    mechanism: str
    scoring: str
    winner: int
    payment: float
    served: np.ndarray
    offline_winner: np.ndarray
    offline_price: np.ndarray
    offline_payment: np.ndarray
    T: np.ndarray
    alpha: np.ndarray
    S_DT: float
    S_T: float
    S_D: float
    total: float
    revenue: float
    n_infeasible: int
    scores: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: numpy -> lists and Python scalars; -inf scores and inf alphas -> None."""
        def clean(a: np.ndarray) -> list:
            return [None if not np.isfinite(x) else float(x) for x in np.asarray(a, float).ravel()]

        return {
            "mechanism": self.mechanism, "scoring": self.scoring, "winner": int(self.winner),
            "payment": float(self.payment), "served": [bool(x) for x in self.served],
            "offline_winner": [int(x) for x in self.offline_winner],
            "offline_price": clean(self.offline_price), "offline_payment": clean(self.offline_payment),
            "T": clean(self.T), "alpha": clean(self.alpha), "S_DT": float(self.S_DT),
            "S_T": float(self.S_T), "S_D": float(self.S_D), "total": float(self.total),
            "revenue": float(self.revenue), "n_infeasible": int(self.n_infeasible),
            "scores": clean(self.scores),
        }


# ---------------------------------------------------------------------------------------------
# Offline submarket
# ---------------------------------------------------------------------------------------------


def msb(traffic_bids: np.ndarray, alpha: Any) -> tuple[np.ndarray, np.ndarray]:
    """Modified second bid over the last axis (K >= 2 traffic bids), vectorised.

    Returns (winner, price): winner in 0..K (0 = the driving simulator, k >= 1 = traffic
    simulator k, i.e. column k - 1 of ``traffic_bids``), and the traffic winner's price per
    unit time alpha * b_(2) (0 where the driving simulator wins; the caller charges b0).
    k* = argmax (lowest index on ties) wins iff b_(1) > alpha b_(2); alpha = inf never lets
    the traffic side win.
    """
    b = np.asarray(traffic_bids, dtype=float)
    K = b.shape[-1]
    if K < 2:
        raise InputError(f"the modified second bid needs K >= 2 traffic bids, got {K}", field="sim_bids")
    al = np.asarray(alpha, dtype=float)
    kstar = np.argmax(b, axis=-1)
    b1 = np.take_along_axis(b, kstar[..., None], axis=-1)[..., 0]
    b2 = np.partition(b, K - 2, axis=-1)[..., K - 2]
    with np.errstate(invalid="ignore"):
        thr = al * b2
    wins = np.isfinite(al) & (b1 > np.where(np.isfinite(thr), thr, np.inf))
    winner = np.where(wins, kstar + 1, 0)
    price = np.where(wins, np.where(np.isfinite(thr), thr, 0.0), 0.0)
    return winner, price


def second_price(bids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plain second price over the last axis: (argmax with lowest index on ties, 2nd highest bid)."""
    b = np.asarray(bids, dtype=float)
    n = b.shape[-1]
    w = np.argmax(b, axis=-1)
    p = np.partition(b, n - 2, axis=-1)[..., n - 2] if n >= 2 else np.zeros(b.shape[:-1])
    return w, p


# ---------------------------------------------------------------------------------------------
# Clearing
# ---------------------------------------------------------------------------------------------


def _check_choice(value: str, choices: tuple[str, ...], name: str) -> str:
    if value not in choices:
        raise InputError(f"must be one of {list(choices)}, got {value!r}", field=name)
    return value


def _check_bids(x: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=float)
    except (TypeError, ValueError) as exc:
        raise InputError(f"must be numeric with shape {shape}", field=name) from exc
    if a.shape != shape:
        raise InputError(f"must have shape {shape}, got {a.shape}", field=name)
    if not np.all(np.isfinite(a)):
        raise InputError("must be finite (no NaN or inf)", field=name)
    if (a < 0).any():
        raise InputError("must not be negative", field=name)
    return a


def _per_av(x: Any, I: int, name: str) -> np.ndarray:
    try:
        a = np.broadcast_to(np.asarray(x, dtype=float), (I,))
    except (TypeError, ValueError) as exc:
        raise InputError(f"must be a number or an array of shape ({I},)", field=name) from exc
    if not np.all(np.isfinite(a)) or (a < 0).any():
        raise InputError("must be finite and non-negative", field=name)
    return a


def clear(market: Market | PublicMarket, av_bids: Any = None, sim_bids: Any = None, *,
          mechanism: str = "mtepvisa", scoring: str = "reported", epvisa_windows: str = "first",
          r_acc: Any = 0.5, dt_weight: str = "unit", values: tuple[Any, Any] | None = None) -> Outcome:
    """Clear one market: a pure function of public data and bids.

    market: a sampled :class:`Market` (its private values give truthful default bids and the
      realised surplus) or a :class:`PublicMarket` (bids required; surplus valued at ``values``
      or, without them, at the bids).
    av_bids (I,): None = truthful (Market only). sim_bids (I, N, K+1): None = truthful.
    mechanism: "pvisa" | "epvisa" | "mtepvisa". scoring: "reported" | "expected".
    epvisa_windows: "first" (EPViSA scores and serves the first window only) | "all" (scores
      the first, serves every window of the winner).
    r_acc: the DT accuracy weight R_acc, scalar or (I,), used in S_DT (and in the score when
      dt_weight = "r_acc"; the specification's score uses 1, dt_weight = "unit").
    values: (v (I,), U (I, N, K+1)) true values for the surplus (default: the Market's truth).
    """
    _check_choice(mechanism, MECHANISMS, "mechanism")
    _check_choice(scoring, SCORINGS, "scoring")
    _check_choice(epvisa_windows, EPVISA_WINDOWS, "epvisa_windows")
    _check_choice(dt_weight, DT_WEIGHTS, "dt_weight")
    if isinstance(market, Market):
        pub = market.public
        truth_v, truth_U = market.v, market.U
    elif isinstance(market, PublicMarket):
        pub = market
        truth_v = truth_U = None
    else:
        raise InputError(f"expected a Market or PublicMarket, got {type(market).__name__}", field="market")
    I, N, K1 = pub.shape
    if av_bids is None:
        if truth_v is None:
            raise InputError("av_bids are required with a PublicMarket", field="av_bids")
        b = truth_v
    else:
        b = _check_bids(av_bids, (I,), "av_bids")
    if sim_bids is None:
        if truth_U is None:
            raise InputError("sim_bids are required with a PublicMarket", field="sim_bids")
        Ub = truth_U
    else:
        Ub = _check_bids(sim_bids, (I, N, K1), "sim_bids")
    if values is not None:
        truth_v = _check_bids(values[0], (I,), "values[0] (v)")
        truth_U = _check_bids(values[1], (I, N, K1), "values[1] (U)")
    if truth_v is None:
        truth_v, truth_U = b, Ub
    racc = _per_av(r_acc, I, "r_acc")
    gamma = pub.gamma
    eligible = pub.av_feasible
    n_inf = int(I - eligible.sum())

    if mechanism == "pvisa":
        scores = np.where(eligible, b, -np.inf)
        winner, payment = score_auction(scores, np.ones(I), np.zeros(I))
        served = np.ones(N, bool)
        alpha_w = np.ones(N)
        if winner >= 0:
            bids = np.concatenate([pub.b0[winner][:, None], Ub[winner, :, 1:]], axis=-1)  # (N, K+1)
            ow, price = second_price(bids)
    else:
        first_only = mechanism == "epvisa"
        S = slice(0, 1) if first_only else slice(0, N)
        if first_only and "alpha" not in pub.__dict__:
            alpha_S = alpha_factor(pub.F[:, S, 1:], pub.F[:, S, 0], gamma=gamma, beta0=pub.beta0)
        else:
            alpha_S = pub.alpha[:, S]
        base = racc if dt_weight == "r_acc" else np.ones(I)
        T_S = pub.T[:, S]
        if scoring == "reported":
            w_S, _ = msb(Ub[:, S, 1:], alpha_S)
            drive = w_S == 0
            a = base + gamma * (T_S * pub.e_m0[:, S] * drive).sum(axis=1)
            val_w = np.take_along_axis(Ub[:, S, :], w_S[..., None], axis=-1)[..., 0]
            c = (T_S * np.where(drive, 0.0, val_w)).sum(axis=1)
        else:
            if first_only and "kappa" not in pub.__dict__:
                kappa_S = msb_expected_surplus(pub.F[:, S, 1:], pub.F[:, S, 0], alpha_S, gamma=gamma,
                                               beta0=pub.beta0)
            else:
                kappa_S = pub.kappa[:, S]
            a = base + (T_S * pub.C[:, None] * kappa_S).sum(axis=1)
            c = np.zeros(I)
        scores = np.where(eligible, a * b + c, -np.inf)
        winner, payment = score_auction(scores, a, c)
        served = np.ones(N, bool)
        if first_only and epvisa_windows == "first":
            served[1:] = False
        if winner >= 0:
            if first_only or "alpha" not in pub.__dict__:
                alpha_w = alpha_factor(pub.F[winner, :, 1:], pub.F[winner, :, 0], gamma=gamma, beta0=pub.beta0)
            else:
                alpha_w = pub.alpha[winner]
            ow, price = msb(Ub[winner, :, 1:], alpha_w)
            price = np.where(ow == 0, pub.b0[winner], price)
        else:
            alpha_w = np.full(N, np.nan)

    if winner < 0:
        return Outcome(mechanism=mechanism, scoring=scoring, winner=-1, payment=0.0,
                       served=np.zeros(N, bool), offline_winner=np.full(N, -1), offline_price=np.zeros(N),
                       offline_payment=np.zeros(N), T=np.zeros(N), alpha=np.full(N, np.nan), S_DT=0.0,
                       S_T=0.0, S_D=0.0, total=0.0, revenue=0.0, n_infeasible=n_inf, scores=scores)
    T_w = pub.T[winner]
    ow = np.where(served, ow, -1)
    price = np.where(served, price, 0.0)
    pay_off = T_w * price
    true_val = np.take_along_axis(truth_U[winner], np.maximum(ow, 0)[:, None], axis=-1)[:, 0]
    s_t = float(np.sum(np.where(ow >= 1, T_w * true_val, 0.0)))
    s_d = float(np.sum(np.where(ow == 0, T_w * true_val, 0.0)))
    s_dt = float(racc[winner] * truth_v[winner])
    return Outcome(mechanism=mechanism, scoring=scoring, winner=int(winner), payment=float(payment),
                   served=served, offline_winner=ow, offline_price=price, offline_payment=pay_off,
                   T=np.where(served, T_w, 0.0), alpha=np.asarray(alpha_w, float), S_DT=s_dt, S_T=s_t,
                   S_D=s_d, total=s_dt + gamma * s_d + s_t, revenue=float(payment + pay_off.sum()),
                   n_infeasible=n_inf, scores=scores)


def score_auction(scores: np.ndarray, a: np.ndarray, c: np.ndarray) -> tuple[int, float]:
    """The online stage. scores (I,) = a b + c (-inf: ineligible); a, c (I,).

    argmax of Phi = a b + c (lowest index on ties) and the critical bid
    p = max(0, (max_{i != w} Phi_i - c_w) / a_w); (-1, 0) when nobody is eligible."""
    w = int(np.argmax(scores))
    if not np.isfinite(scores[w]):
        return -1, 0.0
    if scores.size == 1:
        return w, 0.0
    other = np.max(np.delete(scores, w))
    if not np.isfinite(other):
        return w, 0.0
    if a[w] <= 0:  # the score does not depend on the bid: the winner pays nothing
        return w, 0.0
    return w, float(max(0.0, (other - c[w]) / a[w]))


def clear_all(market: Market, *, mechanisms: tuple[str, ...] = MECHANISMS, **kw: Any) -> dict[str, Outcome]:
    """Clear the same draw with several mechanisms (common random numbers)."""
    return {mech: clear(market, mechanism=mech, **kw) for mech in mechanisms}

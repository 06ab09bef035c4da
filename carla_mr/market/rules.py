"""The three mechanisms' rules: PViSA, EPViSA and MTEPViSA, from checked input to an Outcome.

Each rule is a pure function of a :class:`ClearingInput` (public market, bids, true values,
clearing parameters; built and checked by :func:`carla_mr.market.mechanisms.clear`). A rule
has two stages (docs/mechanism.md):

- online: one AV wins the RSU's DT slot by the highest score, paying its critical bid
  (:func:`carla_mr.market.auctions.score_auction`);
- offline: each of the winner's task windows goes to one simulator (modified second bid for
  EPViSA/MTEPViSA, plain second price for PViSA); :func:`settle` then values the served
  windows at the true values (surplus) and sums the payments.

Money: the online payment is in the units of b; an offline payment is T (s) times a price
per unit time. Surplus (realised, true values):
  S_DT = R_acc v_w,  S_T = sum T U[w,n,k] 1{k >= 1},  S_D = sum T v_w m[w,n,0] 1{k = 0},
  total = S_DT + gamma S_D + S_T; revenue (the sum of payments) is a transfer, reported apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from carla_mr.market.alpha import alpha_factor, msb_expected_surplus
from carla_mr.market.auctions import msb, msb_top, score_auction, second_price
from carla_mr.market.model import PublicMarket
from carla_mr.market.outcome import Outcome


@dataclass(frozen=True, eq=False)
class ClearingInput:
    """Checked input of one clearing (shapes with I AVs, N tasks, K + 1 simulators).

    public: the public market; av_bids (I,) b_i; sim_bids (I, N, K+1) values per unit time
    (column 0 unused: the driving simulator is served at the contract price b0); true_v (I,),
    true_U (I, N, K+1): the values the surplus is measured at; r_acc (I,) the DT weight R_acc;
    scoring "reported" | "expected"; epvisa_windows "first" | "all"; dt_weight "unit" | "r_acc".
    """

    public: PublicMarket
    av_bids: np.ndarray
    sim_bids: np.ndarray
    true_v: np.ndarray
    true_U: np.ndarray
    r_acc: np.ndarray
    scoring: str = "reported"
    epvisa_windows: str = "first"
    dt_weight: str = "unit"

    @property
    def n_infeasible(self) -> int:
        return int(self.public.n_avs - self.public.av_feasible.sum())


# ---------------------------------------------------------------------------------------------
# The rules (registered by name in carla_mr.market.registry)
# ---------------------------------------------------------------------------------------------


def clear_pvisa(x: ClearingInput) -> Outcome:
    """PViSA: the winner is argmax b and pays the second-highest b; each of its windows goes by
    plain second price over [b0, U[w, n, 1:]] (T times the second-highest bid)."""
    pub = x.public
    I, N, _ = pub.shape
    scores = np.where(pub.av_feasible, x.av_bids, -np.inf)
    winner, payment = score_auction(scores, np.ones(I), np.zeros(I))
    if winner < 0:
        return Outcome.nobody("pvisa", x.scoring, N, x.n_infeasible, scores)
    bids = np.concatenate([pub.b0[winner][:, None], x.sim_bids[winner, :, 1:]], axis=-1)  # (N, K+1)
    window_sim, price = second_price(bids)
    return settle("pvisa", x, scores, winner, payment, np.ones(N, bool), window_sim, price, np.ones(N))


def clear_epvisa(x: ClearingInput) -> Outcome:
    """EPViSA: scores on the first window only; serves the first window (``epvisa_windows =
    "first"``, the default) or every window of the winner (``"all"``)."""
    return _clear_scored(x, "epvisa", first_only=True)


def clear_mtepvisa(x: ClearingInput) -> Outcome:
    """MTEPViSA: scores and serves all N windows."""
    return _clear_scored(x, "mtepvisa", first_only=False)


# ---------------------------------------------------------------------------------------------
# Shared steps
# ---------------------------------------------------------------------------------------------


def _clear_scored(x: ClearingInput, mechanism: str, *, first_only: bool) -> Outcome:
    pub = x.public
    N = pub.n_tasks
    scored = slice(0, 1) if first_only else slice(0, N)
    a, c = score_terms(x, scored, fresh=first_only)
    scores = np.where(pub.av_feasible, a * x.av_bids + c, -np.inf)
    winner, payment = score_auction(scores, a, c)
    served = np.ones(N, bool)
    if first_only and x.epvisa_windows == "first":
        served[1:] = False
    if winner < 0:
        return Outcome.nobody(mechanism, x.scoring, N, x.n_infeasible, scores)
    window_sim, price, alpha_w = msb_windows(pub, x.sim_bids, winner, fresh=first_only)
    return settle(mechanism, x, scores, winner, payment, served, window_sim, price, alpha_w)


def score_terms(x: ClearingInput, scored: slice, *, fresh: bool) -> tuple[np.ndarray, np.ndarray]:
    """The online score's coefficients over the windows ``scored``: Phi_i = a_i b_i + c_i.

    "reported": a_i = base_i + gamma sum T E[m_0] over windows the driving simulator would
    win, c_i = sum T U[i, n, w] over windows a traffic simulator would win. "expected":
    a_i = base_i + sum T C_i kappa_{i,n}, c_i = 0. base = 1 (``dt_weight = "unit"``) or R_acc.
    ``fresh``: compute alpha / kappa for these windows only when the market has not cached
    them for all windows (EPViSA needs the first window only).
    """
    pub = x.public
    I = pub.n_avs
    gamma = pub.gamma
    if fresh and "alpha" not in pub.__dict__:
        alpha_S = alpha_factor(pub.F[:, scored, 1:], pub.F[:, scored, 0], gamma=gamma, beta0=pub.beta0)
    else:
        alpha_S = pub.alpha[:, scored]
    base = x.r_acc if x.dt_weight == "r_acc" else np.ones(I)
    T_S = pub.T[:, scored]
    if x.scoring == "reported":
        traffic, b1, _ = msb_top(x.sim_bids[:, scored, 1:], alpha_S)
        drive = ~traffic
        a = base + gamma * (T_S * pub.e_m0[:, scored] * drive).sum(axis=1)
        c = (T_S * np.where(drive, 0.0, b1)).sum(axis=1)  # the traffic winner's bid is b_(1)
        return a, c
    if fresh and "kappa" not in pub.__dict__:
        kappa_S = msb_expected_surplus(pub.F[:, scored, 1:], pub.F[:, scored, 0], alpha_S, gamma=gamma,
                                       beta0=pub.beta0)
    else:
        kappa_S = pub.kappa[:, scored]
    return base + (T_S * pub.C[:, None] * kappa_S).sum(axis=1), np.zeros(I)


def msb_windows(pub: PublicMarket, sim_bids: np.ndarray, winner: int, *, fresh: bool
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The winner's windows by modified second bid: (simulator (N,), price per unit time (N,),
    alpha (N,)); a window the driving simulator wins is priced at its contract b0."""
    if fresh or "alpha" not in pub.__dict__:
        alpha_w = alpha_factor(pub.F[winner, :, 1:], pub.F[winner, :, 0], gamma=pub.gamma, beta0=pub.beta0)
    else:
        alpha_w = pub.alpha[winner]
    window_sim, price = msb(sim_bids[winner, :, 1:], alpha_w)
    return window_sim, np.where(window_sim == 0, pub.b0[winner], price), alpha_w


def settle(mechanism: str, x: ClearingInput, scores: np.ndarray, winner: int, payment: float,
           served: np.ndarray, window_sim: np.ndarray, price: np.ndarray, alpha_w: np.ndarray) -> Outcome:
    """The Outcome of a round with an online winner: payments of the served windows and the
    realised surplus at the true values."""
    pub = x.public
    T_w = pub.T[winner]
    ow = np.where(served, window_sim, -1)
    price = np.where(served, price, 0.0)
    pay_off = T_w * price
    true_val = np.take_along_axis(x.true_U[winner], np.maximum(ow, 0)[:, None], axis=-1)[:, 0]
    s_t = float(np.sum(np.where(ow >= 1, T_w * true_val, 0.0)))
    s_d = float(np.sum(np.where(ow == 0, T_w * true_val, 0.0)))
    s_dt = float(x.r_acc[winner] * x.true_v[winner])
    return Outcome(mechanism=mechanism, scoring=x.scoring, winner=int(winner), payment=float(payment),
                   served=served, offline_winner=ow, offline_price=price, offline_payment=pay_off,
                   T=np.where(served, T_w, 0.0), alpha=np.asarray(alpha_w, float), S_DT=s_dt, S_T=s_t,
                   S_D=s_d, total=s_dt + pub.gamma * s_d + s_t, revenue=float(payment + pay_off.sum()),
                   n_infeasible=x.n_infeasible, scores=scores)

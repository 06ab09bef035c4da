"""The three auction formats the mechanisms are built from, vectorised over leading axes.

- :func:`msb`: the modified second bid of the offline submarket (Arnosti, Beck & Milgrom 2016).
- :func:`second_price`: the plain second price (PViSA's baseline).
- :func:`score_auction`: the online stage, argmax of a linear score a b + c with its critical bid.

Ties go to the lowest index everywhere (numpy's argmax).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from carla_mr.errors import InputError


def msb(traffic_bids: np.ndarray, alpha: Any) -> tuple[np.ndarray, np.ndarray]:
    """Modified second bid over the last axis (K >= 2 traffic bids), vectorised.

    Returns (winner, price): winner in 0..K (0 = the driving simulator, k >= 1 = traffic
    simulator k, i.e. column k - 1 of ``traffic_bids``), and the traffic winner's price per
    unit time alpha * b_(2) (0 where the driving simulator wins; the caller charges b0).
    k* = argmax (lowest index on ties) wins iff b_(1) > alpha b_(2); alpha = inf never lets
    the traffic side win.
    """
    b = np.asarray(traffic_bids, dtype=float)
    wins, _, price = msb_top(b, alpha)
    winner = np.where(wins, np.argmax(b, axis=-1) + 1, 0)
    return winner, price


def msb_top(traffic_bids: np.ndarray, alpha: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The modified second bid without the winner's identity: (traffic wins (bool), b_(1), the
    traffic winner's price alpha b_(2), 0 where the driving simulator wins). Enough to score a
    window: the traffic winner's bid is b_(1)."""
    b = np.asarray(traffic_bids, dtype=float)
    K = b.shape[-1]
    if K < 2:
        raise InputError(f"the modified second bid needs K >= 2 traffic bids, got {K}", field="sim_bids")
    al = np.asarray(alpha, dtype=float)
    b1, b2 = top_two(b)
    with np.errstate(invalid="ignore"):
        thr = al * b2
    wins = np.isfinite(al) & (b1 > np.where(np.isfinite(thr), thr, np.inf))
    price = np.where(wins, np.where(np.isfinite(thr), thr, 0.0), 0.0)
    return wins, b1, price


def top_two(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The largest and the second largest value along the last axis (equal when the maximum is
    tied): a maximum, then a maximum over the values strictly below it, in a few passes and
    without sorting or copying ``a`` (the same values as ``np.partition``)."""
    a = np.asarray(a, dtype=float)
    b1 = a.max(axis=-1)
    below = a < b1[..., None]
    b2 = a.max(axis=-1, where=below, initial=-np.inf)
    tied = np.count_nonzero(below, axis=-1) <= a.shape[-1] - 2  # the maximum occurs twice or more
    return b1, np.where(tied, b1, b2)


def second_price(bids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plain second price over the last axis: (argmax with lowest index on ties, 2nd highest bid)."""
    b = np.asarray(bids, dtype=float)
    n = b.shape[-1]
    w = np.argmax(b, axis=-1)
    p = np.partition(b, n - 2, axis=-1)[..., n - 2] if n >= 2 else np.zeros(b.shape[:-1])
    return w, p


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

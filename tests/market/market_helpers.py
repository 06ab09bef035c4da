"""Shared helpers for the market tests (imported as market_helpers): seeded markets, comparisons."""

from __future__ import annotations

import math

import numpy as np
from carla_mr.market.model import MarketParams, sample_market

TOL = 1e-9


def small_market(seed: int, *, n_avs: int = 6, n_traffic: int = 4, n_tasks: int = 3, **kw):
    return sample_market(MarketParams(n_avs=n_avs, n_traffic=n_traffic, n_tasks=n_tasks, **kw), seed)


def close(a: float, b: float, tol: float = TOL) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def assert_same_outcome(o1, o2, tol: float = TOL) -> None:
    d1, d2 = o1.to_dict(), o2.to_dict()
    assert d1.keys() == d2.keys()
    for k in d1:
        x, y = d1[k], d2[k]
        if isinstance(x, list):
            assert len(x) == len(y), k
            for a, b in zip(x, y):
                if isinstance(a, float) or isinstance(b, float):
                    assert close(a, b, tol), (k, x, y)
                else:
                    assert a == b, (k, x, y)
        elif isinstance(x, float):
            assert close(x, y, tol), (k, x, y)
        else:
            assert x == y, (k, x, y)


def av_utility(out, i: int, v_i: float) -> float:
    return (v_i - out.payment) if out.winner == i else 0.0


def sim_utility(out, k: int, U_true_winner: np.ndarray) -> float:
    """Simulator k's utility over the served windows of the winner: sum T (U - price) where it wins."""
    if out.winner < 0:
        return 0.0
    u = 0.0
    for n in range(len(out.served)):
        if out.served[n] and out.offline_winner[n] == k:
            u += out.T[n] * (U_true_winner[n, k] - out.offline_price[n])
    return u


__all__ = ["TOL", "small_market", "close", "assert_same_outcome", "av_utility", "sim_utility", "math"]

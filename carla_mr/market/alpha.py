"""The exact alpha of the modified second bid, and the MSB's prior expected surplus.

For one (AV i, task n) the traffic simulators' match qualities are X_k = a_k u_k with
u_k ~ U(0, 1] i.i.d. and a_k = F_{i,n,k} C_i public (k = 1..K). The specification defines

    E[X_(2)] = integral_0^{max a} (1 - P(X_(2) <= x)) dx,
    P(X_(2) <= x) = prod_k F_k(x) + sum_k (1 - F_k(x)) prod_{k' != k} F_k'(x),  F_k(x) = min(1, x / a_k)
    alpha = max(1, gamma * beta0 * a_0 / 2 / E[X_(2)]).

Quadrature done exactly: between consecutive sorted a's the integrand is a polynomial. With the
a's sorted ascending, s_1 <= ... <= s_K, on the interval (s_{j-1}, s_j] the simulators "above"
x are j..K (m_j = K - j + 1 of them, product A_j, sum S_j), and with P(x) = x^m / A_j,

    P(X_(2) <= x) = (1 - m) x^m / A_j + S_j x^(m-1) / A_j,

whose integral over the interval is closed-form in E_j = s_j^(m_j) / A_j (<= 1, computed in
logs) and E_{j-1} (the lower end's value of the same expression, by telescoping). The cost is
one sort along K plus a handful of passes, vectorised over any leading axes. Everything is
scale-free: alpha does not depend on C_i, so callers pass F.

The expected-scoring variant needs the MSB's prior expected per-time surplus per unit v:
``E[X_(1) 1{X_(1) > alpha X_(2)}] + gamma E[m_0] P(X_(1) <= alpha X_(2))``, from the same
tables: with G(y) = prod_k F_k(y), P(win) = alpha sum_k H0(a_k / alpha) and
E[X_(1) 1{win}] = alpha^2 sum_k H1(a_k / alpha), H0(z) = int_0^z G(y)/y dy, H1(z) = int_0^z G(y) dy.
"""

from __future__ import annotations

import numpy as np

from carla_mr.market.auctions import top_two


def _tables(a: np.ndarray):
    """Sorted a (ascending), m, E_j, E_{j-1}, s_{j-1}, log A_j along the last axis."""
    s = np.sort(np.asarray(a, dtype=float), axis=-1)
    K = s.shape[-1]
    m = (K - np.arange(K)).astype(float)  # m_j for j = 0..K-1 (0-based)
    pos = s > 0
    logs = np.log(np.where(pos, s, 1.0))
    logA = np.cumsum(logs[..., ::-1], axis=-1)[..., ::-1]
    with np.errstate(under="ignore"):
        E = np.where(pos, np.exp(np.minimum(m * logs - logA, 0.0)), 0.0)
    E_prev = np.concatenate([np.zeros_like(E[..., :1]), E[..., :-1]], axis=-1)
    s_prev = np.concatenate([np.zeros_like(s[..., :1]), s[..., :-1]], axis=-1)
    return s, m, E, E_prev, s_prev, logA, logs


#: Above this many traffic simulators, E[X_(2)] is computed from the top ``TOP_L`` values only,
#: with a rigorous bound on what the rest could add (rows that fail the bound are redone in full).
TOP_L = 64
#: The neglected part must be below this fraction of max(a) (far below the 1e-9 test tolerance).
_TAIL_RTOL = 1e-15


def _second_max_full(a: np.ndarray) -> np.ndarray:
    s, m, E, E_prev, s_prev, _, _ = _tables(a)
    S = np.cumsum(s[..., ::-1], axis=-1)[..., ::-1]
    # integral of P(X_(2) <= x) over each interval (s_{j-1}, s_j]
    part = (1.0 - m) / (m + 1.0) * (s * E - s_prev * E_prev) + S / m * (E - E_prev)
    e2 = s[..., -1] - part.sum(axis=-1)
    npos = (s > 0).sum(axis=-1)
    return np.where(npos >= 2, np.clip(e2, 0.0, s[..., -2]), 0.0)


def _second_max_top(a: np.ndarray, L: int) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on E[X_(2)] from the L largest a's: (upper, tail) with upper - tail <= E <= upper.

    ``upper`` integrates exactly above the cut (the L-th largest a, where every smaller a has
    F = 1) and takes the rest as 0; the neglected integral over (0, cut] is at most
    tail = cut * P(X_(2) <= cut), since the CDF is increasing.
    """
    K = a.shape[-1]
    top = np.ascontiguousarray(np.partition(a, K - L, axis=-1)[..., K - L:])  # small; fast passes below
    s, m, E, E_prev, s_prev, _, _ = _tables(top)
    S = np.cumsum(s[..., ::-1], axis=-1)[..., ::-1]
    part = (1.0 - m) / (m + 1.0) * (s * E - s_prev * E_prev) + S / m * (E - E_prev)
    upper = s[..., -1] - part[..., 1:].sum(axis=-1)  # intervals above the cut s_1
    cut = s[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        p2_cut = (1.0 - L) * E[..., 0] + S[..., 0] * E[..., 0] / cut
        tail = np.where(cut > 0, np.minimum(cut * np.clip(p2_cut, 0.0, 1.0), cut), 0.0)
    npos = (s > 0).sum(axis=-1)
    upper = np.where(npos >= 2, np.clip(upper, 0.0, s[..., -2]), 0.0)
    return upper, tail


def expected_second_max(a: np.ndarray, *, top: int | None = TOP_L) -> np.ndarray:
    """E[X_(2)] (second largest) of X_k ~ U[0, a_k] independent, over the last axis of ``a``.

    ``a`` (..., K) with K >= 2 and a >= 0; returns (...). Exact up to rounding (relative
    error below ~1e-13). ``top``: use the top-L shortcut when K > top (rows whose neglected
    part is not provably below 1e-15 max(a) are computed in full; None: always in full).
    """
    a = np.asarray(a, dtype=float)
    K = a.shape[-1]
    if K < 2:
        raise ValueError("need at least two variables for a second order statistic")
    if top is None or K <= top:
        return _second_max_full(a)
    lead = a.shape[:-1]
    flat = a.reshape(-1, K)
    e2, tail = _second_max_top(flat, top)
    bad = ~(tail <= _TAIL_RTOL * flat.max(axis=-1))
    if bad.any():
        e2[bad] = _second_max_full(flat[bad])
    return e2.reshape(lead)


def alpha_factor(F_traffic: np.ndarray, F0: np.ndarray, *, gamma: float = 1.0, beta0: float = 1.0,
                 top: int | None = TOP_L) -> np.ndarray:
    """alpha = max(1, gamma beta0 a_0 / 2 / E[X_(2)]) with a = F (C cancels).

    ``F_traffic`` (..., K), ``F0`` (...). Where E[X_(2)] = 0 (at most one traffic simulator
    can have a positive value) alpha is +inf if the driving term is positive (the driving
    simulator always gets the window) and 1 otherwise.

    Exact: with K > ``top``, rows where the top-``top`` lower bound on E[X_(2)] already
    exceeds the driving term have alpha = 1 exactly; every other row is computed in full.
    """
    F_traffic = np.asarray(F_traffic, dtype=float)
    num = gamma * beta0 * np.broadcast_to(np.asarray(F0, dtype=float), F_traffic.shape[:-1]) / 2.0
    K = F_traffic.shape[-1]
    if top is None or K <= top:
        return _alpha_from(num, _second_max_full(F_traffic))
    # Three levels, each exact where it decides: (1) the two largest a's alone bound E[X_(2)]
    # from below (a subset's second maximum never exceeds the whole set's), which proves alpha = 1
    # for most rows in a few passes; (2) the top-L bounds on the rows left; (3) in full on the rest.
    out = np.ones(F_traffic.shape[:-1])
    a1, a2 = top_two(F_traffic)
    with np.errstate(divide="ignore", invalid="ignore"):
        lower2 = np.where(a1 > 0, a2 / 2.0 - a2 * a2 / (6.0 * a1), 0.0)  # E[min(U a1, U a2)], a1 >= a2
    left = ~(num <= lower2 * (1.0 - 1e-12))
    if not left.any():
        return out
    F_left, num_left = F_traffic[left], num[left]
    upper, tail = _second_max_top(F_left, top)
    alpha_left = np.ones(num_left.shape)
    rest = ~(num_left <= upper - tail)
    if rest.any():
        alpha_left[rest] = _alpha_from(num_left[rest], _second_max_full(F_left[rest]))
    out[left] = alpha_left
    return out



def _alpha_from(num: np.ndarray, e2: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = num / e2
    return np.where(e2 > 0, np.maximum(1.0, ratio), np.where(num > 0, np.inf, 1.0))


def msb_win_stats(a: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P(X_(1) > alpha X_(2)), E[X_(1) 1{X_(1) > alpha X_(2)}]) for X_k ~ U[0, a_k], last axis.

    ``a`` (..., K), ``alpha`` (...) >= 1 (inf allowed: the traffic side never wins).
    """
    a = np.asarray(a, dtype=float)
    alpha = np.broadcast_to(np.asarray(alpha, dtype=float), a.shape[:-1])
    s, m, E, E_prev, s_prev, logA, logs = _tables(a)
    K = s.shape[-1]
    # cumulative H0, H1 at the breakpoints s_j (value at the top of interval j)
    h0_int = (E - E_prev) / m
    h1_int = (s * E - s_prev * E_prev) / (m + 1.0)
    H0 = np.cumsum(h0_int, axis=-1)
    H1 = np.cumsum(h1_int, axis=-1)
    H0_prev = H0 - h0_int
    H1_prev = H1 - h1_int
    finite = np.isfinite(alpha)
    al = np.where(finite, alpha, 1.0)
    z = s / al[..., None]  # sorted ascending too
    # interval index of each z: j = #(s < z)  (z in (s_{j-1}, s_j]); rows merged with offsets
    lead = s.shape[:-1]
    rows = int(np.prod(lead)) if lead else 1
    s2 = s.reshape(rows, K)
    z2 = z.reshape(rows, K)
    scale = np.where(s2[:, -1] > 0, s2[:, -1], 1.0)[:, None]
    off = 4.0 * np.arange(rows, dtype=float)[:, None]
    keys = (s2 / scale + off).ravel()
    q = (z2 / scale + off).ravel()
    j = np.searchsorted(keys, q, side="left").reshape(rows, K) - (np.arange(rows)[:, None] * K)
    j = np.clip(j, 0, K - 1).reshape(s.shape)
    take = lambda arr: np.take_along_axis(arr, j, axis=-1)  # noqa: E731
    m_j = take(np.broadcast_to(m, s.shape))
    logA_j = take(logA)
    E_lo = take(E_prev)
    s_lo = take(s_prev)
    zpos = z > 0
    with np.errstate(divide="ignore", under="ignore"):
        logz = np.log(np.where(zpos, z, 1.0))
        Ez = np.where(zpos, np.exp(np.minimum(m_j * logz - logA_j, 0.0)), 0.0)
    H0z = take(H0_prev) + (Ez - E_lo) / m_j
    H1z = take(H1_prev) + (z * Ez - s_lo * E_lo) / (m_j + 1.0)
    H0z = np.where(zpos, H0z, 0.0)
    H1z = np.where(zpos, H1z, 0.0)
    p_win = al * H0z.sum(axis=-1)
    e_win = al * al * H1z.sum(axis=-1)
    p_win = np.where(finite, np.clip(p_win, 0.0, 1.0), 0.0)
    e_win = np.where(finite, np.maximum(e_win, 0.0), 0.0)
    return p_win, e_win


def msb_expected_surplus(F_traffic: np.ndarray, F0: np.ndarray, alpha: np.ndarray, *, gamma: float = 1.0,
                         beta0: float = 1.0) -> np.ndarray:
    """kappa: the MSB's prior expected per-time surplus per unit common value v and unit C.

    kappa = E[F_(1) u 1{traffic wins}] + gamma beta0 F_0 / 2 * P(driving wins). (..., K) -> (...).
    """
    p_win, e_win = msb_win_stats(F_traffic, alpha)
    return e_win + gamma * beta0 * np.asarray(F0, dtype=float) / 2.0 * (1.0 - p_win)

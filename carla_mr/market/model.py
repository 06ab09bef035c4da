"""The market's system model (paper Section III, fixed as in docs/mechanism.md).

One RSU (J = 1) sells GPU time. ``I`` AVs each have ``N`` digital-twin (DT) tasks; ``K + 1``
virtual simulators bid for the AV's task windows: simulator 0 is the driving simulator (a
"brand" bidder that cannot observe its value and is served at a contract price), simulators
1..K are traffic simulators ("performance" bidders).

Units (``size_unit = 1``, the default, reads sizes in Mbit against rates in Mbit/s; 8 reads
them as strict MB):

- bandwidths ``B`` in MHz, rates ``R`` in Mbit/s;
- sizes ``s`` in MB, workloads ``e`` in Gcycles/MB, clock rates ``f`` in GHz, times in s;
- ``Q`` (simulations per window) and ``F``, ``h``, ``m`` are dimensionless;
- values ``U = v m`` are per unit time; a window's value is ``T U``.

Public data (known to the auctioneer): the AVs' reported task sizes, workloads and
deadlines, the channel (rates), the simulators' job sizes and workloads, the generative
scores ``G``, ``theta`` and each AV's common scale ``C_i`` (hence ``F``, ``T``, ``alpha``,
``E[m_0]`` and the contract price ``b0``). Private data: the AV's value ``v_i`` (its bid
``b_i``) and the simulators' idiosyncratic match ``u`` (their bids ``U[i, n, k]``).

Every function here is vectorised over (AV, task, simulator); there is no loop over AVs.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from carla_mr.errors import InputError

#: The prior mean of an AV's value v ~ U[0, 1] (the contract price uses it).
EV = 0.5
NOISE_MODES = ("random", "fixed")
_NOISE_FLOOR = 1e-3


@dataclass(frozen=True)
class MarketParams:
    """Every parameter of the market model, with the specification's defaults.

    ``n_avs`` = I, ``n_traffic`` = K (traffic simulators; the driving simulator 0 is extra,
    so there are K + 1 simulators), ``n_tasks`` = N tasks per AV.
    """

    n_avs: int = 30
    n_traffic: int = 29
    n_tasks: int = 1
    bandwidth_up_mhz: float = 20.0  # B_u
    bandwidth_down_mhz: float = 20.0  # B_d
    f_c_ghz: float = 3.6  # RSU CPU clock for the DT task, f_C
    f_g_ghz: float = 19.0  # RSU GPU clock for the simulators, f_G
    gamma: float = 1.0  # weight of the driving simulator's surplus
    theta: float = 0.53  # relative accuracy in F = log2(1 + G Q) / theta
    r_acc: float = 0.5  # weight of the DT surplus S_DT = R_acc v
    g_lo: float = 0.4  # G ~ U[g_lo, g_hi]
    g_hi: float = 0.6
    beta0: float = 1.0  # scale of the driving simulator's match h_{i,0}
    size_unit: float = 1.0  # 1: MB read as Mbit (default); 8: strict MB
    noise_mode: str = "random"  # "random": sigma^2 = max(|N(0,1)|, 1e-3); "fixed": 1
    c_max: float | None = None  # truncate C_i ~ Zipf(zipf_a) by resampling while C > c_max
    zipf_a: float = 2.0
    genai: bool = True  # F = log2(1 + G Q) / theta; False: F = 1
    # Sampling ranges of the primitives (spec defaults).
    p_av_max_mw: float = 1.0
    p_rsu_max_mw: float = 5.0
    s_dt_max_mb: float = 0.5
    e_dt_max: float = 2.0
    d_lo_s: float = 1.0
    d_hi_s: float = 1.5
    s_sim_lo_mb: float = 1e-3
    s_sim_hi_mb: float = 2.5
    e_sim_max: float = 5.0

    def validate(self) -> "MarketParams":
        """Raise InputError naming the first bad parameter; return self when valid."""
        for name in ("n_avs", "n_traffic", "n_tasks"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, (int, np.integer)):
                raise InputError(f"must be an integer, got {val!r}", field=name)
            if val < 0:
                raise InputError(f"must not be negative, got {val}", field=name)
        if self.n_avs < 1:
            raise InputError(f"needs at least 1 AV, got {self.n_avs}", field="n_avs")
        if self.n_traffic < 2:
            raise InputError(
                f"K (traffic simulators) must be >= 2 (with K = 1 the modified second bid is 0), "
                f"got {self.n_traffic}", field="n_traffic")
        if self.n_tasks < 1:
            raise InputError(f"needs at least 1 task per AV, got {self.n_tasks}", field="n_tasks")
        for name in ("bandwidth_up_mhz", "bandwidth_down_mhz", "f_c_ghz", "f_g_ghz", "size_unit",
                     "p_av_max_mw", "p_rsu_max_mw", "s_dt_max_mb", "e_dt_max", "e_sim_max",
                     "s_sim_hi_mb", "s_sim_lo_mb", "d_hi_s"):
            _positive(getattr(self, name), name)
        for name in ("gamma", "r_acc", "beta0", "d_lo_s"):
            _nonneg(getattr(self, name), name)
        _theta_ok(self.theta, "theta")
        for name in ("g_lo", "g_hi"):
            v = getattr(self, name)
            if not (np.isfinite(v) and 0.0 <= v <= 1.0):
                raise InputError(f"G must lie in [0, 1], got {v}", field=name)
        if self.g_lo > self.g_hi:
            raise InputError(f"g_lo ({self.g_lo}) must be <= g_hi ({self.g_hi})", field="g_lo")
        if self.s_sim_lo_mb > self.s_sim_hi_mb:
            raise InputError("must be <= s_sim_hi_mb", field="s_sim_lo_mb")
        if self.d_lo_s > self.d_hi_s:
            raise InputError("must be <= d_hi_s", field="d_lo_s")
        if self.noise_mode not in NOISE_MODES:
            raise InputError(f"must be one of {NOISE_MODES}, got {self.noise_mode!r}", field="noise_mode")
        if self.c_max is not None and not (np.isfinite(self.c_max) and self.c_max >= 1):
            raise InputError(f"must be None or >= 1 (C_i >= 1), got {self.c_max}", field="c_max")
        if not (np.isfinite(self.zipf_a) and self.zipf_a > 1):
            raise InputError(f"the Zipf exponent must be > 1, got {self.zipf_a}", field="zipf_a")
        return self

    def replace(self, **changes: Any) -> "MarketParams":
        """A copy with some fields changed, validated."""
        return dataclasses.replace(self, **changes).validate()


def _positive(v: float, name: str) -> None:
    if not (np.isfinite(v) and v > 0):
        raise InputError(f"must be a positive number, got {v}", field=name)


def _nonneg(v: float, name: str) -> None:
    if not (np.isfinite(v) and v >= 0):
        raise InputError(f"must be a non-negative number, got {v}", field=name)


def _theta_ok(theta: Any, name: str) -> None:
    t = np.asarray(theta, dtype=float)
    if t.size == 0 or not np.all(np.isfinite(t)) or np.any(t <= 0) or np.any(t > 1):
        raise InputError(f"theta must lie in (0, 1], got {theta!r}", field=name)


# ---------------------------------------------------------------------------------------------
# Public data
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PublicMarket:
    """Everything the auctioneer knows, and what it derives from it (shapes with I, N, K).

    Build it with :func:`public_market` (from explicit arrays) or take ``Market.public``.

    Attributes (all numpy float64 unless said):
      rate_up, rate_down (I,)       R_u, R_d in Mbit/s
      s_dt, e_dt, d (I, N)          reported task size (MB), workload (Gcycles/MB), deadline (s)
      s_sim, e_sim (I, K+1)         simulators' job size (MB) and workload (Gcycles/MB) per AV
      C (I,)                        the AV's common match scale (C_i >= 0)
      G (I, N, K+1)                 generative scores in [0, 1]
      theta (I, N, K+1)             relative accuracy in (0, 1]
      t, l, rem, T (I, N)           upload time, DT compute time, time left, window length (s)
      feasible (I, N) bool          rem > 0
      tau (I, K+1)                  seconds per simulation
      Q (I, N, K+1)                 simulations that fit in the window
      F (I, N, K+1)                 generative factor (1 without generative AI)
      e_m0 (I, N)                   E[m_{i,n,0}] = F_0 beta0 C / 2 (prior over the private u)
      b0 (I, N)                     contract price of the driving simulator per unit time
      alpha (I, N)                  the MSB factor (cached; computed on first use)
      kappa (I, N)                  expected MSB surplus per unit v and unit C ("expected" scoring)
    """

    rate_up: np.ndarray
    rate_down: np.ndarray
    s_dt: np.ndarray
    e_dt: np.ndarray
    d: np.ndarray
    s_sim: np.ndarray
    e_sim: np.ndarray
    C: np.ndarray
    G: np.ndarray
    theta: np.ndarray
    gamma: float
    beta0: float
    genai: bool
    size_unit: float
    f_c_ghz: float
    f_g_ghz: float
    t: np.ndarray = field(repr=False)
    l: np.ndarray = field(repr=False)
    rem: np.ndarray = field(repr=False)
    feasible: np.ndarray = field(repr=False)
    T: np.ndarray = field(repr=False)
    tau: np.ndarray = field(repr=False)
    Q: np.ndarray = field(repr=False)
    F: np.ndarray = field(repr=False)
    e_m0: np.ndarray = field(repr=False)
    b0: np.ndarray = field(repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(I, N, K + 1)."""
        return self.F.shape  # type: ignore[return-value]

    @property
    def n_avs(self) -> int:
        return self.F.shape[0]

    @property
    def n_tasks(self) -> int:
        return self.F.shape[1]

    @property
    def n_traffic(self) -> int:
        return self.F.shape[2] - 1

    @property
    def av_feasible(self) -> np.ndarray:
        """(I,) bool: every task of the AV is feasible (else its score is -inf, constraint 5b)."""
        return self.feasible.all(axis=1)

    @functools.cached_property
    def alpha(self) -> np.ndarray:
        """(I, N) alpha_{i,n} = max(1, gamma beta0 E[a_0 u] / E[X_(2)]), see carla_mr.market.alpha."""
        from carla_mr.market.alpha import alpha_factor

        return alpha_factor(self.F[:, :, 1:], self.F[:, :, 0], gamma=self.gamma, beta0=self.beta0)

    @functools.cached_property
    def kappa(self) -> np.ndarray:
        """(I, N) prior expected per-time MSB surplus per unit common value v and unit C."""
        from carla_mr.market.alpha import msb_expected_surplus

        return msb_expected_surplus(self.F[:, :, 1:], self.F[:, :, 0], self.alpha,
                                    gamma=self.gamma, beta0=self.beta0)


def rates(g, p_av_mw, p_rsu_mw, s2_rsu, s2_av, *, bandwidth_up_mhz: float = 20.0,
          bandwidth_down_mhz: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """Shannon rates in Mbit/s: R_u = B_u log2(1 + g p_av / s2_rsu), R_d = B_d log2(1 + g P_rsu / s2_av)."""
    g = np.asarray(g, float)
    r_u = bandwidth_up_mhz * np.log2(1.0 + g * np.asarray(p_av_mw, float) / np.asarray(s2_rsu, float))
    r_d = bandwidth_down_mhz * np.log2(1.0 + g * np.asarray(p_rsu_mw, float) / np.asarray(s2_av, float))
    return r_u, r_d


def _arr(name: str, x: Any, shape: tuple[int, ...], *, nonneg: bool = True, check: bool = True) -> np.ndarray:
    if not check:
        return np.array(np.broadcast_to(np.asarray(x, dtype=float), shape))
    try:
        a = np.asarray(x, dtype=float)
        a = np.broadcast_to(a, shape)
    except (ValueError, TypeError) as exc:
        raise InputError(f"expected an array broadcastable to shape {shape}, got "
                         f"{np.shape(x)}", field=name) from exc
    if np.isnan(a).any():
        raise InputError("contains NaN", field=name)
    if nonneg and (a < 0).any():
        raise InputError("must not be negative", field=name)
    return np.array(a, dtype=float)  # own, writeable, contiguous


def public_market(*, rate_up, rate_down, s_dt, e_dt, d, s_sim, e_sim, C, G, theta: Any = 0.53,
                  gamma: float = 1.0, beta0: float = 1.0, genai: bool = True, size_unit: float = 1.0,
                  f_c_ghz: float = 3.6, f_g_ghz: float = 19.0, check: bool = True) -> PublicMarket:
    """Build the public market from explicit arrays (what the auctioneer received).

    Shapes: ``rate_up``, ``rate_down``, ``C`` (I,); ``s_dt``, ``e_dt``, ``d`` (I, N);
    ``s_sim``, ``e_sim`` (K+1,) or (I, K+1) (a simulator's job per AV); ``G`` and ``theta``
    anything broadcastable to (I, N, K+1) (e.g. (I, K+1)[:, None, :], or a scalar).
    Units as in the module docstring. Raises InputError naming the bad array. ``check=False``
    skips the value checks (NaN, signs, ranges; shapes are still broadcast) for data already
    checked once (the auctioneer's public data at open, bids by the codec).
    """
    s_dt_a = np.asarray(s_dt, dtype=float)
    if s_dt_a.ndim != 2:
        raise InputError(f"must have shape (I, N), got {s_dt_a.shape}", field="s_dt")
    I, N = s_dt_a.shape
    s_sim_a = np.asarray(s_sim, dtype=float)
    if s_sim_a.ndim not in (1, 2):
        raise InputError(f"must have shape (K+1,) or (I, K+1), got {s_sim_a.shape}", field="s_sim")
    K1 = s_sim_a.shape[-1]
    if I < 1 or N < 1:
        raise InputError(f"needs at least one AV and one task, got shape {(I, N)}", field="s_dt")
    if K1 < 3:
        raise InputError(f"needs K >= 2 traffic simulators (K+1 >= 3 columns), got K+1 = {K1}", field="s_sim")
    if check:
        _positive(size_unit, "size_unit")
        _positive(f_c_ghz, "f_c_ghz")
        _positive(f_g_ghz, "f_g_ghz")
        _nonneg(gamma, "gamma")
        _nonneg(beta0, "beta0")
        _theta_ok(theta, "theta")
    r_u = _arr("rate_up", rate_up, (I,), check=check)
    r_d = _arr("rate_down", rate_down, (I,), check=check)
    s_dt_a = _arr("s_dt", s_dt_a, (I, N), check=check)
    e_dt_a = _arr("e_dt", e_dt, (I, N), check=check)
    d_a = _arr("d", d, (I, N), check=check)
    s_sim_a = _arr("s_sim", s_sim_a, (I, K1), check=check)
    if check and (s_sim_a <= 0).any():
        raise InputError("simulation job sizes must be positive (a zero-size job would fit infinitely often)",
                         field="s_sim")
    e_sim_a = _arr("e_sim", e_sim, (I, K1), check=check)
    C_a = _arr("C", C, (I,), check=check)
    G_a = _arr("G", G, (I, N, K1), check=check)
    if check and (G_a > 1).any():
        raise InputError("generative scores must lie in [0, 1]", field="G")
    theta_a = _arr("theta", theta, (I, N, K1), check=check)
    return _derive_public(r_u, r_d, s_dt_a, e_dt_a, d_a, s_sim_a, e_sim_a, C_a, G_a, theta_a,
                          gamma=float(gamma), beta0=float(beta0), genai=bool(genai),
                          size_unit=float(size_unit), f_c_ghz=float(f_c_ghz), f_g_ghz=float(f_g_ghz))


def _derive_public(r_u, r_d, s_dt, e_dt, d, s_sim, e_sim, C, G, theta, *, gamma, beta0, genai,
                   size_unit, f_c_ghz, f_g_ghz) -> PublicMarket:
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t = s_dt * size_unit / r_u[:, None]  # (I, N) s; inf when R_u = 0
        t = np.where(s_dt == 0, 0.0, t)
        l = s_dt * e_dt / f_c_ghz  # (I, N) s
        rem = d - t - l
        feasible = rem > 0
        T = np.where(feasible, d, 0.0)
        tau = s_sim * size_unit / r_d[:, None] + s_sim * e_sim / f_g_ghz  # (I, K+1) s
        tau = np.where(s_sim == 0, 0.0, tau)
        remp = np.maximum(rem, 0.0)
        Q = remp[:, :, None] / tau[:, None, :]  # (I, N, K+1)
        Q = np.where(remp[:, :, None] == 0, 0.0, Q)  # no time left: no simulation (also 0/0)
        if genai:
            F = np.log2(1.0 + G * Q) / theta
            F = np.where(np.isnan(F), 0.0, F)
        else:
            F = np.ones_like(Q)
    e_m0 = F[:, :, 0] * beta0 * C[:, None] * 0.5
    b0 = EV * e_m0
    return PublicMarket(rate_up=r_u, rate_down=r_d, s_dt=s_dt, e_dt=e_dt, d=d, s_sim=s_sim,
                        e_sim=e_sim, C=C, G=G, theta=theta, gamma=gamma, beta0=beta0, genai=genai,
                        size_unit=size_unit, f_c_ghz=f_c_ghz, f_g_ghz=f_g_ghz, t=t, l=l, rem=rem,
                        feasible=feasible, T=T, tau=tau, Q=Q, F=F, e_m0=e_m0, b0=b0)


# ---------------------------------------------------------------------------------------------
# A sampled market: public data plus the private values
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Market:
    """A sampled market: its ``public`` part, the primitives and the private values.

    Primitives: g, p_av, s2_rsu, s2_av (I,); p_rsu (scalar, mW); v, C (I,); u, h, G (I, K+1).
    Private derived: m = F h (I, N, K+1) match quality, U = v m (I, N, K+1) values per unit
    time (the truthful simulator bids; column 0 is the driving simulator's true value).
    """

    params: MarketParams
    public: PublicMarket
    g: np.ndarray
    p_av: np.ndarray
    p_rsu: float
    s2_rsu: np.ndarray
    s2_av: np.ndarray
    v: np.ndarray
    u: np.ndarray
    h: np.ndarray
    G: np.ndarray  # (I, K+1) as sampled
    m: np.ndarray
    U: np.ndarray

    # Convenience pass-throughs of the most used public arrays.
    @property
    def C(self) -> np.ndarray:
        return self.public.C

    @property
    def T(self) -> np.ndarray:
        return self.public.T

    @property
    def F(self) -> np.ndarray:
        return self.public.F

    @property
    def alpha(self) -> np.ndarray:
        return self.public.alpha

    @property
    def feasible(self) -> np.ndarray:
        return self.public.feasible

    def with_genai(self, genai: bool, *, theta: Any | None = None, G: Any | None = None) -> "Market":
        """The same draw re-derived with/without generative AI (or another theta / G):
        common random numbers across those treatments."""
        params = dataclasses.replace(self.params, genai=bool(genai),
                                     theta=self.params.theta if theta is None else float(theta))
        params.validate()
        return self.rederive(params=params, G=G)

    def rederive(self, *, params: MarketParams | None = None, **primitives: Any) -> "Market":
        """The same draw with some primitives replaced (``g, p_av, p_rsu, s2_rsu, s2_av, s_dt,
        e_dt, d, s_sim, e_sim, v, C, u, G``; shapes as sampled) and everything re-derived."""
        cur = dict(g=self.g, p_av=self.p_av, p_rsu=self.p_rsu, s2_rsu=self.s2_rsu, s2_av=self.s2_av,
                   s_dt=self.public.s_dt, e_dt=self.public.e_dt, d=self.public.d,
                   s_sim=self.public.s_sim[0], e_sim=self.public.e_sim[0], v=self.v, C=self.public.C,
                   u=self.u, G=self.G)
        for k, val in primitives.items():
            if k not in cur:
                raise InputError(f"unknown primitive; known: {sorted(cur)}", field=k)
            if val is not None:
                cur[k] = (float(val) if k == "p_rsu"
                          else np.array(np.broadcast_to(np.asarray(val, float), np.shape(cur[k]))))
        return _assemble(params or self.params, **cur)


def _as_seedseq(seed: Any) -> np.random.SeedSequence:
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0:
        return np.random.SeedSequence(int(seed))
    raise InputError(f"must be a non-negative int or a numpy SeedSequence, got {seed!r}", field="seed")


def sample_market(params: MarketParams | None = None, seed: Any = 0) -> Market:
    """Sample one market from ``params`` with a Generator seeded from ``seed`` (int or SeedSequence).

    The draw order is fixed, so the same seed gives bit-identical arrays; ``genai`` and
    ``theta`` do not change the draws (use :meth:`Market.with_genai` for the other treatment).
    """
    params = (params or MarketParams()).validate()
    rng = np.random.default_rng(_as_seedseq(seed))
    I, N, K1 = params.n_avs, params.n_tasks, params.n_traffic + 1
    g = rng.uniform(0.0, 1.0, I)
    p_av = rng.uniform(0.0, params.p_av_max_mw, I)
    p_rsu = float(rng.uniform(0.0, params.p_rsu_max_mw))
    if params.noise_mode == "random":
        s2_rsu = np.maximum(np.abs(rng.standard_normal(I)), _NOISE_FLOOR)
        s2_av = np.maximum(np.abs(rng.standard_normal(I)), _NOISE_FLOOR)
    else:
        rng.standard_normal(2 * I)  # keep the stream aligned with "random"
        s2_rsu = np.ones(I)
        s2_av = np.ones(I)
    s_dt = rng.uniform(0.0, params.s_dt_max_mb, (I, N))
    e_dt = rng.uniform(0.0, params.e_dt_max, (I, N))
    d = rng.uniform(params.d_lo_s, params.d_hi_s, (I, N))
    s_sim = rng.uniform(params.s_sim_lo_mb, params.s_sim_hi_mb, K1)
    e_sim = rng.uniform(0.0, params.e_sim_max, K1)
    v = rng.uniform(0.0, 1.0, I)
    C = rng.zipf(params.zipf_a, I).astype(float)
    if params.c_max is not None:
        bad = C > params.c_max
        while bad.any():  # rejection: bounded in expectation (P(C <= c_max) >= P(C = 1) > 0.6)
            C[bad] = rng.zipf(params.zipf_a, int(bad.sum()))
            bad = C > params.c_max
    u = 1.0 - rng.random((I, K1))  # U(0, 1]
    G = rng.uniform(params.g_lo, params.g_hi, (I, K1))
    return _assemble(params, g, p_av, p_rsu, s2_rsu, s2_av, s_dt, e_dt, d, s_sim, e_sim, v, C, u, G)


def _assemble(params, g, p_av, p_rsu, s2_rsu, s2_av, s_dt, e_dt, d, s_sim, e_sim, v, C, u, G) -> Market:
    """Derive the public market and the private values from the primitives."""
    I, N = s_dt.shape
    K1 = s_sim.shape[-1]
    r_u, r_d = rates(g, p_av, p_rsu, s2_rsu, s2_av, bandwidth_up_mhz=params.bandwidth_up_mhz,
                     bandwidth_down_mhz=params.bandwidth_down_mhz)
    pub = _derive_public(
        r_u, r_d, s_dt, e_dt, d, np.broadcast_to(s_sim, (I, K1)).copy(),
        np.broadcast_to(e_sim, (I, K1)).copy(), C, np.broadcast_to(G[:, None, :], (I, N, K1)),
        np.broadcast_to(np.float64(params.theta), (I, N, K1)), gamma=params.gamma, beta0=params.beta0, genai=params.genai,
        size_unit=params.size_unit, f_c_ghz=params.f_c_ghz, f_g_ghz=params.f_g_ghz)
    h = C[:, None] * u
    h[:, 0] *= params.beta0
    m = pub.F * h[:, None, :]
    U = v[:, None, None] * m
    return Market(params=params, public=pub, g=g, p_av=p_av, p_rsu=p_rsu, s2_rsu=s2_rsu, s2_av=s2_av,
                  v=v, u=u, h=h, G=G, m=m, U=U)

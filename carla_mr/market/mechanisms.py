"""Clearing a market: the one entry point to PViSA, EPViSA and MTEPViSA (pure functions).

The online stage sells the RSU's DT slot to one AV; the offline stage sells each of that AV's
task windows (length T seconds) to one simulator. See docs/mechanism.md and docs/market.md;
the rules are in :mod:`carla_mr.market.rules`, looked up by name in
:mod:`carla_mr.market.registry`.

Bids:
  av_bids (I,)          b_i, the AV's value per DT slot (truthful: v_i)
  sim_bids (I, N, K+1)  the simulators' values per unit time for (AV i, task n); truthful:
                        U = v m. Column 0 (the driving simulator) is never a bid: it is
                        served at the public contract price b0 = E[v] E[m_0]; the column is
                        only used as the driving value when no true values are given.
"""

from __future__ import annotations

from typing import Any, Iterable, get_args

import numpy as np

from carla_mr.config.vocab import ScoringName
from carla_mr.errors import InputError
from carla_mr.market import registry
from carla_mr.market.model import Market, PublicMarket
from carla_mr.market.outcome import Outcome
from carla_mr.market.rules import ClearingInput

SCORINGS: tuple[str, ...] = get_args(ScoringName)
EPVISA_WINDOWS = ("first", "all")
DT_WEIGHTS = ("unit", "r_acc")


def clear(market: Market | PublicMarket, av_bids: Any = None, sim_bids: Any = None, *,
          mechanism: str = "mtepvisa", scoring: str = "reported", epvisa_windows: str = "first",
          r_acc: Any = 0.5, dt_weight: str = "unit", values: tuple[Any, Any] | None = None) -> Outcome:
    """Clear one market: a pure function of public data and bids.

    market: a sampled :class:`Market` (its private values give truthful default bids and the
      realised surplus) or a :class:`PublicMarket` (bids required; surplus valued at ``values``
      or, without them, at the bids).
    av_bids (I,): None = truthful (Market only). sim_bids (I, N, K+1): None = truthful.
    mechanism: a name of :data:`carla_mr.market.registry.MECHANISMS`. scoring: "reported" | "expected".
    epvisa_windows: "first" (EPViSA scores and serves the first window only) | "all" (scores
      the first, serves every window of the winner).
    r_acc: the DT accuracy weight R_acc, scalar or (I,), used in S_DT (and in the score when
      dt_weight = "r_acc"; the specification's score uses 1, dt_weight = "unit").
    values: (v (I,), U (I, N, K+1)) true values for the surplus (default: the Market's truth).
    """
    rule = registry.get(mechanism).rule
    return rule(clearing_input(market, av_bids, sim_bids, scoring=scoring, epvisa_windows=epvisa_windows,
                               r_acc=r_acc, dt_weight=dt_weight, values=values))


def clear_all(market: Market | PublicMarket, av_bids: Any = None, sim_bids: Any = None, *,
              mechanisms: Iterable[str] = registry.NAMES, **kw: Any) -> dict[str, Outcome]:
    """Clear the same draw and bids with several mechanisms (common random numbers), in order."""
    return {mech: clear(market, av_bids, sim_bids, mechanism=mech, **kw) for mech in mechanisms}


def clearing_input(market: Market | PublicMarket, av_bids: Any = None, sim_bids: Any = None, *,
                   scoring: str = "reported", epvisa_windows: str = "first", r_acc: Any = 0.5,
                   dt_weight: str = "unit", values: tuple[Any, Any] | None = None) -> ClearingInput:
    """Check the arguments of :func:`clear` and bundle them (InputError names the bad one)."""
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
    return ClearingInput(public=pub, av_bids=b, sim_bids=Ub, true_v=truth_v, true_U=truth_U,
                         r_acc=_per_av(r_acc, I, "r_acc"), scoring=scoring, epvisa_windows=epvisa_windows,
                         dt_weight=dt_weight)


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

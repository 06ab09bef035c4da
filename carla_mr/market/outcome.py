"""The result of clearing one market (:class:`Outcome`), shared by the mechanisms and the oracle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


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

    @staticmethod
    def nobody(mechanism: str, scoring: str, n_tasks: int, n_infeasible: int, scores: np.ndarray) -> "Outcome":
        """The outcome when no AV is eligible: nothing served, nothing paid."""
        N = int(n_tasks)
        return Outcome(mechanism=mechanism, scoring=scoring, winner=-1, payment=0.0, served=np.zeros(N, bool),
                       offline_winner=np.full(N, -1), offline_price=np.zeros(N), offline_payment=np.zeros(N),
                       T=np.zeros(N), alpha=np.full(N, np.nan), S_DT=0.0, S_T=0.0, S_D=0.0, total=0.0,
                       revenue=0.0, n_infeasible=int(n_infeasible), scores=scores)

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

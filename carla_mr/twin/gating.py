"""Online gating: per vehicle, serve whichever predictor (the model or the physics baseline) has
the lower rolling error.

Every prediction of both predictors is scored when its truth is known (F samples later). Per
vehicle the gate keeps the rolling ADE (metres) of each, with the same rule as the accuracy R:
the exact mean over the first ``window`` scores, then an exponential average with weight
1/``window``. A vehicle is served by the model until it has ``min_scores`` scores, then by the
model while its rolling ADE is at most ``1 + margin`` times the baseline's, else by the
baseline (the margin keeps a vehicle from flapping to the baseline on a few noisy scores).
"""

from __future__ import annotations

import numpy as np

from carla_mr.errors import InputError


class RollingGate:
    """Per-vehicle rolling ADE of the model (index 0) and the baseline (index 1)."""

    def __init__(self, window: int = 20, min_scores: int = 3, margin: float = 0.1):
        if window < 1 or min_scores < 0 or margin < 0:
            raise InputError("need window >= 1 and min_scores >= 0", field="twin.accuracy_window")
        self.window = int(window)
        self.min_scores = int(min_scores)
        self.margin = float(margin)
        self._index: dict[int, int] = {}
        self._err = np.zeros((0, 2))
        self._n = np.zeros(0, np.int64)

    def _rows(self, ids: np.ndarray, create: bool) -> np.ndarray:
        rows = np.full(len(ids), -1, np.int64)
        for i, v in enumerate(np.asarray(ids, np.int64).tolist()):
            r = self._index.get(v)
            if r is None and create:
                r = self._index[v] = len(self._index)
            rows[i] = -1 if r is None else r
        if create and len(self._index) > self._n.size:
            grow = len(self._index) - self._n.size
            self._err = np.concatenate([self._err, np.zeros((grow, 2))])
            self._n = np.concatenate([self._n, np.zeros(grow, np.int64)])
        return rows

    def update(self, ids: np.ndarray, ade_model: np.ndarray, ade_baseline: np.ndarray) -> None:
        """Fold in one score per vehicle (ids unique), metres."""
        rows = self._rows(ids, create=True)
        self._n[rows] += 1
        w = np.maximum(1.0 / self._n[rows], 1.0 / self.window)[:, None]
        e = np.stack([np.asarray(ade_model, np.float64), np.asarray(ade_baseline, np.float64)], axis=1)
        self._err[rows] += w * (e - self._err[rows])

    def use_model(self, ids: np.ndarray) -> np.ndarray:
        """(Q,) bool: serve the model's prediction to each of ``ids``."""
        rows = self._rows(ids, create=False)
        out = np.ones(len(ids), bool)
        known = rows >= 0
        r = rows[known]
        ready = self._n[r] >= max(self.min_scores, 1)
        out[np.flatnonzero(known)[ready]] = self._err[r[ready], 0] <= (1.0 + self.margin) * self._err[r[ready], 1]
        return out

    def rolling(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(Q, 2) rolling ADE (NaN where unscored) and (Q,) score counts."""
        rows = self._rows(ids, create=False)
        err = np.full((len(ids), 2), np.nan)
        n = np.zeros(len(ids), np.int64)
        k = rows >= 0
        err[k] = self._err[rows[k]]
        n[k] = self._n[rows[k]]
        return err, n

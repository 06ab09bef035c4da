"""Rolling prediction accuracy per (RSU, AV): the market's R_{i,j} weight (R_acc).

Definition of R
---------------
A prediction made at sample k for vehicle i by RSU j (the RSU serving i at k) is evaluated at
sample k + F, when its truth is known: it HITS when its final displacement error (the error at
the last horizon step, metres) is at most ``hit_radius_m`` (default 2 m, the miss-rate
threshold). R_{i,j} is the rolling hit rate of RSU j's predictions for AV i::

    n <- n + 1;  w = max(1/n, 1/window);  R <- R + w * (hit - R)

i.e. the exact mean over the first ``window`` evaluated predictions, then an exponential moving
average with weight 1/window. So R lies in [0, 1] and equals 1 - the rolling miss rate. Before
any prediction of AV i at RSU j was evaluated, R_{i,j} = ``prior`` (the market's constant
R_acc, 0.5). Predictions made while the AV was served by no RSU (rsu = -1) are kept under -1.
"""

from __future__ import annotations


import numpy as np

from carla_mr.errors import InputError


def _key(rsu: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """One sortable int64 per (rsu, id): rsu in the top 20 bits (+1 so -1 fits), id below."""
    ids = np.asarray(ids, np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 1 << 43):
        raise InputError("vehicle ids must lie in [0, 2**43) for accuracy keys", field="ids")
    return ((np.asarray(rsu, np.int64) + 1) << 43) | ids


class RollingAccuracy:
    """R_{i,j} for every (AV i, RSU j) pair seen so far (vectorised updates)."""

    def __init__(self, window: int = 20, hit_radius_m: float = 2.0, prior: float = 0.5):
        if window < 1 or not hit_radius_m > 0 or not 0 <= prior <= 1:
            raise InputError("need window >= 1, hit_radius_m > 0 and 0 <= prior <= 1", field="twin")
        self.window = int(window)
        self.hit_radius_m = float(hit_radius_m)
        self.prior = float(prior)
        self._keys = np.zeros(0, np.int64)
        self._r = np.zeros(0, np.float64)
        self._n = np.zeros(0, np.int64)

    def update(self, ids: np.ndarray, rsu: np.ndarray, fde_m: np.ndarray) -> None:
        """Fold in evaluated predictions: ids (E,), the RSU that made each (E,), final errors (E,) m."""
        keys = _key(rsu, ids)
        if keys.size == 0:
            return
        if np.unique(keys).size != keys.size:
            raise InputError("one evaluation per (rsu, id) per update", field="ids")
        hit = (np.asarray(fde_m, np.float64) <= self.hit_radius_m).astype(np.float64)
        pos = np.searchsorted(self._keys, keys)
        pos_c = np.minimum(pos, max(self._keys.size - 1, 0))
        known = (pos < self._keys.size) & (self._keys[pos_c] == keys) if self._keys.size else np.zeros(keys.size, bool)
        if (~known).any():
            nk = keys[~known]
            allk = np.concatenate([self._keys, nk])
            order = np.argsort(allk, kind="stable")
            self._keys = allk[order]
            self._r = np.concatenate([self._r, np.full(nk.size, self.prior)])[order]
            self._n = np.concatenate([self._n, np.zeros(nk.size, np.int64)])[order]
            pos = np.searchsorted(self._keys, keys)
        self._n[pos] += 1
        w = np.maximum(1.0 / self._n[pos], 1.0 / self.window)
        self._r[pos] += w * (hit - self._r[pos])

    def lookup(self, ids: np.ndarray, rsu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(R (Q,), evaluated count (Q,)) for each (id, rsu); the prior and 0 where none yet."""
        keys = _key(rsu, ids)
        r = np.full(keys.size, self.prior)
        n = np.zeros(keys.size, np.int64)
        if self._keys.size and keys.size:
            pos = np.searchsorted(self._keys, keys)
            pos_c = np.minimum(pos, self._keys.size - 1)
            hit = self._keys[pos_c] == keys
            r[hit] = self._r[pos_c[hit]]
            n[hit] = self._n[pos_c[hit]]
        return r, n

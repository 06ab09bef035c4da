"""Per-vehicle ring buffers of recent positions, filled from Snapshots, vectorised over vehicles.

One :meth:`TrackBuffer.push` is one SAMPLE (the twin pushes every ``stride``-th world tick).
All vehicles share a global sample counter ``k``; a vehicle's samples live in its slot's row at
column ``k mod C`` (C = capacity), written twice (at ``c`` and ``c + C``) so the newest ``P``
samples of every vehicle are the one contiguous column range ``[c + C - P + 1, c + C + 1)``:
reading a batch is a single gather over slots, no per-vehicle work.

Vehicles come and go: an id not in a push is dropped (its slot is freed and its history is
forgotten, so every history is contiguous in time); a new id gets a free slot (the arrays
double when full). The id -> slot map is a sorted id array searched with ``np.searchsorted``.
"""

from __future__ import annotations

import numpy as np

from carla_mr.errors import InputError


class TrackBuffer:
    """Ring buffers of the last ``capacity`` (x, y) samples (metres) of every present vehicle."""

    def __init__(self, capacity: int = 65, initial_slots: int = 256):
        if capacity < 2:
            raise InputError(f"capacity must be >= 2, got {capacity}", field="capacity")
        self.capacity = int(capacity)
        s = max(1, int(initial_slots))
        self._pos = np.zeros((s, 2 * self.capacity, 2), np.float64)
        self._count = np.zeros(s, np.int64)  # samples held (contiguous, <= capacity)
        self._free = np.arange(s - 1, -1, -1, dtype=np.int64)  # stack of free slots (top = end)
        self._n_free = s
        self._ids = np.zeros(0, np.int64)  # sorted ids present
        self._slots = np.zeros(0, np.int64)  # their slots
        self._times = np.full(2 * self.capacity, np.nan)
        self.k = 0  # samples pushed so far

    # -- state -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._ids.size)

    @property
    def ids(self) -> np.ndarray:
        """Ids present after the last push, sorted (int64)."""
        return self._ids

    @property
    def counts(self) -> np.ndarray:
        """Samples held for each id in :attr:`ids` (contiguous, capped at ``capacity``)."""
        return self._count[self._slots]

    def _grow(self, need: int) -> None:
        old = self._pos.shape[0]
        new = max(2 * old, old + need)
        pos = np.zeros((new, 2 * self.capacity, 2), np.float64)
        pos[:old] = self._pos
        cnt = np.zeros(new, np.int64)
        cnt[:old] = self._count
        self._pos, self._count = pos, cnt
        added = np.arange(new - 1, old - 1, -1, dtype=np.int64)
        self._free = np.concatenate([added, self._free[:self._n_free]])
        self._n_free = self._free.size

    # -- update ------------------------------------------------------------------------------------
    def push(self, ids: np.ndarray, x: np.ndarray, y: np.ndarray, time: float = np.nan) -> None:
        """Add one sample: positions (metres) of every vehicle present now. Absent ids are dropped."""
        ids = np.asarray(ids, np.int64)
        n = ids.size
        if np.shape(x) != (n,) or np.shape(y) != (n,):
            raise InputError(f"ids, x, y must have one shape (N,), got {ids.shape}, {np.shape(x)}, {np.shape(y)}",
                             field="snapshot")
        order = np.argsort(ids, kind="stable")
        sid = ids[order]
        if n > 1 and np.any(sid[1:] == sid[:-1]):
            raise InputError("duplicate vehicle ids in one sample", field="snapshot.ids")
        # which current ids were present before
        pos = np.searchsorted(self._ids, sid)
        pos_c = np.minimum(pos, max(self._ids.size - 1, 0))
        known = (pos < self._ids.size) & (self._ids[pos_c] == sid) if self._ids.size else np.zeros(n, bool)
        slots = np.empty(n, np.int64)
        slots[known] = self._slots[pos_c[known]]
        # free the slots of ids that left
        if self._ids.size:
            stay = np.zeros(self._ids.size, bool)
            stay[pos[known]] = True
            gone = self._slots[~stay]
            if gone.size:
                self._count[gone] = 0
                if self._n_free + gone.size > self._free.size:
                    self._free = np.concatenate([self._free[:self._n_free], np.zeros(gone.size, np.int64)])
                self._free[self._n_free:self._n_free + gone.size] = gone
                self._n_free += gone.size
        # give new ids a slot
        new = ~known
        n_new = int(new.sum())
        if n_new:
            if n_new > self._n_free:
                self._grow(n_new - self._n_free)
            take = self._free[self._n_free - n_new:self._n_free][::-1]
            self._n_free -= n_new
            slots[new] = take
            self._count[take] = 0
        c = self.k % self.capacity
        xy = np.stack([np.asarray(x, np.float64)[order], np.asarray(y, np.float64)[order]], axis=1)
        self._pos[slots, c] = xy
        self._pos[slots, c + self.capacity] = xy
        self._count[slots] = np.minimum(self._count[slots] + 1, self.capacity)
        self._times[c] = self._times[c + self.capacity] = time
        self._ids, self._slots = sid, slots
        self.k += 1

    # -- read --------------------------------------------------------------------------------------
    def _cols(self, length: int) -> slice:
        if not 1 <= length <= self.capacity:
            raise InputError(f"length must lie in [1, {self.capacity}], got {length}", field="past")
        if self.k == 0:
            raise InputError("nothing pushed yet", field="buffer")
        end = (self.k - 1) % self.capacity + self.capacity + 1
        return slice(end - length, end)

    def last(self, length: int, *, min_count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids (M,), positions (M, length, 2)) of every vehicle holding >= ``min_count`` samples
        (default ``length``), oldest sample first. Ids are sorted."""
        cols = self._cols(length)
        need = length if min_count is None else int(min_count)
        ok = self._count[self._slots] >= need
        return self._ids[ok], self._pos[self._slots[ok], cols]

    def get(self, ids: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """For the requested ``ids``: (mask (Q,) of those present with >= ``length`` samples,
        positions (mask.sum(), length, 2))."""
        cols = self._cols(length)
        ids = np.asarray(ids, np.int64)
        pos = np.searchsorted(self._ids, ids)
        pos_c = np.minimum(pos, max(self._ids.size - 1, 0))
        present = (pos < self._ids.size) & (self._ids[pos_c] == ids) if self._ids.size else np.zeros(ids.size, bool)
        slots = self._slots[pos_c[present]]
        enough = self._count[slots] >= length
        mask = present.copy()
        mask[present] = enough
        return mask, self._pos[slots[enough], cols]

    def last_times(self, length: int) -> np.ndarray:
        """Times of the last ``length`` samples (seconds, as pushed)."""
        return self._times[self._cols(length)].copy()

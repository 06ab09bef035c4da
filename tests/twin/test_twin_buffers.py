"""The ring buffers against a plain dict-of-lists reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carla_mr.errors import InputError
from carla_mr.twin.buffers import TrackBuffer


class Reference:
    """Each id keeps its contiguous history; an id absent from a push loses it."""

    def __init__(self, capacity):
        self.cap = capacity
        self.h: dict[int, list] = {}

    def push(self, ids, x, y):
        self.h = {int(i): (self.h.get(int(i), []) + [(float(a), float(b))])[-self.cap:] for i, a, b in zip(ids, x, y)}

    def last(self, length):
        ids = sorted(i for i, v in self.h.items() if len(v) >= length)
        return ids, [np.asarray(self.h[i][-length:]) for i in ids]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_matches_reference(data):
    cap = data.draw(st.integers(2, 7))
    buf = TrackBuffer(capacity=cap, initial_slots=data.draw(st.integers(1, 4)))
    ref = Reference(cap)
    universe = np.arange(12) * 7 + 3
    for step in range(data.draw(st.integers(1, 25))):
        present = data.draw(st.lists(st.sampled_from(universe.tolist()), unique=True, max_size=12))
        ids = np.asarray(present, np.int64)
        x = np.arange(ids.size) + 100.0 * step
        y = -x
        buf.push(ids, x, y, time=step * 0.5)
        ref.push(ids, x, y)
        assert sorted(buf.ids.tolist()) == sorted(present)
        length = data.draw(st.integers(1, cap))
        got_ids, got = buf.last(length)
        want_ids, want = ref.last(length)
        assert got_ids.tolist() == want_ids
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
        # get() for a random query, including absent ids
        q = np.asarray(data.draw(st.lists(st.sampled_from(universe.tolist()), max_size=6)), np.int64)
        mask, arr = buf.get(q, length)
        exp = [int(i) in ref.h and len(ref.h[int(i)]) >= length for i in q]
        assert mask.tolist() == exp
        for row, i in zip(arr, q[mask]):
            np.testing.assert_array_equal(row, np.asarray(ref.h[int(i)][-length:]))
    assert buf.last_times(1)[0] == (buf.k - 1) * 0.5


def test_many_vehicles_grow_and_reuse_slots():
    buf = TrackBuffer(capacity=3, initial_slots=2)
    for k in range(5):
        ids = np.arange(1000) + 1000 * (k % 2)  # alternating sets: everything leaves every push
        buf.push(ids, ids * 1.0, ids * 2.0)
        assert len(buf) == 1000
        assert (buf.counts == 1).all()
    ids = np.arange(1000) + 1000 * (4 % 2)
    for _ in range(3):
        buf.push(ids, ids * 1.0, ids * 2.0)
    got_ids, past = buf.last(3)
    assert got_ids.tolist() == ids.tolist()
    np.testing.assert_array_equal(past[:, :, 0], np.repeat(ids[:, None] * 1.0, 3, axis=1))
    assert buf._pos.shape[0] <= 4096  # slots are reused, not leaked


def test_bad_input():
    buf = TrackBuffer(capacity=4)
    with pytest.raises(InputError, match="duplicate"):
        buf.push(np.array([1, 1]), np.zeros(2), np.zeros(2))
    with pytest.raises(InputError, match="shape"):
        buf.push(np.array([1, 2]), np.zeros(3), np.zeros(2))
    with pytest.raises(InputError, match="nothing pushed"):
        buf.last(2)
    buf.push(np.array([1]), np.zeros(1), np.zeros(1))
    with pytest.raises(InputError, match="length"):
        buf.last(5)
    with pytest.raises(InputError):
        TrackBuffer(capacity=1)


def test_empty_push_drops_everyone():
    buf = TrackBuffer(capacity=3)
    buf.push(np.array([5, 6]), np.zeros(2), np.zeros(2))
    buf.push(np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
    assert len(buf) == 0
    buf.push(np.array([5]), np.ones(1), np.ones(1))
    assert buf.counts.tolist() == [1]

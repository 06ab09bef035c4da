"""One auction round as the auctioneer holds it in memory: its bids, state and waiters."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from carla_mr.market import protocol as P


@dataclass
class Bid:
    """An accepted bid: ``canon`` is the canonical msgpack of the validated body (what the
    ledger stores); ``receipt`` is empty until the bid's ledger transaction has committed, then
    the hash of its ledger event, chained on ``prev_hash`` at ``at_ns`` (what a bidder needs to
    verify it; "" / 0 when not known in memory, e.g. after a restart)."""

    bid_id: str
    kind: str
    body: dict
    canon: bytes
    receipt: str
    prev_hash: str = ""
    at_ns: int = 0


@dataclass
class Round:
    """A round (deadline on the monotonic clock ``deadline_mono``, wall clock ``deadline_ns``).

    ``public`` holds the round's public arrays (clearing.make_public form); ``bids`` the
    committed bids by bidder id; ``waiters`` the futures of :meth:`Auctioneer.wait_published`;
    ``sim_values`` (I, N, K+1) the traffic simulators' values in units, filled as their bids
    commit (clearing then needs no per-bid work); ``result_body`` the encoded ``result`` once
    published. ``verify`` is how the AVs' task sizes and cycles are checked (protocol.VERIFY_*);
    ``uploads[bidder][task]`` the measured size (MB) of each task an AV uploaded.
    """

    round_id: int
    mechanism: str
    scoring: str
    n_tasks: int
    av_ids: list[str]
    sim_ids: list[str]
    public: dict
    public_digest: str
    params: dict
    deadline_mono: float
    deadline_ns: int
    state: str = P.OPEN
    bids: dict[str, Bid] = field(default_factory=dict)
    closed_at_ns: int = 0
    result_body: bytes | None = None
    eligible: frozenset = frozenset()
    waiters: list[Future] = field(default_factory=list)
    sim_values: np.ndarray | None = None
    av_row: dict[str, int] = field(default_factory=dict)
    verify: str = P.VERIFY_NONE
    uploads: dict[str, dict[int, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.eligible = frozenset(self.av_ids) | frozenset(self.sim_ids)

    def add_sim_values(self, bidder: str, body: dict) -> None:
        """Lay a traffic simulator's committed values into ``sim_values`` (others: no-op)."""
        from carla_mr.market.clearing import sim_bid_rows

        if "values" not in body:
            return
        if self.sim_values is None:
            self.sim_values = np.zeros((len(self.av_ids), self.n_tasks, len(self.sim_ids)))
            self.av_row = {a: i for i, a in enumerate(self.av_ids)}
        j, arr = sim_bid_rows(body["values"], self.av_row, self.n_tasks)
        self.sim_values[j, :, self.sim_ids.index(bidder)] = arr

    def everyone_bid(self) -> bool:
        return len(self.bids) == len(self.eligible)

    @property
    def n_bids(self) -> int:
        return len(self.bids)


@dataclass(frozen=True)
class FinishedRound:
    """What stays in memory of a published or void round once its ledger entries are written:
    the encoded result (for status and late waiters), the state and the number of bids. Its
    bids, public data and values are dropped (the ledger answers re-sent bids)."""

    round_id: int
    state: str
    n_bids: int
    result_body: bytes | None
    deadline_mono: float = 0.0


def bid_misfit(kind: str, body: dict, r: Round) -> str | None:
    """Why a validated bid body does not fit round ``r`` (task count, unknown AV), or None."""
    if kind == P.BID_AV:
        if len(body["tasks"]) != r.n_tasks:
            return f"bid_av.tasks must have {r.n_tasks} entries (the round's n_tasks), got {len(body['tasks'])}"
        return None
    if "values" in body:
        avs = set(r.av_ids)
        for av, row in body["values"].items():
            if av not in avs:
                return f"bid_sim.values names {av!r}, which is not an AV of round {r.round_id}"
            if len(row) != r.n_tasks:
                return f"bid_sim.values[{av!r}] must have {r.n_tasks} entries, got {len(row)}"
    return None


def task_problem(body: dict, r: Round, bidder: str) -> str | None:
    """Why an AV bid's task sizes or cycles are not the verified ones (round ``r.verify``), or None.

    "spec": each task's size and cycles must equal the RSU's task spec (public ``s_dt``,
    ``e_dt``) within protocol.TASK_RTOL; "upload": each task's size must equal the measured
    size of the AV's upload of that task (cycles are not measurable before execution)."""
    if r.verify == P.VERIFY_NONE:
        return None
    tasks = body["tasks"]
    if r.verify == P.VERIFY_SPEC:
        i = r.av_ids.index(bidder)
        for n, t in enumerate(tasks):
            for name, key in (("s_dt", "size"), ("e_dt", "cycles")):
                known = float(r.public[name][i, n])
                if not _same(t[key], known):
                    return f"bid_av.tasks[{n}].{key} = {t[key]!r}, but the RSU's task spec says {known!r}"
        return None
    got = r.uploads.get(bidder, {})
    for n, t in enumerate(tasks):
        if n not in got:
            return f"task {n} was not uploaded: send an upload of it (round {r.round_id}) before the bid"
        if not _same(t["size"], got[n]):
            return f"bid_av.tasks[{n}].size = {t['size']!r} MB, but the upload measured {got[n]!r} MB"
    return None


def _same(reported: float, known: float) -> bool:
    return abs(float(reported) - known) <= P.TASK_RTOL * max(1.0, abs(known))

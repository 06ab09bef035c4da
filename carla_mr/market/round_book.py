"""The rounds' life cycle: open, close, clear, publish, void, and the restart rule.

    OPEN --deadline passed, or every eligible bidder has bid (early_close)--> CLOSED
    CLOSED --clearing function--> CLEARED (outcome + schedule committed) --results sent--> PUBLISHED

:class:`RoundBook` holds the rounds in memory (``live``) and writes every transition to the
ledger. It runs on the auctioneer's loop thread only.
"""

from __future__ import annotations

import gc
import time
from collections import OrderedDict
from typing import Callable

import msgpack
import numpy as np

from carla_mr.errors import InputError, RunError
from carla_mr.market import protocol as P
from carla_mr.market.codec import digest, encode_body, pack_arrays, unpack_arrays
from carla_mr.market.keys import AllowList
from carla_mr.market.ledger import Ledger
from carla_mr.market.outbox import Connections, Outbox
from carla_mr.market.rounds import Bid, FinishedRound, Round

#: Finished (published or void) rounds whose result stays in memory, for status requests; their
#: bids, public data and values are dropped at once (the ledger holds them). Older: ledger only.
KEEP_FINISHED = 8
#: Per-round server timings kept for benchmarks (the most recent).
KEEP_TIMINGS = 1024


class RoundBook:
    """Rounds in memory and their transitions.

    ``live``: round id -> Round, the rounds not yet finished (open, closed, cleared);
    ``finished``: round id -> FinishedRound, the last KEEP_FINISHED published or void rounds;
    ``timings``: round id -> {clear_s, publish_s, n_bids} (close -> cleared / -> results sent).
    ``on_published(round)`` is called after each round is marked PUBLISHED.
    """

    def __init__(self, *, allow: AllowList, ledger: Ledger, outbox: Outbox, connections: Connections,
                 clear_fn: Callable, mechanism: str, scoring: str, layout: str, publish_first: bool,
                 default_deadline_s: float, counters: dict[str, int], log: Callable[[str], None],
                 on_published: Callable[[Round], None], verify_uploads: bool = False):
        self.allow = allow
        self.ledger = ledger
        self.outbox = outbox
        self.connections = connections
        self.clear_fn = clear_fn
        self.mechanism = mechanism
        self.scoring = scoring
        self.layout = layout
        self.publish_first = publish_first
        self.default_deadline_s = default_deadline_s
        self.counters = counters
        self.log = log
        self.on_published = on_published
        self.verify_uploads = verify_uploads
        self.checkpoint_due: float | None = None  # since when a WAL checkpoint waits (monotonic)
        self.live: dict[int, Round] = {}
        self.finished: OrderedDict[int, FinishedRound] = OrderedDict()
        self.timings: dict[int, dict] = {}

    # ------------------------------------------------------------------ queries
    def get(self, round_id: int) -> Round | None:
        """An unfinished round (bids go here)."""
        return self.live.get(round_id)

    def get_any(self, round_id: int) -> Round | FinishedRound | None:
        """An unfinished round, or a recently finished one."""
        return self.live.get(round_id) or self.finished.get(round_id)

    def latest(self) -> Round | FinishedRound | None:
        ids = list(self.live) + list(self.finished)
        return self.get_any(max(ids)) if ids else None

    def open_rounds(self) -> list[Round]:
        return [r for r in self.live.values() if r.state == P.OPEN]

    def open_rounds_of(self, bidder: str) -> list[Round]:
        return [r for r in self.open_rounds() if bidder in r.eligible]

    def next_deadline(self) -> float | None:
        deadlines = [r.deadline_mono for r in self.open_rounds()]
        return min(deadlines) if deadlines else None

    # ------------------------------------------------------------------ open
    def open(self, public: dict, av_ids: list[str], sim_ids: list[str], n_tasks: int,
             deadline_s: float | None, params: dict, mechanism: str | None = None, scoring: str | None = None) -> dict:
        """Open a round (committed to the ledger, announced); returns its announce body.
        ``mechanism`` / ``scoring``: this round's (default: the auctioneer's)."""
        from carla_mr.market import registry
        from carla_mr.market.mechanisms import SCORINGS

        mechanism = registry.get(mechanism or self.mechanism).name
        scoring = scoring or self.scoring
        if scoring not in SCORINGS:
            raise InputError(f"must be one of {list(SCORINGS)}, got {scoring!r}", field="scoring")
        self._check_participants(av_ids, sim_ids, n_tasks)
        if "s_dt" in public and np.shape(public["s_dt"]) != (len(av_ids), n_tasks):
            raise InputError(f"the task spec must have shape ({len(av_ids)}, {n_tasks}) (AVs, n_tasks), got "
                             f"{np.shape(public['s_dt'])}", field="public.s_dt")
        deadline_s = float(self.default_deadline_s if deadline_s is None else deadline_s)
        if not deadline_s > 0:
            raise InputError("deadline_s must be > 0", field="deadline_s")
        blob = pack_arrays(public)
        public_digest = digest(blob)
        rid = self.ledger.last_round_id() + 1
        now_m, now_ns = time.monotonic(), time.time_ns()
        r = Round(rid, mechanism, scoring, n_tasks, list(av_ids), list(sim_ids), dict(public), public_digest,
                  dict(params), now_m + deadline_s, now_ns + int(deadline_s * 1e9), verify=self._verify_mode(public))
        self.ledger.open_round(round_id=rid, mechanism=r.mechanism, scoring=r.scoring, n_tasks=n_tasks,
                               av_ids=r.av_ids, sim_ids=r.sim_ids, public=blob, public_digest=public_digest,
                               params=r.params, deadline_ns=r.deadline_ns)
        self._install(r)
        self.announce(r)
        return self.announce_body(r)

    def _check_participants(self, av_ids: list[str], sim_ids: list[str], n_tasks: int) -> None:
        allow = self.allow.by_id
        for a in av_ids:
            if a not in allow or allow[a].role != P.ROLE_AV:
                raise InputError(f"AV {a!r} is not an 'av' on the allow-list", field="av_ids")
        for j, k in enumerate(sim_ids):
            role = allow[k].role if k in allow else None
            if role is None or role not in (P.ROLE_SIM, P.ROLE_DRIVING) or (role == P.ROLE_DRIVING) != (j == 0):
                raise InputError(f"simulator {k!r} (index {j}) must be on the allow-list; index 0 is the "
                                 "'driving' simulator, the others 'sim'", field="sim_ids")
        if len(set(av_ids)) != len(av_ids) or len(set(sim_ids)) != len(sim_ids) or len(sim_ids) < 3:
            raise InputError("av_ids and sim_ids must be distinct; at least 3 simulators (K >= 2)", field="sim_ids")
        if not 1 <= n_tasks <= P.MAX_TASKS:
            raise InputError(f"n_tasks must be in 1..{P.MAX_TASKS}", field="n_tasks")

    def _verify_mode(self, public: dict) -> str:
        """spec when the public data carry the RSU's task spec, else upload if required, else none."""
        if "s_dt" in public:
            return P.VERIFY_SPEC
        return P.VERIFY_UPLOAD if self.verify_uploads else P.VERIFY_NONE

    def _install(self, r: Round) -> None:
        self.live[r.round_id] = r

    def _finish(self, r: Round) -> None:
        """Memory stays bounded: a published or void round leaves ``live`` at once (its bids and
        arrays are freed) and only its result is kept, for the last KEEP_FINISHED rounds."""
        self.live.pop(r.round_id, None)
        self.finished[r.round_id] = FinishedRound(r.round_id, r.state, r.n_bids, r.result_body)
        while len(self.finished) > KEEP_FINISHED:
            self.finished.popitem(last=False)

    def announce_body(self, r: Round) -> dict:
        return {"round_id": r.round_id, "mechanism": r.mechanism, "scoring": r.scoring,
                "deadline_ms": max(0, int((r.deadline_mono - time.monotonic()) * 1000)), "n_tasks": r.n_tasks,
                "av_ids": r.av_ids, "sim_ids": r.sim_ids, "public_digest": r.public_digest, "verify": r.verify}

    def announce(self, r: Round, only: list[bytes] | None = None) -> None:
        """Push the round's announce to ``only`` or to every participant that has spoken."""
        targets = only if only is not None else self.connections.routes(r.eligible)
        self.outbox.push(targets, P.ANNOUNCE, r.round_id, encode_body(self.announce_body(r)))

    # ------------------------------------------------------------------ close, clear, publish
    def close_and_clear(self, r: Round) -> None:
        """Close an open round now (its bids must be committed) and clear and publish it."""
        t_close = time.monotonic()
        r.state = P.CLOSED
        r.closed_at_ns = time.time_ns()
        # CLOSED is committed together with the outcome (one fsync); a crash before that
        # commit leaves the round OPEN past its deadline, which the restart rule closes with
        # exactly the same committed bids.
        self.clear_and_publish(r, t_close, close_info={"n_bids": len(r.bids)})

    def clear_and_publish(self, r: Round, t_close: float, close_info: dict | None = None) -> None:
        # No cyclic-GC pause inside close -> clear -> commit -> publish (a gen-2 pass over a big
        # heap costs milliseconds); collection resumes right after, nothing is skipped.
        gc_was = gc.isenabled()
        gc.disable()
        try:
            self._clear_and_publish(r, t_close, close_info)
        finally:
            if gc_was:
                gc.enable()

    def _clear_and_publish(self, r: Round, t_close: float, close_info: dict | None) -> None:
        bids = {b: (x.kind, x.body) for b, x in r.bids.items()}
        outcome, schedule = self.clear_fn(round_id=r.round_id, mechanism=r.mechanism, scoring=r.scoring,
                                          public=r.public, params=r.params, av_ids=r.av_ids, sim_ids=r.sim_ids,
                                          n_tasks=r.n_tasks, bids=bids, layout=self.layout,
                                          sim_matrix=r.sim_values)
        t_cleared = time.monotonic()
        sched = schedule.to_dict()
        chain = self.ledger.bids_head(r.round_id)  # covers every bid the outcome was computed from
        if self.publish_first:
            # Results go out before the commit: clearing is a pure function of the committed bids,
            # so a crash before the commit re-derives the same outcome on restart (and publishes it
            # again). CLOSED, the outcome, CLEARED and PUBLISHED then take one transaction.
            r.closed_at_ns = r.closed_at_ns or time.time_ns()
            self.send_result(r, outcome, sched, chain)
            t_sent = time.monotonic()
            self.ledger.save_outcome(r.round_id, outcome, sched, close_info=close_info, closed_at_ns=r.closed_at_ns,
                                     jsonable=True, published_info={"recipients": self._recipients(r)})
        else:
            self.ledger.save_outcome(r.round_id, outcome, sched, close_info=close_info, closed_at_ns=r.closed_at_ns,
                                     jsonable=True)
            r.state = P.CLEARED
            self.send_result(r, outcome, sched, chain)
            t_sent = time.monotonic()
        self.timings[r.round_id] = {"clear_s": t_cleared - t_close, "publish_s": t_sent - t_close,
                                    "committed_s": time.monotonic() - t_close, "n_bids": len(r.bids)}
        if len(self.timings) > KEEP_TIMINGS:
            del self.timings[min(self.timings)]
        self.mark_published(r, recorded=self.publish_first)

    def send_result(self, r: Round, outcome: dict, sched: dict, chain: str) -> None:
        """``outcome`` holds JSON types (clear_round's promise, or read from the ledger)."""
        body = {"round_id": r.round_id, "state": P.PUBLISHED, "outcome": outcome, "schedule": sched,
                "chain_hash": chain, "closed_at_ns": int(r.closed_at_ns), "n_bids": len(r.bids),
                "bidders": sorted(r.bids)}
        r.result_body = encode_body(body)
        self.outbox.push(self.connections.routes(r.eligible), P.RESULT, r.round_id, r.result_body)

    def _recipients(self, r: Round) -> int:
        return sum(b in self.connections.route_of for b in r.eligible)

    def mark_published(self, r: Round, *, recorded: bool = False) -> None:
        """The round's results are out: PUBLISHED (written now unless ``recorded`` already)."""
        r.state = P.PUBLISHED
        if not recorded:
            self.ledger.set_state(r.round_id, P.PUBLISHED, {"recipients": self._recipients(r)})
        self.counters["published"] += 1
        self.on_published(r)
        for fut in r.waiters:
            if not fut.done():
                fut.set_result(self.published_view(r))
        r.waiters.clear()
        self._finish(r)
        if self.checkpoint_due is None:  # the auctioneer checkpoints the WAL when it is idle
            self.checkpoint_due = time.monotonic()

    def published_view(self, r: Round | FinishedRound) -> dict:
        """The round's result body as a dict, plus the server's timings (``times``)."""
        body = msgpack.unpackb(r.result_body, raw=False)
        body["times"] = self.timings.get(r.round_id, {})
        return body

    def void(self, round_id: int, reason: str) -> dict:
        r = self.live.get(round_id)
        if r is None or r.state != P.OPEN:
            raise InputError(f"round {round_id} is not open", field="round_id")
        r.state = P.VOID
        self.ledger.set_state(round_id, P.VOID, {"reason": reason})
        self.fail_waiters(r, RunError(f"round {round_id} was voided ({reason})"))
        self._finish(r)
        return {"round_id": round_id, "state": P.VOID}

    @staticmethod
    def fail_waiters(r: Round, exc: BaseException) -> None:
        for fut in r.waiters:
            if not fut.done():
                fut.set_exception(exc)
        r.waiters.clear()

    # ------------------------------------------------------------------ restart rule
    def recover(self) -> None:
        """Apply the restart rule to every unfinished round in the ledger: an OPEN round whose
        wall-clock deadline has not passed is resumed, one past it is closed with the bids the
        ledger holds and cleared; CLOSED rounds are cleared, CLEARED ones published."""
        from carla_mr.market.clearing import decode_bid_body

        now_m, now_ns = time.monotonic(), time.time_ns()
        for row in self.ledger.rounds((P.OPEN, P.CLOSED, P.CLEARED)):
            public = unpack_arrays(row.public)
            r = Round(row.round_id, row.mechanism, row.scoring, row.n_tasks, row.av_ids, row.sim_ids,
                      public, row.public_digest, row.params,
                      now_m + max(0.0, (row.deadline_ns - now_ns) / 1e9), row.deadline_ns, state=row.state,
                      closed_at_ns=row.closed_at_ns or 0, verify=self._verify_mode(public))
            for b in self.ledger.bids(row.round_id):
                r.bids[b.bidder_id] = Bid(b.bid_id, b.kind, decode_bid_body(b.kind, b.body), b.body, b.receipt)
                r.add_sim_values(b.bidder_id, r.bids[b.bidder_id].body)
            self._install(r)
            if row.state == P.OPEN:
                if row.deadline_ns > now_ns:
                    self.ledger.set_state(r.round_id, P.OPEN, {"resumed": True, "n_bids": len(r.bids)},
                                          kind="round_resumed")
                    self.log(f"round {r.round_id}: resumed with {len(r.bids)} bids")
                else:
                    self.log(f"round {r.round_id}: deadline passed while down; closing with {len(r.bids)} bids")
                    self.close_and_clear(r)
            elif row.state == P.CLOSED:
                self.clear_and_publish(r, time.monotonic())
            else:
                out = self.ledger.outcome(r.round_id)
                assert out is not None
                self.send_result(r, out[0], out[1], self.ledger.bids_head(r.round_id))
                self.mark_published(r)

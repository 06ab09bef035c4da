"""The auctioneer's message handling: one handler per client message type (a table).

:meth:`MessageHandlers.handle` decodes and checks a ROUTER message ``[identity, header, body]``,
finds who sent it (the CURVE key's bidder id, or the id a plain-mode connection claimed) and
calls the handler registered for its type in :attr:`MessageHandlers.table`. Every malformed or
refused message gets an ``error`` reply; nothing here blocks or raises on bad input.
"""

from __future__ import annotations

import time
from typing import Callable

import msgpack
import zmq

from carla_mr.market import protocol as P
from carla_mr.market.bid_batch import BidBatch, ack_body
from carla_mr.market.codec import ProtocolError, canonical_bytes, decode_body, decode_header
from carla_mr.market.keys import AllowList
from carla_mr.market.ledger import Ledger
from carla_mr.market.outbox import Connections, Outbox
from carla_mr.market.round_book import RoundBook
from carla_mr.market.rounds import Bid, Round, bid_misfit, task_problem

Handler = Callable[[bytes, dict, dict, str], None]


class MessageHandlers:
    """Client messages -> replies, bids -> the group-commit batch.

    ``table`` maps a message type to ``handler(identity, header, body, bidder)``; hello is
    handled before the bidder is known (plain mode binds the id there).
    """

    def __init__(self, *, allow: AllowList, curve: bool, ledger: Ledger, book: RoundBook, batch: BidBatch,
                 outbox: Outbox, connections: Connections, counters: dict[str, int]):
        self.allow = allow
        self.curve = curve
        self.ledger = ledger
        self.book = book
        self.batch = batch
        self.outbox = outbox
        self.connections = connections
        self.counters = counters
        self.table: dict[str, Handler] = {P.STATUS: self.on_status, P.BID_AV: self.on_bid, P.BID_SIM: self.on_bid,
                                          P.UPLOAD: self.on_upload}

    # ------------------------------------------------------------------ entry
    def handle(self, frames) -> None:
        """One ROUTER message (a list of zmq.Frame)."""
        identity = frames[0].bytes
        if len(frames) != 3:
            self.outbox.error(identity, P.E_BAD_FRAME, f"expected [header, body], got {len(frames) - 1} frame(s)",
                              None)
            return
        try:
            header = decode_header(frames[1].bytes)
        except ProtocolError as exc:
            self.outbox.error(identity, exc.code, exc.message, exc.echo)  # echoes what was readable
            return
        try:
            body = decode_body(header["type"], frames[2].bytes)
        except ProtocolError as exc:
            self.outbox.error(identity, exc.code, exc.message, header)
            return
        bidder = self._bidder_of(identity, frames[1])
        if header["type"] == P.HELLO:
            self.on_hello(identity, header, body, bidder)
            return
        if bidder is None:
            self.outbox.error(identity, P.E_NOT_HELLO, "say hello with a 'claim' on the allow-list first (plain mode)",
                              header)
            return
        self.connections.saw(bidder, identity)
        self.table[header["type"]](identity, header, body, bidder)

    def _bidder_of(self, identity: bytes, frame) -> str | None:
        if self.curve:
            try:
                uid = frame.get("User-Id")
            except zmq.ZMQError:
                return None
            return uid if uid in self.allow.by_id else None
        return self.connections.claimed_by.get(identity)

    # ------------------------------------------------------------------ hello
    def on_hello(self, identity: bytes, header: dict, body: dict, bidder: str | None) -> None:
        if self.curve:
            if bidder is None:  # cannot happen once ZAP admitted the key; defensive
                self.outbox.error(identity, P.E_UNKNOWN_BIDDER, "this key is not on the allow-list", header)
                return
            if "claim" in body and body["claim"] != bidder:
                self.outbox.error(identity, P.E_UNKNOWN_BIDDER,
                                  f"claim {body['claim']!r} does not match the authenticated bidder {bidder!r}", header)
                return
        else:
            claim = body.get("claim")
            if claim is None or claim not in self.allow.by_id:
                self.outbox.error(identity, P.E_UNKNOWN_BIDDER,
                                  "plain mode: hello needs 'claim': an id on the allow-list", header)
                return
            bidder = claim
            self.connections.claimed_by[identity] = claim
        self.connections.saw(bidder, identity)
        entry = self.allow.by_id[bidder]
        open_rounds = self.book.open_rounds_of(bidder)
        self.outbox.reply(identity, P.WELCOME, {
            "bidder_id": bidder, "role": entry.role, "round_id": open_rounds[-1].round_id if open_rounds else 0,
            "server_time_ns": time.time_ns(), "max_body_bytes": P.MAX_BODY_BYTES}, header)
        for r in open_rounds:
            self.book.announce(r, only=[identity])

    # ------------------------------------------------------------------ status
    def on_status(self, identity: bytes, header: dict, body: dict, bidder: str) -> None:
        rid = header["round_id"]
        r = self.book.get_any(rid) if rid else self.book.latest()
        if r is None and rid:
            self._status_from_ledger(identity, header, rid)
            return
        if r is None:
            self.outbox.reply(identity, P.STATUS_REPLY, {"round_id": 0, "state": "NONE", "deadline_ms": 0, "n_bids": 0},
                              header)
            return
        reply = {"round_id": r.round_id, "state": r.state,
                 "deadline_ms": max(0, int((r.deadline_mono - time.monotonic()) * 1000)) if r.state == P.OPEN else 0,
                 "n_bids": -1 if r.state == P.OPEN else r.n_bids}  # sealed: no count while open
        if r.state == P.PUBLISHED and r.result_body is not None:
            reply["result"] = msgpack.unpackb(r.result_body, raw=False)
        self.outbox.reply(identity, P.STATUS_REPLY, reply, header)

    def _status_from_ledger(self, identity: bytes, header: dict, rid: int) -> None:
        row = self.ledger.round(rid)
        if row is None:
            self.outbox.error(identity, P.E_NO_ROUND, f"round {rid} is unknown", header)
            return
        reply = {"round_id": rid, "state": row.state, "deadline_ms": 0, "n_bids": len(self.ledger.bids(rid))}
        out = self.ledger.outcome(rid)
        if out is not None and row.state == P.PUBLISHED:
            reply["result"] = {"round_id": rid, "state": row.state, "outcome": out[0], "schedule": out[1]}
        self.outbox.reply(identity, P.STATUS_REPLY, reply, header)

    # ------------------------------------------------------------------ bids
    def on_bid(self, identity: bytes, header: dict, body: dict, bidder: str) -> None:
        """Checks in order: known round, role, repeat of an earlier bid, deadline, eligibility,
        fit to the round; an accepted bid joins the group-commit batch (acked after it)."""
        r = self.book.get(header["round_id"])
        if r is None:
            self._bid_to_past_round(identity, header, body, bidder)
            return
        kind = header["type"]
        problem = self._role_problem(bidder, kind, body)
        if problem:
            self.outbox.error(identity, P.E_ROLE, problem, header)
            return
        canon = canonical_bytes(body)
        previous = r.bids.get(bidder) or self.batch.find(r.round_id, bidder)
        if previous is not None:
            self._repeat(identity, header, r, bidder, previous, canon)
            return
        if r.state != P.OPEN or time.monotonic() >= r.deadline_mono:
            self.counters["late"] += 1
            self.outbox.reply(identity, P.LATE, {"state": r.state if r.state != P.OPEN else P.CLOSED,
                                                 "reason": "the round's deadline has passed"}, header)
            return
        if bidder not in r.eligible:
            self.outbox.error(identity, P.E_NOT_ELIGIBLE, f"{bidder} is not a participant of round {r.round_id}",
                              header)
            return
        problem = bid_misfit(kind, body, r)
        if problem:
            self.outbox.error(identity, P.E_BAD_BODY, problem, header)
            return
        problem = task_problem(body, r, bidder) if kind == P.BID_AV else None
        if problem:
            self.outbox.error(identity, P.E_TASK_MISMATCH, problem, header)
            return
        self.batch.add(r, bidder, identity, header, Bid(header["bid_id"], kind, body, canon, ""))

    def _role_problem(self, bidder: str, kind: str, body: dict) -> str | None:
        role = self.allow.by_id[bidder].role
        if (kind == P.BID_AV) != (role == P.ROLE_AV):
            return f"{bidder} has role {role!r}; it cannot send {kind}"
        if role == P.ROLE_DRIVING and "contract" not in body:
            return "the driving simulator accepts the contract: send {'contract': true}"
        if role == P.ROLE_SIM and "values" not in body:
            return "a traffic simulator bids 'values' per AV and task"
        return None

    def _repeat(self, identity: bytes, header: dict, r: Round, bidder: str, previous: Bid, canon: bytes) -> None:
        """A second bid of the bidder in the same round: the same one again is acked again."""
        if previous.bid_id != header["bid_id"]:
            self.outbox.error(identity, P.E_ALREADY_BID, f"{bidder} already bid {previous.bid_id!r} in round "
                                                         f"{r.round_id}; one bid per round (the first is final)", header)
        elif previous.canon != canon:
            self.outbox.error(identity, P.E_BID_ID_REUSE, f"bid_id {header['bid_id']!r} was used for a different bid",
                              header)
        elif previous.receipt:
            self.counters["acks"] += 1
            if not previous.prev_hash:  # recovered from the ledger: fetch the receipt's parts once
                proof = self.ledger.receipt(previous.receipt)
                if proof is not None:
                    previous.prev_hash, previous.at_ns = proof.prev_hash, proof.at_ns
            self.outbox.reply(identity, P.ACK, ack_body(previous, duplicate=True), header)
        else:  # identical re-send of a bid in the current batch: ack it after the commit too
            self.batch.add_resend(r, bidder, identity, header, previous)

    def _bid_to_past_round(self, identity: bytes, header: dict, body: dict, bidder: str) -> None:
        """A bid for a round not in memory: a finished one in the ledger (late, or an identical
        re-send acked again), else unknown."""
        rid = header["round_id"]
        row = self.ledger.round(rid)
        if row is None:
            self.outbox.error(identity, P.E_NO_ROUND, f"round {rid} is unknown", header)
            return
        old = self.ledger.bid(rid, bidder)
        if old is not None and old.bid_id == header["bid_id"]:
            if bytes(old.body) == canonical_bytes(body):
                proof = self.ledger.receipt(old.receipt)
                bid = Bid(old.bid_id, old.kind, body, bytes(old.body), old.receipt,
                          proof.prev_hash if proof else "", proof.at_ns if proof else 0)
                self.outbox.reply(identity, P.ACK, ack_body(bid, duplicate=True), header)
            else:
                self.outbox.error(identity, P.E_BID_ID_REUSE, f"bid_id {header['bid_id']!r} was used for a different "
                                                              "bid", header)
            return
        self.counters["late"] += 1
        self.outbox.reply(identity, P.LATE, {"state": row.state, "reason": "round is over"}, header)

    # ------------------------------------------------------------------ uploads
    def on_upload(self, identity: bytes, header: dict, body: dict, bidder: str) -> None:
        """An AV's task data: the server measures its size (MB = bytes / 1e6) and hashes it; in a
        round with ``verify: "upload"`` the bid's task sizes must equal these measurements."""
        import hashlib

        if self.allow.by_id[bidder].role != P.ROLE_AV:
            self.outbox.error(identity, P.E_ROLE, f"{bidder} is not an AV; only AVs upload tasks", header)
            return
        rid = header["round_id"]
        r = self.book.get(rid)
        if r is None:
            row = self.ledger.round(rid)
            if row is None:
                self.outbox.error(identity, P.E_NO_ROUND, f"round {rid} is unknown", header)
            else:
                self.counters["late"] += 1
                self.outbox.reply(identity, P.LATE, {"state": row.state, "reason": "round is over"}, header)
            return
        if r.state != P.OPEN or time.monotonic() >= r.deadline_mono:
            self.counters["late"] += 1
            self.outbox.reply(identity, P.LATE, {"state": r.state if r.state != P.OPEN else P.CLOSED,
                                                 "reason": "the round's deadline has passed"}, header)
            return
        if bidder not in r.eligible:
            self.outbox.error(identity, P.E_NOT_ELIGIBLE, f"{bidder} is not a participant of round {rid}", header)
            return
        task = body["task"]
        if task >= r.n_tasks:
            self.outbox.error(identity, P.E_BAD_BODY, f"upload.task must be < {r.n_tasks} (the round's n_tasks)",
                              header)
            return
        size = len(body["data"]) / 1e6
        r.uploads.setdefault(bidder, {})[task] = size
        self.outbox.reply(identity, P.UPLOAD_ACK, {"task": task, "size": size,
                                                   "sha256": hashlib.sha256(body["data"]).hexdigest()}, header)

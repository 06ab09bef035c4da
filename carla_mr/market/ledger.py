"""The auction ledger: SQLite (WAL, synchronous=FULL) with a hash-chained event log.

Tables: ``rounds`` (one row per round, its state and deadline), ``publics`` (its public
data as msgpack arrays), ``bids`` (one
row per accepted bid, never updated), ``outcomes`` (the cleared outcome and schedule per
round), and ``events``, an append-only log in which every row carries
``hash = sha256(prev_hash, kind, round_id, at_ns, payload)``. Triggers refuse UPDATE and
DELETE on ``events`` and ``bids``. Every write is one transaction; the auctioneer
acknowledges a bid only after :meth:`Ledger.add_bids` has returned (the commit is durable).

A bid's receipt is the hash of its ``bid`` event: it proves the bid sits in the chain.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from carla_mr.errors import InputError, RunError
from carla_mr.market import protocol as P
from carla_mr.market.codec import canonical_bytes, digest

SCHEMA_VERSION = 2
GENESIS = "0" * 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    round_id INTEGER NOT NULL,
    at_ns INTEGER NOT NULL,
    payload BLOB NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS rounds (
    round_id INTEGER PRIMARY KEY,
    state TEXT NOT NULL,
    mechanism TEXT NOT NULL,
    scoring TEXT NOT NULL,
    n_tasks INTEGER NOT NULL,
    av_ids TEXT NOT NULL,
    sim_ids TEXT NOT NULL,
    public_digest TEXT NOT NULL,
    params TEXT NOT NULL,
    opened_at_ns INTEGER NOT NULL,
    deadline_ns INTEGER NOT NULL,
    closed_at_ns INTEGER
);
CREATE TABLE IF NOT EXISTS publics (
    round_id INTEGER PRIMARY KEY,
    public BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS bids (
    round_id INTEGER NOT NULL,
    bidder_id TEXT NOT NULL,
    bid_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    body BLOB NOT NULL,
    receipt TEXT NOT NULL,
    at_ns INTEGER NOT NULL,
    PRIMARY KEY (round_id, bidder_id)
);
CREATE TABLE IF NOT EXISTS outcomes (
    round_id INTEGER PRIMARY KEY,
    outcome TEXT NOT NULL,
    schedule TEXT NOT NULL,
    digest TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_round ON events (round_id, seq);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TRIGGER IF NOT EXISTS bids_no_update BEFORE UPDATE ON bids
    BEGIN SELECT RAISE(ABORT, 'bids are append-only'); END;
CREATE TRIGGER IF NOT EXISTS bids_no_delete BEFORE DELETE ON bids
    BEGIN SELECT RAISE(ABORT, 'bids are append-only'); END;
"""


@dataclass(frozen=True)
class RoundRow:
    round_id: int
    state: str
    mechanism: str
    scoring: str
    n_tasks: int
    av_ids: list[str]
    sim_ids: list[str]
    public: bytes
    public_digest: str
    params: dict
    opened_at_ns: int
    deadline_ns: int
    closed_at_ns: int | None


class Receipt(NamedTuple):
    """A bid's receipt and what a bidder needs to recompute it: ``hash`` = sha256 over the
    length-prefixed parts (prev_hash, "bid", round id, at_ns, payload); see docs/protocol.md."""

    hash: str
    prev_hash: str
    at_ns: int


@dataclass(frozen=True)
class BidRow:
    round_id: int
    bidder_id: str
    bid_id: str
    kind: str
    body: bytes  # canonical msgpack of the validated body
    receipt: str
    at_ns: int


def outcome_text(outcome: dict, *, jsonable: bool = False) -> str:
    """Canonical JSON of an outcome (sorted keys, repr floats): equal outcomes give equal text.

    ``jsonable=True``: ``outcome`` holds JSON types already (``clearing.clear_round``'s
    outcomes do), so ``carla_mr.io.to_jsonable`` is skipped; the text is the same either way."""
    if not jsonable:
        from carla_mr.io import to_jsonable

        outcome = to_jsonable(outcome)
    return json.dumps(outcome, sort_keys=True, separators=(",", ":"), allow_nan=False)


class Ledger:
    """One SQLite file. Not thread-safe: use it from the thread that opened it."""

    def __init__(self, path: str | os.PathLike, *, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise InputError(f"ledger {self.path} does not exist", field="LEDGER")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = None
        try:
            self.db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            # checkpoints run from checkpoint() at quiet moments (after a round is published),
            # not inside a commit on the close -> publish path
            self.db.execute("PRAGMA wal_autocheckpoint=0")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(_SCHEMA)
            row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise InputError(f"ledger schema {row[0]} is not {SCHEMA_VERSION}", field="LEDGER")
        except BaseException as exc:  # never leave the connection open behind an error
            if self.db is not None:
                self.db.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise InputError(f"{self.path} is not a usable SQLite ledger: {exc}", field="LEDGER") from exc
            raise
        r = self.db.execute("SELECT hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        self._head = r[0] if r else GENESIS

    # ------------------------------------------------------------------ internals
    def close(self) -> None:
        if self.db is not None:
            try:
                self.checkpoint()
            except sqlite3.Error:  # pragma: no cover - e.g. a read-only file
                pass
            self.db.close()
            self.db = None  # type: ignore[assignment]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def head(self) -> str:
        return self._head

    def _event(self, kind: str, round_id: int, payload: Any, at_ns: int | None = None) -> str:
        at_ns = time.time_ns() if at_ns is None else at_ns
        blob = payload if isinstance(payload, bytes) else canonical_bytes(payload)
        h = digest(self._head.encode(), kind.encode(), str(round_id).encode(), str(at_ns).encode(), blob)
        self.db.execute("INSERT INTO events (kind, round_id, at_ns, payload, prev_hash, hash) VALUES (?,?,?,?,?,?)",
                        (kind, round_id, at_ns, blob, self._head, h))
        self._head = h
        return h

    def _tx(self):
        return _Tx(self)

    # ------------------------------------------------------------------ writes
    def open_round(self, *, round_id: int, mechanism: str, scoring: str, n_tasks: int, av_ids: list[str],
                   sim_ids: list[str], public: bytes, public_digest: str, params: dict, deadline_ns: int) -> str:
        now = time.time_ns()
        with self._tx():
            self.db.execute("INSERT INTO rounds VALUES (?,?,?,?,?,?,?,?,?,?,?,NULL)",
                            (round_id, P.OPEN, mechanism, scoring, n_tasks, json.dumps(av_ids),
                             json.dumps(sim_ids), public_digest, json.dumps(params, sort_keys=True),
                             now, deadline_ns))
            # the public arrays live in their own table: state updates never rewrite them
            self.db.execute("INSERT INTO publics VALUES (?,?)", (round_id, public))
            return self._event("round_open", round_id, {
                "mechanism": mechanism, "scoring": scoring, "n_tasks": n_tasks, "av_ids": av_ids,
                "sim_ids": sim_ids, "public_digest": public_digest, "params": json.dumps(params, sort_keys=True),
                "deadline_ns": deadline_ns}, now)

    def add_bids(self, bids: list[tuple[int, str, str, str, bytes]]) -> list[Receipt]:
        """Commit ``(round_id, bidder_id, bid_id, kind, canonical_body)`` rows in ONE transaction.

        Returns the receipts in order. Only after this returns may bids be acked.
        """
        receipts = []
        with self._tx():
            for round_id, bidder_id, bid_id, kind, body in bids:
                now = time.time_ns()
                prev = self._head
                h = self._event("bid", round_id, bid_payload(bidder_id, bid_id, kind, body), now)
                self.db.execute("INSERT INTO bids VALUES (?,?,?,?,?,?,?)",
                                (round_id, bidder_id, bid_id, kind, body, h, now))
                receipts.append(Receipt(h, prev, now))
        return receipts

    def receipt(self, event_hash: str) -> Receipt | None:
        """The receipt of the bid event ``event_hash`` with its prev_hash and time."""
        r = self.db.execute("SELECT hash, prev_hash, at_ns FROM events WHERE hash=? AND kind='bid'",
                            (event_hash,)).fetchone()
        return Receipt(r[0], r[1], int(r[2])) if r else None

    def set_state(self, round_id: int, state: str, info: dict | None = None, *, kind: str | None = None) -> str:
        now = time.time_ns()
        with self._tx():
            if state == P.CLOSED:
                self.db.execute("UPDATE rounds SET state=?, closed_at_ns=? WHERE round_id=?", (state, now, round_id))
            else:
                self.db.execute("UPDATE rounds SET state=? WHERE round_id=?", (state, round_id))
            return self._event(kind or "round_" + state.lower(), round_id, {"state": state, **(info or {})}, now)

    def save_outcome(self, round_id: int, outcome: dict, schedule: dict, *, close_info: dict | None = None,
                     closed_at_ns: int | None = None, jsonable: bool = False,
                     published_info: dict | None = None) -> str:
        """Store the outcome and schedule and move the round to CLEARED, in one transaction.

        With ``close_info`` the round's CLOSED transition is written in the same transaction
        (one fsync on the close -> publish path instead of two); with ``published_info`` (the
        results were sent already) the PUBLISHED transition too. ``jsonable``: see outcome_text.
        """
        text = outcome_text(outcome, jsonable=jsonable)
        sched = json.dumps(schedule, sort_keys=True, separators=(",", ":"))
        d = digest(text.encode(), sched.encode())
        with self._tx():
            if close_info is not None:
                now = closed_at_ns or time.time_ns()
                self.db.execute("UPDATE rounds SET closed_at_ns=? WHERE round_id=?", (now, round_id))
                self._event("round_closed", round_id, {"state": P.CLOSED, **close_info}, now)
            self.db.execute("INSERT INTO outcomes VALUES (?,?,?,?)", (round_id, text, sched, d))
            self.db.execute("UPDATE rounds SET state=? WHERE round_id=?", (P.CLEARED, round_id))
            h = self._event("round_cleared", round_id, {"state": P.CLEARED, "outcome_digest": d})
            if published_info is not None:
                self.db.execute("UPDATE rounds SET state=? WHERE round_id=?", (P.PUBLISHED, round_id))
                h = self._event("round_published", round_id, {"state": P.PUBLISHED, **published_info})
            return h

    def checkpoint(self) -> None:
        """Copy the WAL into the database file (PASSIVE: never blocks readers or waits)."""
        self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    # ------------------------------------------------------------------ reads
    def round(self, round_id: int) -> RoundRow | None:
        r = self.db.execute(_ROUND_SELECT + " WHERE r.round_id=?", (round_id,)).fetchone()
        return _round_row(r) if r else None

    def rounds(self, states: tuple[str, ...] | None = None) -> list[RoundRow]:
        rows = self.db.execute(_ROUND_SELECT + " ORDER BY r.round_id").fetchall()
        out = [_round_row(r) for r in rows]
        return [r for r in out if states is None or r.state in states]

    def last_round_id(self) -> int:
        r = self.db.execute("SELECT MAX(round_id) FROM rounds").fetchone()
        return int(r[0]) if r and r[0] is not None else 0

    def bids(self, round_id: int | None = None) -> list[BidRow]:
        if round_id is None:
            rows = self.db.execute("SELECT * FROM bids ORDER BY round_id, at_ns, bidder_id").fetchall()
        else:
            rows = self.db.execute("SELECT * FROM bids WHERE round_id=? ORDER BY at_ns, bidder_id",
                                   (round_id,)).fetchall()
        return [BidRow(*r) for r in rows]

    def bid(self, round_id: int, bidder_id: str) -> BidRow | None:
        r = self.db.execute("SELECT * FROM bids WHERE round_id=? AND bidder_id=?", (round_id, bidder_id)).fetchone()
        return BidRow(*r) if r else None

    def bids_head(self, round_id: int) -> str:
        """Hash of the round's last bid event (or its open event): it covers every bid of the round."""
        r = self.db.execute("SELECT hash FROM events WHERE round_id=? AND kind IN ('round_open', 'bid') "
                            "ORDER BY seq DESC LIMIT 1", (round_id,)).fetchone()
        return r[0] if r else GENESIS

    def outcome(self, round_id: int) -> tuple[dict, dict, str] | None:
        r = self.db.execute("SELECT outcome, schedule, digest FROM outcomes WHERE round_id=?", (round_id,)).fetchone()
        return (json.loads(r[0]), json.loads(r[1]), r[2]) if r else None

    def outcome_text(self, round_id: int) -> str | None:
        r = self.db.execute("SELECT outcome FROM outcomes WHERE round_id=?", (round_id,)).fetchone()
        return r[0] if r else None

    def events(self) -> Iterator[tuple]:
        yield from self.db.execute("SELECT seq, kind, round_id, at_ns, payload, prev_hash, hash FROM events ORDER BY seq")

    def count(self, table: str) -> int:
        assert table in ("events", "rounds", "bids", "outcomes")
        return int(self.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def verify_chain(self) -> dict:
        """Recompute every event hash. Returns {"ok", "events", "head", "first_bad_seq", "problems"}."""
        prev = GENESIS
        n = 0
        problems: list[str] = []
        first_bad = None
        bid_events: dict[tuple[int, str], str] = {}
        for seq, kind, rid, at_ns, payload, prev_hash, h in self.events():
            n += 1
            expect = digest(prev.encode(), kind.encode(), str(rid).encode(), str(at_ns).encode(), bytes(payload))
            if prev_hash != prev or h != expect:
                problems.append(f"event {seq} ({kind}, round {rid}): hash chain broken")
                first_bad = first_bad if first_bad is not None else seq
            if kind == "bid":
                import msgpack

                p = msgpack.unpackb(bytes(payload), raw=False)
                bid_events[(rid, p["bidder_id"])] = (h, p["body_sha256"], p["bid_id"])
            prev = h
        for b in self.bids():
            if bid_events.get((b.round_id, b.bidder_id)) != (b.receipt, hashlib.sha256(bytes(b.body)).hexdigest(),
                                                             b.bid_id):
                problems.append(f"bid of {b.bidder_id} in round {b.round_id} does not match its chained event")
        if len(bid_events) != self.count("bids"):
            problems.append(f"{len(bid_events)} bid events but {self.count('bids')} bid rows")
        return {"ok": not problems, "events": n, "head": prev, "first_bad_seq": first_bad, "problems": problems}


def bid_payload(bidder_id: str, bid_id: str, kind: str, body: bytes) -> dict:
    """The payload of a bid event, in this key order (its canonical msgpack is hashed)."""
    return {"bidder_id": bidder_id, "bid_id": bid_id, "kind": kind, "body_sha256": hashlib.sha256(body).hexdigest()}


class _Tx:
    def __init__(self, ledger: Ledger):
        self.db = ledger.db
        self.ledger = ledger

    def __enter__(self):
        self._head = self.ledger._head
        self.db.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, et, ev, tb):
        if et is None:
            try:
                self.db.execute("COMMIT")
            except sqlite3.Error as exc:
                self.db.execute("ROLLBACK")
                self.ledger._head = self._head
                raise RunError(f"ledger commit failed: {exc}") from exc
        else:
            self.db.execute("ROLLBACK")
            self.ledger._head = self._head
        return False


_ROUND_SELECT = ("SELECT r.round_id, r.state, r.mechanism, r.scoring, r.n_tasks, r.av_ids, r.sim_ids, p.public, "
                 "r.public_digest, r.params, r.opened_at_ns, r.deadline_ns, r.closed_at_ns "
                 "FROM rounds r JOIN publics p ON p.round_id = r.round_id")


def _round_row(r) -> RoundRow:
    return RoundRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), json.loads(r[6]), bytes(r[7]), r[8],
                    json.loads(r[9]), r[10], r[11], r[12])


def replay(path: str | os.PathLike, clear_fn=None, layout: str | None = None) -> dict:
    """Verify the hash chain and recompute every stored outcome from the stored bids.

    Returns {"ok", "rounds", "recomputed", "mismatches": [round ids], "chain": verify_chain(),
    "problems": [...]}; ``ok`` is False on any chain break or outcome mismatch.
    """
    import msgpack

    from carla_mr.market.codec import unpack_arrays

    if clear_fn is None:
        from carla_mr.market.clearing import clear_round as clear_fn
    from carla_mr.market.clearing import decode_bid_body

    with Ledger(path, create=False) as led:
        chain = led.verify_chain()
        problems = list(chain["problems"])
        mismatches: list[int] = []
        opens = {}
        for seq, kind, rid, at_ns, payload, prev_hash, h in led.events():
            if kind == "round_open":
                opens[rid] = msgpack.unpackb(bytes(payload), raw=False)
        recomputed = 0
        rounds = led.rounds()
        for row in rounds:
            if digest(row.public) != row.public_digest or opens.get(row.round_id, {}).get("public_digest") != row.public_digest:
                problems.append(f"round {row.round_id}: public data does not match its digest")
                mismatches.append(row.round_id)
                continue
            stored = led.outcome(row.round_id)
            if stored is None:
                if row.state in (P.CLEARED, P.PUBLISHED):
                    problems.append(f"round {row.round_id} is {row.state} but has no stored outcome")
                    mismatches.append(row.round_id)
                continue
            try:
                bids = {b.bidder_id: (b.kind, decode_bid_body(b.kind, b.body)) for b in led.bids(row.round_id)}
            except Exception as exc:  # noqa: BLE001 - a corrupt stored bid is a finding, not a crash
                problems.append(f"round {row.round_id}: a stored bid does not decode: {exc}")
                mismatches.append(row.round_id)
                continue
            out, sched = clear_fn(round_id=row.round_id, mechanism=row.mechanism, scoring=row.scoring,
                                  public=unpack_arrays(row.public), params=row.params, av_ids=row.av_ids,
                                  sim_ids=row.sim_ids, n_tasks=row.n_tasks, bids=bids,
                                  layout=layout or stored[1].get("layout", "serial"))
            recomputed += 1
            same_out = outcome_text(out) == led.outcome_text(row.round_id)
            same_sched = json.dumps(sched.to_dict(), sort_keys=True, separators=(",", ":")) == \
                json.dumps(stored[1], sort_keys=True, separators=(",", ":"))
            if not (same_out and same_sched):
                mismatches.append(row.round_id)
                problems.append(f"round {row.round_id}: recomputed {'outcome' if not same_out else 'schedule'} "
                                "differs from the stored one")
        return {"ok": not problems, "ledger": str(path), "rounds": len(rounds), "recomputed": recomputed,
                "bids": led.count("bids"), "events": chain["events"], "head": chain["head"],
                "mismatches": mismatches, "problems": problems}

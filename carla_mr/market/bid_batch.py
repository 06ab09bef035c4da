"""Group commit: bids received together are committed to the ledger in one transaction, and
acknowledged only after that commit returned (an acked bid survives a crash)."""

from __future__ import annotations

from dataclasses import dataclass

from carla_mr.market import protocol as P
from carla_mr.market.ledger import Ledger
from carla_mr.market.outbox import Outbox
from carla_mr.market.rounds import Bid, Round


@dataclass
class _Entry:
    round: Round
    bidder: str
    identity: bytes
    request: dict
    new: bool  # False: an identical re-send of a bid already in this batch
    bid: Bid


class BidBatch:
    """The bids waiting for the next commit (at the end of a socket drain, or before a close)."""

    def __init__(self, ledger: Ledger, outbox: Outbox, counters: dict[str, int]):
        self.ledger = ledger
        self.outbox = outbox
        self.counters = counters
        self._entries: list[_Entry] = []
        self._by_key: dict[tuple[int, str], Bid] = {}

    def __bool__(self) -> bool:
        return bool(self._entries)

    def find(self, round_id: int, bidder: str) -> Bid | None:
        """The bidder's bid for that round if it waits in this batch."""
        return self._by_key.get((round_id, bidder))

    def add(self, r: Round, bidder: str, identity: bytes, request: dict, bid: Bid) -> None:
        self._entries.append(_Entry(r, bidder, identity, request, True, bid))
        self._by_key[(r.round_id, bidder)] = bid

    def add_resend(self, r: Round, bidder: str, identity: bytes, request: dict, bid: Bid) -> None:
        """An identical re-send of a bid still in this batch: acked after the same commit."""
        self._entries.append(_Entry(r, bidder, identity, request, False, bid))

    def commit(self) -> None:
        """Commit the new bids in one transaction, record them in their rounds, then ack all."""
        entries, self._entries = self._entries, []
        self._by_key = {}
        new = [e for e in entries if e.new]
        receipts = self.ledger.add_bids([(e.round.round_id, e.bidder, e.bid.bid_id, e.bid.kind, e.bid.canon)
                                         for e in new])
        self.counters["commits"] += 1
        for e, receipt in zip(new, receipts):
            e.bid.receipt, e.bid.prev_hash, e.bid.at_ns = receipt
            e.round.bids[e.bidder] = e.bid
            e.round.add_sim_values(e.bidder, e.bid.body)
        for e in entries:  # acks only now, after the commit
            self.counters["acks"] += 1
            self.outbox.reply(e.identity, P.ACK, ack_body(e.bid, duplicate=not e.new), e.request)


def ack_body(bid: Bid, *, duplicate: bool) -> dict:
    """An ack: the receipt with the parts a bidder needs to recompute it (docs/protocol.md)."""
    return {"receipt": bid.receipt, "duplicate": duplicate, "prev_hash": bid.prev_hash, "at_ns": bid.at_ns}

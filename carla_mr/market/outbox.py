"""What the auctioneer sends, and to whom: the ROUTER's replies and pushes, and the table of
which connection (ROUTER routing identity) speaks for which bidder."""

from __future__ import annotations

from typing import Callable, Iterable

import zmq

from carla_mr.market import protocol as P
from carla_mr.market.codec import encode_body, encode_header


class Connections:
    """Bidder id <-> routing identity.

    ``route_of[bidder]`` is the identity the bidder last spoke from (pushes go there);
    ``claimed_by[identity]`` the bidder id a plain-mode connection claimed in its hello.
    """

    def __init__(self) -> None:
        self.route_of: dict[str, bytes] = {}
        self.claimed_by: dict[bytes, str] = {}

    def saw(self, bidder: str, identity: bytes) -> None:
        self.route_of[bidder] = identity

    def routes(self, bidders: Iterable[str]) -> list[bytes]:
        """The identities of the bidders that have spoken (others cannot be reached)."""
        return [self.route_of[b] for b in bidders if b in self.route_of]


class Outbox:
    """Sends on the ROUTER without ever blocking (a slow or gone peer loses the message)."""

    def __init__(self, sock: zmq.Socket, counters: dict[str, int], log: Callable[[str], None]):
        self.sock = sock
        self.counters = counters
        self.log = log

    def send(self, identity: bytes, header: bytes, body: bytes) -> None:
        try:
            self.sock.send_multipart([identity, header, body], zmq.NOBLOCK, copy=True)
        except zmq.ZMQError:
            pass  # a slow or gone bidder never blocks the auctioneer

    def reply(self, identity: bytes, type_: str, body: dict, request: dict | None) -> None:
        """A reply echoes the request header's round_id, bid_id and seq (0/"" if unreadable)."""
        req = request or {}
        self.send(identity, encode_header(type_, round_id=req.get("round_id", 0), bid_id=req.get("bid_id", ""),
                                          seq=req.get("seq", 0)), encode_body(body))

    def error(self, identity: bytes, code: str, message: str, request: dict | None) -> None:
        self.counters["errors"] += 1
        self.reply(identity, P.ERROR, {"code": code, "message": message[:500]}, request)

    def push(self, identities: Iterable[bytes], type_: str, round_id: int, body: bytes) -> None:
        """The same encoded body to many connections (seq 0: a push, not a reply)."""
        header = encode_header(type_, round_id=round_id)
        for identity in identities:
            self.send(identity, header, body)

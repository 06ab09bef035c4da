"""Bidder clients: a DEALER socket speaking docs/protocol.md, with Lazy Pirate retries.

- :class:`AVBidder` bids a price (micro-units) and its DT tasks (size MB, cycles Gcycles/MB,
  deadline s) per round.
- :class:`SimulatorBidder` bids values per unit time (micro-units) per AV and task (traffic
  simulators), or confirms the contract (the driving simulator).

Every request waits ``request_timeout_s`` for the reply that echoes its ``seq``; on timeout
the socket is closed, a new one connects, says hello again and the request is re-sent, at
most ``retries`` times (Lazy Pirate). Bids are idempotent by ``bid_id``, so a re-sent bid
gets the same receipt. ``connect()`` fails after ``handshake_timeout_s`` without a welcome
(server down, wrong server key, or our key not on the allow-list).

Pushed messages (announce, result) are kept in ``announces`` / ``results`` by round id.
"""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass
from typing import Any

import zmq

from carla_mr.errors import RunError
from carla_mr.market import protocol as P
from carla_mr.market.codec import ProtocolError, decode_server, encode
from carla_mr.market.endpoints import is_ipv6_endpoint
from carla_mr.market.keys import Keypair


@dataclass
class Reply:
    type: str
    header: dict
    body: dict

    @property
    def ok(self) -> bool:
        return self.type == P.ACK

    @property
    def receipt(self) -> str | None:
        return self.body.get("receipt") if self.type == P.ACK else None


def shared_context() -> zmq.Context:
    ctx = zmq.Context.instance()
    if ctx.get(zmq.MAX_SOCKETS) < 8192:
        try:
            ctx.set(zmq.MAX_SOCKETS, 8192)
        except zmq.ZMQError:  # pragma: no cover - sockets already exist
            pass
    return ctx


class BidderClient:
    """One bidder's connection to the auctioneer."""

    role = ""

    def __init__(self, endpoint: str, bidder_id: str, *, keypair: Keypair | None = None,
                 server_public: bytes | None = None, curve: bool = True, handshake_timeout_s: float = 5.0,
                 request_timeout_s: float = 2.0, retries: int = 3, ctx: zmq.Context | None = None,
                 agent: str = "carla_mr"):
        if curve and (keypair is None or keypair.secret is None or server_public is None):
            raise RunError("CURVE needs this bidder's keypair and the server's public key")
        self.endpoint = endpoint
        self.bidder_id = bidder_id
        self.keypair = keypair
        self.server_public = server_public
        self.curve = curve
        self.handshake_timeout_s = handshake_timeout_s
        self.request_timeout_s = request_timeout_s
        self.retries = retries
        self.ctx = ctx or shared_context()
        self.agent = agent
        self._seq = itertools.count(1)
        self.sock: zmq.Socket | None = None
        self.announces: dict[int, dict] = {}
        self.results: dict[int, dict] = {}
        self.replies: dict[int, Reply] = {}
        self.welcome: dict | None = None
        self.reconnects = 0

    # ------------------------------------------------------------------ socket
    def _open(self) -> None:
        s = self.ctx.socket(zmq.DEALER)
        s.linger = 0
        s.setsockopt(zmq.HANDSHAKE_IVL, int(self.handshake_timeout_s * 1000))
        s.ipv6 = is_ipv6_endpoint(self.endpoint)
        if self.curve:
            s.curve_secretkey = self.keypair.secret
            s.curve_publickey = self.keypair.public
            s.curve_serverkey = self.server_public
        s.connect(self.endpoint)
        self.sock = s

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None

    def __enter__(self):
        if self.sock is None:
            self.connect()
        return self

    def __exit__(self, *exc):
        self.close()

    def connect(self) -> dict:
        """Open the socket and say hello; returns the welcome body.

        On return ``announces`` also holds the announce of the open round the welcome names
        (the server sends it right after the welcome), unless the handshake deadline ran out."""
        self.close()
        self._open()
        deadline = time.monotonic() + self.handshake_timeout_s
        body = {"agent": self.agent}
        if not self.curve:
            body["claim"] = self.bidder_id
        seq = self.send(P.HELLO, body)
        rep = self._wait_reply(seq, deadline)
        if rep is None:
            self.close()
            raise RunError(f"{self.bidder_id}: no welcome from {self.endpoint} within {self.handshake_timeout_s:g} s "
                           "(server down, wrong server public key, or this key is not on the allow-list)")
        if rep.type != P.WELCOME:
            self.close()
            raise RunError(f"{self.bidder_id}: hello refused: {rep.body.get('code')}: {rep.body.get('message')}")
        self.welcome = rep.body
        # the server sends the announces of the rounds open for us right after the welcome;
        # wait (within the handshake deadline) for the newest, so a caller can read it at once
        open_round = int(rep.body.get("round_id") or 0)
        if open_round:
            self._wait(deadline, lambda: open_round in self.announces)
        return rep.body

    # ------------------------------------------------------------------ messaging
    def send(self, type_: str, body: dict, *, round_id: int = 0, bid_id: str = "") -> int:
        """Send without waiting; returns the seq the reply will echo."""
        if self.sock is None:
            self._open()
        seq = next(self._seq)
        self.sock.send_multipart(encode(type_, body, round_id=round_id, bid_id=bid_id, seq=seq))
        return seq

    def handle_incoming(self) -> None:
        """Read every message waiting on the socket (non-blocking)."""
        while self.sock is not None:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                h, b = decode_server(frames)
            except ProtocolError:
                continue  # a broken server message is dropped, never trusted
            if h["type"] == P.ANNOUNCE:
                self.announces[int(b["round_id"])] = b
            elif h["type"] == P.RESULT:
                self.results[int(b["round_id"])] = b
            else:
                self.replies[h["seq"]] = Reply(h["type"], h, b)
                if h["type"] == P.STATUS_REPLY and isinstance(b.get("result"), dict) and "outcome" in b["result"]:
                    self.results.setdefault(int(b["round_id"]), b["result"])

    def _wait(self, until: float, done) -> bool:
        while True:
            self.handle_incoming()
            if done():
                return True
            left = until - time.monotonic()
            if left <= 0 or self.sock is None:
                return False
            self.sock.poll(int(max(1, left * 1000)), zmq.POLLIN)

    def _wait_reply(self, seq: int, until: float) -> Reply | None:
        self._wait(until, lambda: seq in self.replies)
        return self.replies.pop(seq, None)

    def request(self, type_: str, body: dict, *, round_id: int = 0, bid_id: str = "") -> Reply:
        """Send and wait for the reply; on a timeout close the socket, reconnect (hello again)
        and re-send the same message, at most ``retries`` times (Lazy Pirate)."""
        last = "no reply"
        for attempt in range(self.retries + 1):
            if self.sock is None or self.welcome is None:
                try:
                    self.connect()
                except RunError as exc:
                    last = str(exc)
                    self.reconnects += 1
                    continue
            seq = self.send(type_, body, round_id=round_id, bid_id=bid_id)
            rep = self._wait_reply(seq, time.monotonic() + self.request_timeout_s)
            if rep is not None:
                return rep
            self.welcome = None  # the server may be gone: a fresh socket next time
            self.close()
            self.reconnects += 1
        raise RunError(f"{self.bidder_id}: no reply to {type_} from {self.endpoint} after "
                       f"{self.retries + 1} tries ({last})")

    def status(self, round_id: int = 0) -> dict:
        rep = self.request(P.STATUS, {}, round_id=round_id)
        if rep.type != P.STATUS_REPLY:
            raise RunError(f"status refused: {rep.body}")
        return rep.body

    def wait_announce(self, timeout: float, *, after: int = 0) -> dict | None:
        """The announce of the next round with id > ``after`` (or None on timeout)."""
        def found():
            return any(r > after for r in self.announces)

        self._wait(time.monotonic() + timeout, found)
        ids = [r for r in self.announces if r > after]
        return self.announces[min(ids)] if ids else None

    def wait_result(self, round_id: int, timeout: float, *, poll_every: float = 0.5) -> dict | None:
        """The round's result: pushed by the server, else fetched with ``status`` (after a restart)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._wait(min(end, time.monotonic() + poll_every), lambda: round_id in self.results):
                return self.results[round_id]
            try:
                st = self.status(round_id)
                if "result" in st:
                    self.results[round_id] = st["result"]
                    return st["result"]
            except RunError:
                pass
        return self.results.get(round_id)

    @staticmethod
    def new_bid_id() -> str:
        return uuid.uuid4().hex


class AVBidder(BidderClient):
    role = P.ROLE_AV

    @staticmethod
    def body(price_micro: int, tasks: list[dict[str, float]]) -> dict:
        return {"price": int(price_micro),
                "tasks": [{"size": float(t["size"]), "cycles": float(t["cycles"]), "deadline": float(t["deadline"])}
                          for t in tasks]}

    def bid(self, round_id: int, price_micro: int, tasks: list[dict[str, float]], *,
            bid_id: str | None = None) -> Reply:
        """Bid for the round's DT slot; tasks: [{size (MB), cycles (Gcycles/MB), deadline (s)}]."""
        return self.request(P.BID_AV, self.body(price_micro, tasks), round_id=round_id,
                            bid_id=bid_id or self.new_bid_id())


    def upload(self, round_id: int, task: int, data: bytes) -> Reply:
        """Upload task ``task``'s data (rounds with ``verify: "upload"``); the reply
        (``upload_ack``) carries the measured size in MB (bytes / 1e6) to report in the bid."""
        return self.request(P.UPLOAD, {"task": int(task), "data": bytes(data)}, round_id=round_id)


def receipt_of(*, round_id: int, bidder_id: str, bid_id: str, kind: str, body: dict, prev_hash: str,
               at_ns: int) -> str:
    """Recompute a bid's receipt as docs/protocol.md defines it, from what the bidder sent and
    the ack's ``prev_hash`` and ``at_ns``: a bidder checks ``receipt_of(...) == ack.receipt``."""
    from carla_mr.market.codec import canonical_bytes, decode_body, digest, encode_body
    from carla_mr.market.ledger import bid_payload

    canon = canonical_bytes(decode_body(kind, encode_body(body)))  # the server's canonical form
    payload = canonical_bytes(bid_payload(bidder_id, bid_id, kind, canon))
    return digest(prev_hash.encode(), b"bid", str(int(round_id)).encode(), str(int(at_ns)).encode(), payload)


class SimulatorBidder(BidderClient):
    role = P.ROLE_SIM

    @staticmethod
    def body(values: dict[str, list[int]] | None) -> dict:
        if values is None:
            return {"contract": True}
        return {"values": {str(a): [int(x) for x in row] for a, row in values.items()}}

    def bid(self, round_id: int, values: dict[str, list[int]] | None, *, bid_id: str | None = None) -> Reply:
        """Values per unit time in micro-units, {av_id: [per task]}; None = accept the contract."""
        return self.request(P.BID_SIM, self.body(values), round_id=round_id, bid_id=bid_id or self.new_bid_id())

    def accept_contract(self, round_id: int, *, bid_id: str | None = None) -> Reply:
        return self.bid(round_id, None, bid_id=bid_id)


def client_for(role: str, *args: Any, **kwargs: Any) -> BidderClient:
    return (AVBidder if role == P.ROLE_AV else SimulatorBidder)(*args, **kwargs)


def bidder_process(spec: dict, out_queue) -> None:
    """Entry point of a bidder process (load tests, benchmarks).

    spec: endpoint, bidder_id, role, curve, public/secret (z85 bytes), server_public, round_id
    (0: wait for the next announce), kind, body, bid_id, timeout_s, and optionally ``rounds``
    (default 1): bid the same body in that many consecutive announced rounds (bid_id suffixed
    with the round id). Puts one dict per round on ``out_queue``: bidder_id, round_id, reply
    type, receipt, the result body (or None), error text.
    """
    c = None
    rid = int(spec.get("round_id") or 0)
    timeout = spec.get("timeout_s", 10.0)
    n_rounds = int(spec.get("rounds", 1))
    done = 0
    try:
        kp = Keypair(spec["public"], spec["secret"]) if spec.get("curve", True) else None
        cls = AVBidder if spec["role"] == P.ROLE_AV else SimulatorBidder
        c = cls(spec["endpoint"], spec["bidder_id"], keypair=kp, server_public=spec.get("server_public"),
                curve=spec.get("curve", True), handshake_timeout_s=timeout, request_timeout_s=timeout, retries=2,
                ctx=zmq.Context())
        c.connect()
        last = 0
        while done < n_rounds:
            report: dict[str, Any] = {"bidder_id": spec["bidder_id"], "reply": None, "receipt": None,
                                      "result": None, "error": None, "round_id": rid}
            try:
                if rid == 0:
                    ann = c.wait_announce(timeout, after=last)
                    if ann is None:
                        raise RunError(f"no round announced after {last} within {timeout} s")
                    rid = int(ann["round_id"])
                bid_id = spec["bid_id"] if n_rounds == 1 else f"{spec['bid_id']}-{rid}"
                rep = c.request(spec["kind"], spec["body"], round_id=rid, bid_id=bid_id)
                report.update(reply=rep.type, receipt=rep.receipt, round_id=rid)
                report["result"] = c.wait_result(rid, timeout * 2)
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                report["error"] = f"{type(exc).__name__}: {exc}"
            out_queue.put(report)
            done += 1
            last, rid = rid, 0
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        for _ in range(n_rounds - done):
            out_queue.put({"bidder_id": spec["bidder_id"], "reply": None, "receipt": None, "result": None,
                           "error": f"{type(exc).__name__}: {exc}", "round_id": rid})
    finally:
        if c is not None:
            c.close()
            c.ctx.term()

"""ZAP for CURVE: the auctioneer admits exactly the allow-list's keys (User-Id = the bidder id).

A ZAP handler (ZeroMQ RFC 27) answers the handshake requests of every CURVE socket of its
context that sets ``zap_domain``: this one runs in its own thread on a REP socket bound to
``inproc://zeromq.zap.01``, admits a client whose public key is on the allow-list (its bidder
id becomes the connection's User-Id) and refuses any other. Refusals are counted and logged,
at most one line per ``log_interval_s`` (the first at once, later ones with the number held
back), so a scan of the port cannot flood the log.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import zmq
from zmq.utils import z85

from carla_mr.market.keys import AllowList

ZAP_DOMAIN = "carla_mr"
ZAP_ENDPOINT = "inproc://zeromq.zap.01"


class ZapHandler:
    """The allow-list's ZAP handler. ``counters`` gets ``handshakes_accepted`` and
    ``handshakes_rejected``; ``accepted_ids`` the bidder ids that completed a handshake."""

    def __init__(self, ctx: zmq.Context, allow: AllowList, *, counters: dict[str, int] | None = None,
                 log: Callable[[str], None] | None = None, log_interval_s: float = 10.0):
        self.ctx = ctx
        self.allow = allow
        self.counters = counters if counters is not None else {}
        self.counters.setdefault("handshakes_accepted", 0)
        self.counters.setdefault("handshakes_rejected", 0)
        self.accepted_ids: set[str] = set()
        self.log = log or (lambda msg: None)
        self.log_interval_s = log_interval_s
        self._last_log = -float("inf")
        self._held_back = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="zap", daemon=True)
        self._thread.start()
        self._ready.wait(10.0)
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        if self._held_back:
            self.log(f"ZAP: {self._held_back} more rejected handshake(s) not logged "
                     f"({self.counters['handshakes_rejected']} in all)")
            self._held_back = 0

    def _run(self) -> None:
        try:
            sock = self.ctx.socket(zmq.REP)
            sock.linger = 0
            sock.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                if not sock.poll(100):
                    continue
                sock.send_multipart(self.reply(sock.recv_multipart()))
        finally:
            sock.close(0)

    def reply(self, msg: list[bytes]) -> list[bytes]:
        """The ZAP reply to one request: [version, request_id, status, text, user_id, metadata]."""
        if len(msg) < 6:
            return [b"1.0", msg[1] if len(msg) > 1 else b"", b"400", b"malformed ZAP request", b"", b""]
        version, request_id, domain, address, _identity, mechanism = msg[:6]
        credentials = msg[6:]
        if version != b"1.0":
            return [b"1.0", request_id, b"400", b"unsupported ZAP version", b"", b""]
        key = z85.encode(credentials[0]) if mechanism == b"CURVE" and len(credentials) == 1 else b""
        entry = self.allow.by_key.get(key) if domain == ZAP_DOMAIN.encode() else None
        if entry is None:
            self._rejected(address.decode("utf-8", "replace"), mechanism.decode("ascii", "replace"), key)
            return [b"1.0", request_id, b"400", b"key not on the allow-list", b"", b""]
        self.counters["handshakes_accepted"] += 1
        self.accepted_ids.add(entry.id)
        return [b"1.0", request_id, b"200", b"OK", entry.id.encode(), b""]

    def _rejected(self, address: str, mechanism: str, key: bytes) -> None:
        self.counters["handshakes_rejected"] += 1
        now = time.monotonic()
        if now - self._last_log < self.log_interval_s:
            self._held_back += 1
            return
        more = f"; {self._held_back} more since the last message" if self._held_back else ""
        who = f"key {key[:8].decode('ascii', 'replace')}..." if key else f"mechanism {mechanism}"
        self.log(f"ZAP: rejected a handshake from {address or '?'} ({who} not on the allow-list){more}")
        self._last_log, self._held_back = now, 0

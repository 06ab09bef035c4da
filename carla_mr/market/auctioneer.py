"""The auctioneer: a ZeroMQ ROUTER that runs sealed-bid rounds and writes the ledger.

Round life cycle (deadline on the monotonic clock; :mod:`carla_mr.market.round_book`):

    OPEN --deadline passed, or every eligible bidder has bid (early_close)--> CLOSED
    CLOSED --clearing function--> CLEARED (outcome + schedule committed) --results sent--> PUBLISHED

- A bidder that sends nothing is absent. Clearing never waits for anyone: the loop closes a
  round at its deadline whatever is in flight; a bid that arrives after it gets ``late``.
- Bids stay sealed: nothing about another bidder's bid leaves the auctioneer before close.
- One bid per bidder per round. Re-sending the same ``bid_id`` and body gets the same ack
  (``duplicate: true``, same receipt); a different bid in the same round is refused
  (``already_bid``); the same ``bid_id`` with another body is refused (``bid_id_reuse``).
- A bid is acknowledged only after the ledger transaction holding it has committed
  (bids that arrive together are committed in one transaction: group commit,
  :mod:`carla_mr.market.bid_batch`).
- Restart rule: on start the auctioneer reads the ledger. An OPEN round whose wall-clock
  deadline has not passed is RESUMED (its remaining time restarts on the monotonic clock);
  an OPEN round past its deadline is closed with the bids the ledger holds (exactly the
  acknowledged ones) and cleared; CLOSED rounds are cleared, CLEARED ones published.
  No round is voided by a restart; an operator may void one explicitly (``void_round``).

The loop runs in one thread (``run()``, or ``start()`` for a background thread). Other
threads talk to it only through :meth:`Auctioneer.submit` (a queue plus a wake-up
socketpair); messages are handled by :mod:`carla_mr.market.handlers`.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import zmq

from carla_mr.errors import InputError, RunError
from carla_mr.market import protocol as P
from carla_mr.market.bid_batch import BidBatch
from carla_mr.market.endpoints import check_endpoint, is_ipv6_endpoint
from carla_mr.market.handlers import MessageHandlers
from carla_mr.market.keys import AllowList, Keypair
from carla_mr.market.ledger import Ledger
from carla_mr.market.outbox import Connections, Outbox
from carla_mr.market.round_book import RoundBook
from carla_mr.market.rounds import Round
from carla_mr.market.zap import ZAP_DOMAIN, ZapHandler

#: Messages read from the socket per drain before the batch commits and timers run.
MAX_BATCH = 512
#: A WAL checkpoint waits for an idle moment, but no longer than this (s).
CHECKPOINT_WITHIN_S = 2.0


@dataclass
class AuctioneerSettings:
    """Everything the auctioneer needs. ``endpoint`` port ``*`` or ``0`` picks a free port."""

    ledger_path: Path
    allow: AllowList
    endpoint: str = "tcp://127.0.0.1:*"
    curve: bool = True
    server_key: Keypair | None = None
    mechanism: str = "mtepvisa"
    scoring: str = "reported"
    deadline_s: float = 0.5
    early_close: bool = True
    layout: str = "serial"
    # send results before the outcome's commit (fsync), then commit CLOSED, the outcome, CLEARED
    # and PUBLISHED in one transaction; False: commit first, send, then commit PUBLISHED (RoundBook)
    publish_first: bool = True
    # Without a task spec in the public data: require an upload of every task and check each
    # bid's task sizes against the measured uploads (docs/protocol.md, "Verified tasks").
    verify_uploads: bool = False
    # Autonomous rounds (``carla-mr market serve``): open the next round ``period_s`` after the
    # previous one was published, with public data sampled from (seed, round_id).
    auto_rounds: bool = False
    period_s: float = 0.0
    max_rounds: int = 0            # stop after this many published rounds (0: never)
    linger_s: float = 1.0          # ... and after answering status requests this much longer
    wait_bidders_s: float = 0.0    # the first round opens when every bidder has spoken, or after this
    n_tasks: int = 1
    seed: int = 0
    params: dict = field(default_factory=dict)  # model parameters for sampling/clearing
    log: Callable[[str], None] | None = None


class Auctioneer:
    """The service. State: ``settings``; ``book`` (the rounds, :class:`RoundBook`);
    ``connections`` (bidder <-> routing identity); ``counters`` (messages, errors, acks, late,
    published, commits); ``next_auto_open`` / ``stop_at`` (monotonic times of the next
    autonomous round and of the end of the linger period)."""

    def __init__(self, settings: AuctioneerSettings, clear_fn: Callable | None = None):
        self.settings = settings
        check_endpoint(settings.endpoint, settings.curve)
        if settings.curve and (settings.server_key is None or not settings.server_key.secret):
            raise InputError("CURVE needs the server's secret key", field="server_key")
        if clear_fn is None:
            from carla_mr.market.clearing import clear_round as clear_fn  # noqa: N813
        self._clear_fn = clear_fn
        self._commands_in: queue.Queue = queue.Queue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._stop = False
        self._exc: BaseException | None = None
        self.endpoint: str | None = None
        self.connections = Connections()
        self.counters = {"messages": 0, "errors": 0, "acks": 0, "late": 0, "published": 0, "commits": 0,
                         "handshakes_accepted": 0, "handshakes_rejected": 0, "closed_on_shutdown": 0}
        self._shutdown_requested = False
        self._first_round_by: float | None = None  # waiting for the bidders until then (monotonic)
        self.book: RoundBook | None = None
        self.next_auto_open: float | None = None
        self.stop_at: float | None = None
        self._commands: dict[str, Callable[..., Any]] = {
            "stop": self._cmd_stop, "open": self._cmd_open, "close": self._cmd_close, "void": self._cmd_void,
            "wait": self._cmd_wait}

    # ------------------------------------------------------------------ control (any thread)
    def start(self, timeout: float = 10.0) -> str:
        """Run the loop in a background thread; returns the bound endpoint."""
        self._thread = threading.Thread(target=self._run_guarded, name="auctioneer", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RunError("the auctioneer did not start within %.0f s" % timeout)
        if self._exc is not None:
            raise self._exc
        return self.endpoint  # type: ignore[return-value]

    def _run_guarded(self):
        try:
            self.run()
        except BaseException as exc:  # noqa: BLE001 - reported to the controlling thread
            self._exc = exc
            self._log(f"auctioneer stopped on an error: {type(exc).__name__}: {exc}")
            self._ready.set()

    def submit(self, op: str, **kwargs) -> Future:
        """Queue a command for the loop thread; its Future resolves when the loop has run it."""
        fut: Future = Future()
        if self._stopped.is_set():
            fut.set_exception(RunError("the auctioneer has stopped"))
            return fut
        self._commands_in.put((op, kwargs, fut))
        try:
            self._wake_w.send(b"w")
        except (BlockingIOError, OSError):
            pass  # the pipe is full (a wake-up is pending anyway) or the loop is gone
        return fut

    def open_round(self, public: dict, *, av_ids: list[str], sim_ids: list[str], n_tasks: int,
                   deadline_s: float | None = None, params: dict | None = None, mechanism: str | None = None,
                   scoring: str | None = None, timeout: float = 30.0) -> dict:
        """Open a round (thread-safe); returns its announce body (round_id, deadline...).
        ``mechanism`` / ``scoring`` default to the settings'."""
        return self.submit("open", public=public, av_ids=av_ids, sim_ids=sim_ids, n_tasks=n_tasks,
                           deadline_s=deadline_s, params=params or {}, mechanism=mechanism,
                           scoring=scoring).result(timeout)

    def close_round(self, round_id: int, timeout: float = 30.0) -> str:
        """Close an open round now (before its deadline), clear and publish it; returns its state.

        For an operator that knows every bid it waits for is in (the MarketSession does).
        """
        return self.submit("close", round_id=round_id).result(timeout)

    def void_round(self, round_id: int, reason: str = "operator", timeout: float = 30.0) -> dict:
        """Void an open round: no outcome; its bids stay in the ledger."""
        return self.submit("void", round_id=round_id, reason=reason).result(timeout)

    def request_shutdown(self) -> None:
        """Stop gracefully (safe from a signal handler): no new round; an open round is closed now
        with the bids committed so far, cleared and published; then the loop ends and the ledger
        is checkpointed and closed."""
        self._shutdown_requested = True
        try:
            self._wake_w.send(b"s")
        except (BlockingIOError, OSError):
            pass

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            self._stop = True
            return
        if self._thread.is_alive():
            self.submit("stop")
            self._thread.join(timeout)
        self._thread = None

    def wait_published(self, round_id: int, timeout: float) -> dict:
        """The round's result body (plus the server's ``times``) once it is published."""
        return self.submit("wait", round_id=round_id).result(timeout)

    @property
    def round_timings(self) -> dict[int, dict]:
        """Per round: clear_s and publish_s (close -> cleared / -> results sent), n_bids."""
        return self.book.timings if self.book is not None else {}

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        s = self.settings
        ctx = zmq.Context()
        auth = None
        self.ledger = Ledger(s.ledger_path)
        sock = ctx.socket(zmq.ROUTER)
        try:
            sock.linger = 0
            sock.router_mandatory = 0
            sock.sndhwm = 10_000
            sock.rcvhwm = 100_000
            sock.ipv6 = is_ipv6_endpoint(s.endpoint)
            if s.curve:
                auth = ZapHandler(ctx, s.allow, counters=self.counters, log=self._log)
                auth.start()
                sock.zap_domain = ZAP_DOMAIN.encode()
                sock.curve_server = True
                sock.curve_publickey = s.server_key.public
                sock.curve_secretkey = s.server_key.secret
            endpoint = s.endpoint[:-2] + ":*" if s.endpoint.endswith(":0") else s.endpoint
            sock.bind(endpoint)
            self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            self._wire(sock)
            from carla_mr.market.clearing import warm_up

            warm_up()  # first-call costs (lazy imports, numpy paths) off the first round's close
            self.book.recover()
            if s.auto_rounds and not self.book.open_rounds():
                # the first round waits (at most wait_bidders_s) until every bidder has spoken, so
                # that a crowd connecting at once loses no bid to its handshakes
                self.next_auto_open = time.monotonic()
                self._first_round_by = time.monotonic() + s.wait_bidders_s
            self._ready.set()
            self._log(f"auctioneer on {self.endpoint} ({'CURVE' if s.curve else 'plain, loopback only'}), "
                      f"ledger {s.ledger_path}")
            self._loop(sock)
        finally:
            self._stopped.set()
            self._fail_commands()
            sock.close(0)
            if auth is not None:
                auth.stop()
            self.ledger.close()
            ctx.term()

    def _wire(self, sock: zmq.Socket) -> None:
        """Build the components around the bound socket and the open ledger."""
        s = self.settings
        self.outbox = Outbox(sock, self.counters, self._log)
        self.book = RoundBook(allow=s.allow, ledger=self.ledger, outbox=self.outbox, connections=self.connections,
                              clear_fn=self._clear_fn, mechanism=s.mechanism, scoring=s.scoring, layout=s.layout,
                              publish_first=s.publish_first, default_deadline_s=s.deadline_s,
                              counters=self.counters, log=self._log, on_published=self._on_published,
                              verify_uploads=s.verify_uploads)
        self.batch = BidBatch(self.ledger, self.outbox, self.counters)
        self.handlers = MessageHandlers(allow=s.allow, curve=s.curve, ledger=self.ledger, book=self.book,
                                        batch=self.batch, outbox=self.outbox, connections=self.connections,
                                        counters=self.counters)

    def _loop(self, sock: zmq.Socket) -> None:
        wake = self._wake_r
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(wake, zmq.POLLIN)
        while not self._stop:
            if self._shutdown_requested:
                self._shutdown()
                break
            events = dict(poller.poll(self._poll_timeout_ms()))
            if wake in events or wake.fileno() in events:
                try:
                    while wake.recv(4096):
                        pass
                except (BlockingIOError, OSError):
                    pass
            self._drain_commands()
            if sock in events:
                self._drain_socket(sock)
            self._tick()
            due = self.book.checkpoint_due
            if due is not None and (not events or time.monotonic() - due > CHECKPOINT_WITHIN_S):
                # WAL checkpoint when nothing else waits (not on the close -> publish path, nor
                # while a round's results are being encrypted and sent), at the latest after
                # CHECKPOINT_WITHIN_S under a steady stream of messages
                self.book.checkpoint_due = None
                self.ledger.checkpoint()

    def _log(self, msg: str) -> None:
        if self.settings.log:
            self.settings.log(msg)

    def _poll_timeout_ms(self) -> int:
        now = time.monotonic()
        auto = self.next_auto_open
        if auto is not None and self._first_round_by is not None:  # waiting for bidders: messages wake us
            auto = max(auto, self._first_round_by)
        due = [t for t in (self.book.next_deadline(), auto, self.stop_at) if t is not None]
        if self.book.checkpoint_due is not None:
            due.append(now + 0.02)  # idle for 20 ms: checkpoint
        if not due:
            return 1000
        return max(0, int(np.ceil((min(due) - now) * 1000)))

    def _drain_socket(self, sock: zmq.Socket) -> None:
        for _ in range(MAX_BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            self.counters["messages"] += 1
            try:
                self.handlers.handle(frames)
            except (RunError, OSError):
                raise  # the ledger failed: stop rather than ack without durability
            except Exception as exc:  # noqa: BLE001 - one bad message never stops the service
                self._log(f"internal error on a message: {type(exc).__name__}: {exc}")
                self.outbox.error(frames[0].bytes, P.E_INTERNAL, f"{type(exc).__name__}", None)
        if self.batch:
            self.batch.commit()

    # ------------------------------------------------------------------ timers
    def _tick(self) -> None:
        s = self.settings
        now = time.monotonic()
        for r in self.book.open_rounds():
            if now >= r.deadline_mono or (s.early_close and r.everyone_bid()):
                self._close(r)
        if self.next_auto_open is not None and now >= self.next_auto_open and self._bidders_ready(now):
            self.next_auto_open = None
            if not s.max_rounds or self.counters["published"] < s.max_rounds:
                self._open_auto()
        if s.auto_rounds and s.max_rounds and self.counters["published"] >= s.max_rounds \
                and not self.book.open_rounds():
            # keep answering (status, late re-sends) for linger_s so bidders can fetch the result
            if self.stop_at is None:
                self.stop_at = now + s.linger_s
            if now >= self.stop_at:
                self._stop = True

    def _shutdown(self) -> None:
        """Graceful stop: commit what arrived, close and publish every open round now."""
        self._log("shutting down: closing the open round(s) with the bids committed so far")
        if self.batch:
            self.batch.commit()
        for r in self.book.open_rounds():
            self.counters["closed_on_shutdown"] += 1
            self._close(r)
        self._stop = True

    def _close(self, r: Round) -> None:
        if self.batch:  # bids received before the close commit first (they were on time)
            self.batch.commit()
        self.book.close_and_clear(r)

    def _open_auto(self) -> None:
        from carla_mr.market.clearing import sample_public

        s = self.settings
        sim_ids = s.allow.sim_ids
        rid = self.ledger.last_round_id() + 1
        public = sample_public(len(s.allow.av_ids), len(sim_ids), s.n_tasks, seed=(s.seed, rid), params=s.params)
        self.book.open(public, s.allow.av_ids, sim_ids, s.n_tasks, None, dict(s.params))

    def _bidders_ready(self, now: float) -> bool:
        """Before the first autonomous round: every allow-listed bidder has spoken, or the wait is over."""
        by = self._first_round_by
        if by is None:
            return True
        if now < by and len(self.connections.route_of) < len(self.settings.allow.entries):
            return False
        self._first_round_by = None
        self._log(f"first round: {len(self.connections.route_of)} of {len(self.settings.allow.entries)} "
                  "bidders connected")
        return True

    def _on_published(self, r: Round) -> None:
        if self.settings.auto_rounds:
            self.next_auto_open = time.monotonic() + self.settings.period_s

    # ------------------------------------------------------------------ commands (loop thread)
    def _drain_commands(self) -> None:
        while True:
            try:
                op, kw, fut = self._commands_in.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                command = self._commands.get(op)
                if command is None:
                    raise ValueError(f"unknown command {op}")
                command(fut, **kw)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                if not fut.done():
                    fut.set_exception(exc)

    def _cmd_stop(self, fut: Future) -> None:
        self._stop = True
        fut.set_result(None)

    def _cmd_open(self, fut: Future, **kw) -> None:
        fut.set_result(self.book.open(**kw))

    def _known(self, round_id: int):
        r = self.book.get_any(round_id)
        if r is None:
            raise InputError(f"round {round_id} is unknown", field="round_id")
        return r

    def _cmd_close(self, fut: Future, round_id: int) -> None:
        r = self._known(round_id)
        if r.state == P.OPEN:
            self._close(r)
        fut.set_result(r.state)

    def _cmd_void(self, fut: Future, round_id: int, reason: str = "operator") -> None:
        fut.set_result(self.book.void(round_id, reason))

    def _cmd_wait(self, fut: Future, round_id: int) -> None:
        r = self._known(round_id)
        if r.state == P.PUBLISHED:
            fut.set_result(self.book.published_view(r))
        elif r.state == P.VOID:
            raise RunError(f"round {round_id} was voided")
        else:
            r.waiters.append(fut)

    def _fail_commands(self) -> None:
        while True:
            try:
                _, _, fut = self._commands_in.get_nowait()
            except queue.Empty:
                break
            if not fut.done():
                fut.set_exception(RunError("the auctioneer stopped"))
        if self.book is not None:
            for r in self.book.live.values():
                self.book.fail_waiters(r, RunError("the auctioneer stopped"))

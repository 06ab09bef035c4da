"""The auctioneer: a ZeroMQ ROUTER that runs sealed-bid rounds and writes the ledger.

Round life cycle (deadline on the monotonic clock):

    OPEN --deadline passed, or every eligible bidder has bid (early_close)--> CLOSED
    CLOSED --clearing function--> CLEARED (outcome + schedule committed) --results sent--> PUBLISHED

- A bidder that sends nothing is absent. Clearing never waits for anyone: the loop closes a
  round at its deadline whatever is in flight; a bid that arrives after it gets ``late``.
- Bids stay sealed: nothing about another bidder's bid leaves the auctioneer before close.
- One bid per bidder per round. Re-sending the same ``bid_id`` and body gets the same ack
  (``duplicate: true``, same receipt); a different bid in the same round is refused
  (``already_bid``); the same ``bid_id`` with another body is refused (``bid_id_reuse``).
- A bid is acknowledged only after the ledger transaction holding it has committed
  (bids that arrive together are committed in one transaction: group commit).
- Restart rule: on start the auctioneer reads the ledger. An OPEN round whose wall-clock
  deadline has not passed is RESUMED (its remaining time restarts on the monotonic clock);
  an OPEN round past its deadline is closed with the bids the ledger holds (exactly the
  acknowledged ones) and cleared; CLOSED rounds are cleared, CLEARED ones published.
  No round is voided by a restart; an operator may void one explicitly (``void_round``).

The loop runs in one thread (``run()``, or ``start()`` for a background thread). Other
threads talk to it only through :meth:`submit` (a queue plus a wake-up socketpair).
"""

from __future__ import annotations

import gc
import ipaddress
import queue
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import numpy as np
import zmq

from carla_mr.errors import InputError, RunError
from carla_mr.market import protocol as P
from carla_mr.market.codec import (ProtocolError, canonical_bytes, decode_body, decode_header, digest, encode_body,
                                   encode_header, pack_arrays, unpack_arrays)
from carla_mr.market.keys import AllowList, Keypair
from carla_mr.market.ledger import Ledger

ZAP_DOMAIN = "carla_mr"
MAX_BATCH = 512


def is_loopback_endpoint(endpoint: str) -> bool:
    parts = urlsplit(endpoint)
    if parts.scheme != "tcp":
        return parts.scheme in ("inproc", "ipc")
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(endpoint: str, curve: bool) -> None:
    """Refuse plain (unauthenticated) mode on a non-loopback address, with the fix."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("tcp", "ipc", "inproc"):
        raise InputError(f"endpoint {endpoint!r} must be tcp://HOST:PORT", field="endpoint")
    if not curve and not is_loopback_endpoint(endpoint):
        raise InputError(f"plain mode (no CURVE) is refused on the non-loopback address {endpoint}: anyone on "
                         "the network could bid in another bidder's name. Bind 127.0.0.1, or enable CURVE "
                         "(drop --plain / set market.curve: true) and give an allow-list.", field="curve")


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
    publish_first: bool = False  # send results before the outcome's fsync (see _clear_and_publish)
    # Autonomous rounds (``carla-mr market serve``): open the next round ``period_s`` after the
    # previous one was published, with public data sampled from (seed, round_id).
    auto_rounds: bool = False
    period_s: float = 0.0
    max_rounds: int = 0            # stop after this many published rounds (0: never)
    linger_s: float = 1.0          # ... and after answering status requests this much longer
    n_tasks: int = 1
    seed: int = 0
    params: dict = field(default_factory=dict)  # model parameters for sampling/clearing
    log: Callable[[str], None] | None = None


@dataclass
class _Bid:
    bid_id: str
    kind: str
    body: dict
    canon: bytes
    receipt: str


@dataclass
class _Round:
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
    bids: dict[str, _Bid] = field(default_factory=dict)
    closed_at_ns: int = 0
    result_body: bytes | None = None
    announce_body: dict | None = None
    eligible: frozenset = frozenset()
    times: dict = field(default_factory=dict)
    sim_matrix: np.ndarray | None = None   # (I, N, K+1) simulators' values in units, filled as bids commit
    av_row: dict = field(default_factory=dict)

    def add_to_matrix(self, bidder: str, body: dict) -> None:
        from carla_mr.market.clearing import sim_bid_rows

        if "values" not in body:
            return
        if self.sim_matrix is None:
            self.sim_matrix = np.zeros((len(self.av_ids), self.n_tasks, len(self.sim_ids)))
            self.av_row = {a: i for i, a in enumerate(self.av_ids)}
        j, arr = sim_bid_rows(body["values"], self.av_row, self.n_tasks)
        self.sim_matrix[j, :, self.sim_ids.index(bidder)] = arr


class Auctioneer:
    def __init__(self, settings: AuctioneerSettings, clear_fn: Callable | None = None):
        self.s = settings
        check_endpoint(settings.endpoint, settings.curve)
        if settings.curve and (settings.server_key is None or not settings.server_key.secret):
            raise InputError("CURVE needs the server's secret key", field="server_key")
        if clear_fn is None:
            from carla_mr.market.clearing import clear_round as clear_fn  # noqa: N813
        self._clear = clear_fn
        self._q: queue.Queue = queue.Queue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._stop = False
        self._exc: BaseException | None = None
        self.endpoint: str | None = None
        self.rounds: dict[int, _Round] = {}
        self.routes: dict[str, bytes] = {}     # bidder_id -> last ROUTER identity
        self.plain_ids: dict[bytes, str] = {}  # plain mode: identity -> claimed bidder id
        self.stats = {"messages": 0, "errors": 0, "acks": 0, "late": 0, "published": 0, "commits": 0}
        self.round_times: dict[int, dict] = {}
        self._next_auto: float | None = None
        self._stop_at: float | None = None
        self._pending: list = []
        self._pending_by: dict = {}

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
        fut: Future = Future()
        if self._stopped.is_set():
            fut.set_exception(RunError("the auctioneer has stopped"))
            return fut
        self._q.put((op, kwargs, fut))
        try:
            self._wake_w.send(b"w")
        except (BlockingIOError, OSError):
            pass  # the pipe is full (a wake-up is pending anyway) or the loop is gone
        return fut

    def open_round(self, public: dict, *, av_ids: list[str], sim_ids: list[str], n_tasks: int,
                   deadline_s: float | None = None, params: dict | None = None, timeout: float = 30.0) -> dict:
        """Open a round (thread-safe); returns its announce body (round_id, deadline...)."""
        return self.submit("open", public=public, av_ids=av_ids, sim_ids=sim_ids, n_tasks=n_tasks,
                           deadline_s=deadline_s, params=params or {}).result(timeout)

    def close_round(self, round_id: int, timeout: float = 30.0) -> str:
        """Close an open round now (before its deadline), clear and publish it; returns its state.

        For an operator that knows every bid it waits for is in (the MarketSession does).
        """
        return self.submit("close", round_id=round_id).result(timeout)

    def void_round(self, round_id: int, reason: str = "operator", timeout: float = 30.0) -> dict:
        """Void an open round: no outcome; its bids stay in the ledger."""
        return self.submit("void", round_id=round_id, reason=reason).result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            self._stop = True
            return
        if self._thread.is_alive():
            self.submit("stop")
            self._thread.join(timeout)
        self._thread = None

    def wait_published(self, round_id: int, timeout: float) -> dict:
        return self.submit("wait", round_id=round_id).result(timeout)

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        s = self.s
        self._ctx = ctx = zmq.Context()
        auth = None
        self.ledger = Ledger(s.ledger_path)
        sock = ctx.socket(zmq.ROUTER)
        wake = self._wake_r
        try:
            sock.linger = 0
            sock.router_mandatory = 0
            sock.sndhwm = 10_000
            sock.rcvhwm = 100_000
            if s.curve:
                auth = _AllowListAuthenticator(ctx, s.allow)
                auth.start()
                auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=auth)
                sock.zap_domain = ZAP_DOMAIN.encode()
                sock.curve_server = True
                sock.curve_publickey = s.server_key.public
                sock.curve_secretkey = s.server_key.secret
            endpoint = s.endpoint
            if endpoint.endswith(":0"):
                endpoint = endpoint[:-2] + ":*"
            sock.bind(endpoint)
            self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            self.sock = sock
            _warm_up()  # first-call costs (lazy imports, numpy paths) off the first round's close
            self._recover()
            if s.auto_rounds and not any(r.state == P.OPEN for r in self.rounds.values()):
                self._next_auto = time.monotonic()
            self._ready.set()
            self._log(f"auctioneer on {self.endpoint} ({'CURVE' if s.curve else 'plain, loopback only'}), "
                      f"ledger {s.ledger_path}")
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            poller.register(wake, zmq.POLLIN)
            while not self._stop:
                timeout_ms = self._poll_timeout_ms()
                events = dict(poller.poll(timeout_ms))
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
        finally:
            self._stopped.set()
            self._fail_commands()
            sock.close(0)
            if auth is not None:
                auth.stop()
            self.ledger.close()
            ctx.term()

    def _log(self, msg: str) -> None:
        if self.s.log:
            self.s.log(msg)

    def _poll_timeout_ms(self) -> int:
        now = time.monotonic()
        nxt = [r.deadline_mono for r in self.rounds.values() if r.state == P.OPEN]
        if self._next_auto is not None:
            nxt.append(self._next_auto)
        if self._stop_at is not None:
            nxt.append(self._stop_at)
        if not nxt:
            return 1000
        return max(0, int(np.ceil((min(nxt) - now) * 1000)))

    # ------------------------------------------------------------------ commands
    def _drain_commands(self) -> None:
        while True:
            try:
                op, kw, fut = self._q.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                if op == "stop":
                    self._stop = True
                    fut.set_result(None)
                elif op == "open":
                    fut.set_result(self._open_round(**kw))
                elif op == "close":
                    r = self.rounds.get(kw["round_id"])
                    if r is None:
                        raise InputError(f"round {kw['round_id']} is unknown", field="round_id")
                    if r.state == P.OPEN:
                        self._close_and_clear(r)
                    fut.set_result(r.state)
                elif op == "void":
                    fut.set_result(self._void(kw["round_id"], kw.get("reason", "operator")))
                elif op == "wait":
                    r = self.rounds.get(kw["round_id"])
                    if r is None:
                        raise InputError(f"round {kw['round_id']} is unknown", field="round_id")
                    if r.state == P.PUBLISHED:
                        fut.set_result(self._published_view(r))
                    else:
                        r.times.setdefault("waiters", []).append(fut)
                else:
                    raise ValueError(f"unknown command {op}")
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                if not fut.done():
                    fut.set_exception(exc)

    def _fail_commands(self) -> None:
        while True:
            try:
                _, _, fut = self._q.get_nowait()
            except queue.Empty:
                break
            if not fut.done():
                fut.set_exception(RunError("the auctioneer stopped"))
        for r in self.rounds.values():
            for fut in r.times.pop("waiters", []):
                if not fut.done():
                    fut.set_exception(RunError("the auctioneer stopped"))

    # ------------------------------------------------------------------ rounds
    def _open_round(self, public: dict, av_ids: list[str], sim_ids: list[str], n_tasks: int,
                    deadline_s: float | None, params: dict) -> dict:
        allow = self.s.allow.by_id
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
        deadline_s = float(self.s.deadline_s if deadline_s is None else deadline_s)
        if not deadline_s > 0:
            raise InputError("deadline_s must be > 0", field="deadline_s")
        blob = pack_arrays(public)
        pd = digest(blob)
        rid = self.ledger.last_round_id() + 1
        now_m, now_ns = time.monotonic(), time.time_ns()
        r = _Round(rid, self.s.mechanism, self.s.scoring, n_tasks, list(av_ids), list(sim_ids), dict(public), pd,
                   dict(params), now_m + deadline_s, now_ns + int(deadline_s * 1e9))
        self.ledger.open_round(round_id=rid, mechanism=r.mechanism, scoring=r.scoring, n_tasks=n_tasks,
                               av_ids=r.av_ids, sim_ids=r.sim_ids, public=blob, public_digest=pd,
                               params=r.params, deadline_ns=r.deadline_ns)
        self._install(r)
        self._announce(r)
        return self._announce_body(r)

    def _install(self, r: _Round) -> None:
        r.eligible = frozenset(r.av_ids) | frozenset(r.sim_ids)
        self.rounds[r.round_id] = r
        # keep memory bounded: forget published rounds beyond the last 64 (the ledger keeps them)
        done = [k for k, v in self.rounds.items() if v.state in (P.PUBLISHED, P.VOID)]
        for k in done[:-64]:
            del self.rounds[k]

    def _announce_body(self, r: _Round) -> dict:
        return {"round_id": r.round_id, "mechanism": r.mechanism, "scoring": r.scoring,
                "deadline_ms": max(0, int((r.deadline_mono - time.monotonic()) * 1000)), "n_tasks": r.n_tasks,
                "av_ids": r.av_ids, "sim_ids": r.sim_ids, "public_digest": r.public_digest}

    def _announce(self, r: _Round, only: list[bytes] | None = None) -> None:
        body = encode_body(self._announce_body(r))
        header = encode_header(P.ANNOUNCE, round_id=r.round_id)
        targets = only if only is not None else [self.routes[b] for b in r.eligible if b in self.routes]
        for ident in targets:
            self._send(ident, header, body)

    def _tick(self) -> None:
        now = time.monotonic()
        for r in list(self.rounds.values()):
            if r.state == P.OPEN and (now >= r.deadline_mono or
                                      (self.s.early_close and len(r.bids) == len(r.eligible))):
                self._close_and_clear(r)
        if self._next_auto is not None and now >= self._next_auto:
            self._next_auto = None
            if not self.s.max_rounds or self.stats["published"] < self.s.max_rounds:
                self._open_auto()
        if (self.s.auto_rounds and self.s.max_rounds and self.stats["published"] >= self.s.max_rounds
                and not any(r.state == P.OPEN for r in self.rounds.values())):
            # keep answering (status, late re-sends) for linger_s so bidders can fetch the result
            if self._stop_at is None:
                self._stop_at = now + self.s.linger_s
            if now >= self._stop_at:
                self._stop = True

    def _open_auto(self) -> None:
        from carla_mr.market.clearing import sample_public

        allow = self.s.allow
        sim_ids = allow.sim_ids
        rid = self.ledger.last_round_id() + 1
        public = sample_public(len(allow.av_ids), len(sim_ids), self.s.n_tasks, seed=(self.s.seed, rid),
                               params=self.s.params)
        self._open_round(public, allow.av_ids, sim_ids, self.s.n_tasks, None, dict(self.s.params))

    def _close_and_clear(self, r: _Round) -> None:
        t_close = time.monotonic()
        if self._pending:  # bids received before the close commit first (they were on time)
            self._commit_pending()
        r.state = P.CLOSED
        r.closed_at_ns = time.time_ns()
        # CLOSED is committed together with the outcome (one fsync); a crash before that
        # commit leaves the round OPEN past its deadline, which the restart rule closes with
        # exactly the same committed bids.
        self._clear_and_publish(r, t_close, close_info={"n_bids": len(r.bids)})

    def _clear_and_publish(self, r: _Round, t_close: float, close_info: dict | None = None) -> None:
        # No cyclic-GC pause inside close -> clear -> commit -> publish (a gen-2 pass over a big
        # heap costs milliseconds); collection resumes right after, nothing is skipped.
        gc_was = gc.isenabled()
        gc.disable()
        try:
            self._clear_and_publish_inner(r, t_close, close_info)
        finally:
            if gc_was:
                gc.enable()

    def _clear_and_publish_inner(self, r: _Round, t_close: float, close_info: dict | None = None) -> None:
        bids = {b: (x.kind, x.body) for b, x in r.bids.items()}
        outcome, schedule = self._clear(round_id=r.round_id, mechanism=r.mechanism, scoring=r.scoring,
                                        public=r.public, params=r.params, av_ids=r.av_ids, sim_ids=r.sim_ids,
                                        n_tasks=r.n_tasks, bids=bids, layout=self.s.layout,
                                        sim_matrix=r.sim_matrix)
        t_cleared = time.monotonic()
        from carla_mr.io import to_jsonable

        outcome = to_jsonable(outcome)  # once: the ledger's text and the result body share it
        sched = schedule.to_dict()
        chain = self.ledger.bids_head(r.round_id)  # covers every bid the outcome was computed from
        if self.s.publish_first:
            # Results go out before the outcome's commit: clearing is a pure function of the
            # committed bids, so a crash here re-derives the same outcome on restart.
            r.closed_at_ns = r.closed_at_ns or time.time_ns()
            self._send_result(r, outcome, sched, chain)
            self.ledger.save_outcome(r.round_id, outcome, sched, close_info=close_info, closed_at_ns=r.closed_at_ns,
                                     jsonable=True)
        else:
            self.ledger.save_outcome(r.round_id, outcome, sched, close_info=close_info, closed_at_ns=r.closed_at_ns,
                                     jsonable=True)
            r.state = P.CLEARED
            self._send_result(r, outcome, sched, chain)
        t_pub = time.monotonic()
        self.round_times[r.round_id] = {"clear_s": t_cleared - t_close, "publish_s": t_pub - t_close,
                                        "n_bids": len(r.bids)}
        if len(self.round_times) > 1024:
            del self.round_times[min(self.round_times)]
        self._mark_published(r)

    def _send_result(self, r: _Round, outcome: dict, sched: dict, chain: str) -> None:
        """``outcome`` is already JSON-typed (to_jsonable'd after clearing, or read from the ledger)."""
        body = {"round_id": r.round_id, "state": P.PUBLISHED, "outcome": outcome, "schedule": sched,
                "chain_hash": chain, "closed_at_ns": int(r.closed_at_ns), "n_bids": len(r.bids),
                "bidders": sorted(r.bids)}
        r.result_body = encode_body(body)
        header = encode_header(P.RESULT, round_id=r.round_id)
        for b in r.eligible:
            ident = self.routes.get(b)
            if ident is not None:
                self._send(ident, header, r.result_body)

    def _mark_published(self, r: _Round) -> None:
        r.state = P.PUBLISHED
        self.ledger.set_state(r.round_id, P.PUBLISHED, {"recipients": sum(b in self.routes for b in r.eligible)})
        self.stats["published"] += 1
        if self.s.auto_rounds:
            self._next_auto = time.monotonic() + self.s.period_s
        for fut in r.times.pop("waiters", []):
            if not fut.done():
                fut.set_result(self._published_view(r))
        self.ledger.checkpoint()  # off the close -> publish path

    def _published_view(self, r: _Round) -> dict:
        import msgpack

        body = msgpack.unpackb(r.result_body, raw=False)
        body["times"] = self.round_times.get(r.round_id, {})
        return body

    def _void(self, round_id: int, reason: str) -> dict:
        r = self.rounds.get(round_id)
        if r is None or r.state != P.OPEN:
            raise InputError(f"round {round_id} is not open", field="round_id")
        r.state = P.VOID
        self.ledger.set_state(round_id, P.VOID, {"reason": reason})
        for fut in r.times.pop("waiters", []):
            if not fut.done():
                fut.set_exception(RunError(f"round {round_id} was voided ({reason})"))
        return {"round_id": round_id, "state": P.VOID}

    def _recover(self) -> None:
        """Apply the restart rule to every unfinished round in the ledger."""
        now_m, now_ns = time.monotonic(), time.time_ns()
        for row in self.ledger.rounds((P.OPEN, P.CLOSED, P.CLEARED)):
            r = _Round(row.round_id, row.mechanism, row.scoring, row.n_tasks, row.av_ids, row.sim_ids,
                       unpack_arrays(row.public), row.public_digest, row.params,
                       now_m + max(0.0, (row.deadline_ns - now_ns) / 1e9), row.deadline_ns, state=row.state,
                       closed_at_ns=row.closed_at_ns or 0)
            from carla_mr.market.clearing import decode_bid_body

            for b in self.ledger.bids(row.round_id):
                r.bids[b.bidder_id] = _Bid(b.bid_id, b.kind, decode_bid_body(b.kind, b.body), b.body, b.receipt)
                r.add_to_matrix(b.bidder_id, r.bids[b.bidder_id].body)
            self._install(r)
            if row.state == P.OPEN:
                if row.deadline_ns > now_ns:
                    self.ledger.set_state(r.round_id, P.OPEN, {"resumed": True, "n_bids": len(r.bids)},
                                          kind="round_resumed")
                    self._log(f"round {r.round_id}: resumed with {len(r.bids)} bids")
                else:
                    self._log(f"round {r.round_id}: deadline passed while down; closing with {len(r.bids)} bids")
                    self._close_and_clear(r)
            elif row.state == P.CLOSED:
                self._clear_and_publish(r, time.monotonic())
            else:
                out = self.ledger.outcome(r.round_id)
                assert out is not None
                self._send_result(r, out[0], out[1], self.ledger.bids_head(r.round_id))
                self._mark_published(r)

    # ------------------------------------------------------------------ messages
    def _send(self, ident: bytes, header: bytes, body: bytes) -> None:
        try:
            self.sock.send_multipart([ident, header, body], zmq.NOBLOCK, copy=True)
        except zmq.ZMQError:
            pass  # a slow or gone bidder never blocks the auctioneer

    def _reply(self, ident: bytes, type_: str, body: dict, h: dict | None) -> None:
        self._send(ident, encode_header(type_, round_id=(h or {}).get("round_id", 0), bid_id=(h or {}).get("bid_id", ""),
                                        seq=(h or {}).get("seq", 0)), encode_body(body))

    def _error(self, ident: bytes, code: str, message: str, h: dict | None) -> None:
        self.stats["errors"] += 1
        self._reply(ident, P.ERROR, {"code": code, "message": message[:500]}, h)

    def _drain_socket(self, sock) -> None:
        for _ in range(MAX_BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            self.stats["messages"] += 1
            try:
                self._handle(frames)
            except (RunError, OSError):
                raise  # the ledger failed: stop rather than ack without durability
            except Exception as exc:  # noqa: BLE001 - one bad message never stops the service
                self._log(f"internal error on a message: {type(exc).__name__}: {exc}")
                self._error(frames[0].bytes, P.E_INTERNAL, f"{type(exc).__name__}", None)
        if self._pending:
            self._commit_pending()

    def _bidder_of(self, ident: bytes, frame) -> str | None:
        if self.s.curve:
            try:
                uid = frame.get("User-Id")
            except zmq.ZMQError:
                return None
            return uid if uid in self.s.allow.by_id else None
        return self.plain_ids.get(ident)

    def _handle(self, frames) -> None:
        ident = frames[0].bytes
        if len(frames) != 3:
            self._error(ident, P.E_BAD_FRAME, f"expected [header, body], got {len(frames) - 1} frame(s)", None)
            return
        try:
            h = decode_header(frames[1].bytes)
        except ProtocolError as exc:
            self._error(ident, exc.code, exc.message, None)
            return
        try:
            body = decode_body(h["type"], frames[2].bytes)
        except ProtocolError as exc:
            self._error(ident, exc.code, exc.message, h)
            return
        bidder = self._bidder_of(ident, frames[1])
        if h["type"] == P.HELLO:
            self._on_hello(ident, h, body, bidder)
            return
        if bidder is None:
            self._error(ident, P.E_NOT_HELLO, "say hello with a 'claim' on the allow-list first (plain mode)", h)
            return
        self.routes[bidder] = ident
        if h["type"] == P.STATUS:
            self._on_status(ident, h)
        else:
            self._on_bid(ident, h, body, bidder)

    def _on_hello(self, ident: bytes, h: dict, body: dict, bidder: str | None) -> None:
        if self.s.curve:
            if bidder is None:  # cannot happen once ZAP admitted the key; defensive
                self._error(ident, P.E_UNKNOWN_BIDDER, "this key is not on the allow-list", h)
                return
            if "claim" in body and body["claim"] != bidder:
                self._error(ident, P.E_UNKNOWN_BIDDER,
                            f"claim {body['claim']!r} does not match the authenticated bidder {bidder!r}", h)
                return
        else:
            claim = body.get("claim")
            if claim is None or claim not in self.s.allow.by_id:
                self._error(ident, P.E_UNKNOWN_BIDDER, "plain mode: hello needs 'claim': an id on the allow-list", h)
                return
            bidder = claim
            self.plain_ids[ident] = claim
        self.routes[bidder] = ident
        entry = self.s.allow.by_id[bidder]
        open_r = [r for r in self.rounds.values() if r.state == P.OPEN and bidder in r.eligible]
        self._reply(ident, P.WELCOME, {"bidder_id": bidder, "role": entry.role,
                                       "round_id": open_r[-1].round_id if open_r else 0,
                                       "server_time_ns": time.time_ns(), "max_body_bytes": P.MAX_BODY_BYTES}, h)
        for r in open_r:
            self._announce(r, only=[ident])

    def _on_status(self, ident: bytes, h: dict) -> None:
        rid = h["round_id"]
        r = self.rounds.get(rid) if rid else (self.rounds[max(self.rounds)] if self.rounds else None)
        if r is None and rid:
            row = self.ledger.round(rid)
            if row is None:
                self._error(ident, P.E_NO_ROUND, f"round {rid} is unknown", h)
                return
            body = {"round_id": rid, "state": row.state, "deadline_ms": 0, "n_bids": len(self.ledger.bids(rid))}
            out = self.ledger.outcome(rid)
            if out is not None and row.state == P.PUBLISHED:
                body["result"] = {"round_id": rid, "state": row.state, "outcome": out[0], "schedule": out[1]}
            self._reply(ident, P.STATUS_REPLY, body, h)
            return
        if r is None:
            self._reply(ident, P.STATUS_REPLY, {"round_id": 0, "state": "NONE", "deadline_ms": 0, "n_bids": 0}, h)
            return
        body = {"round_id": r.round_id, "state": r.state,
                "deadline_ms": max(0, int((r.deadline_mono - time.monotonic()) * 1000)) if r.state == P.OPEN else 0,
                "n_bids": -1 if r.state == P.OPEN else len(r.bids)}  # sealed: no count while open
        if r.state == P.PUBLISHED and r.result_body is not None:
            import msgpack

            body["result"] = msgpack.unpackb(r.result_body, raw=False)
        self._reply(ident, P.STATUS_REPLY, body, h)

    def _on_bid(self, ident: bytes, h: dict, body: dict, bidder: str) -> None:
        rid = h["round_id"]
        r = self.rounds.get(rid)
        if r is None:
            if self.ledger.round(rid) is not None:  # an old round, forgotten from memory
                old = self.ledger.bid(rid, bidder)
                if old is not None and old.bid_id == h["bid_id"]:
                    if bytes(old.body) == canonical_bytes(body):
                        self._reply(ident, P.ACK, {"receipt": old.receipt, "duplicate": True}, h)
                    else:
                        self._error(ident, P.E_BID_ID_REUSE, f"bid_id {h['bid_id']!r} was used for a different bid", h)
                else:
                    self.stats["late"] += 1
                    self._reply(ident, P.LATE, {"state": self.ledger.round(rid).state, "reason": "round is over"}, h)
                return
            self._error(ident, P.E_NO_ROUND, f"round {rid} is unknown", h)
            return
        role = self.s.allow.by_id[bidder].role
        kind = h["type"]
        if (kind == P.BID_AV) != (role == P.ROLE_AV):
            self._error(ident, P.E_ROLE, f"{bidder} has role {role!r}; it cannot send {kind}", h)
            return
        if role == P.ROLE_DRIVING and "contract" not in body:
            self._error(ident, P.E_ROLE, "the driving simulator accepts the contract: send {'contract': true}", h)
            return
        if role == P.ROLE_SIM and "values" not in body:
            self._error(ident, P.E_ROLE, "a traffic simulator bids 'values' per AV and task", h)
            return
        canon = canonical_bytes(body)
        prev = r.bids.get(bidder) or self._pending_by.get((rid, bidder))
        if prev is not None:
            if prev.bid_id != h["bid_id"]:
                self._error(ident, P.E_ALREADY_BID, f"{bidder} already bid {prev.bid_id!r} in round {rid}; "
                                                    "one bid per round (the first is final)", h)
            elif prev.canon != canon:
                self._error(ident, P.E_BID_ID_REUSE, f"bid_id {h['bid_id']!r} was used for a different bid", h)
            elif prev.receipt:
                self.stats["acks"] += 1
                self._reply(ident, P.ACK, {"receipt": prev.receipt, "duplicate": True}, h)
            else:  # identical re-send of a bid in the current batch: ack it after the commit too
                self._pending.append((r, bidder, ident, h, None, prev))
            return
        if r.state != P.OPEN or time.monotonic() >= r.deadline_mono:
            self.stats["late"] += 1
            self._reply(ident, P.LATE, {"state": r.state if r.state != P.OPEN else P.CLOSED,
                                        "reason": "the round's deadline has passed"}, h)
            return
        if bidder not in r.eligible:
            self._error(ident, P.E_NOT_ELIGIBLE, f"{bidder} is not a participant of round {rid}", h)
            return
        problem = _check_bid_against_round(kind, body, r)
        if problem:
            self._error(ident, P.E_BAD_BODY, problem, h)
            return
        bid = _Bid(h["bid_id"], kind, body, canon, "")
        self._pending.append((r, bidder, ident, h, bid, bid))
        self._pending_by[(rid, bidder)] = bid

    def _commit_pending(self) -> None:
        pending, self._pending = self._pending, []
        self._pending_by = {}
        new = [p for p in pending if p[4] is not None]
        receipts = self.ledger.add_bids([(p[0].round_id, p[1], p[4].bid_id, p[4].kind, p[4].canon) for p in new])
        self.stats["commits"] += 1
        for p, rc in zip(new, receipts):
            p[4].receipt = rc
            p[0].bids[p[1]] = p[4]
            p[0].add_to_matrix(p[1], p[4].body)
        for r, bidder, ident, h, fresh, bid in pending:  # acks only now, after the commit
            self.stats["acks"] += 1
            self._reply(ident, P.ACK, {"receipt": bid.receipt, "duplicate": fresh is None}, h)


def _warm_up() -> None:
    """Pay once, at start, the first-call costs of the close -> publish path: the lazy imports
    of the clearing stack and numpy's first calls, by clearing a tiny sampled market in memory
    (no ledger, no sockets). Measured: without it the first round's close -> publish took
    ~10 ms instead of ~2 ms (60 bidders), which alone set the p99."""
    from carla_mr.io import to_jsonable
    from carla_mr.market.clearing import clear_round, sample_round, sim_bid_rows, truthful_bids

    av, sims = ["av-a", "av-b"], ["sim-d", "sim-1", "sim-2"]
    try:
        pub, priv = sample_round(len(av), len(sims), 1, seed=0)
        bids = truthful_bids(priv, av, sims)
        row = {a: i for i, a in enumerate(av)}
        mat = np.zeros((len(av), 1, len(sims)))
        for k, sim in enumerate(sims[1:], 1):
            j, arr = sim_bid_rows(bids[sim][1]["values"], row, 1)
            mat[j, :, k] = arr
        from carla_mr.market.mechanisms import MECHANISMS

        for m in MECHANISMS:
            try:
                out, sched = clear_round(round_id=1, mechanism=m, scoring="reported", public=pub, params={},
                                         av_ids=av, sim_ids=sims, n_tasks=1, bids=bids, sim_matrix=mat)
            except InputError:
                continue
            encode_body({"outcome": to_jsonable(out), "schedule": sched.to_dict()})
    except Exception:  # noqa: BLE001 - a warm-up never stops the service; the real round reports errors
        pass


def _check_bid_against_round(kind: str, body: dict, r: _Round) -> str | None:
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


class _AllowListAuthenticator:
    """ZAP for CURVE: admit exactly the allow-list's keys, User-Id = the bidder id."""

    def __new__(cls, ctx, allow: AllowList):
        from zmq.auth.thread import ThreadAuthenticator

        class _Auth(ThreadAuthenticator):
            def callback(self, domain, key):  # credentials provider
                return key in allow.by_key

            def curve_user_id(self, client_public_key: bytes) -> str:
                from zmq.utils import z85

                return allow.by_key[z85.encode(client_public_key)].id

        return _Auth(ctx)

"""MarketSession: the auction as the scenario runner uses it (one auctioneer, in-process bidders).

    with MarketSession(config, run_dir, seed, av_ids=30) as market:
        res = market.run_round()                       # a round sampled from the market model
        res = market.run_round(public=pub, v=v, U=U, s_dt=s, e_dt=e, d=d)   # the world's data
        res.outcome["winner_id"], res.schedule.arrays(), res.receipts

The auctioneer runs in a background thread bound to ``config.host`` (127.0.0.1) on a free
port, with CURVE (fresh in-memory keys, an allow-list of exactly the session's bidders)
unless ``config.curve`` is false. Every AV and simulator has its own DEALER client, so the
bids really cross ZeroMQ, are committed to the ledger ``RUN_DIR/market/ledger.sqlite`` and
acknowledged, and the round clears with the market's pure function. Each round's schedule
is written to ``RUN_DIR/market/schedules/round-NNNNNN.json`` (atomically).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from carla_mr.errors import InputError, RunError
from carla_mr.io import atomic_write_json
from carla_mr.market import protocol as P
from carla_mr.market.auctioneer import Auctioneer, AuctioneerSettings
from carla_mr.market.bidders import AVBidder, BidderClient, SimulatorBidder
from carla_mr.market.clearing import make_public, sample_round
from carla_mr.market.endpoints import tcp_endpoint
from carla_mr.config.market import MarketConfig
from carla_mr.market.keys import in_memory_keyring
from carla_mr.market.schedule import Schedule


@dataclass
class RoundResult:
    """One published round as the session saw it."""

    round_id: int
    outcome: dict                 # clearing.clear_round's dict; outcome["core"] is Outcome.to_dict()
    schedule: Schedule            # the GPU-time schedule (numpy arrays)
    receipts: dict[str, str]      # bidder id -> receipt (hash of its ledger event)
    chain_hash: str               # ledger chain hash after the round was cleared
    ledger_path: Path
    late: list[str] = field(default_factory=list)          # bidders answered LATE
    refused: dict[str, str] = field(default_factory=dict)  # bidder id -> error code
    delivered: int = 0            # participants that received the result
    latency_s: float = 0.0        # open -> result delivered to every bidder, seconds
    server_times: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"round_id": self.round_id, "outcome": self.outcome, "schedule": self.schedule.to_dict(),
                "receipts": self.receipts, "chain_hash": self.chain_hash, "ledger": str(self.ledger_path),
                "late": self.late, "refused": self.refused, "delivered": self.delivered,
                "latency_s": self.latency_s}


def _ids(spec: int | list[str], prefix: str) -> list[str]:
    if isinstance(spec, int):
        if spec < 1:
            raise InputError("needs at least one AV", field="av_ids")
        return [f"{prefix}-{i:03d}" for i in range(spec)]
    ids = [str(a) for a in spec]
    if not ids or len(set(ids)) != len(ids) or not all(P.ID_RE.match(a) for a in ids):
        raise InputError(f"AV ids must be distinct and match {P.ID_RE.pattern}", field="av_ids")
    return ids


class MarketSession:
    """Auctioneer + bidder clients for one run. ``close()`` is idempotent."""

    def __init__(self, config: MarketConfig | None, run_dir: str | Path, seed: int = 0, *,
                 av_ids: int | list[str] = 30, n_tasks: int | None = None, model_params: dict | None = None,
                 log=None):
        self.config = config or MarketConfig()
        self.run_dir = Path(run_dir)
        self.seed = int(seed)
        self.av_ids = _ids(av_ids, "av")
        self.n_tasks = int(n_tasks or self.config.tasks_per_av)
        self.sim_ids = [f"sim-{k:03d}" for k in range(self.config.num_simulators)]
        self.params = {"model": dict(model_params or {})}
        if not self.config.generative_ai:
            self.params["model"]["genai"] = False
        self.dir = self.run_dir / "market"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ledger_path = self.dir / "ledger.sqlite"
        cfg = self.config
        self.server_key, self.keys, self.allow = in_memory_keyring(self.av_ids, self.sim_ids[1:], self.sim_ids[0])
        if not cfg.curve:
            self.server_key = None
        endpoint = tcp_endpoint(cfg.host, cfg.port or "*")
        self.auctioneer = Auctioneer(AuctioneerSettings(
            ledger_path=self.ledger_path, allow=self.allow, endpoint=endpoint, curve=cfg.curve,
            server_key=self.server_key, mechanism=cfg.mechanism, scoring=cfg.scoring,
            deadline_s=cfg.round_deadline_s, early_close=cfg.early_close, log=log))
        self._closed = False
        self.clients: dict[str, BidderClient] = {}
        self.rounds: list[RoundResult] = []
        self.ctx = zmq.Context()
        try:
            self.endpoint = self.auctioneer.start()
            for b in self.av_ids + self.sim_ids:
                cls = AVBidder if b in self.av_ids else SimulatorBidder
                c = cls(self.endpoint, b, keypair=self.keys[b],
                        server_public=self.server_key.public if cfg.curve else None, curve=cfg.curve,
                        handshake_timeout_s=cfg.handshake_timeout_s, request_timeout_s=cfg.request_timeout_s,
                        retries=cfg.retries, ctx=self.ctx)
                self.clients[b] = c
                c._open()
            self._handshake_all()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "MarketSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for c in self.clients.values():
            c.close()
        self.auctioneer.stop()
        self.ctx.term()

    def summary(self) -> dict[str, Any]:
        rev = [r.outcome.get("core", {}) or {} for r in self.rounds]
        return {"rounds": len(self.rounds), "ledger": str(self.ledger_path), "endpoint": self.endpoint,
                "curve": self.config.curve, "mechanism": self.config.mechanism,
                "revenue": float(sum(x.get("revenue", 0.0) for x in rev)),
                "total_surplus": float(sum(x.get("total", 0.0) for x in rev)),
                "gpu_seconds": float(sum(r.schedule.total_s for r in self.rounds)),
                "late": sum(len(r.late) for r in self.rounds)}

    # ------------------------------------------------------------------ internals
    def _gather(self, pending: dict[str, int], timeout: float) -> dict[str, Any]:
        """Wait for the replies to ``pending`` {bidder: seq} on every client at once."""
        got: dict[str, Any] = {}
        poller = zmq.Poller()
        owner = {}
        for b in pending:
            sock = self.clients[b].sock
            poller.register(sock, zmq.POLLIN)
            owner[sock] = b
        end = time.monotonic() + timeout
        while len(got) < len(pending):
            left = end - time.monotonic()
            if left <= 0:
                break
            for sock, _ in poller.poll(int(max(1, left * 1000))):
                b = owner[sock]
                c = self.clients[b]
                c.handle_incoming()
                if b not in got and pending[b] in c.replies:
                    got[b] = c.replies.pop(pending[b])
                    poller.unregister(sock)
        return got

    def _handshake_all(self) -> None:
        pending = {}
        for b, c in self.clients.items():
            body = {"agent": "carla_mr.session"}
            if not self.config.curve:
                body["claim"] = b
            pending[b] = c.send(P.HELLO, body)
        got = self._gather(pending, self.config.handshake_timeout_s)
        for b, c in self.clients.items():
            rep = got.get(b)
            if rep is None:
                c.connect()  # one more try, raising a clear error on failure
            elif rep.type != P.WELCOME:
                raise RunError(f"{b}: hello refused: {rep.body}")
            else:
                c.welcome = rep.body

    # ------------------------------------------------------------------ rounds
    def run_round(self, *, public: dict | None = None, v: Any = None, U: Any = None, s_dt: Any = None,
                  e_dt: Any = None, d: Any = None, deadline_s: float | None = None) -> RoundResult:
        """Run one round over ZeroMQ and return it once every participant has the result.

        public: make_public(...) data for the session's AVs (None: sampled from the model with
          seed (seed, round number)). v (I,) the AVs' bids in units (NaN = the AV is absent);
          U (I, N, K+1) the simulators' values per unit time (column 0 unused: contract);
          s_dt (MB), e_dt (Gcycles/MB), d (s), each (I, N): the AVs' tasks. Any array left None
          comes from the model sample. Prices are rounded to micro-units on the wire.
        """
        if self._closed:
            raise RunError("the market session is closed")
        public, v, U, s_dt, e_dt, d = self._round_data(public, v, U, s_dt, e_dt, d)
        t0 = time.monotonic()
        ann = self.auctioneer.open_round(public, av_ids=self.av_ids, sim_ids=self.sim_ids, n_tasks=self.n_tasks,
                                         deadline_s=deadline_s, params=self.params)
        rid = int(ann["round_id"])
        bodies = self._bodies(rid, v, U, s_dt, e_dt, d)
        got, unanswered = self._send_bids(rid, bodies)
        wait = (deadline_s or self.config.round_deadline_s) + self.config.request_timeout_s * 2 + 5.0
        if self.config.early_close:  # every bid this session sends has been answered: close now
            self.auctioneer.close_round(rid, timeout=wait)
        view = self.auctioneer.wait_published(rid, timeout=wait)
        delivered = self._await_results(rid, list(bodies), timeout=self.config.request_timeout_s)
        outcome = view["outcome"]
        refused = {b: r.body.get("code", "?") for b, r in got.items() if r.type == P.ERROR}
        refused.update({b: "no_reply" for b in unanswered})
        res = RoundResult(round_id=rid, outcome=outcome, schedule=Schedule.from_dict(view["schedule"]),
                          receipts={b: r.body["receipt"] for b, r in got.items() if r.type == P.ACK},
                          chain_hash=view["chain_hash"], ledger_path=self.ledger_path,
                          late=sorted(b for b, r in got.items() if r.type == P.LATE), refused=refused,
                          delivered=delivered, latency_s=time.monotonic() - t0, server_times=view.get("times", {}))
        atomic_write_json(self.dir / "schedules" / f"round-{rid:06d}.json",
                          {**view["schedule"], "winner_id": outcome.get("winner_id"),
                           "payment_micro": outcome.get("payment_micro")})
        self.rounds.append(res)
        return res

    def _round_data(self, public, v, U, s_dt, e_dt, d):
        """The round's checked arrays; whatever is None comes from a model sample with seed
        (seed, round number)."""
        I, N, K1 = len(self.av_ids), self.n_tasks, len(self.sim_ids)
        if public is None or any(x is None for x in (v, U, s_dt, e_dt, d)):
            spub, priv = sample_round(I, K1, N, seed=(self.seed, len(self.rounds) + 1), params=self.params)
            public = spub if public is None else public
            v = priv["v"] if v is None else v
            U = priv["U"] if U is None else U
            s_dt = priv["s_dt"] if s_dt is None else s_dt
            e_dt = priv["e_dt"] if e_dt is None else e_dt
            d = priv["d"] if d is None else d
        else:
            try:
                public = make_public(**{k: public[k] for k in public})  # re-check the caller's data
            except TypeError as exc:
                raise InputError(f"unknown or missing public array: {exc}; build it with make_public()",
                                 field="run_round.public") from exc
        v = _arr(v, (I,), "v", allow_nan=True)
        U = _arr(U, (I, N, K1), "U")
        s_dt, e_dt, d = (_arr(x, (I, N), n) for x, n in ((s_dt, "s_dt"), (e_dt, "e_dt"), (d, "d")))
        return public, v, U, s_dt, e_dt, d

    def _bodies(self, rid: int, v, U, s_dt, e_dt, d) -> dict[str, tuple[str, dict, str]]:
        """Every bidder's (kind, body, bid_id) for round ``rid`` (absent AVs: none; the driving
        simulator confirms its contract)."""
        bodies: dict[str, tuple[str, dict, str]] = {}
        for i, a in enumerate(self.av_ids):
            if not np.isfinite(v[i]):
                continue
            body = AVBidder.body(int(round(max(0.0, float(v[i])) * P.MICRO)),
                                 [{"size": s_dt[i, n], "cycles": e_dt[i, n], "deadline": d[i, n]}
                                  for n in range(self.n_tasks)])
            bodies[a] = (P.BID_AV, body, f"r{rid}-{a}")
        micro = np.round(np.maximum(U, 0.0) * P.MICRO).astype(np.int64)
        for k, s in enumerate(self.sim_ids):
            if k == 0:
                bodies[s] = (P.BID_SIM, {"contract": True}, f"r{rid}-{s}")
            else:
                bodies[s] = (P.BID_SIM, {"values": {a: micro[i, :, k].tolist() for i, a in enumerate(self.av_ids)
                                                    if np.isfinite(v[i])}}, f"r{rid}-{s}")
        return bodies

    def _send_bids(self, rid: int, bodies: dict[str, tuple[str, dict, str]]) -> tuple[dict[str, Any], list[str]]:
        """Send every bid at once and gather the replies; Lazy Pirate (same bid_id: idempotent)
        for anything unanswered. Returns (replies by bidder, bidders that never answered)."""
        pending = {b: self.clients[b].send(kind, body, round_id=rid, bid_id=bid_id)
                   for b, (kind, body, bid_id) in bodies.items()}
        got = self._gather(pending, self.config.request_timeout_s)
        for b in pending:
            if b not in got:
                kind, body, bid_id = bodies[b]
                try:
                    got[b] = self.clients[b].request(kind, body, round_id=rid, bid_id=bid_id)
                except RunError:
                    pass
        return got, [b for b in pending if b not in got]

    def _await_results(self, rid: int, bidders: list[str], timeout: float) -> int:
        end = time.monotonic() + timeout
        poller = zmq.Poller()
        owner = {}
        missing = set()
        for b in bidders:
            c = self.clients[b]
            c.handle_incoming()
            if rid not in c.results:
                poller.register(c.sock, zmq.POLLIN)
                owner[c.sock] = b
                missing.add(b)
        while missing and time.monotonic() < end:
            for sock, _ in poller.poll(int(max(1, (end - time.monotonic()) * 1000))):
                b = owner[sock]
                self.clients[b].handle_incoming()
                if rid in self.clients[b].results:
                    missing.discard(b)
                    poller.unregister(sock)
        for b in bidders:  # results are per round; keep the clients' memory bounded
            self.clients[b].results.pop(rid, None)
            self.clients[b].announces.pop(rid, None)
        return len(bidders) - len(missing)


def _arr(x: Any, shape: tuple[int, ...], name: str, *, allow_nan: bool = False) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.shape != shape:
        raise InputError(f"must have shape {shape}, got {a.shape}", field=f"run_round.{name}")
    bad = ~np.isfinite(a) if not allow_nan else np.isinf(a)
    if bad.any() or (np.nan_to_num(a, nan=0.0) < 0).any():
        raise InputError("must be finite and >= 0" + (" (NaN = absent)" if allow_nan else ""),
                         field=f"run_round.{name}")
    return a

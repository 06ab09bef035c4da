"""A load generator for the auctioneer: many bidders in one process, round after round.

:func:`run_load` connects one DEALER per allow-listed bidder at once (CURVE), says hello, and
then, event-driven, answers every ``announce`` with a bid (AVs: a price and one task per
window; traffic simulators: a value for every AV; the driving simulator: its contract) and
collects the acks and results. It counts what could go wrong: bids answered ``late`` or
``error``, bids never answered, results never delivered. With ``server_pid`` it samples the
server's resident memory (Linux ``/proc/PID/status`` VmRSS) after every round.

Used by ``bench/bench_auction.py --load`` (1000 bidders x 100 rounds) and a slow test.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import msgpack
import numpy as np
import zmq

from carla_mr.market import protocol as P
from carla_mr.market.codec import encode_body, encode_header
from carla_mr.market.endpoints import is_ipv6_endpoint
from carla_mr.market.keys import AllowList, Keypair


@dataclass
class LoadReport:
    """What a load run saw. ``rss_mb``: the server's RSS after each round (MB)."""

    bidders: int
    rounds: int = 0
    bids_sent: int = 0
    acks: int = 0
    late: int = 0
    errors: int = 0
    unanswered: int = 0
    results: int = 0
    missing_results: int = 0
    seconds: float = 0.0
    handshake_s: float = 0.0
    close_to_all_ms: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)

    @property
    def lost(self) -> int:
        """Bids or results that did not make it (late, refused, unanswered, undelivered)."""
        return self.late + self.errors + self.unanswered + self.missing_results

    def to_dict(self) -> dict:
        lat = np.asarray(self.close_to_all_ms) if self.close_to_all_ms else np.zeros(1)
        rss = np.asarray(self.rss_mb) if self.rss_mb else np.zeros(0)
        half = rss[len(rss) // 2:] if rss.size else rss
        return {"bidders": self.bidders, "rounds": self.rounds, "bids_sent": self.bids_sent, "acks": self.acks,
                "late": self.late, "errors": self.errors, "unanswered": self.unanswered, "results": self.results,
                "missing_results": self.missing_results, "lost": self.lost, "seconds": round(self.seconds, 2),
                "handshake_s": round(self.handshake_s, 2),
                "close_to_all_ms_p50": float(np.percentile(lat, 50)), "close_to_all_ms_p99": float(np.percentile(lat, 99)),
                "rss_mb_first": float(rss[0]) if rss.size else None, "rss_mb_max": float(rss.max()) if rss.size else None,
                "rss_mb_steady_max": float(half.max()) if half.size else None,
                "rss_mb_last": float(rss[-1]) if rss.size else None}


def rss_mb(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MB (Linux), or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def bid_bodies(allow: AllowList, n_tasks: int = 1, seed: int = 0) -> dict[str, tuple[str, bytes]]:
    """(kind, encoded body) per bidder: random but fixed prices, tasks and values."""
    rng = np.random.default_rng(seed)
    avs = allow.av_ids
    out: dict[str, tuple[str, bytes]] = {}
    for a in avs:
        tasks = [{"size": float(rng.uniform(0.01, 0.5)), "cycles": float(rng.uniform(0.1, 2.0)),
                  "deadline": float(rng.uniform(1.0, 1.5))} for _ in range(n_tasks)]
        out[a] = (P.BID_AV, encode_body({"price": int(rng.integers(1, 1_000_000)), "tasks": tasks}))
    for k, s in enumerate(allow.sim_ids):
        if k == 0:
            out[s] = (P.BID_SIM, encode_body({"contract": True}))
        else:
            vals = rng.integers(0, 2_000_000, (len(avs), n_tasks))
            out[s] = (P.BID_SIM, encode_body({"values": {a: [int(x) for x in vals[i]] for i, a in enumerate(avs)}}))
    return out


def run_load(endpoint: str, allow: AllowList, keys: dict[str, Keypair], server_public: bytes, *, rounds: int,
             n_tasks: int = 1, timeout_s: float = 120.0, server_pid: int | None = None,
             log: Callable[[str], None] | None = None) -> LoadReport:
    """Bid in ``rounds`` consecutive announced rounds with every bidder of ``allow``."""
    log = log or (lambda msg: None)
    ids = [e.id for e in allow.entries]
    bodies = bid_bodies(allow, n_tasks)
    rep = LoadReport(bidders=len(ids))
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, max(1024, 2 * len(ids) + 64))
    socks, owner = [], {}
    try:
        t0 = time.monotonic()
        for b in ids:
            s = ctx.socket(zmq.DEALER)
            s.linger = 0
            s.rcvhwm = s.sndhwm = 10_000
            s.ipv6 = is_ipv6_endpoint(endpoint)
            s.setsockopt(zmq.HANDSHAKE_IVL, int(timeout_s * 1000))
            s.curve_secretkey, s.curve_publickey, s.curve_serverkey = keys[b].secret, keys[b].public, server_public
            s.connect(endpoint)
            s.send_multipart([encode_header(P.HELLO, seq=1), encode_body({"agent": "load"})])
            socks.append(s)
            owner[s] = b
        _drive(socks, owner, bodies, rep, rounds, timeout_s, server_pid, log, t0)
    finally:
        for s in socks:
            s.close(0)
        ctx.term()
    return rep


def _drive(socks, owner, bodies, rep: LoadReport, rounds: int, timeout_s: float, server_pid, log, t0) -> None:
    """The event loop: answer announces with bids, count replies, finish a round on its results."""
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    welcomed: set = set()
    bid_in: dict[int, set] = {}      # round -> bidders that bid
    answered: dict[int, set] = {}    # round -> bidders whose bid was answered
    got: dict[int, set] = {}         # round -> bidders with the result
    closed_ns: dict[int, int] = {}
    done: list[int] = []
    end = time.monotonic() + timeout_s
    while len(done) < rounds:
        if time.monotonic() > end:
            raise RuntimeError(f"load: {len(done)}/{rounds} rounds within {timeout_s} s")
        for s, _ in poller.poll(1000):
            while True:
                try:
                    hdr, body = s.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                h, b = msgpack.unpackb(hdr), msgpack.unpackb(body)
                who, t = owner[s], h["type"]
                if t == P.WELCOME:
                    welcomed.add(who)
                    if len(welcomed) == len(socks):
                        rep.handshake_s = time.monotonic() - t0
                elif t == P.ANNOUNCE:
                    rid = b["round_id"]
                    if who not in bid_in.setdefault(rid, set()):
                        kind, data = bodies[who]
                        s.send_multipart([encode_header(kind, round_id=rid, bid_id=f"r{rid}", seq=2 + rid), data])
                        bid_in[rid].add(who)
                        rep.bids_sent += 1
                elif t in (P.ACK, P.LATE, P.ERROR):
                    answered.setdefault(h["round_id"], set()).add(who)
                    rep.acks += t == P.ACK
                    rep.late += t == P.LATE
                    rep.errors += t == P.ERROR
                elif t == P.RESULT:
                    rid = b["round_id"]
                    got.setdefault(rid, set()).add(who)
                    closed_ns[rid] = b["closed_at_ns"]
                    if len(got[rid]) == len(socks) and rid not in done:
                        done.append(rid)
                        rep.close_to_all_ms.append((time.time_ns() - closed_ns[rid]) / 1e6)
                        if server_pid is not None:
                            mb = rss_mb(server_pid)
                            if mb is not None:
                                rep.rss_mb.append(mb)
                        if len(done) % 10 == 0:
                            log(f"load: {len(done)}/{rounds} rounds, RSS {rep.rss_mb[-1] if rep.rss_mb else '?'} MB")
    rep.rounds = len(done)
    rep.results = sum(len(got[r]) for r in done)
    rep.missing_results = sum(len(socks) - len(got.get(r, ())) for r in done)
    rep.unanswered = sum(len(bid_in.get(r, set()) - answered.get(r, set())) for r in done)
    rep.seconds = time.monotonic() - t0


def start_serve(keys_dir: Path, out: Path, *, rounds: int, deadline_s: float, wait_bidders_s: float = 120.0,
                extra: tuple[str, ...] = (), timeout_s: float = 60.0):
    """``carla-mr market serve`` in a child process on a free loopback port (CURVE, autonomous
    rounds); returns (Popen, endpoint) once it listens. The caller stops it (it exits by itself
    after ``rounds`` published rounds plus its linger time)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "carla_mr", "market", "serve", "--keys", str(keys_dir), "--out", str(out),
           "--bind", "tcp://127.0.0.1:*", "--rounds", str(rounds), "--deadline", str(deadline_s),
           "--wait-bidders", str(wait_bidders_s), "--linger", "1", "--json", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + timeout_s
    ep = Path(out) / "endpoint.txt"
    while time.monotonic() < end:
        if ep.exists():
            return proc, ep.read_text().strip()
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("serve did not start")


def keyring(keys_dir: Path, n_bidders: int) -> tuple[AllowList, dict[str, Keypair], bytes]:
    """Write a server keypair and ``n_bidders`` bidders (half AVs, the rest simulators, sim-0000
    driving) to ``keys_dir``; returns (allow-list, bidders' keypairs, server public key)."""
    from carla_mr.market.keys import load_keypair, make_keyring

    n_av = n_bidders // 2
    avs = [f"av-{i:04d}" for i in range(n_av)]
    sims = [f"sim-{k:04d}" for k in range(1, n_bidders - n_av)]
    allow = make_keyring(keys_dir, avs, sims, "sim-0000")
    keys = {e.id: load_keypair(Path(keys_dir) / f"{e.id}.key_secret") for e in allow.entries}
    return allow, keys, load_keypair(Path(keys_dir) / "server.key", need_secret=False).public

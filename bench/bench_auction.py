"""Auction round latency over ZeroMQ: close of bidding -> result delivered to every bidder.

For 60 and 1000 bidders (half AVs, half simulators), with and without CURVE, the auctioneer
runs in its own process (ledger on disk, WAL + synchronous=FULL); this process holds one
DEALER per bidder, sends every bid (pipelined), and records when the last bidder has the
result. Latency = that moment - ``closed_at_ns`` stamped by the auctioneer when it closed the
round (wall clock, same host); the round closes early as soon as every bidder has bid.

Baseline, same run, same sockets and CURVE setting: a bare ROUTER that, once it has a
request from every DEALER, sends each a payload of the size of the auction's result
(raw fan-out round-trip, no decoding, no clearing, no ledger). Ratio = auction / raw.

Rows: p50 and p99 per configuration, plus 60 bidders with ``publish_first`` (results sent
before the outcome's fsync). Target: a 60-bidder round clears and publishes within 5 ms p99.

Run: ``python bench/bench_auction.py [--quick]``.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _server_main(conn, cfg: dict) -> None:
    """Child process: the auctioneer (mode 'auction') or a bare ROUTER fan-out (mode 'raw')."""
    import zmq

    from carla_mr.market.keys import AllowEntry, AllowList, Keypair

    allow = AllowList([AllowEntry(*e) for e in cfg["allow"]])
    server = Keypair(*cfg["server"])
    if cfg["mode"] == "auction":
        from carla_mr.market.auctioneer import Auctioneer, AuctioneerSettings
        from carla_mr.market.clearing import sample_round

        a = Auctioneer(AuctioneerSettings(ledger_path=Path(cfg["ledger"]), allow=allow, curve=cfg["curve"],
                                          server_key=server if cfg["curve"] else None, deadline_s=60.0,
                                          publish_first=cfg["publish_first"]))
        conn.send(a.start())
        pub, _ = sample_round(len(allow.av_ids), len(allow.sim_ids), 1, seed=cfg["seed"])
        while True:
            op = conn.recv()
            if op == "open":
                ann = a.open_round(pub, av_ids=allow.av_ids, sim_ids=allow.sim_ids, n_tasks=1)
                conn.send(ann["round_id"])
            elif op == "times":
                conn.send(dict(a.round_times))
            else:
                a.stop()
                conn.send("bye")
                return
    # raw ROUTER/DEALER fan-out with the same transport security
    ctx = zmq.Context()
    auth = None
    s = ctx.socket(zmq.ROUTER)
    s.linger = 0
    s.sndhwm = s.rcvhwm = 100_000
    if cfg["curve"]:
        from carla_mr.market.zap import ZAP_DOMAIN, ZapHandler

        auth = ZapHandler(ctx, allow)
        auth.start()
        s.zap_domain = ZAP_DOMAIN.encode()
        s.curve_server = True
        s.curve_publickey, s.curve_secretkey = server.public, server.secret
    s.bind("tcp://127.0.0.1:*")
    conn.send(s.getsockopt_string(zmq.LAST_ENDPOINT))
    n, size, rounds = cfg["n"], cfg["size"], cfg["rounds"]
    import msgpack

    for _ in range(rounds):
        seen = []
        while len(seen) < n:
            seen.append(s.recv_multipart()[0])
        t_last = time.time_ns()
        payload = msgpack.packb({"t": t_last, "pad": b"\x00" * max(0, size - 20)})
        for ident in seen:
            s.send_multipart([ident, b"h", payload])
    conn.recv()
    s.close(0)
    if auth is not None:
        auth.stop()
    ctx.term()
    conn.send("bye")


def _dealers(ctx, endpoint: str, ids: list[str], keys: dict, server_public: bytes, curve: bool):
    import zmq

    socks = []
    for b in ids:
        s = ctx.socket(zmq.DEALER)
        s.linger = 0
        s.rcvhwm = s.sndhwm = 100_000
        if curve:
            s.curve_secretkey, s.curve_publickey, s.curve_serverkey = keys[b].secret, keys[b].public, server_public
        s.connect(endpoint)
        socks.append(s)
    return socks


def _collect(socks, want, timeout: float = 120.0) -> list[tuple[int, list]]:
    """Poll every socket until ``want(frames)`` is true once per socket; returns (recv_ns, frames)."""
    import zmq

    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    got: dict = {}
    end = time.monotonic() + timeout
    while len(got) < len(socks):
        if time.monotonic() > end:
            raise RuntimeError(f"only {len(got)}/{len(socks)} replies within {timeout} s")
        for s, _ in poller.poll(1000):
            while True:
                try:
                    fr = s.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if s not in got and want(fr):
                    got[s] = (time.time_ns(), fr)
    return [got[s] for s in socks]


def _percentiles(xs: list[float]) -> tuple[float, float]:
    import numpy as np

    a = np.asarray(xs, float)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def bench_config(n: int, curve: bool, rounds: int, publish_first: bool = False, seed: int = 1) -> dict:
    import msgpack
    import zmq

    from carla_mr.market import protocol as P
    from carla_mr.market.clearing import sample_round, truthful_bids
    from carla_mr.market.codec import decode_header, encode_body, encode_header
    from carla_mr.market.keys import in_memory_keyring

    n_av = n // 2
    av = [f"av-{i:04d}" for i in range(n_av)]
    sims = [f"sim-{k:04d}" for k in range(1, n - n_av)]
    server, keys, allow = in_memory_keyring(av, sims, "sim-0000")
    allow_t = [(e.id, e.role, e.public_key) for e in allow.entries]
    ids = [e.id for e in allow.entries]
    _, priv = sample_round(n_av, len(allow.sim_ids), 1, seed=seed)
    bids = truthful_bids(priv, allow.av_ids, allow.sim_ids)
    bodies = {b: (k, encode_body(body)) for b, (k, body) in bids.items()}
    sctx = mp.get_context("spawn")
    out: dict = {}
    with tempfile.TemporaryDirectory(dir=str(REPO.parent) if (REPO.parent).is_dir() else None) as d:
        # --- the auction
        parent, child = sctx.Pipe()
        p = sctx.Process(target=_target(), args=(child, {
            "mode": "auction", "allow": allow_t, "server": (server.public, server.secret), "curve": curve,
            "ledger": str(Path(d) / "ledger.sqlite"), "seed": seed, "publish_first": publish_first}), daemon=True)
        p.start()
        endpoint = parent.recv()
        ctx = zmq.Context()
        ctx.set(zmq.MAX_SOCKETS, 8192)
        socks = _dealers(ctx, endpoint, ids, keys, server.public, curve)
        for b, s in zip(ids, socks):
            hello = {"agent": "bench"} if curve else {"agent": "bench", "claim": b}
            s.send_multipart([encode_header(P.HELLO, seq=1), encode_body(hello)])
        _collect(socks, lambda fr: decode_header(fr[0], from_server=True)["type"] == P.WELCOME)
        lat, size = [], 0
        for r in range(rounds):
            parent.send("open")
            rid = parent.recv()
            for j, (b, s) in enumerate(zip(ids, socks)):
                kind, body = bodies[b]
                s.send_multipart([encode_header(kind, round_id=rid, bid_id=f"r{rid}", seq=2 + r), body])

            def is_result(fr, rid=rid):
                h = msgpack.unpackb(fr[0])
                return h["type"] == P.RESULT and h["round_id"] == rid

            got = _collect(socks, is_result)
            closed = msgpack.unpackb(got[0][1][1])["closed_at_ns"]
            lat.append((max(t for t, _ in got) - closed) / 1e6)
            size = len(got[0][1][1])
        parent.send("times")
        times = parent.recv()
        parent.send("stop")
        parent.recv()
        p.join(10)
        for s in socks:
            s.close(0)
        out["auction"] = _percentiles(lat)
        out["server_publish_ms"] = _percentiles([t["publish_s"] * 1e3 for t in times.values()])
        out["result_bytes"] = size
        # --- the raw ROUTER/DEALER fan-out baseline, same sockets, same security, same payload size
        parent, child = sctx.Pipe()
        p = sctx.Process(target=_target(), args=(child, {
            "mode": "raw", "allow": allow_t, "server": (server.public, server.secret), "curve": curve, "n": n,
            "size": size, "rounds": rounds}), daemon=True)
        p.start()
        endpoint = parent.recv()
        socks = _dealers(ctx, endpoint, ids, keys, server.public, curve)
        raw = []
        for _ in range(rounds):
            for s in socks:
                s.send_multipart([b"req"])
            got = _collect(socks, lambda fr: True)
            t_last = msgpack.unpackb(got[0][1][1])["t"]
            raw.append((max(t for t, _ in got) - t_last) / 1e6)
        parent.send("stop")
        parent.recv()
        p.join(10)
        for s in socks:
            s.close(0)
        ctx.term()
        out["raw"] = _percentiles(raw)
    return out


def _target():
    """The child's entry point, importable by name from a spawned process (also under `carla-mr bench`,
    which loads this file under another module name)."""
    if __name__ == "__main__":
        return _server_main
    import importlib

    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    return importlib.import_module("bench_auction")._server_main


def run(quick: bool) -> list[dict]:
    configs = [(60, True, False), (60, False, False), (60, True, True), (1000, True, False), (1000, False, False)]
    rows = []
    for n, curve, first in configs:
        rounds = (30 if n <= 100 else 3) if quick else (200 if n <= 100 else 20)
        r = bench_config(n, curve, rounds, publish_first=first)
        label = f"{n} bidders, {'CURVE' if curve else 'plain'}{', publish-first' if first else ''}"
        for q, idx in (("p50", 0), ("p99", 1)):
            a, b = r["auction"][idx], r["raw"][idx]
            rows.append({"name": f"auction round latency {q}, {label} (close -> all results)",
                         "value": round(a, 3), "unit": "ms", "baseline": round(b, 3),
                         "ratio": round(a / b, 2) if b > 0 else None,
                         "target": "<= 5 ms p99 (60 bidders)" if (n == 60 and q == "p99") else "report"})
        rows.append({"name": f"auctioneer close -> results sent (server side) p50, {label}",
                     "value": round(r["server_publish_ms"][0], 3), "unit": "ms", "baseline": round(r["raw"][0], 3),
                     "ratio": round(r["server_publish_ms"][0] / r["raw"][0], 2) if r["raw"][0] > 0 else None,
                     "target": f"report (result {r['result_bytes']} bytes, {rounds} rounds)"})
    return rows


if __name__ == "__main__":
    from carla_mr.bench_cli import main_for

    main_for(run)

"""Auction round latency over ZeroMQ: close of bidding -> result delivered to every bidder.

For 60 and 1000 bidders (half AVs, half simulators), with and without CURVE, the auctioneer
runs in its own process (ledger on disk, WAL + synchronous=FULL); this process holds one
DEALER per bidder, sends every bid (pipelined), and records when the last bidder has the
result. Latency = that moment - ``closed_at_ns`` stamped by the auctioneer when it closed the
round (wall clock, same host); the round closes early as soon as every bidder has bid.

Baseline, same run, same sockets and CURVE setting: a bare ROUTER that, once it has a
request from every DEALER, sends each a payload of the size of the auction's result
(raw fan-out round-trip, no decoding, no clearing, no ledger). Ratio = auction / raw. A second
baseline, raw request/ack/result, also acks every request at once with a payload of the
auction's ack size, as the auctioneer does: the same messages per bidder (the bench's bidders
share one process, so their own receive work is part of every figure).

Rows: p50 and p99 per configuration (the auctioneer's default sends results before the
outcome's fsync), plus 60 bidders with ``commit-first`` (fsync, then send). Targets: 60 bidders over CURVE p99 <= 5 ms; 1000 bidders p50 <=
2x the raw fan-out.

``--load``: 1000 bidders x 100 rounds against a real ``carla-mr market serve`` process
(:mod:`carla_mr.market.load`): bids and results lost (target 0), the server's RSS (target
<= 300 MB steady), the time the crowd's handshakes take (the first round waits for them).

Run: ``python bench/bench_auction.py [--quick | --load]``.
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
                conn.send(dict(a.round_timings))
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

    ack = b"\x00" * cfg.get("ack_size", 0)
    for _ in range(rounds):
        seen = []
        while len(seen) < n:
            seen.append(s.recv_multipart()[0])
            if ack:  # the auction's pattern: every request acked at once, the result after the last
                s.send_multipart([seen[-1], b"a", ack])
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


def _collect(socks, want, timeout: float = 120.0, on_other=None) -> list[tuple[int, list]]:
    """Poll every socket until ``want(frames)`` is true once per socket; returns (recv_ns, frames).
    Other messages go to ``on_other`` (when given)."""
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
                elif on_other is not None:
                    on_other(fr)
    return [got[s] for s in socks]


def _percentiles(xs: list[float]) -> tuple[float, float]:
    import numpy as np

    a = np.asarray(xs, float)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def bench_config(n: int, curve: bool, rounds: int, publish_first: bool = True, seed: int = 1) -> dict:
    """The auction's close -> all results, then the raw fan-out, same bidders, keys and security."""
    import zmq

    from carla_mr.market.clearing import sample_round, truthful_bids
    from carla_mr.market.codec import encode_body
    from carla_mr.market.keys import in_memory_keyring

    n_av = n // 2
    av = [f"av-{i:04d}" for i in range(n_av)]
    sims = [f"sim-{k:04d}" for k in range(1, n - n_av)]
    server, keys, allow = in_memory_keyring(av, sims, "sim-0000")
    allow_t = [(e.id, e.role, e.public_key) for e in allow.entries]
    ids = [e.id for e in allow.entries]
    _, priv = sample_round(n_av, len(allow.sim_ids), 1, seed=seed)
    bodies = {b: (k, encode_body(body)) for b, (k, body) in truthful_bids(priv, allow.av_ids, allow.sim_ids).items()}
    sctx = mp.get_context("spawn")
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, 8192)
    common = {"allow": allow_t, "server": (server.public, server.secret), "curve": curve}
    try:
        with tempfile.TemporaryDirectory(dir=str(REPO.parent) if REPO.parent.is_dir() else None) as d:
            out = _bench_auction(sctx, ctx, {**common, "mode": "auction", "ledger": str(Path(d) / "ledger.sqlite"),
                                             "seed": seed, "publish_first": publish_first},
                                 ids, keys, server.public, curve, bodies, rounds)
        raw_cfg = {**common, "mode": "raw", "n": n, "size": out["result_bytes"], "rounds": rounds}
        out["raw"] = _bench_raw(sctx, ctx, raw_cfg, ids, keys, server.public, curve, rounds)
        out["raw_acked"] = _bench_raw(sctx, ctx, {**raw_cfg, "ack_size": out["ack_bytes"]}, ids, keys,
                                      server.public, curve, rounds)
    finally:
        ctx.term()
    return out


def _child(sctx, cfg: dict):
    parent, child = sctx.Pipe()
    p = sctx.Process(target=_target(), args=(child, cfg), daemon=True)
    p.start()
    return p, parent


def _bench_auction(sctx, ctx, cfg, ids, keys, server_public, curve, bodies, rounds) -> dict:
    import msgpack

    from carla_mr.market import protocol as P
    from carla_mr.market.codec import decode_header, encode_body, encode_header

    p, conn = _child(sctx, cfg)
    socks = _dealers(ctx, conn.recv(), ids, keys, server_public, curve)
    try:
        for b, s in zip(ids, socks):
            hello = {"agent": "bench"} if curve else {"agent": "bench", "claim": b}
            s.send_multipart([encode_header(P.HELLO, seq=1), encode_body(hello)])
        _collect(socks, lambda fr: decode_header(fr[0], from_server=True)["type"] == P.WELCOME)
        lat, size, acks = [], 0, []
        for r in range(rounds):
            conn.send("open")
            rid = conn.recv()
            for b, s in zip(ids, socks):
                kind, body = bodies[b]
                s.send_multipart([encode_header(kind, round_id=rid, bid_id=f"r{rid}", seq=2 + r), body])

            def is_result(fr, rid=rid):
                h = msgpack.unpackb(fr[0])
                return h["type"] == P.RESULT and h["round_id"] == rid

            got = _collect(socks, is_result, on_other=acks.append)
            closed = msgpack.unpackb(got[0][1][1])["closed_at_ns"]
            lat.append((max(t for t, _ in got) - closed) / 1e6)
            size = len(got[0][1][1])
        conn.send("times")
        times = conn.recv()
        conn.send("stop")
        conn.recv()
    finally:
        p.join(10)
        for s in socks:
            s.close(0)
    ack_sizes = [len(fr[1]) for fr in acks if decode_header(fr[0], from_server=True)["type"] == P.ACK]
    return {"auction": _percentiles(lat), "result_bytes": size, "ack_bytes": max(ack_sizes, default=0),
            "server_publish_ms": _percentiles([t["publish_s"] * 1e3 for t in times.values()]),
            "server_clear_ms": _percentiles([t["clear_s"] * 1e3 for t in times.values()])}


def _bench_raw(sctx, ctx, cfg, ids, keys, server_public, curve, rounds) -> tuple[float, float]:
    """A bare ROUTER fan-out of a payload of the result's size: (p50, p99) ms."""
    import msgpack

    p, conn = _child(sctx, cfg)
    socks = _dealers(ctx, conn.recv(), ids, keys, server_public, curve)
    raw = []
    try:
        for _ in range(rounds):
            for s in socks:
                s.send_multipart([b"req"])
            got = _collect(socks, lambda fr: fr[0] == b"h")
            t_last = msgpack.unpackb(got[0][1][1])["t"]
            raw.append((max(t for t, _ in got) - t_last) / 1e6)
        conn.send("stop")
        conn.recv()
    finally:
        p.join(10)
        for s in socks:
            s.close(0)
    return _percentiles(raw)


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
    import os

    configs = [(60, True, True), (60, False, True), (60, True, False), (1000, True, True), (1000, False, True)]
    rows = []
    for n, curve, first in configs:
        rounds = (30 if n <= 100 else 3) if quick else (200 if n <= 100 else 20)
        r = bench_config(n, curve, rounds, publish_first=first)
        label = f"{n} bidders, {'CURVE' if curve else 'plain'}{'' if first else ', commit-first'}"
        for q, idx in (("p50", 0), ("p99", 1)):
            a, b = r["auction"][idx], r["raw"][idx]
            target = "<= 5 ms p99 (60 bidders)" if (n == 60 and q == "p99" and first) else (
                "<= 2x raw p50" if (n == 1000 and q == "p50") else "report")
            rows.append({"name": f"auction round latency {q}, {label} (close -> all results)",
                         "value": round(a, 3), "unit": "ms", "baseline": round(b, 3),
                         "ratio": round(a / b, 2) if b > 0 else None, "target": target})
            c = r["raw_acked"][idx]
            rows.append({"name": f"auction round latency {q}, {label}, vs raw request/ack/result",
                         "value": round(a, 3), "unit": "ms", "baseline": round(c, 3),
                         "ratio": round(a / c, 2) if c > 0 else None,
                         "target": f"report (ack {r['ack_bytes']} bytes: the auction's message pattern without it)"})
        rows.append({"name": f"auctioneer close -> results sent (server side) p50, {label}",
                     "value": round(r["server_publish_ms"][0], 3), "unit": "ms", "baseline": round(r["raw"][0], 3),
                     "ratio": round(r["server_publish_ms"][0] / r["raw"][0], 2) if r["raw"][0] > 0 else None,
                     "target": f"report (clear {r['server_clear_ms'][0]:.2f} ms; result {r['result_bytes']} bytes, "
                               f"{rounds} rounds; load {os.getloadavg()[0]:.1f})"})
    return rows


def run_load(n_bidders: int = 1000, rounds: int = 100, deadline_s: float = 10.0) -> list[dict]:
    """1000 bidders x 100 rounds against `carla-mr market serve` (CURVE, loopback): nothing lost,
    server memory bounded, the first round not lost to the crowd's handshakes."""
    import json
    import os

    from carla_mr.market.load import keyring, run_load as drive, start_serve

    with tempfile.TemporaryDirectory() as d:
        allow, keys, spub = keyring(Path(d) / "keys", n_bidders)
        proc, endpoint = start_serve(Path(d) / "keys", Path(d) / "serve", rounds=rounds, deadline_s=deadline_s)
        try:
            rep = drive(endpoint, allow, keys, spub, rounds=rounds, timeout_s=3600, server_pid=proc.pid,
                        log=lambda m: print(m, file=sys.stderr, flush=True)).to_dict()
            stdout, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    print(json.dumps({"load": rep, "server": json.loads(stdout.strip().splitlines()[-1])}), file=sys.stderr)
    load = f"load {os.getloadavg()[0]:.1f}"
    return [
        {"name": f"load test {n_bidders} bidders x {rounds} rounds: bids or results lost", "value": rep["lost"],
         "unit": "count", "baseline": rep["bids_sent"], "ratio": None,
         "target": f"0 (late {rep['late']}, refused {rep['errors']}, unanswered {rep['unanswered']}, "
                   f"results missing {rep['missing_results']})"},
        {"name": "load test: server RSS, steady (max over the second half)", "value": round(rep["rss_mb_steady_max"], 1),
         "unit": "MB", "baseline": round(rep["rss_mb_first"], 1), "ratio": None, "target": "<= 300 MB"},
        {"name": "load test: server RSS, max / last", "value": round(rep["rss_mb_max"], 1), "unit": "MB",
         "baseline": round(rep["rss_mb_last"], 1), "ratio": None, "target": "report"},
        {"name": "load test: all handshakes + hellos done", "value": rep["handshake_s"], "unit": "s",
         "baseline": None, "ratio": None, "target": f"report ({rep['seconds']:.0f} s in all; {load})"},
        {"name": "load test: close -> all 1000 results (driver in one Python process)",
         "value": round(rep["close_to_all_ms_p50"], 1), "unit": "ms p50", "baseline": round(rep["close_to_all_ms_p99"], 1),
         "ratio": None, "target": "report (baseline column: p99)"},
    ]


if __name__ == "__main__":
    from carla_mr.bench_cli import format_row, main_for

    if "--load" in sys.argv[1:]:
        for row in run_load():
            print(format_row(row))
    else:
        main_for(run)

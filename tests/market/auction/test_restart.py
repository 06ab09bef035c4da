"""kill -9 of the auctioneer (a real `carla-mr market serve` process) loses no acknowledged bid;
the ledger replays; a tampered ledger fails replay with exit 1."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack

from carla_mr.market import protocol as P
from carla_mr.market.bidders import AVBidder, SimulatorBidder
from carla_mr.market.keys import load_keypair, make_keyring
from carla_mr.market.ledger import Ledger


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(keys: Path, out: Path, port: int, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "carla_mr", "market", "serve", "--keys", str(keys), "--out", str(out),
           "--bind", f"tcp://127.0.0.1:{port}", "--seed", "5", "--json", "--wait-bidders", "0", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_ready(out: Path, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (out / "endpoint.txt").exists():
            return
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early: {proc.stderr.read()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("serve did not start")


def _client(keys: Path, bid: str, port: int, **kw):
    cls = AVBidder if bid.startswith("av") else SimulatorBidder
    return cls(f"tcp://127.0.0.1:{port}", bid, keypair=load_keypair(keys / f"{bid}.key_secret"),
               server_public=load_keypair(keys / "server.key", need_secret=False).public,
               handshake_timeout_s=kw.get("hs", 3.0), request_timeout_s=kw.get("rt", 1.0), retries=kw.get("retries", 0))


def _av_body(i: int) -> dict:
    return {"price": 100_000 + 1000 * i, "tasks": [{"size": 0.1, "cycles": 0.5, "deadline": 1.3}]}


def test_kill9_mid_round_loses_no_acknowledged_bid(tmp_path):
    keys = tmp_path / "keys"
    avs = [f"av-{i:03d}" for i in range(24)]
    make_keyring(keys, avs, ["sim-001", "sim-002"], "sim-000")
    out, port = tmp_path / "serve", _free_port()
    proc = _serve(keys, out, port, "--deadline", "60", "--rounds", "1")
    acked: dict[str, str] = {}
    try:
        _wait_ready(out, proc)
        clients = {a: _client(keys, a, port) for a in avs}
        for c in clients.values():
            c.connect()
        rid = clients["av-000"].wait_announce(5.0)["round_id"]
        stop = threading.Event()

        def flood():  # bids keep coming while the server is killed
            for i, a in enumerate(avs):
                if stop.is_set():
                    return
                try:
                    rep = clients[a].request(P.BID_AV, _av_body(i), round_id=rid, bid_id=f"bid-{a}")
                except Exception:  # noqa: BLE001 - the server died under us
                    return
                if rep.type == P.ACK:
                    acked[a] = rep.receipt

        t = threading.Thread(target=flood)
        t.start()
        end = time.monotonic() + 10
        while len(acked) < 8 and time.monotonic() < end:
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)  # kill -9, mid-round, bids in flight
        proc.wait(5)
        stop.set()
        t.join(10)
        assert len(acked) >= 8
        with Ledger(out / "ledger.sqlite") as led:  # every acknowledged bid is on disk, with its receipt
            stored = {b.bidder_id: b.receipt for b in led.bids(rid)}
            assert led.round(rid).state == P.OPEN
        for a, receipt in acked.items():
            assert stored.get(a) == receipt

        # restart on the same ledger: the round is resumed (its deadline has not passed)
        (out / "endpoint.txt").unlink()
        proc = _serve(keys, out, port, "--deadline", "60", "--rounds", "1")
        _wait_ready(out, proc)
        for c in clients.values():
            c.close()
        clients = {b: _client(keys, b, port, retries=2) for b in avs + ["sim-000", "sim-001", "sim-002"]}
        some = next(iter(acked))
        rep = clients[some].request(P.BID_AV, _av_body(avs.index(some)), round_id=rid, bid_id=f"bid-{some}")
        assert rep.type == P.ACK and rep.body["duplicate"] and rep.receipt == acked[some]
        for i, a in enumerate(avs):
            if a not in acked and a not in stored:
                assert clients[a].request(P.BID_AV, _av_body(i), round_id=rid, bid_id=f"bid-{a}").type == P.ACK
        assert clients["sim-000"].request(P.BID_SIM, {"contract": True}, round_id=rid, bid_id="c").type == P.ACK
        for k in ("sim-001", "sim-002"):
            vals = {a: [10_000 * (int(k[-1]) + j % 3)] for j, a in enumerate(avs)}
            assert clients[k].request(P.BID_SIM, {"values": vals}, round_id=rid, bid_id="v").type == P.ACK
        res = clients["av-000"].wait_result(rid, 10.0)  # everyone bid: early close
        assert res is not None and set(acked) <= set(res["bidders"])
        assert len(res["outcome"]["participants"]) == len(avs)
        proc.wait(15)
        for c in clients.values():
            c.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    rc = subprocess.run([sys.executable, "-m", "carla_mr", "market", "replay", str(out / "ledger.sqlite"), "--json"],
                        capture_output=True, text=True, timeout=60)
    assert rc.returncode == 0, rc.stderr
    with Ledger(out / "ledger.sqlite") as led:
        kinds = [e[1] for e in led.events()]
        assert "round_resumed" in kinds and kinds.count("bid") == len(avs) + 3 == led.count("bids")

    # tamper with a stored bid (bypassing the append-only trigger): replay exits 1
    db = sqlite3.connect(out / "ledger.sqlite")
    db.execute("DROP TRIGGER bids_no_update")
    body = msgpack.unpackb(db.execute("SELECT body FROM bids WHERE bidder_id='av-003'").fetchone()[0])
    body["price"] += 1  # still a valid bid, but not the one that was acknowledged
    db.execute("UPDATE bids SET body=? WHERE bidder_id='av-003'", (msgpack.packb(body),))
    db.commit()
    db.close()
    rc = subprocess.run([sys.executable, "-m", "carla_mr", "market", "replay", str(out / "ledger.sqlite")],
                        capture_output=True, text=True, timeout=60)
    assert rc.returncode == 1, rc.stdout + rc.stderr
    assert "av-003" in rc.stderr and "does not match" in rc.stderr


def test_restart_after_deadline_closes_with_acknowledged_bids(tmp_path):
    keys = tmp_path / "keys"
    make_keyring(keys, ["av-000", "av-001", "av-002"], ["sim-001", "sim-002"], "sim-000")
    out, port = tmp_path / "serve", _free_port()
    proc = _serve(keys, out, port, "--deadline", "4", "--rounds", "1")
    try:
        _wait_ready(out, proc)
        c0, c1 = _client(keys, "av-000", port), _client(keys, "av-001", port)
        c0.connect()
        ann = c0.wait_announce(5.0)
        deadline = time.monotonic() + ann["deadline_ms"] / 1000
        rid = ann["round_id"]
        r0 = c0.request(P.BID_AV, _av_body(0), round_id=rid, bid_id="a")
        r1 = c1.request(P.BID_AV, _av_body(1), round_id=rid, bid_id="b")
        assert r0.ok and r1.ok
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        time.sleep(max(0.0, deadline - time.monotonic()) + 0.3)  # the deadline passes while the server is down
        (out / "endpoint.txt").unlink()
        proc = _serve(keys, out, port, "--deadline", "4", "--rounds", "1")
        _wait_ready(out, proc)
        res = _client(keys, "av-002", port, retries=2).wait_result(rid, 10.0)
        assert res is not None and res["bidders"] == ["av-000", "av-001"]
        assert res["outcome"]["participants"] == ["av-000", "av-001"]
        proc.wait(15)
        c0.close()
        c1.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    with Ledger(out / "ledger.sqlite") as led:
        assert led.round(rid).state == P.PUBLISHED and led.verify_chain()["ok"]


def test_sigterm_stops_like_sigint(tmp_path):
    """SIGTERM (docker stop, systemd): the open round is closed with its committed bids, cleared and
    published, the ledger flushed, the summary printed, exit 0."""
    import json

    keys = tmp_path / "keys"
    make_keyring(keys, ["av-000", "av-001"], ["sim-001", "sim-002"], "sim-000")
    for sig in (signal.SIGTERM, signal.SIGINT):
        out, port = tmp_path / f"serve-{sig.name}", _free_port()
        proc = _serve(keys, out, port, "--deadline", "60")
        try:
            _wait_ready(out, proc)
            c = _client(keys, "av-000", port)
            c.connect()
            rid = c.wait_announce(5.0)["round_id"]
            assert c.request(P.BID_AV, _av_body(0), round_id=rid, bid_id="a").ok
            proc.send_signal(sig)
            stdout, stderr = proc.communicate(timeout=20)
            assert proc.returncode == 0, stderr
            summary = json.loads(stdout.strip().splitlines()[-1])
            assert summary["published"] == 1 and summary["closed_on_shutdown"] == 1 and summary["acks"] == 1
            assert c.wait_result(rid, 1.0)["bidders"] == ["av-000"]
            c.close()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        with Ledger(out / "ledger.sqlite") as led:
            assert led.round(rid).state == P.PUBLISHED and led.verify_chain()["ok"]

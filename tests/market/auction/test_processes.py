"""Done-when: 30 AV + 30 simulator bidders in separate processes, CURVE on, one round over
ZeroMQ; the outcome equals the pure function's on the same bids and the ledger replays."""

from __future__ import annotations

import multiprocessing as mp
import queue
import time

from carla_mr.market import protocol as P
from carla_mr.market.bidders import bidder_process
from carla_mr.market.clearing import clear_round, sample_round, truthful_bids
from carla_mr.market.ledger import Ledger, outcome_text, replay


def test_30_avs_30_simulators_in_separate_processes(harness):
    h = harness(n_avs=30, n_traffic=29)
    assert len(h.sim_ids) == 30
    pub, priv = sample_round(30, 30, 2, seed=2024)
    bids = truthful_bids(priv, h.av_ids, h.sim_ids)
    ann = h.auctioneer.open_round(pub, av_ids=h.av_ids, sim_ids=h.sim_ids, n_tasks=2, deadline_s=60.0)
    rid = ann["round_id"]
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["carla_mr.market.bidders"])
    q = ctx.Queue()
    procs = []
    t0 = time.monotonic()
    for b in h.av_ids + h.sim_ids:
        kind, body = bids[b]
        spec = {"endpoint": h.endpoint, "bidder_id": b, "role": h.allow.by_id[b].role, "curve": True,
                "public": h.keys[b].public, "secret": h.keys[b].secret, "server_public": h.server.public,
                "round_id": rid, "kind": kind, "body": body, "bid_id": f"r{rid}-{b}", "timeout_s": 20.0}
        p = ctx.Process(target=bidder_process, args=(spec, q), daemon=True)
        p.start()
        procs.append(p)
    reports = []
    try:
        for _ in procs:
            reports.append(q.get(timeout=60))
    except queue.Empty:
        raise AssertionError(f"only {len(reports)} of {len(procs)} bidder processes reported")
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
    took = time.monotonic() - t0
    assert len({p.pid for p in procs}) == 60
    errors = [r for r in reports if r["error"] or r["reply"] != P.ACK]
    assert not errors, errors[:3]
    ref, sched = clear_round(round_id=rid, mechanism="mtepvisa", scoring="reported", public=pub, params={},
                             av_ids=h.av_ids, sim_ids=h.sim_ids, n_tasks=2, bids=bids)
    texts = {outcome_text(r["result"]["outcome"]) for r in reports}
    assert texts == {outcome_text(ref)}  # every process got the pure function's outcome
    assert all(r["result"]["schedule"] == sched.to_dict() for r in reports)
    assert ref["winner_id"] is not None and len(ref["participants"]) == 30
    h.auctioneer.stop()
    with Ledger(h.ledger_path) as led:
        receipts = {b.bidder_id: b.receipt for b in led.bids(rid)}
    assert receipts == {r["bidder_id"]: r["receipt"] for r in reports}
    rep = replay(h.ledger_path)
    assert rep["ok"] and rep["recomputed"] == 1 and rep["bids"] == 60
    assert took < 60


def test_many_bidder_processes_over_many_rounds_lose_nothing(harness):
    """20 bidder processes, 6 autonomous rounds (public data sampled per round): every ack is
    in the ledger, every process saw every round's outcome, counts match, the ledger replays."""
    rounds = 6
    h = harness(n_avs=10, n_traffic=9, auto_rounds=True, max_rounds=rounds, period_s=0.05, deadline_s=20.0,
                linger_s=5.0)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["carla_mr.market.bidders"])
    q = ctx.Queue()
    procs = []
    for b in h.av_ids + h.sim_ids:
        role = h.allow.by_id[b].role
        if role == P.ROLE_AV:
            kind, body = P.BID_AV, {"price": 1000 * (1 + h.av_ids.index(b)),
                                    "tasks": [{"size": 0.1, "cycles": 0.5, "deadline": 1.4}]}
        elif role == P.ROLE_DRIVING:
            kind, body = P.BID_SIM, {"contract": True}
        else:
            k = h.sim_ids.index(b)
            kind, body = P.BID_SIM, {"values": {a: [(7919 * k * (i + 1)) % 500_000] for i, a in enumerate(h.av_ids)}}
        spec = {"endpoint": h.endpoint, "bidder_id": b, "role": role, "curve": True, "public": h.keys[b].public,
                "secret": h.keys[b].secret, "server_public": h.server.public, "round_id": 0, "kind": kind,
                "body": body, "bid_id": b, "timeout_s": 20.0, "rounds": rounds}
        p = ctx.Process(target=bidder_process, args=(spec, q), daemon=True)
        p.start()
        procs.append(p)
    reports = []
    try:
        for _ in range(len(procs) * rounds):
            reports.append(q.get(timeout=60))
    except queue.Empty:
        raise AssertionError(f"only {len(reports)} of {len(procs) * rounds} reports")
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    bad = [r for r in reports if r["error"] or r["reply"] != P.ACK]
    assert not bad, bad[:3]
    by_round: dict[int, list] = {}
    for r in reports:
        by_round.setdefault(r["round_id"], []).append(r)
    assert sorted(by_round) == list(range(1, rounds + 1))
    h.auctioneer.stop()
    with Ledger(h.ledger_path) as led:
        assert led.count("bids") == len(reports) == 20 * rounds
        assert led.count("outcomes") == rounds
        for rid, rs in by_round.items():
            assert {b.bidder_id: b.receipt for b in led.bids(rid)} == {r["bidder_id"]: r["receipt"] for r in rs}
            stored = outcome_text(led.outcome(rid)[0])
            assert {outcome_text(r["result"]["outcome"]) for r in rs} == {stored}
    assert replay(h.ledger_path)["ok"]

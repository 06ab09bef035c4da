"""The auctioneer as a service: IPv6 loopback, refused handshakes counted and logged at a bounded
rate, finished rounds leave memory, the first autonomous round waits for the bidders."""

from __future__ import annotations

import time

import pytest
import zmq

from carla_mr.market import protocol as P
from carla_mr.market.clearing import sample_round, truthful_bids
from carla_mr.market.keys import new_keypair
from carla_mr.market.round_book import KEEP_FINISHED


def _open(h, seed=1):
    pub, priv = sample_round(len(h.av_ids), len(h.sim_ids), 1, seed=seed)
    ann = h.auctioneer.open_round(pub, av_ids=h.av_ids, sim_ids=h.sim_ids, n_tasks=1, deadline_s=30)
    return ann["round_id"], truthful_bids(priv, h.av_ids, h.sim_ids)


def test_ipv6_loopback(harness):
    h = harness(n_avs=1, n_traffic=2, endpoint="tcp://[::1]:*")
    assert h.endpoint.startswith("tcp://[::1]:")
    rid, bids = _open(h)
    c = h.client("av-000")
    assert c.request(*bids["av-000"], round_id=rid, bid_id="v6").ok


def test_refused_handshakes_are_counted_and_logged_at_a_bounded_rate(harness):
    lines: list[str] = []
    h = harness(n_avs=1, n_traffic=2, log=lines.append)
    ctx = zmq.Context.instance()
    socks = []
    for _ in range(5):
        kp = new_keypair()
        s = ctx.socket(zmq.DEALER)
        s.linger = 0
        s.curve_secretkey, s.curve_publickey, s.curve_serverkey = kp.secret, kp.public, h.server.public
        s.connect(h.endpoint)
        socks.append(s)
    end = time.monotonic() + 5
    while h.auctioneer.counters["handshakes_rejected"] < 5 and time.monotonic() < end:
        time.sleep(0.02)
    for s in socks:
        s.close()
    assert h.auctioneer.counters["handshakes_rejected"] >= 5
    zap = [x for x in lines if x.startswith("ZAP: rejected")]
    assert len(zap) == 1 and "not on the allow-list" in zap[0]  # one line per interval, not one per try
    c = h.client("av-000")
    c.connect()
    assert h.auctioneer.counters["handshakes_accepted"] >= 1


def test_finished_rounds_leave_memory(harness):
    h = harness(n_avs=2, n_traffic=2)
    clients = {b: h.client(b) for b in h.av_ids + h.sim_ids}
    first = None
    for k in range(KEEP_FINISHED + 3):
        rid, bids = _open(h, seed=k)
        first = first or (rid, bids)
        for b, (kind, body) in bids.items():
            assert clients[b].request(kind, body, round_id=rid, bid_id=f"r{rid}").ok
        h.auctioneer.wait_published(rid, 10)
    book = h.auctioneer.book
    assert book.live == {} and len(book.finished) == KEEP_FINISHED
    rid, bids = first  # evicted: answered from the ledger
    again = clients["av-000"].request(*bids["av-000"], round_id=rid, bid_id=f"r{rid}")
    assert again.ok and again.body["duplicate"] and len(again.body["prev_hash"]) == 64
    st = clients["av-001"].status(rid)
    assert st["state"] == P.PUBLISHED and st["n_bids"] == len(bids) and "outcome" in st["result"]
    late = clients["av-001"].request(*bids["av-001"], round_id=rid, bid_id="new")
    assert late.type == P.LATE and late.body["state"] == P.PUBLISHED


@pytest.mark.timeout(60)
def test_first_autonomous_round_waits_for_every_bidder(harness):
    h = harness(n_avs=2, n_traffic=2, auto_rounds=True, wait_bidders_s=20.0, deadline_s=0.3, max_rounds=0)
    clients = [h.client(b) for b in h.av_ids + h.sim_ids]
    for c in clients[:-1]:
        c.connect()
    time.sleep(0.8)  # everyone but one has spoken: no round yet
    assert h.auctioneer.book.latest() is None
    t = time.monotonic()
    clients[-1].connect()
    ann = clients[0].wait_announce(5.0)
    assert ann is not None and ann["round_id"] == 1 and time.monotonic() - t < 3.0

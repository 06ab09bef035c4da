"""The auctioneer over ZeroMQ with CURVE: clearing equals the pure function, policies, fuzz, auth."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carla_mr.errors import InputError, RunError
from carla_mr.market import protocol as P
from carla_mr.market.endpoints import check_endpoint
from carla_mr.market.bidders import AVBidder
from carla_mr.market.clearing import bids_to_arrays, clear_round, make_public, sample_round, truthful_bids
from carla_mr.market.codec import decode_server, encode
from carla_mr.market.keys import new_keypair
from carla_mr.market.ledger import Ledger, outcome_text, replay


def _open(h, n_tasks=1, seed=1, **kw):
    pub, priv = sample_round(len(h.av_ids), len(h.sim_ids), n_tasks, seed=seed)
    ann = h.auctioneer.open_round(pub, av_ids=h.av_ids, sim_ids=h.sim_ids, n_tasks=n_tasks, **kw)
    return ann, pub, truthful_bids(priv, h.av_ids, h.sim_ids)


def test_round_clears_like_the_pure_function(harness):
    from carla_mr.market.mechanisms import clear
    from carla_mr.market.model import public_market

    h = harness(n_avs=4, n_traffic=3)
    ann, pub, bids = _open(h, n_tasks=2, deadline_s=1.0)
    rid = ann["round_id"]
    del bids["av-002"]  # an absent AV takes no part
    clients = {b: h.client(b) for b in h.av_ids + h.sim_ids}
    for b, (kind, body) in bids.items():
        rep = clients[b].request(kind, body, round_id=rid, bid_id=f"b-{b}")
        assert rep.type == P.ACK, rep.body
        assert len(rep.receipt) == 64 and rep.body["duplicate"] is False
    res = clients["av-002"].wait_result(rid, 5.0)  # the absent AV still gets the result
    assert res is not None and res["state"] == P.PUBLISHED
    ref, sched = clear_round(round_id=rid, mechanism="mtepvisa", scoring="reported", public=pub, params={},
                             av_ids=h.av_ids, sim_ids=h.sim_ids, n_tasks=2, bids=bids)
    assert outcome_text(res["outcome"]) == outcome_text(ref)
    assert res["schedule"] == sched.to_dict()
    assert res["outcome"]["participants"] == ["av-000", "av-001", "av-003"]
    # ... and the adapter is the market's own function on the same arrays
    parts, idx, b, s_dt, e_dt, d, U = bids_to_arrays(h.av_ids, h.sim_ids, 2, bids)
    pm = public_market(rate_up=pub["rate_up"][idx], rate_down=pub["rate_down"][idx], s_dt=s_dt, e_dt=e_dt, d=d,
                       s_sim=pub["s_sim"][idx], e_sim=pub["e_sim"][idx], C=pub["C"][idx], G=pub["G"][idx],
                       theta=pub["theta"])
    direct = clear(pm, b, U, mechanism="mtepvisa", scoring="reported")
    assert outcome_text(res["outcome"]["core"]) == outcome_text(direct.to_dict())
    assert res["outcome"]["winner_id"] == parts[direct.winner]
    # every client that said hello got the pushed result
    for b in bids:
        assert clients[b].wait_result(rid, 2.0)["chain_hash"] == res["chain_hash"]
    h.auctioneer.stop()
    rep = replay(h.ledger_path)
    assert rep["ok"] and rep["recomputed"] == 1 and rep["bids"] == len(bids)


def test_bid_policies(harness):
    h = harness(n_avs=2, n_traffic=2)
    ann, pub, bids = _open(h, n_tasks=1)
    rid = ann["round_id"]
    av, sim1, drv = h.client("av-000"), h.client("sim-001"), h.client("sim-000")
    kind, body = bids["av-000"]
    first = av.request(kind, body, round_id=rid, bid_id="one")
    again = av.request(kind, body, round_id=rid, bid_id="one")
    assert first.type == again.type == P.ACK
    assert again.receipt == first.receipt and again.body["duplicate"] is True
    other = dict(body, price=body["price"] + 1)
    assert av.request(kind, other, round_id=rid, bid_id="two").body["code"] == P.E_ALREADY_BID
    assert av.request(kind, other, round_id=rid, bid_id="one").body["code"] == P.E_BID_ID_REUSE
    assert av.request(P.BID_SIM, {"contract": True}, round_id=rid, bid_id="x").body["code"] == P.E_ROLE
    assert sim1.request(P.BID_SIM, {"contract": True}, round_id=rid, bid_id="x").body["code"] == P.E_ROLE
    assert drv.request(P.BID_SIM, {"values": {"av-000": [1]}}, round_id=rid, bid_id="x").body["code"] == P.E_ROLE
    assert sim1.request(P.BID_SIM, {"values": {"av-999": [1]}}, round_id=rid, bid_id="x").body["code"] == P.E_BAD_BODY
    assert sim1.request(P.BID_SIM, {"values": {"av-000": [1, 2]}}, round_id=rid, bid_id="x").body["code"] == P.E_BAD_BODY
    assert sim1.request(P.BID_SIM, {"values": {"av-000": [1]}}, round_id=rid + 5, bid_id="x").body["code"] == P.E_NO_ROUND
    av2 = h.client("av-001")
    two_tasks = {"price": 1, "tasks": body["tasks"] * 2}
    assert av2.request(P.BID_AV, two_tasks, round_id=rid, bid_id="x").body["code"] == P.E_BAD_BODY
    # sealed: while open, status gives no count
    st_ = av2.status(rid)
    assert st_["state"] == P.OPEN and st_["n_bids"] == -1 and "result" not in st_


def test_deadline_absent_and_late(harness):
    h = harness(n_avs=3, n_traffic=2, early_close=True)
    clients = {b: h.client(b) for b in ("av-000", "sim-001", "sim-002", "av-001")}
    for c in clients.values():
        c.connect()
    t0 = time.monotonic()
    ann, pub, bids = _open(h, deadline_s=1.0)
    rid = ann["round_id"]
    for b in ("av-000", "sim-001", "sim-002"):
        assert clients[b].request(*bids[b], round_id=rid, bid_id="b").type == P.ACK
    late = clients["av-001"]
    res = late.wait_result(rid, 5.0)
    took = time.monotonic() - t0
    assert res is not None and 0.9 < took < 3.0  # absent bidders never hold the round past its deadline
    assert res["outcome"]["participants"] == ["av-000"] and res["bidders"] == ["av-000", "sim-001", "sim-002"]
    rep = late.request(*bids["av-001"], round_id=rid, bid_id="b")
    assert rep.type == P.LATE and rep.body["state"] == P.PUBLISHED
    # a re-sent, already acknowledged bid still gets its ack after the close (idempotent)
    again = h.client("av-000").request(*bids["av-000"], round_id=rid, bid_id="b")
    assert again.type == P.ACK and again.body["duplicate"]
    st_ = late.status(rid)
    assert st_["n_bids"] == 3 and st_["result"]["outcome"] == res["outcome"]


def test_unknown_curve_key_gets_nothing(harness):
    h = harness(n_avs=2, n_traffic=2)
    ann, _, bids = _open(h)
    before = dict(h.auctioneer.counters)
    stranger = AVBidder(h.endpoint, "av-000", keypair=new_keypair(), server_public=h.server.public,
                        handshake_timeout_s=0.5, request_timeout_s=0.5, retries=0)
    with pytest.raises(RunError, match="no welcome"):
        stranger.connect()
    # a raw socket with an unknown key sends a valid bid and hears nothing at all
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    kp = new_keypair()
    s.linger = 0
    s.curve_secretkey, s.curve_publickey, s.curve_serverkey = kp.secret, kp.public, h.server.public
    s.connect(h.endpoint)
    s.send_multipart(encode(P.BID_AV, bids["av-000"][1], round_id=ann["round_id"], bid_id="evil", seq=1))
    assert s.poll(800) == 0
    s.close()
    # a right key with a wrong server key gets nothing either
    wrong = AVBidder(h.endpoint, "av-000", keypair=h.keys["av-000"], server_public=new_keypair().public,
                     handshake_timeout_s=0.5, request_timeout_s=0.5, retries=0)
    with pytest.raises(RunError):
        wrong.connect()
    assert h.auctioneer.counters["messages"] == before["messages"]
    assert Ledger(h.ledger_path).count("bids") == 0
    # the bid is bound to the authenticated key: av-001's key bids as av-001 whatever it claims
    c = h.client("av-001")
    assert c.request(P.HELLO, {"claim": "av-000"}).body["code"] == P.E_UNKNOWN_BIDDER
    assert c.request(*bids["av-001"], round_id=ann["round_id"], bid_id="ok").type == P.ACK
    assert [b.bidder_id for b in Ledger(h.ledger_path).bids()] == ["av-001"]


def test_plain_mode_is_loopback_only(harness):
    for bad in ("tcp://0.0.0.0:5555", "tcp://10.1.2.3:5555", "tcp://example.org:5555"):
        with pytest.raises(InputError, match="loopback"):
            check_endpoint(bad, curve=False)
    check_endpoint("tcp://0.0.0.0:5555", curve=True)
    check_endpoint("tcp://127.0.0.1:5555", curve=False)
    h = harness(n_avs=2, n_traffic=2, curve=False)
    ann, _, bids = _open(h)
    c = h.client("av-000")
    c.connect()
    assert c.request(*bids["av-000"], round_id=ann["round_id"], bid_id="p").type == P.ACK
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.linger = 0
    raw.connect(h.endpoint)
    try:
        raw.send_multipart(encode(P.STATUS, {}, seq=5))
        assert raw.poll(2000)
        hd, body = decode_server(raw.recv_multipart())
        assert hd["type"] == P.ERROR and body["code"] == P.E_NOT_HELLO and hd["seq"] == 5
        raw.send_multipart(encode(P.HELLO, {"claim": "av-404"}, seq=6))
        assert raw.poll(2000)
        assert decode_server(raw.recv_multipart())[1]["code"] == P.E_UNKNOWN_BIDDER
    finally:
        raw.close()


_frames = st.lists(st.one_of(
    st.binary(max_size=64),
    st.builds(lambda o: msgpack.packb(o), st.dictionaries(st.sampled_from(
        ["version", "type", "round_id", "bid_id", "seq", "price", "tasks", "values", "x"]),
        st.one_of(st.integers(-5, 2**64 - 1), st.text(max_size=5), st.none(), st.booleans(), st.floats(),
                  st.lists(st.integers(-5, 1000), max_size=3)), max_size=6)),
), min_size=0, max_size=4)


@pytest.fixture
def fuzz_target(harness):
    h = harness(n_avs=2, n_traffic=2)
    ann, _, bids = _open(h)
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    kp = h.keys["av-000"]
    s.curve_secretkey, s.curve_publickey, s.curve_serverkey = kp.secret, kp.public, h.server.public
    s.connect(h.endpoint)
    yield h, s, ann, bids
    s.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=_frames)
def test_fuzz_malformed_messages(fuzz_target, frames):
    h, s, ann, bids = fuzz_target
    if not frames:
        frames = [b""]
    s.send_multipart(frames)
    assert s.poll(3000), "the server must answer a malformed message"
    hd, body = decode_server(s.recv_multipart())
    assert hd["type"] == P.ERROR and body["code"] in P.ERROR_CODES
    while s.poll(0):
        s.recv_multipart()


def test_fuzz_then_still_serving(fuzz_target):
    h, s, ann, bids = fuzz_target
    s.send_multipart([encode(P.BID_AV, {}, round_id=1, bid_id="x")[0], b"\x00" * (P.MAX_BODY_BYTES + 10)])
    assert s.poll(3000)
    assert decode_server(s.recv_multipart())[1]["code"] == P.E_BAD_FRAME
    s.send_multipart(encode(P.BID_AV, dict(bids["av-000"][1], unknown=1), round_id=ann["round_id"], bid_id="u"))
    assert s.poll(3000)
    assert decode_server(s.recv_multipart())[1]["code"] == P.E_BAD_BODY
    s.send_multipart(encode(P.BID_AV, bids["av-000"][1], round_id=ann["round_id"], bid_id="ok", seq=9))
    assert s.poll(3000)
    hd, body = decode_server(s.recv_multipart())
    assert hd["type"] == P.ACK and hd["seq"] == 9
    assert h.auctioneer._thread.is_alive()


def test_make_public_names_bad_fields():
    pub, _ = sample_round(3, 3, 1, seed=0)
    with pytest.raises(InputError, match="G"):
        make_public(**{**{k: pub[k] for k in ("rate_up", "rate_down", "s_sim", "e_sim", "C")},
                       "G": np.full((3, 3), 2.0)})
    with pytest.raises(InputError, match="rate_up"):
        make_public(**{**{k: pub[k] for k in ("rate_down", "s_sim", "e_sim", "C", "G")},
                       "rate_up": -np.ones(3)})


_sub = st.lists(st.booleans(), min_size=9, max_size=9)


@pytest.fixture
def prop_harness(harness):
    return harness(n_avs=4, n_traffic=4)


@settings(max_examples=16, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(present=_sub, prices=st.lists(st.integers(0, 3_000_000), min_size=4, max_size=4),
       vals=st.lists(st.integers(0, 2_000_000), min_size=16, max_size=16), seed=st.integers(0, 10_000),
       mech=st.sampled_from(["pvisa", "epvisa", "mtepvisa"]), scoring=st.sampled_from(["reported", "expected"]))
def test_wire_outcome_equals_pure_function_for_any_bids(prop_harness, present, prices, vals, seed, mech, scoring):
    """Random subsets of bidders, random (tied, zero) prices and values: the published outcome is
    mechanisms.clear on arrays built here independently from the same bids."""
    from carla_mr.market.mechanisms import clear
    from carla_mr.market.model import public_market

    h = prop_harness
    pub, priv = sample_round(4, 5, 1, seed=seed)
    rid = h.auctioneer.open_round(pub, av_ids=h.av_ids, sim_ids=h.sim_ids, n_tasks=1, deadline_s=30, mechanism=mech,
                                  scoring=scoring)["round_id"]
    avs = [a for a, p in zip(h.av_ids, present[:4]) if p]
    sims = [s for s, p in zip(h.sim_ids[1:], present[4:8]) if p]
    clients = {b: h.clients_by.get(b) or h.client(b) for b in avs + sims}
    h.clients_by.update(clients)  # one connection per bidder across examples
    task = lambda i: [{"size": float(priv["s_dt"][i, 0]), "cycles": float(priv["e_dt"][i, 0]),  # noqa: E731
                       "deadline": float(priv["d"][i, 0])}]
    for a in avs:
        i = h.av_ids.index(a)
        assert clients[a].bid(rid, prices[i], task(i), bid_id="p").ok
    for s in sims:
        k = h.sim_ids.index(s)
        assert clients[s].bid(rid, {a: [vals[4 * (k - 1) + i]] for i, a in enumerate(h.av_ids)}, bid_id="p").ok
    assert h.auctioneer.close_round(rid) == P.PUBLISHED
    res = h.auctioneer.wait_published(rid, 10)
    if not avs:
        assert res["outcome"]["winner_id"] is None and res["schedule"]["windows"] == []
        return
    idx = [h.av_ids.index(a) for a in avs]
    U = np.zeros((len(idx), 1, 5))
    for s in sims:
        k = h.sim_ids.index(s)
        for j, i in enumerate(idx):
            U[j, 0, k] = vals[4 * (k - 1) + i] / 1e6
    pm = public_market(rate_up=pub["rate_up"][idx], rate_down=pub["rate_down"][idx], s_dt=priv["s_dt"][idx],
                       e_dt=priv["e_dt"][idx], d=priv["d"][idx], s_sim=pub["s_sim"][idx], e_sim=pub["e_sim"][idx],
                       C=pub["C"][idx], G=pub["G"][idx], theta=pub["theta"])
    ref = clear(pm, np.array([prices[i] for i in idx]) / 1e6, U, mechanism=mech, scoring=scoring)
    assert outcome_text(res["outcome"]["core"]) == outcome_text(ref.to_dict())
    assert res["outcome"]["winner_id"] == (avs[ref.winner] if ref.winner >= 0 else None)


def test_lazy_pirate_survives_an_auctioneer_restart(harness, tmp_path):
    import socket as so
    import threading

    from carla_mr.market.auctioneer import Auctioneer

    with so.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    h = harness(n_avs=2, n_traffic=2, endpoint=f"tcp://127.0.0.1:{port}")
    ann, _, bids = _open(h, deadline_s=60)
    rid = ann["round_id"]
    c = h.client("av-000", request_timeout_s=0.3, handshake_timeout_s=0.3, retries=30)
    first = c.request(*bids["av-000"], round_id=rid, bid_id="lp")
    assert first.ok
    h.auctioneer.stop()  # the auctioneer goes away ...
    second = Auctioneer(h.settings)
    timer = threading.Timer(1.0, second.start)  # ... and comes back a second later on the same ledger
    timer.start()
    try:
        again = c.request(*bids["av-000"], round_id=rid, bid_id="lp")  # retried until it answers
        assert again.ok and again.body["duplicate"] and again.receipt == first.receipt
        assert c.reconnects >= 1
        other = h.client("av-001", retries=5)
        assert other.request(*bids["av-001"], round_id=rid, bid_id="x").ok  # the round was resumed
        assert other.status(rid)["state"] == P.OPEN
    finally:
        timer.join()
        second.stop()


def test_connect_returns_with_the_announce_that_follows_the_welcome():
    """The server sends welcome, then the open round's announce; connect() must not return
    between the two (a caller reads ``announces[welcome round]`` at once). A fake server
    here holds the announce back 300 ms after the welcome."""
    import threading

    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    announce = {"round_id": 7, "mechanism": "mtepvisa", "scoring": "reported", "deadline_ms": 5000, "n_tasks": 1,
                "av_ids": ["av-000"], "sim_ids": ["sim-000"], "public_digest": "0" * 64}

    def serve():
        if not router.poll(5000):
            return
        identity, header, _ = router.recv_multipart()
        seq = msgpack.unpackb(header, raw=False)["seq"]
        welcome = {"bidder_id": "av-000", "role": P.ROLE_AV, "round_id": 7, "server_time_ns": 0,
                   "max_body_bytes": P.MAX_BODY_BYTES}
        router.send_multipart([identity, *encode(P.WELCOME, welcome, round_id=7, seq=seq)])
        time.sleep(0.3)
        router.send_multipart([identity, *encode(P.ANNOUNCE, announce, round_id=7)])

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        client = AVBidder(f"tcp://127.0.0.1:{port}", "av-000", keypair=None, server_public=None, curve=False,
                          handshake_timeout_s=3.0)
        assert client.connect()["round_id"] == 7
        assert client.announces[7]["public_digest"] == "0" * 64
        client.close()
    finally:
        t.join(timeout=5)
        router.close(0)

"""Verified task sizes and cycles on the wire, receipts a bidder can check, errors that echo seq."""

from __future__ import annotations

import hashlib

import msgpack
import pytest
import zmq

from carla_mr.market import protocol as P
from carla_mr.market.bidders import receipt_of
from carla_mr.market.clearing import sample_round, truthful_bids
from carla_mr.market.codec import decode_server, encode_body


def _round(h, *, spec: bool, n_tasks: int = 2):
    pub, priv = sample_round(len(h.av_ids), len(h.sim_ids), n_tasks, seed=4)
    if spec:
        pub = {**pub, "s_dt": priv["s_dt"], "e_dt": priv["e_dt"]}
    ann = h.auctioneer.open_round(pub, av_ids=h.av_ids, sim_ids=h.sim_ids, n_tasks=n_tasks, deadline_s=30)
    return ann, priv, truthful_bids(priv, h.av_ids, h.sim_ids)


def test_task_spec_refuses_misreported_size_and_cycles(harness):
    h = harness(n_avs=2, n_traffic=2)
    ann, priv, bids = _round(h, spec=True)
    assert ann["verify"] == P.VERIFY_SPEC
    av = h.client("av-000")
    av.connect()
    assert av.announces[ann["round_id"]]["verify"] == P.VERIFY_SPEC
    kind, body = bids["av-000"]
    for key in ("size", "cycles"):
        lie = {"price": body["price"], "tasks": [dict(t) for t in body["tasks"]]}
        lie["tasks"][1][key] *= 0.5
        rep = av.request(kind, lie, round_id=ann["round_id"], bid_id=f"lie-{key}")
        assert rep.type == P.ERROR and rep.body["code"] == P.E_TASK_MISMATCH and key in rep.body["message"]
    # a refused bid is no bid: the truthful one is still accepted
    assert av.request(kind, body, round_id=ann["round_id"], bid_id="truth").ok
    # deadlines are the AV's own report (verifiable upward only): a shorter one is accepted
    other = h.client("av-001")
    kind, body = bids["av-001"]
    short = {"price": body["price"], "tasks": [dict(t, deadline=t["deadline"] * 0.9) for t in body["tasks"]]}
    assert other.request(kind, short, round_id=ann["round_id"], bid_id="short").ok


def test_uploads_verify_task_sizes(harness):
    h = harness(n_avs=2, n_traffic=2, verify_uploads=True)
    ann, priv, bids = _round(h, spec=False)
    rid = ann["round_id"]
    assert ann["verify"] == P.VERIFY_UPLOAD
    av = h.client("av-000")
    kind, body = bids["av-000"]
    rep = av.request(kind, body, round_id=rid, bid_id="b")
    assert rep.body["code"] == P.E_TASK_MISMATCH and "not uploaded" in rep.body["message"]
    sizes = []
    for n in range(2):
        data = bytes(range(256)) * (1000 + 37 * n)
        up = av.upload(rid, n, data)
        assert up.type == P.UPLOAD_ACK and up.body["sha256"] == hashlib.sha256(data).hexdigest()
        assert up.body["size"] == len(data) / 1e6 and up.body["task"] == n
        sizes.append(up.body["size"])
    rep = av.request(kind, body, round_id=rid, bid_id="b")  # the sampled sizes are not the uploads'
    assert rep.body["code"] == P.E_TASK_MISMATCH and "measured" in rep.body["message"]
    good = {"price": body["price"], "tasks": [dict(t, size=s) for t, s in zip(body["tasks"], sizes)]}
    assert av.request(kind, good, round_id=rid, bid_id="b").ok
    # only AVs upload, only tasks of the round
    assert h.client("sim-001").request(P.UPLOAD, {"task": 0, "data": b"x"}, round_id=rid).body["code"] == P.E_ROLE
    assert av.request(P.UPLOAD, {"task": 2, "data": b"x"}, round_id=rid).body["code"] == P.E_BAD_BODY
    assert av.request(P.UPLOAD, {"task": 0, "data": "text"}, round_id=rid).body["code"] == P.E_BAD_BODY


def _receipt_from_the_doc(*, prev_hash: str, round_id: int, at_ns: int, bidder_id: str, bid_id: str, kind: str,
                          canonical_body: bytes) -> str:
    """docs/protocol.md's recipe, written here independently of the package."""
    def part(b: bytes) -> bytes:
        return len(b).to_bytes(8, "big") + b

    payload = msgpack.packb({"bidder_id": bidder_id, "bid_id": bid_id, "kind": kind,
                             "body_sha256": hashlib.sha256(canonical_body).hexdigest()}, use_bin_type=True)
    h = hashlib.sha256()
    for p in (prev_hash.encode(), b"bid", str(round_id).encode(), str(at_ns).encode(), payload):
        h.update(part(p))
    return h.hexdigest()


def test_a_bidder_can_verify_its_receipt(harness):
    h = harness(n_avs=2, n_traffic=2)
    ann, priv, bids = _round(h, spec=False, n_tasks=1)
    rid = ann["round_id"]
    for b in ("av-000", "sim-001", "sim-000"):
        kind, body = bids[b]
        c = h.client(b)
        rep = c.request(kind, body, round_id=rid, bid_id=f"r-{b}")
        assert rep.ok and len(rep.body["prev_hash"]) == 64 and rep.body["at_ns"] > 0
        # canonical msgpack: the validated body's fields in schema order (bid_av: price, tasks;
        # each task: size, cycles, deadline as float64; bid_sim values: AV ids sorted)
        if kind == P.BID_AV:
            canon = msgpack.packb({"price": body["price"], "tasks": [
                {"size": float(t["size"]), "cycles": float(t["cycles"]), "deadline": float(t["deadline"])}
                for t in body["tasks"]]}, use_bin_type=True)
        elif "values" in body:
            canon = msgpack.packb({"values": {a: body["values"][a] for a in sorted(body["values"])}},
                                  use_bin_type=True)
        else:
            canon = msgpack.packb({"contract": True}, use_bin_type=True)
        want = _receipt_from_the_doc(prev_hash=rep.body["prev_hash"], round_id=rid, at_ns=rep.body["at_ns"],
                                     bidder_id=b, bid_id=f"r-{b}", kind=kind, canonical_body=canon)
        assert rep.receipt == want
        assert receipt_of(round_id=rid, bidder_id=b, bid_id=f"r-{b}", kind=kind, body=body,
                          prev_hash=rep.body["prev_hash"], at_ns=rep.body["at_ns"]) == want
        again = c.request(kind, body, round_id=rid, bid_id=f"r-{b}")  # a duplicate carries the same proof
        assert again.body["duplicate"] and (again.body["prev_hash"], again.body["at_ns"]) == \
            (rep.body["prev_hash"], rep.body["at_ns"])


@pytest.mark.parametrize("header,code", [
    ({"version": 2, "type": P.STATUS, "round_id": 0, "bid_id": "", "seq": 7}, P.E_VERSION),
    ({"version": 1, "type": "nope", "round_id": 0, "bid_id": "", "seq": 7}, P.E_BAD_TYPE),
    ({"version": 1, "type": P.BID_AV, "round_id": 0, "bid_id": "x", "seq": 7}, P.E_BAD_HEADER),
    ({"version": 1, "type": P.STATUS, "round_id": -1, "bid_id": "", "seq": 7}, P.E_BAD_HEADER),
])
def test_errors_echo_the_readable_seq(harness, header, code):
    h = harness(n_avs=1, n_traffic=2)
    kp = h.keys["av-000"]
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.linger = 0
    s.curve_secretkey, s.curve_publickey, s.curve_serverkey = kp.secret, kp.public, h.server.public
    s.connect(h.endpoint)
    try:
        s.send_multipart([msgpack.packb(header), encode_body({})])
        assert s.poll(3000)
        hd, body = decode_server(s.recv_multipart())
        assert hd["type"] == P.ERROR and body["code"] == code and hd["seq"] == 7
    finally:
        s.close()

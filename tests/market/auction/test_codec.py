"""Codec: strict framing, limits and validation; hypothesis fuzz never escapes ProtocolError."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carla_mr.market import protocol as P
from carla_mr.market.codec import (ProtocolError, canonical_bytes, decode_body, decode_header, encode,
                                   pack_arrays, unpack_arrays)

GOOD_AV = {"price": 500_000, "tasks": [{"size": 0.2, "cycles": 1.5, "deadline": 1.2}]}


def test_roundtrip_header_and_bodies():
    h, b = encode(P.BID_AV, GOOD_AV, round_id=7, bid_id="abc", seq=3)
    assert decode_header(h) == {"version": 1, "type": P.BID_AV, "round_id": 7, "bid_id": "abc", "seq": 3}
    assert decode_body(P.BID_AV, b) == GOOD_AV
    sim = {"values": {"av-2": [3], "av-1": [1]}}
    out = decode_body(P.BID_SIM, msgpack.packb(sim))
    assert list(out["values"]) == ["av-1", "av-2"]  # canonical order
    assert canonical_bytes(out) == canonical_bytes(decode_body(P.BID_SIM, msgpack.packb(
        {"values": {"av-1": [1], "av-2": [3]}})))
    assert decode_body(P.BID_SIM, msgpack.packb({"contract": True})) == {"contract": True}


@pytest.mark.parametrize("header,code", [
    ({"version": 1, "type": "bid_av", "round_id": 1, "bid_id": "x"}, P.E_BAD_HEADER),  # missing seq
    ({"version": 1, "type": "bid_av", "round_id": 1, "bid_id": "x", "seq": 1, "extra": 1}, P.E_BAD_HEADER),
    ({"version": 2, "type": "bid_av", "round_id": 1, "bid_id": "x", "seq": 1}, P.E_VERSION),
    ({"version": 1, "type": "result", "round_id": 1, "bid_id": "x", "seq": 1}, P.E_BAD_TYPE),  # server-only
    ({"version": 1, "type": "nope", "round_id": 1, "bid_id": "x", "seq": 1}, P.E_BAD_TYPE),
    ({"version": 1, "type": "bid_av", "round_id": -1, "bid_id": "x", "seq": 1}, P.E_BAD_HEADER),
    ({"version": 1, "type": "bid_av", "round_id": 1, "bid_id": "", "seq": 1}, P.E_BAD_HEADER),  # bid needs id
    ({"version": 1, "type": "bid_av", "round_id": 0, "bid_id": "x", "seq": 1}, P.E_BAD_HEADER),
    ({"version": 1, "type": "bid_av", "round_id": 1, "bid_id": "x y", "seq": 1}, P.E_BAD_HEADER),
    ({"version": True, "type": "bid_av", "round_id": 1, "bid_id": "x", "seq": 1}, P.E_BAD_HEADER),  # bool
    ({"version": 1, "type": "bid_av", "round_id": 1.0, "bid_id": "x", "seq": 1}, P.E_BAD_HEADER),
    ([1, 2, 3], P.E_BAD_HEADER),
])
def test_bad_headers(header, code):
    with pytest.raises(ProtocolError) as ei:
        decode_header(msgpack.packb(header))
    assert ei.value.code == code


@pytest.mark.parametrize("body", [
    {"price": 1},                                                      # missing tasks
    {"price": -1, "tasks": GOOD_AV["tasks"]},                          # negative price
    {"price": 0.5, "tasks": GOOD_AV["tasks"]},                         # price not integer micro
    {"price": True, "tasks": GOOD_AV["tasks"]},                        # bool is not an int
    {"price": P.MAX_PRICE_MICRO + 1, "tasks": GOOD_AV["tasks"]},
    {"price": 1, "tasks": []},
    {"price": 1, "tasks": [{"size": 1, "cycles": 1}]},
    {"price": 1, "tasks": [{"size": float("nan"), "cycles": 1, "deadline": 1}]},
    {"price": 1, "tasks": [{"size": 1, "cycles": 1, "deadline": 0}]},
    {"price": 1, "tasks": [{"size": 1, "cycles": 1, "deadline": 1, "evil": 1}]},
    {"price": 1, "tasks": GOOD_AV["tasks"], "bidder_id": "someone-else"},  # ids never come from payloads
    {"price": 1, "tasks": [GOOD_AV["tasks"][0]] * (P.MAX_TASKS + 1)},
])
def test_bad_av_bodies(body):
    with pytest.raises(ProtocolError) as ei:
        decode_body(P.BID_AV, msgpack.packb(body))
    assert ei.value.code == P.E_BAD_BODY


@pytest.mark.parametrize("body", [
    {}, {"values": {}, "contract": True}, {"contract": False}, {"values": [1]},
    {"values": {"av 1": [1]}}, {"values": {"av-1": [-1]}}, {"values": {"av-1": [1.5]}}, {"values": {"av-1": []}},
])
def test_bad_sim_bodies(body):
    with pytest.raises(ProtocolError):
        decode_body(P.BID_SIM, msgpack.packb(body))


def test_size_and_depth_limits():
    with pytest.raises(ProtocolError) as ei:
        decode_header(b"\x80" + b"x" * P.MAX_HEADER_BYTES)
    assert ei.value.code == P.E_BAD_FRAME
    with pytest.raises(ProtocolError) as ei:
        decode_body(P.BID_AV, b"\x00" * (P.MAX_BODY_BYTES + 1))
    assert ei.value.code == P.E_BAD_FRAME
    deep = {"price": 1, "tasks": GOOD_AV["tasks"]}
    nested = [[[[[[[[[1]]]]]]]]]
    deep["tasks"] = nested
    with pytest.raises(ProtocolError, match="deeper"):
        decode_body(P.BID_AV, msgpack.packb(deep))
    # a huge declared array length (header says 2^32-1 elements) is refused before allocation
    with pytest.raises(ProtocolError):
        decode_body(P.BID_AV, b"\xdd\xff\xff\xff\xff")
    # ext types (e.g. a timestamp) and trailing bytes are refused
    with pytest.raises(ProtocolError):
        decode_body(P.STATUS, msgpack.packb(msgpack.ExtType(1, b"x")))
    with pytest.raises(ProtocolError):
        decode_body(P.STATUS, msgpack.packb({}) + b"\x00")
    # 1000-deep nesting does not crash the decoder
    with pytest.raises(ProtocolError):
        decode_body(P.STATUS, b"\x91" * 5000 + b"\x00")


def test_arrays_roundtrip_and_validation():
    arrs = {"a": np.arange(6.0).reshape(2, 3), "s": np.asarray(0.5), "b": np.array([True, False]),
            "i": np.arange(4)}
    out = unpack_arrays(pack_arrays(arrs))
    for k, v in arrs.items():
        assert out[k].shape == v.shape and np.array_equal(out[k], v)
    bad = msgpack.packb({"a": {"dtype": "<f8", "shape": [3], "data": b"\x00" * 8}})
    with pytest.raises(ProtocolError):
        unpack_arrays(bad)
    with pytest.raises(ProtocolError):
        unpack_arrays(msgpack.packb({"a": {"dtype": "O", "shape": [1], "data": b"\x00" * 8}}))


_json = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8)
                     | st.binary(max_size=8),
                     lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=6), ch, max_size=4),
                     max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(sorted(P.CLIENT_TYPES)))
def test_fuzz_random_bytes(data, type_):
    for fn in (lambda: decode_header(data), lambda: decode_body(type_, data)):
        try:
            fn()
        except ProtocolError as exc:
            assert exc.code in P.ERROR_CODES


@settings(max_examples=150, deadline=None)
@given(_json, st.sampled_from(sorted(P.CLIENT_TYPES)))
def test_fuzz_structured(obj, type_):
    try:
        data = msgpack.packb(obj, use_bin_type=True)
    except (OverflowError, ValueError):
        return
    for fn in (lambda: decode_header(data), lambda: decode_body(type_, data)):
        try:
            out = fn()
        except ProtocolError as exc:
            assert exc.code in P.ERROR_CODES
        else:
            assert isinstance(out, dict)

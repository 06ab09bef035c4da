"""msgpack framing with strict limits and field-by-field validation (never pickle).

``encode(type, body, ...)`` gives the two frames of a message; ``decode_header`` and
``decode_body`` check sizes before decoding, decode with msgpack's length limits, check the
nesting depth, then validate every field (unknown fields are errors). Every failure is a
:class:`ProtocolError` carrying a protocol error code (see :mod:`carla_mr.market.protocol`).

Validated bids come back as canonical dicts (fixed key order, sorted maps), so that
``canonical_bytes(body)`` is the same for two encodings of the same bid.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import msgpack

from carla_mr.market import protocol as P


class ProtocolError(Exception):
    """A message that violates the protocol; ``code`` is one of ``protocol.ERROR_CODES``.

    ``echo``: the header fields (round_id, bid_id, seq) that could be read and are valid, for
    the error reply to echo (a header with one bad field still gets its seq back)."""

    def __init__(self, code: str, message: str, echo: dict | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.echo = echo


def _reject_ext(code, data):
    raise ValueError(f"msgpack extension type {code} is not allowed")


def _unpack(data: bytes, limit: int, what: str, code: str) -> Any:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(code, f"{what} is not bytes")
    if len(data) > limit:
        raise ProtocolError(P.E_BAD_FRAME, f"{what} is {len(data)} bytes; the limit is {limit}")
    if len(data) == 0:
        raise ProtocolError(code, f"{what} is empty")
    try:
        obj = msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True,
            max_str_len=min(limit, 1 << 20), max_bin_len=limit, max_array_len=P.MAX_ARRAY,
            max_map_len=P.MAX_MAP, max_ext_len=0, ext_hook=_reject_ext, timestamp=0,
        )
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a protocol error
        raise ProtocolError(code, f"{what} is not valid msgpack within limits ({type(exc).__name__}: {exc})"[:300])
    _check_depth(obj, 0, what, code)
    return obj


def _check_depth(obj: Any, depth: int, what: str, code: str) -> None:
    if depth > P.MAX_DEPTH:
        raise ProtocolError(code, f"{what} nests deeper than {P.MAX_DEPTH} levels")
    if isinstance(obj, dict):
        for v in obj.values():
            if isinstance(v, (dict, list)):
                _check_depth(v, depth + 1, what, code)
    elif isinstance(obj, list):
        for v in obj:
            if isinstance(v, (dict, list)):
                _check_depth(v, depth + 1, what, code)


# ----------------------------------------------------------------------------- field checks

def _int(v: Any, field: str, lo: int, hi: int, code: str = P.E_BAD_BODY) -> int:
    if type(v) is not int:
        raise ProtocolError(code, f"{field} must be an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise ProtocolError(code, f"{field} must be in [{lo}, {hi}], got {v}")
    return v


def _num(v: Any, field: str, lo: float, hi: float, *, lo_open: bool = False) -> float:
    if type(v) not in (int, float):
        raise ProtocolError(P.E_BAD_BODY, f"{field} must be a number, got {type(v).__name__}")
    f = float(v)
    if not math.isfinite(f) or f > hi or f < lo or (lo_open and f <= lo):
        bound = "(" if lo_open else "["
        raise ProtocolError(P.E_BAD_BODY, f"{field} must be finite in {bound}{lo}, {hi}], got {v!r}")
    return f


def _str(v: Any, field: str, max_len: int = P.MAX_STR, code: str = P.E_BAD_BODY) -> str:
    if type(v) is not str:
        raise ProtocolError(code, f"{field} must be a string, got {type(v).__name__}")
    if len(v) > max_len:
        raise ProtocolError(code, f"{field} is longer than {max_len} characters")
    return v


def _id(v: Any, field: str, code: str = P.E_BAD_BODY) -> str:
    s = _str(v, field, 64, code)
    if not P.ID_RE.match(s):
        raise ProtocolError(code, f"{field} must match {P.ID_RE.pattern}, got {s!r}")
    return s


def _map(v: Any, field: str, allowed: tuple[str, ...], required: tuple[str, ...] = (),
         code: str = P.E_BAD_BODY) -> dict:
    if type(v) is not dict:
        raise ProtocolError(code, f"{field} must be a map, got {type(v).__name__}")
    unknown = [k for k in v if k not in allowed]
    if unknown:
        raise ProtocolError(code, f"{field} has unknown field(s) {sorted(map(str, unknown))[:5]}; allowed: {list(allowed)}")
    missing = [k for k in required if k not in v]
    if missing:
        raise ProtocolError(code, f"{field} is missing field(s) {missing}")
    return v


def _list(v: Any, field: str, lo: int, hi: int) -> list:
    if type(v) is not list:
        raise ProtocolError(P.E_BAD_BODY, f"{field} must be an array, got {type(v).__name__}")
    if not lo <= len(v) <= hi:
        raise ProtocolError(P.E_BAD_BODY, f"{field} must have {lo}..{hi} elements, got {len(v)}")
    return v


# ----------------------------------------------------------------------------- header

def encode_header(type_: str, *, round_id: int = 0, bid_id: str = "", seq: int = 0) -> bytes:
    return msgpack.packb({"version": P.VERSION, "type": type_, "round_id": int(round_id),
                          "bid_id": bid_id, "seq": int(seq)}, use_bin_type=True)


def decode_header(data: bytes, *, from_server: bool = False) -> dict:
    """Decode and validate a header; raises ProtocolError (bad_header / version / bad_type)."""
    h = _unpack(data, P.MAX_HEADER_BYTES, "header", P.E_BAD_HEADER)
    try:
        return _check_header(h, from_server)
    except ProtocolError as exc:
        exc.echo = _readable_fields(h)
        raise


def _readable_fields(h: Any) -> dict:
    """The valid round_id, bid_id and seq of a header that failed its checks (else defaults)."""
    out: dict = {}
    if type(h) is not dict:
        return out
    seq, rid, bid = h.get("seq"), h.get("round_id"), h.get("bid_id")
    if type(seq) is int and 0 <= seq <= P.MAX_U64:
        out["seq"] = seq
    if type(rid) is int and 0 <= rid <= P.MAX_U63:
        out["round_id"] = rid
    if type(bid) is str and (bid == "" or P.BID_ID_RE.match(bid)):
        out["bid_id"] = bid
    return out


def _check_header(h: Any, from_server: bool) -> dict:
    _map(h, "header", P.HEADER_KEYS, P.HEADER_KEYS, code=P.E_BAD_HEADER)
    version = _int(h["version"], "header.version", 0, P.MAX_U63, P.E_BAD_HEADER)
    if version != P.VERSION:
        raise ProtocolError(P.E_VERSION, f"protocol version {version} is not supported; this server speaks {P.VERSION}")
    t = _str(h["type"], "header.type", 32, P.E_BAD_HEADER)
    allowed = P.SERVER_TYPES if from_server else P.CLIENT_TYPES
    if t not in allowed:
        raise ProtocolError(P.E_BAD_TYPE, f"message type {t!r} is not one of {sorted(allowed)}")
    rid = _int(h["round_id"], "header.round_id", 0, P.MAX_U63, P.E_BAD_HEADER)
    bid_id = _str(h["bid_id"], "header.bid_id", 64, P.E_BAD_HEADER)
    if bid_id and not P.BID_ID_RE.match(bid_id):
        raise ProtocolError(P.E_BAD_HEADER, f"header.bid_id must match {P.BID_ID_RE.pattern}, got {bid_id!r}")
    if t in (P.BID_AV, P.BID_SIM) and not bid_id:
        raise ProtocolError(P.E_BAD_HEADER, "header.bid_id must be set on a bid")
    if t in (P.BID_AV, P.BID_SIM, P.UPLOAD) and rid == 0:
        raise ProtocolError(P.E_BAD_HEADER, f"header.round_id must name the round a {t} is for (not 0)")
    seq = _int(h["seq"], "header.seq", 0, P.MAX_U64, P.E_BAD_HEADER)
    return {"version": version, "type": t, "round_id": rid, "bid_id": bid_id, "seq": seq}


# ----------------------------------------------------------------------------- bodies

def encode_body(body: dict) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def encode(type_: str, body: dict, *, round_id: int = 0, bid_id: str = "", seq: int = 0) -> list[bytes]:
    """The two frames of a message."""
    return [encode_header(type_, round_id=round_id, bid_id=bid_id, seq=seq), encode_body(body)]


def _v_hello(b: dict) -> dict:
    _map(b, "hello", ("agent", "claim"))
    out = {"agent": _str(b.get("agent", ""), "hello.agent", 64)}
    if "claim" in b:
        out["claim"] = _id(b["claim"], "hello.claim")
    return out


def _v_bid_av(b: dict) -> dict:
    _map(b, "bid_av", ("price", "tasks"), ("price", "tasks"))
    price = _int(b["price"], "bid_av.price", 0, P.MAX_PRICE_MICRO)
    tasks = []
    for j, t in enumerate(_list(b["tasks"], "bid_av.tasks", 1, P.MAX_TASKS)):
        f = f"bid_av.tasks[{j}]"
        _map(t, f, ("size", "cycles", "deadline"), ("size", "cycles", "deadline"))
        tasks.append({"size": _num(t["size"], f + ".size", 0.0, P.MAX_TASK_SIZE_MB),
                      "cycles": _num(t["cycles"], f + ".cycles", 0.0, P.MAX_TASK_CYCLES),
                      "deadline": _num(t["deadline"], f + ".deadline", 0.0, P.MAX_DEADLINE_S, lo_open=True)})
    return {"price": price, "tasks": tasks}


def _v_bid_sim(b: dict) -> dict:
    _map(b, "bid_sim", ("values", "contract"))
    if ("values" in b) == ("contract" in b):
        raise ProtocolError(P.E_BAD_BODY, "bid_sim needs exactly one of 'values' (traffic) or 'contract' (driving)")
    if "contract" in b:
        if b["contract"] is not True:
            raise ProtocolError(P.E_BAD_BODY, "bid_sim.contract must be true (accepting the contract price)")
        return {"contract": True}
    vals = b["values"]
    if type(vals) is not dict:
        raise ProtocolError(P.E_BAD_BODY, f"bid_sim.values must be a map av_id -> [micro per task], got {type(vals).__name__}")
    out = {}
    for av in sorted(vals):
        f = f"bid_sim.values[{av!r}]"
        _id(av, "bid_sim.values key")
        row = _list(vals[av], f, 1, P.MAX_TASKS)
        out[av] = [_int(x, f"{f}[{j}]", 0, P.MAX_PRICE_MICRO) for j, x in enumerate(row)]
    return {"values": out}


def _v_status(b: dict) -> dict:
    _map(b, "status", ())
    return {}


def _v_upload(b: dict) -> dict:
    _map(b, "upload", ("task", "data"), ("task", "data"))
    task = _int(b["task"], "upload.task", 0, P.MAX_TASKS - 1)
    data = b["data"]
    if type(data) is not bytes:
        raise ProtocolError(P.E_BAD_BODY, f"upload.data must be msgpack bin (bytes), got {type(data).__name__}")
    if not 1 <= len(data) <= P.MAX_UPLOAD_BYTES:
        raise ProtocolError(P.E_BAD_BODY, f"upload.data must hold 1..{P.MAX_UPLOAD_BYTES} bytes, got {len(data)}")
    return {"task": task, "data": data}


_CLIENT_VALIDATORS = {P.HELLO: _v_hello, P.BID_AV: _v_bid_av, P.BID_SIM: _v_bid_sim, P.STATUS: _v_status,
                      P.UPLOAD: _v_upload}

# Server bodies: required keys (clients check these; extra keys are allowed for forward compat).
_SERVER_REQUIRED = {
    P.WELCOME: ("bidder_id", "role", "round_id"),
    P.ANNOUNCE: ("round_id", "mechanism", "scoring", "deadline_ms", "n_tasks", "av_ids", "sim_ids", "public_digest"),
    P.ACK: ("receipt", "duplicate"),
    P.LATE: ("state", "reason"),
    P.ERROR: ("code", "message"),
    P.RESULT: ("round_id", "state", "outcome", "schedule", "chain_hash", "closed_at_ns"),
    P.STATUS_REPLY: ("round_id", "state", "deadline_ms", "n_bids"),
    P.UPLOAD_ACK: ("task", "size", "sha256"),
}


def decode_body(type_: str, data: bytes, *, limit: int = P.MAX_BODY_BYTES) -> dict:
    """Decode and validate the body of a client message of ``type_`` (already validated)."""
    b = _unpack(data, limit, "body", P.E_BAD_BODY)
    if type_ in _CLIENT_VALIDATORS:
        return _CLIENT_VALIDATORS[type_](b)
    if type_ in _SERVER_REQUIRED:
        _map(b, type_, tuple(b) if type(b) is dict else (), _SERVER_REQUIRED[type_])
        return b
    raise ProtocolError(P.E_BAD_TYPE, f"unknown message type {type_!r}")


def decode_server(frames: list[bytes]) -> tuple[dict, dict]:
    """Client side: decode a server message into (header, body)."""
    if len(frames) != 2:
        raise ProtocolError(P.E_BAD_FRAME, f"expected 2 frames, got {len(frames)}")
    h = decode_header(frames[0], from_server=True)
    return h, decode_body(h["type"], frames[1], limit=P.MAX_SERVER_BODY_BYTES)


def canonical_bytes(obj: Any) -> bytes:
    """Deterministic msgpack of a validated body (keys were put in a fixed order)."""
    return msgpack.packb(obj, use_bin_type=True)


def digest(*parts: bytes) -> str:
    """sha256 hex of length-prefixed parts (unambiguous concatenation)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.hexdigest()


# ----------------------------------------------------------------------------- numpy arrays

_DTYPES = {"<f8": "float64", "<i8": "int64", "|b1": "bool", "<f4": "float32", "<i4": "int32"}
MAX_ARRAY_ELEMS = 50_000_000


def pack_arrays(arrays: dict[str, Any]) -> bytes:
    """msgpack of named numpy arrays (little-endian, C order), keys sorted: deterministic."""
    import numpy as np

    out = {}
    for name in sorted(arrays):
        a = np.asarray(arrays[name])
        if not a.flags.c_contiguous:  # (np.ascontiguousarray would turn 0-d into 1-d)
            a = a.copy(order="C")
        if a.dtype.kind == "f":
            a = a.astype("<f8", copy=False)
        elif a.dtype.kind in "iu":
            a = a.astype("<i8", copy=False)
        elif a.dtype.kind == "b":
            a = a.astype("|b1", copy=False)
        else:
            raise TypeError(f"array {name!r} has unsupported dtype {a.dtype}")
        out[name] = {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}
    return msgpack.packb(out, use_bin_type=True)


def unpack_arrays(data: bytes) -> dict[str, Any]:
    """Inverse of pack_arrays, validating dtype, shape and byte length of every array."""
    import numpy as np

    obj = msgpack.unpackb(data, raw=False, strict_map_key=True, max_ext_len=0, ext_hook=_reject_ext)
    if type(obj) is not dict:
        raise ProtocolError(P.E_BAD_BODY, "arrays must be a map name -> array")
    out = {}
    for name, spec in obj.items():
        _map(spec, f"arrays[{name}]", ("dtype", "shape", "data"), ("dtype", "shape", "data"))
        if spec["dtype"] not in _DTYPES:
            raise ProtocolError(P.E_BAD_BODY, f"arrays[{name}].dtype {spec['dtype']!r} not in {sorted(_DTYPES)}")
        shape = [_int(s, f"arrays[{name}].shape", 0, MAX_ARRAY_ELEMS) for s in _list(spec["shape"], "shape", 0, 8)]
        dt = np.dtype(spec["dtype"])
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if n > MAX_ARRAY_ELEMS or type(spec["data"]) is not bytes or len(spec["data"]) != n * dt.itemsize:
            raise ProtocolError(P.E_BAD_BODY, f"arrays[{name}] data does not match dtype and shape")
        out[name] = np.frombuffer(spec["data"], dtype=dt).reshape(shape).copy()
    return out

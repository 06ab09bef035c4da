"""The auction wire protocol: constants, message types, limits (see docs/protocol.md).

Every message is a ZeroMQ multipart message of exactly two frames, ``[header, body]``,
each one msgpack-encoded map. The auctioneer binds a ROUTER socket; each bidder connects a
DEALER socket (no empty delimiter frame). The header is always
``{version, type, round_id, bid_id, seq}`` and nothing else.

Prices and values are integers in micro-units (1 unit = 1_000_000 micro). Physical task
quantities (MB, Gcycles/MB, seconds) are float64.
"""

from __future__ import annotations

import re

VERSION = 1

#: Micro-units per price unit.
MICRO = 1_000_000

# Client -> server.
HELLO = "hello"
BID_AV = "bid_av"
BID_SIM = "bid_sim"
STATUS = "status"
UPLOAD = "upload"
CLIENT_TYPES = frozenset({HELLO, BID_AV, BID_SIM, STATUS, UPLOAD})

# Server -> client.
WELCOME = "welcome"
ANNOUNCE = "announce"
ACK = "ack"
LATE = "late"
ERROR = "error"
RESULT = "result"
STATUS_REPLY = "status_reply"
UPLOAD_ACK = "upload_ack"
SERVER_TYPES = frozenset({WELCOME, ANNOUNCE, ACK, LATE, ERROR, RESULT, STATUS_REPLY, UPLOAD_ACK})
#: Server messages that are pushed (never a reply): tell them by type, not by seq.
PUSH_TYPES = frozenset({ANNOUNCE, RESULT})

# How a round verifies the AVs' task sizes and cycles (``announce.verify``).
VERIFY_SPEC = "spec"      # the RSU knows every AV's tasks: a bid must report them exactly
VERIFY_UPLOAD = "upload"  # each task's size must equal its measured upload (cycles: self-declared)
VERIFY_NONE = "none"      # self-reported (only for demonstrations; an under-report can pay)
VERIFY_MODES = (VERIFY_SPEC, VERIFY_UPLOAD, VERIFY_NONE)

# Roles on the allow-list.
ROLE_AV = "av"
ROLE_SIM = "sim"          # traffic simulator, k = 1..K
ROLE_DRIVING = "driving"  # the driving simulator, k = 0 (contract, not a bid)
ROLES = (ROLE_AV, ROLE_SIM, ROLE_DRIVING)

# Round states.
OPEN = "OPEN"
CLOSED = "CLOSED"
CLEARED = "CLEARED"
PUBLISHED = "PUBLISHED"
VOID = "VOID"
STATES = (OPEN, CLOSED, CLEARED, PUBLISHED, VOID)

# Error codes (body of an ``error`` message).
E_BAD_FRAME = "bad_frame"        # not exactly two frames, or a frame too large / not msgpack
E_BAD_HEADER = "bad_header"      # header fields missing, unknown or of the wrong type
E_VERSION = "version"            # unsupported protocol version
E_BAD_TYPE = "bad_type"          # unknown message type, or a server-only type sent by a client
E_BAD_BODY = "bad_body"          # body field missing, unknown, wrong type or out of range
E_UNKNOWN_BIDDER = "unknown_bidder"  # (plain mode) hello claims an id that is not allowed
E_NOT_HELLO = "need_hello"       # (plain mode) a message before a successful hello
E_ROLE = "wrong_role"            # e.g. an AV sending a simulator bid
E_NO_ROUND = "no_round"          # round_id is not a known round
E_NOT_ELIGIBLE = "not_eligible"  # the bidder is not a participant of this round
E_ALREADY_BID = "already_bid"    # a second, different bid in the same round (policy: refused)
E_BID_ID_REUSE = "bid_id_reuse"  # same bid_id with a different body (per bidder and round)
E_TASK_MISMATCH = "task_mismatch"  # a task's size or cycles differ from what the RSU verified
E_INTERNAL = "internal"
ERROR_CODES = (E_BAD_FRAME, E_BAD_HEADER, E_VERSION, E_BAD_TYPE, E_BAD_BODY, E_UNKNOWN_BIDDER,
               E_NOT_HELLO, E_ROLE, E_NO_ROUND, E_NOT_ELIGIBLE, E_ALREADY_BID, E_BID_ID_REUSE,
               E_TASK_MISMATCH, E_INTERNAL)

# Limits, enforced before and while decoding.
MAX_HEADER_BYTES = 512
MAX_BODY_BYTES = 1 << 20          # 1 MiB for client messages
MAX_SERVER_BODY_BYTES = 64 << 20  # server messages (results of very large rounds)
MAX_STR = 256
MAX_ARRAY = 100_000
MAX_MAP = 100_000
MAX_DEPTH = 6
MAX_TASKS = 64
MAX_TASK_SIZE_MB = 1e6            # bid_av task size range [0, 1e6] MB
MAX_TASK_CYCLES = 1e6             # bid_av task cycles range [0, 1e6] Gcycles/MB
MAX_DEADLINE_S = 3600.0           # bid_av task deadline range (0, 3600] s
MAX_UPLOAD_BYTES = MAX_BODY_BYTES - 1024  # one task's data in an upload message
#: Relative tolerance when a reported task size or cycles is compared with the verified value.
TASK_RTOL = 1e-9
MAX_PRICE_MICRO = 10**15          # one billion units
MAX_U63 = (1 << 63) - 1
MAX_U64 = (1 << 64) - 1

ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
BID_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")

HEADER_KEYS = ("version", "type", "round_id", "bid_id", "seq")

"""CURVE keypairs and the allow-list (public key -> bidder id and role).

Key files use ZeroMQ's certificate format (``zmq.auth.create_certificates``): ``NAME.key``
holds the public key, ``NAME.key_secret`` the public and secret keys (mode 0600). The
allow-list is JSON::

    {"version": 1, "bidders": [{"id": "av-000", "role": "av", "public_key": "<z85, 40 chars>"}, ...]}

Roles: ``av``, ``sim`` (traffic simulator) and at most one ``driving`` (simulator 0).
Simulator indices follow the list order: the driving simulator is k = 0, traffic simulators
are k = 1..K in the order they appear.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from carla_mr.errors import InputError
from carla_mr.io import atomic_write_json
from carla_mr.market import protocol as P


@dataclass(frozen=True)
class Keypair:
    public: bytes  # z85, 40 bytes
    secret: bytes | None  # z85, 40 bytes (None for a public-only certificate)


@dataclass(frozen=True)
class AllowEntry:
    id: str
    role: str
    public_key: bytes  # z85


class AllowList:
    """Public keys admitted by the auctioneer, each mapped to one bidder id and role."""

    def __init__(self, entries: list[AllowEntry]):
        ids, keys = set(), set()
        drivers = 0
        for e in entries:
            if not P.ID_RE.match(e.id):
                raise InputError(f"bidder id {e.id!r} must match {P.ID_RE.pattern}", field="allowlist.bidders.id")
            if e.role not in P.ROLES:
                raise InputError(f"role {e.role!r} of {e.id} must be one of {P.ROLES}", field="allowlist.bidders.role")
            if e.id in ids:
                raise InputError(f"bidder id {e.id} appears twice", field="allowlist.bidders.id")
            if e.public_key in keys:
                raise InputError(f"public key of {e.id} is also another bidder's", field="allowlist.bidders.public_key")
            _check_z85(e.public_key, f"allowlist.bidders[{e.id}].public_key")
            drivers += e.role == P.ROLE_DRIVING
            ids.add(e.id)
            keys.add(e.public_key)
        if drivers > 1:
            raise InputError("at most one bidder may have role 'driving'", field="allowlist.bidders.role")
        self.entries = list(entries)
        self.by_key = {e.public_key: e for e in entries}
        self.by_id = {e.id: e for e in entries}

    @property
    def av_ids(self) -> list[str]:
        return [e.id for e in self.entries if e.role == P.ROLE_AV]

    @property
    def sim_ids(self) -> list[str]:
        """Simulators in index order: the driving simulator first (k = 0), then traffic."""
        return ([e.id for e in self.entries if e.role == P.ROLE_DRIVING]
                + [e.id for e in self.entries if e.role == P.ROLE_SIM])

    def to_json(self) -> dict:
        return {"version": 1, "bidders": [{"id": e.id, "role": e.role, "public_key": e.public_key.decode()}
                                          for e in self.entries]}

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AllowList":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise InputError(f"allow-list {path} not found; create one with `carla-mr market keys`",
                             field="--allowlist") from exc
        except (OSError, ValueError) as exc:
            raise InputError(f"allow-list {path} is not readable JSON: {exc}", field="--allowlist") from exc
        if not isinstance(data, dict) or not isinstance(data.get("bidders"), list):
            raise InputError(f"{path} must be {{'version': 1, 'bidders': [...]}}", field="--allowlist")
        entries = []
        for j, b in enumerate(data["bidders"]):
            if not isinstance(b, dict) or set(b) != {"id", "role", "public_key"}:
                raise InputError(f"bidders[{j}] must have exactly id, role, public_key", field="allowlist.bidders")
            entries.append(AllowEntry(str(b["id"]), str(b["role"]), str(b["public_key"]).encode()))
        return cls(entries)


def _check_z85(key: bytes, field: str) -> None:
    if len(key) != 40:
        raise InputError(f"a CURVE key is 40 z85 characters, got {len(key)}", field=field)
    try:
        zmq.utils.z85.decode(key)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"not a z85-encoded key: {exc}", field=field) from exc


def new_keypair() -> Keypair:
    pub, sec = zmq.curve_keypair()
    return Keypair(pub, sec)


def write_keypair(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Create ``NAME.key`` and ``NAME.key_secret`` (0600) in ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pub_file, sec_file = zmq.auth.create_certificates(str(directory), name)
    os.chmod(sec_file, 0o600)
    return Path(pub_file), Path(sec_file)


def load_keypair(path: str | os.PathLike, *, need_secret: bool = True) -> Keypair:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"key file {path} not found; create keys with `carla-mr market keys`", field="key")
    try:
        pub, sec = zmq.auth.load_certificate(str(path))
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path} is not a ZeroMQ certificate: {exc}", field="key") from exc
    if need_secret and not sec:
        raise InputError(f"{path} has no secret key; pass the NAME.key_secret file", field="key")
    return Keypair(pub, sec)


def make_keyring(directory: str | os.PathLike, av_ids: list[str], sim_ids: list[str],
                 driving_id: str | None = "sim-000") -> AllowList:
    """Write a server keypair, one keypair per bidder and ``allowlist.json`` into ``directory``.

    ``sim_ids`` are traffic simulators; ``driving_id`` (if not None) is the driving simulator.
    """
    directory = Path(directory)
    write_keypair(directory, "server")
    entries = []
    for bid, role in ([(driving_id, P.ROLE_DRIVING)] if driving_id else []) + \
            [(a, P.ROLE_AV) for a in av_ids] + [(s, P.ROLE_SIM) for s in sim_ids]:
        pub_file, _ = write_keypair(directory, bid)
        entries.append(AllowEntry(bid, role, load_keypair(pub_file, need_secret=False).public))
    allow = AllowList(entries)
    allow.save(directory / "allowlist.json")
    return allow


def in_memory_keyring(av_ids: list[str], sim_ids: list[str], driving_id: str | None = "sim-000"
                      ) -> tuple[Keypair, dict[str, Keypair], AllowList]:
    """Keys that never touch the disk (for a MarketSession): server, per-bidder, allow-list."""
    server = new_keypair()
    pairs: dict[str, Keypair] = {}
    entries = []
    for bid, role in ([(driving_id, P.ROLE_DRIVING)] if driving_id else []) + \
            [(a, P.ROLE_AV) for a in av_ids] + [(s, P.ROLE_SIM) for s in sim_ids]:
        kp = new_keypair()
        pairs[bid] = kp
        entries.append(AllowEntry(bid, role, kp.public))
    return server, pairs, AllowList(entries)

"""``carla-mr market serve | keys | bid | status | replay``: the auction service from the shell."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import get_args

import click

from carla_mr.cli_common import common_options, emit, guarded, json_option, log, make_run_dir
from carla_mr.config.vocab import MECHANISM_NAMES, ScoringName
from carla_mr.errors import InputError, RunError

# the registry's names (carla_mr.market.registry asserts they are MECHANISM_NAMES), without
# importing numpy at CLI start-up
MECHS = click.Choice(list(MECHANISM_NAMES))
SCORINGS = click.Choice(list(get_args(ScoringName)))


def _keys_from(keys_dir: Path | None, allowlist: Path | None, server_key: Path | None):
    from carla_mr.market.keys import AllowList, load_keypair

    if keys_dir is not None:
        allowlist = allowlist or keys_dir / "allowlist.json"
        server_key = server_key or keys_dir / "server.key_secret"
    if allowlist is None:
        raise InputError("give --keys DIR (from `carla-mr market keys`) or --allowlist FILE", field="--keys")
    allow = AllowList.load(allowlist)
    return allow, (load_keypair(server_key) if server_key else None)


@click.command("serve")
@common_options
@click.option("--keys", "keys_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder from `carla-mr market keys` (server.key_secret + allowlist.json).")
@click.option("--allowlist", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--server-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The server's NAME.key_secret.")
@click.option("--bind", "endpoint", default="tcp://127.0.0.1:5555", show_default=True,
              help="ROUTER endpoint; port * picks a free one (written to OUT/endpoint.txt).")
@click.option("--plain", is_flag=True, help="No CURVE (loopback addresses only).")
@click.option("--ledger", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="SQLite ledger (default OUT/ledger.sqlite; an existing one is resumed).")
@click.option("--mechanism", type=MECHS, default="mtepvisa", show_default=True)
@click.option("--scoring", type=SCORINGS, default="reported", show_default=True)
@click.option("--deadline", "deadline_s", type=click.FloatRange(min=0.001), default=1.0, show_default=True,
              help="Bidding window per round, seconds.")
@click.option("--period", "period_s", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Pause between a round's publication and the next round, seconds.")
@click.option("--rounds", "max_rounds", type=click.IntRange(min=0), default=0, show_default=True,
              help="Stop after this many published rounds (0: run until Ctrl-C).")
@click.option("--linger", "linger_s", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="With --rounds: keep answering status requests this long after the last round.")
@click.option("--tasks", "n_tasks", type=click.IntRange(1, 64), default=1, show_default=True,
              help="DT tasks per AV per round.")
@click.option("--no-early-close", is_flag=True, help="Always wait for the deadline, even when all have bid.")
@click.option("--commit-first", is_flag=True,
              help="Commit the outcome (fsync) before sending results; default: send first, then commit (the "
                   "outcome is a pure function of the committed bids, so a crash in between re-derives it).")
@click.option("--wait-bidders", "wait_bidders_s", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="The first round opens once every allow-listed bidder has connected and spoken, or after "
                   "this many seconds (a crowd's CURVE handshakes never eat the first round's deadline).")
@click.option("--verify-uploads", is_flag=True,
              help="AVs upload each task's data before bidding; a reported task size must equal the measured "
                   "upload (docs/protocol.md, 'Verified tasks').")
@guarded
def serve_cmd(out, seed, as_json, keys_dir, allowlist, server_key, endpoint, plain, ledger, mechanism, scoring,
              deadline_s, period_s, max_rounds, linger_s, n_tasks, no_early_close, commit_first, wait_bidders_s,
              verify_uploads):
    """Run the auctioneer: rounds on a deadline, public data sampled from --seed per round."""
    from carla_mr.io import atomic_write_text
    from carla_mr.market.auctioneer import Auctioneer, AuctioneerSettings
    from carla_mr.market.endpoints import check_endpoint

    check_endpoint(endpoint, not plain)
    allow, skey = _keys_from(keys_dir, allowlist, server_key)
    if not plain and skey is None:
        raise InputError("CURVE needs the server's secret key: --keys DIR or --server-key FILE", field="--server-key")
    if len(allow.sim_ids) < 3 or not allow.av_ids or allow.sim_ids[0] not in [e.id for e in allow.entries
                                                                                if e.role == "driving"]:
        raise InputError("the allow-list needs >= 1 'av', one 'driving' and >= 2 'sim' bidders", field="--allowlist")
    run_dir = make_run_dir(out, "market-serve")
    settings = AuctioneerSettings(
        ledger_path=ledger or run_dir / "ledger.sqlite", allow=allow, endpoint=endpoint, curve=not plain,
        server_key=skey, mechanism=mechanism, scoring=scoring, deadline_s=deadline_s,
        early_close=not no_early_close, auto_rounds=True, period_s=period_s, max_rounds=max_rounds, linger_s=linger_s,
        n_tasks=n_tasks, seed=seed or 0, publish_first=not commit_first, wait_bidders_s=wait_bidders_s,
        verify_uploads=verify_uploads, log=log)
    a = Auctioneer(settings)

    def on_log(msg: str) -> None:
        log(msg)
        if a.endpoint and not (run_dir / "endpoint.txt").exists():
            atomic_write_text(run_dir / "endpoint.txt", a.endpoint + "\n")

    settings.log = on_log
    with _graceful_signals(a):
        a.run()
    log("stopped")
    result = {"endpoint": a.endpoint, "ledger": str(settings.ledger_path), "curve": not plain, **a.counters}
    emit(result, as_json=as_json, title="auctioneer")


@contextlib.contextmanager
def _graceful_signals(auctioneer):
    """SIGTERM (docker stop, systemd) and SIGINT (Ctrl-C) stop the auctioneer the same way: the
    open round is closed, cleared and published with the bids committed so far, the ledger is
    flushed, the summary printed, exit 0. A second SIGINT interrupts at once."""
    import signal

    def graceful(signum, frame):
        log(f"{signal.Signals(signum).name}: stopping after the open round")
        auctioneer.request_shutdown()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C is immediate

    old = {sig: signal.signal(sig, graceful) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@click.command("keys")
@common_options
@click.option("--avs", type=click.IntRange(0, 100_000), default=30, show_default=True, help="AV keypairs.")
@click.option("--sims", type=click.IntRange(3, 100_000), default=30, show_default=True,
              help="Simulator keypairs: sim-000 is the driving simulator, the rest traffic.")
@guarded
def keys_cmd(out, seed, as_json, avs, sims):
    """Create a server keypair, one CURVE keypair per bidder, and allowlist.json."""
    from carla_mr.market.keys import make_keyring

    run_dir = make_run_dir(out, "market-keys")
    if (run_dir / "allowlist.json").exists():
        raise InputError(f"{run_dir} already holds keys; pick another --out", field="--out")
    allow = make_keyring(run_dir, [f"av-{i:03d}" for i in range(avs)], [f"sim-{k:03d}" for k in range(1, sims)],
                         "sim-000")
    emit({"dir": str(run_dir), "server_public": str(run_dir / "server.key"),
          "server_secret": str(run_dir / "server.key_secret"), "allowlist": str(run_dir / "allowlist.json"),
          "bidders": len(allow.entries)}, as_json=as_json, title="keys")


def _client(endpoint, keys_dir, bidder_id, key, server_public, plain, timeout_s):
    from carla_mr.market.bidders import client_for
    from carla_mr.market.keys import AllowList, load_keypair

    role = None
    if keys_dir is not None:
        key = key or keys_dir / f"{bidder_id}.key_secret"
        server_public = server_public or keys_dir / "server.key"
        al = keys_dir / "allowlist.json"
        if al.is_file():
            e = AllowList.load(al).by_id.get(bidder_id)
            role = e.role if e else None
    kp = None if plain else load_keypair(key) if key else None
    sp = None if plain else (load_keypair(server_public, need_secret=False).public if server_public else None)
    if not plain and (kp is None or sp is None):
        raise InputError("CURVE needs --keys DIR, or --key FILE and --server-public FILE", field="--keys")
    return client_for(role or ("av" if bidder_id.startswith("av") else "sim"), endpoint, bidder_id, keypair=kp,
                      server_public=sp, curve=not plain, handshake_timeout_s=timeout_s, request_timeout_s=timeout_s)


def _client_options(f):
    f = click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.01), default=5.0, show_default=True)(f)
    f = click.option("--plain", is_flag=True, help="No CURVE (loopback only); the id is claimed in hello.")(f)
    f = click.option("--server-public", type=click.Path(dir_okay=False, path_type=Path), default=None)(f)
    f = click.option("--key", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="This bidder's NAME.key_secret.")(f)
    f = click.option("--id", "bidder_id", required=True, help="Bidder id on the allow-list (e.g. av-000).")(f)
    f = click.option("--keys", "keys_dir", type=click.Path(file_okay=False, path_type=Path), default=None)(f)
    f = click.option("--endpoint", default="tcp://127.0.0.1:5555", show_default=True)(f)
    return f


def _parse_task(text: str) -> dict:
    try:
        size, cycles, deadline = (float(x) for x in text.split(","))
    except ValueError as exc:
        raise InputError(f"{text!r} must be SIZE_MB,GCYCLES_PER_MB,DEADLINE_S", field="--task") from exc
    return {"size": size, "cycles": cycles, "deadline": deadline}


@click.command("bid")
@_client_options
@json_option
@click.option("--round", "round_id", type=click.IntRange(min=0), default=0,
              help="Round id (0: wait for the next announced round).")
@click.option("--price", type=click.FloatRange(min=0), default=None, help="AV: bid in units (sent in micro-units).")
@click.option("--task", "tasks", multiple=True, help="AV: SIZE_MB,GCYCLES_PER_MB,DEADLINE_S (once per task).")
@click.option("--values", "values_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Traffic simulator: JSON {av_id: [value per unit time per task, units]}.")
@click.option("--contract", is_flag=True, help="Driving simulator: accept the contract.")
@click.option("--bid-id", default=None, help="Idempotency key (re-sending it gets the same receipt).")
@click.option("--wait-result", is_flag=True, help="Wait for the round's result and print it.")
@guarded
def bid_cmd(endpoint, keys_dir, bidder_id, key, server_public, plain, timeout_s, as_json, round_id, price, tasks,
            values_file, contract, bid_id, wait_result):
    """Send one bid by hand (an AV price and tasks, simulator values, or the driving contract)."""
    from carla_mr.market import protocol as P
    from carla_mr.market.bidders import AVBidder

    kinds = [price is not None, values_file is not None, contract]
    if sum(kinds) != 1:
        raise InputError("give exactly one of --price (AV), --values (traffic simulator), --contract (driving)",
                         field="--price")
    if price is not None and not tasks:
        raise InputError("an AV bid needs at least one --task SIZE,CYCLES,DEADLINE", field="--task")
    c = _client(endpoint, keys_dir, bidder_id, key, server_public, plain, timeout_s)
    with c:
        if round_id == 0:
            ann = c.wait_announce(timeout_s)
            if ann is None:
                raise RunError(f"no round announced within {timeout_s:g} s")
            round_id = int(ann["round_id"])
        if price is not None:
            if not isinstance(c, AVBidder):
                raise InputError(f"{bidder_id} is not an AV", field="--price")
            rep = c.bid(round_id, int(round(price * P.MICRO)), [_parse_task(t) for t in tasks], bid_id=bid_id)
        elif contract:
            rep = c.accept_contract(round_id, bid_id=bid_id)
        else:
            try:
                vals = json.loads(values_file.read_text())
                micro = {str(a): [int(round(float(x) * P.MICRO)) for x in row] for a, row in vals.items()}
            except (OSError, ValueError, AttributeError, TypeError) as exc:
                raise InputError(f"{values_file}: expected JSON {{av_id: [numbers]}}: {exc}", field="--values") from exc
            rep = c.bid(round_id, micro, bid_id=bid_id)
        result = {"round_id": round_id, "reply": rep.type, **rep.body}
        if wait_result and rep.type == P.ACK:
            res = c.wait_result(round_id, timeout_s + 60)
            result["result"] = res
    emit(result, as_json=as_json, title="bid")
    if rep.type != P.ACK:
        raise RunError(f"bid not accepted: {rep.type} {rep.body}")


@click.command("status")
@_client_options
@json_option
@click.option("--round", "round_id", type=click.IntRange(min=0), default=0, help="Round id (0: the latest).")
@guarded
def status_cmd(endpoint, keys_dir, bidder_id, key, server_public, plain, timeout_s, as_json, round_id):
    """Ask the auctioneer for a round's state (and its result once published)."""
    with _client(endpoint, keys_dir, bidder_id, key, server_public, plain, timeout_s) as c:
        st = c.status(round_id)
    emit(st, as_json=as_json, title="status")


@click.command("replay")
@click.argument("ledger", type=click.Path(dir_okay=False, path_type=Path))
@json_option
@guarded
def replay_cmd(ledger, as_json):
    """Verify the ledger's hash chain and recompute every outcome (exit 1 on any mismatch)."""
    from carla_mr.market.ledger import replay

    if not ledger.is_file():
        raise InputError(f"{ledger} not found", field="LEDGER")
    rep = replay(ledger)
    emit(rep, as_json=as_json, title="ledger replay")
    for p in rep["problems"][:20]:
        log(f"problem: {p}")
    if not rep["ok"]:
        raise RunError(f"ledger replay failed: {len(rep['problems'])} problem(s)")


COMMANDS = [serve_cmd, keys_cmd, bid_cmd, status_cmd, replay_cmd]

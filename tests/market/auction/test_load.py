"""Load: a crowd of bidders against a real `carla-mr market serve`, round after round (slow).

The full figure (1000 bidders x 100 rounds) is `python bench/bench_auction.py --load`; this
test runs a smaller crowd so that it fits the slow suite."""

from __future__ import annotations

import json

import pytest

from carla_mr.market.load import keyring, run_load, start_serve


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_crowd_loses_nothing_and_the_server_memory_stays_bounded(tmp_path):
    n, rounds = 300, 30
    allow, keys, server_public = keyring(tmp_path / "keys", n)
    proc, endpoint = start_serve(tmp_path / "keys", tmp_path / "serve", rounds=rounds, deadline_s=10.0)
    try:
        rep = run_load(endpoint, allow, keys, server_public, rounds=rounds, timeout_s=600, server_pid=proc.pid)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    d = rep.to_dict()
    assert d["rounds"] == rounds and d["lost"] == 0 and d["acks"] == n * rounds, d
    assert d["rss_mb_steady_max"] <= 300, d
    # no growth from round to round beyond noise once the rounds are evicted
    assert d["rss_mb_last"] <= d["rss_mb_first"] * 1.25 + 10, d
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["published"] == rounds and summary["late"] == 0 and summary["handshakes_accepted"] >= n

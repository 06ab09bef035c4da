"""Ledger (append-only, hash chain, replay) and GPU-time schedule."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from carla_mr.errors import InputError
from carla_mr.market import protocol as P
from carla_mr.market.clearing import clear_round, sample_round, truthful_bids
from carla_mr.market.codec import canonical_bytes, digest, pack_arrays
from carla_mr.market.ledger import GENESIS, Ledger, replay
from carla_mr.market.schedule import Schedule, build_schedule


def _fill(path, rounds=2):
    av = ["av-000", "av-001", "av-002"]
    sims = ["sim-000", "sim-001", "sim-002"]
    with Ledger(path) as led:
        for rid in range(1, rounds + 1):
            pub, priv = sample_round(3, 3, 2, seed=(0, rid))
            blob = pack_arrays(pub)
            led.open_round(round_id=rid, mechanism="mtepvisa", scoring="reported", n_tasks=2, av_ids=av,
                           sim_ids=sims, public=blob, public_digest=digest(blob), params={}, deadline_ns=0)
            bids = truthful_bids(priv, av, sims)
            led.add_bids([(rid, b, f"id-{b}", k, canonical_bytes(body)) for b, (k, body) in bids.items()])
            out, sched = clear_round(round_id=rid, mechanism="mtepvisa", scoring="reported", public=pub, params={},
                                     av_ids=av, sim_ids=sims, n_tasks=2, bids=bids)
            led.save_outcome(rid, out, sched.to_dict(), close_info={"n_bids": 6})
            led.set_state(rid, P.PUBLISHED)
    return av, sims


def test_chain_and_replay(tmp_path):
    p = tmp_path / "l.sqlite"
    _fill(p)
    rep = replay(p)
    assert rep["ok"] and rep["rounds"] == 2 and rep["recomputed"] == 2 and rep["bids"] == 12
    with Ledger(p) as led:
        ev = list(led.events())
        assert ev[0][5] == GENESIS and all(ev[i][5] == ev[i - 1][6] for i in range(1, len(ev)))
        assert led.bids_head(1) == [e for e in ev if e[2] == 1 and e[1] == "bid"][-1][6]
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            led.db.execute("UPDATE events SET kind='x' WHERE seq=1")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            led.db.execute("DELETE FROM bids")
        # a failed transaction leaves the chain head where it was
        head = led.head
        with pytest.raises(sqlite3.IntegrityError):
            led.add_bids([(1, "av-000", "dup", P.BID_AV, b"\x80")])  # (round, bidder) already has a bid
        assert led.head == head and led.verify_chain()["ok"]


def test_tampered_event_and_outcome_are_found(tmp_path):
    p = tmp_path / "l.sqlite"
    _fill(p)
    db = sqlite3.connect(p)
    db.execute("UPDATE outcomes SET outcome=replace(outcome, '\"winner\":', '\"winner\": ') WHERE round_id=2")
    db.commit()
    rep = replay(p)
    assert not rep["ok"] and rep["mismatches"] == [2] and rep["head"]
    db.execute("DROP TRIGGER events_no_update")
    db.execute("UPDATE events SET at_ns=at_ns+1 WHERE seq=3")
    db.commit()
    db.close()
    rep = replay(p)
    assert not rep["ok"] and any("hash chain broken" in x for x in rep["problems"])
    with pytest.raises(InputError):
        replay(tmp_path / "missing.sqlite")


def test_schedule_layouts_and_roundtrip(tmp_path):
    s = build_schedule(4, winner=1, av_ids=["a", "b"], sim_ids=["d", "t1", "t2"],
                       window_sim=np.array([2, -1, 0, 1]), durations=np.array([1.0, 1.2, 0.0, 1.5]),
                       price_per_s=np.array([0.5, 9.0, 1.0, 0.25]))
    assert s.task.tolist() == [0, 3]  # unserved and zero-length windows are dropped
    assert s.sim_id == ["t2", "t1"] and s.av_id == ["b", "b"]
    assert s.start_s.tolist() == [0.0, 1.0] and s.makespan_s == 2.5 and s.total_s == 2.5
    assert s.payment_micro.tolist() == [500_000, 375_000]
    back = Schedule.from_dict(json.loads(json.dumps(s.to_dict())))
    s.save_json(tmp_path / "s.json")
    assert Schedule.load_json(tmp_path / "s.json").to_dict() == s.to_dict()
    for k, v in s.arrays().items():
        assert np.array_equal(back.arrays()[k], v)
    par = build_schedule(4, winner=1, av_ids=["a", "b"], sim_ids=["d", "t1", "t2"], window_sim=np.array([2, 1]),
                         durations=np.array([1.0, 1.5]), price_per_s=np.zeros(2), layout="parallel")
    assert par.start_s.tolist() == [0.0, 0.0] and par.makespan_s == 1.5
    assert len(build_schedule(1, winner=None, av_ids=[], sim_ids=[], window_sim=[], durations=[],
                              price_per_s=[])) == 0


def test_schedule_from_a_cleared_round_matches_the_outcome():
    av = [f"av-{i}" for i in range(5)]
    sims = [f"sim-{k}" for k in range(6)]
    pub, priv = sample_round(5, 6, 3, seed=11)
    out, s = clear_round(round_id=1, mechanism="mtepvisa", scoring="reported", public=pub, params={}, av_ids=av,
                         sim_ids=sims, n_tasks=3, bids=truthful_bids(priv, av, sims))
    core = out["core"]
    served = [n for n in range(3) if core["served"][n] and core["T"][n] and core["T"][n] > 0]
    assert s.task.tolist() == served
    assert s.duration_s.tolist() == [core["T"][n] for n in served]
    assert s.sim_index.tolist() == [core["offline_winner"][n] for n in served]
    assert all(a == out["winner_id"] for a in s.av_id)
    # payments never exceed the real-valued ones (rounded down to micro-units)
    for j, n in enumerate(served):
        assert 0 <= core["offline_payment"][n] * 1e6 - s.payment_micro[j] < 1.0 + 1e-6


def test_make_public_from_channel_uses_the_model_rates():
    from carla_mr.market.clearing import make_public_from_channel
    from carla_mr.market.model import rates

    g, p_av = np.array([0.2, 0.9]), np.array([0.5, 1.0])
    pub = make_public_from_channel(g=g, p_av_mw=p_av, p_rsu_mw=2.0, s2_rsu=np.ones(2), s2_av=np.full(2, 0.5),
                                   s_sim=np.ones(3), e_sim=np.ones(3), C=np.ones(2), G=np.full((2, 3), 0.5))
    r_u, r_d = rates(g, p_av, 2.0, np.ones(2), np.full(2, 0.5))
    assert np.array_equal(pub["rate_up"], r_u) and np.array_equal(pub["rate_down"], r_d)
    assert pub["G"].shape == (2, 1, 3) and pub["s_sim"].shape == (2, 3)


def test_clear_round_outcomes_hold_json_types_only():
    """The auctioneer writes clear_round's outcome to the ledger and the wire without converting it."""
    from carla_mr.io import to_jsonable

    def plain(x):
        if isinstance(x, dict):
            return all(type(k) is str and plain(v) for k, v in x.items())
        if isinstance(x, list):
            return all(plain(v) for v in x)
        return x is None or type(x) in (str, int, float, bool)

    for seed, mech, scoring in ((0, "mtepvisa", "reported"), (1, "epvisa", "expected"), (2, "pvisa", "reported")):
        pub, priv = sample_round(4, 5, 2, seed=seed)
        av, sims = [f"av-{i}" for i in range(4)], [f"sim-{k}" for k in range(5)]
        out, sched = clear_round(round_id=1, mechanism=mech, scoring=scoring, public=pub, params={}, av_ids=av,
                                 sim_ids=sims, n_tasks=2, bids=truthful_bids(priv, av, sims))
        assert plain(out) and to_jsonable(out) == out and plain(sched.to_dict())

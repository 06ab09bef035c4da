"""MarketSession (what the runner calls) and MarketConfig; many bidders over many rounds lose nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from carla_mr.errors import InputError, RunError
from carla_mr.market.clearing import clear_round, sample_round
from carla_mr.config.market import MarketConfig
from carla_mr.market.ledger import Ledger, outcome_text, replay
from carla_mr.market.session import MarketSession


def test_config_defaults_and_validation():
    c = MarketConfig()
    assert not c.enabled and c.mechanism == "mtepvisa" and c.scoring == "reported" and c.curve
    assert MarketConfig.model_validate({}).num_simulators == 30
    with pytest.raises(Exception):
        MarketConfig.model_validate({"mechanism": "vickrey"})
    with pytest.raises(Exception):
        MarketConfig.model_validate({"num_simulators": 2})
    with pytest.raises(Exception):
        MarketConfig.model_validate({"typo": 1})


def test_many_bidders_many_rounds_lose_nothing(tmp_path):
    cfg = MarketConfig(enabled=True, num_simulators=20, tasks_per_av=2, round_deadline_s=2.0)
    with MarketSession(cfg, tmp_path, seed=7, av_ids=20) as m:
        results = [m.run_round() for _ in range(8)]
        summary = m.summary()
        m.close()
        m.close()  # idempotent
        with pytest.raises(RunError):
            m.run_round()
    assert summary["rounds"] == 8 and summary["late"] == 0
    with Ledger(tmp_path / "market" / "ledger.sqlite") as led:
        assert led.count("bids") == sum(len(r.receipts) for r in results) == 8 * 40
        assert led.count("outcomes") == 8
        for r in results:
            assert not r.refused and not r.late and r.delivered == 40
            assert {b.bidder_id: b.receipt for b in led.bids(r.round_id)} == r.receipts
            assert outcome_text(led.outcome(r.round_id)[0]) == outcome_text(r.outcome)
            sched = json.loads((tmp_path / "market" / "schedules" / f"round-{r.round_id:06d}.json").read_text())
            assert sched["windows"] == r.schedule.to_dict()["windows"]
    assert replay(tmp_path / "market" / "ledger.sqlite")["ok"]


def test_run_round_with_world_data_and_absent_avs(tmp_path):
    cfg = MarketConfig(enabled=True, num_simulators=5, round_deadline_s=8.0, curve=False, tasks_per_av=1)  # plain
    ids = ["ego", "car-1", "car-2", "car-3"]
    pub, priv = sample_round(4, 5, 1, seed=3)
    v = priv["v"].copy()
    v[2] = np.nan  # car-2 does not bid this round
    with MarketSession(cfg, tmp_path, seed=1, av_ids=ids) as m:
        r = m.run_round(public=pub, v=v, U=priv["U"], s_dt=priv["s_dt"], e_dt=priv["e_dt"], d=priv["d"])
        with pytest.raises(InputError, match="v"):
            m.run_round(public=pub, v=-np.ones(4), U=priv["U"], s_dt=priv["s_dt"], e_dt=priv["e_dt"], d=priv["d"])
        with pytest.raises(InputError, match="U"):
            m.run_round(public=pub, v=v, U=priv["U"][:, :, :3], s_dt=priv["s_dt"], e_dt=priv["e_dt"], d=priv["d"])
    assert r.outcome["participants"] == ["ego", "car-1", "car-3"]
    assert r.latency_s < 6.0  # the session closes the round once its bids are in; no deadline wait
    bids = {}
    from carla_mr.market.clearing import truthful_bids

    tb = truthful_bids(priv, ids, [f"sim-{k:03d}" for k in range(5)])
    for b, (kind, body) in tb.items():
        if b == "car-2":
            continue
        if "values" in body:
            body = {"values": {a: x for a, x in body["values"].items() if a != "car-2"}}
        bids[b] = (kind, body)
    ref, sched = clear_round(round_id=r.round_id, mechanism="mtepvisa", scoring="reported", public=pub, params={},
                             av_ids=ids, sim_ids=[f"sim-{k:03d}" for k in range(5)], n_tasks=1, bids=bids)
    assert outcome_text(ref) == outcome_text(r.outcome)
    assert r.schedule.to_dict() == sched.to_dict()
    arrs = r.schedule.arrays()
    assert set(arrs) >= {"sim_index", "av_index", "task", "start_s", "duration_s", "payment_micro"}


def test_cli_keys_and_replay(tmp_path):
    from carla_mr.market.cli import market_group

    runner = CliRunner()
    res = runner.invoke(market_group, ["keys", "--out", str(tmp_path / "k"), "--avs", "2", "--sims", "3", "--json"])
    assert res.exit_code == 0, res.output
    allow = json.loads((tmp_path / "k" / "allowlist.json").read_text())
    assert [b["role"] for b in allow["bidders"]] == ["driving", "av", "av", "sim", "sim"]
    assert (tmp_path / "k" / "av-000.key_secret").stat().st_mode & 0o077 == 0
    res = runner.invoke(market_group, ["keys", "--out", str(tmp_path / "k")])
    assert res.exit_code == 2
    res = runner.invoke(market_group, ["replay", str(tmp_path / "nope.sqlite")])
    assert res.exit_code == 2
    res = runner.invoke(market_group, ["serve", "--keys", str(tmp_path / "k"), "--plain", "--bind",
                                       "tcp://0.0.0.0:5555", "--out", str(tmp_path / "s")])
    assert res.exit_code == 2 and "loopback" in res.output
    res = runner.invoke(market_group, ["bid", "--id", "av-000", "--keys", str(tmp_path / "k"), "--price", "1"])
    assert res.exit_code == 2 and "--task" in res.output


def test_cli_bid_and_status_against_a_live_auctioneer(tmp_path):
    from carla_mr.market.auctioneer import Auctioneer, AuctioneerSettings
    from carla_mr.market.cli import market_group
    from carla_mr.market.keys import AllowList, load_keypair

    runner = CliRunner()
    keys = tmp_path / "k"
    assert runner.invoke(market_group, ["keys", "--out", str(keys), "--avs", "2", "--sims", "3"]).exit_code == 0
    allow = AllowList.load(keys / "allowlist.json")
    a = Auctioneer(AuctioneerSettings(ledger_path=tmp_path / "l.sqlite", allow=allow,
                                      server_key=load_keypair(keys / "server.key_secret"), deadline_s=30.0,
                                      publish_first=True))
    ep = a.start()
    try:
        pub, _ = sample_round(2, 3, 1, seed=4)
        rid = a.open_round(pub, av_ids=allow.av_ids, sim_ids=allow.sim_ids, n_tasks=1)["round_id"]
        common = ["--endpoint", ep, "--keys", str(keys), "--json", "--timeout", "5"]
        vals = tmp_path / "v.json"
        vals.write_text(json.dumps({"av-000": [0.3], "av-001": [0.2]}))
        for args in (["--id", "av-000", "--price", "0.6", "--task", "0.2,1.0,1.2"],
                     ["--id", "av-001", "--price", "0.4", "--task", "0.1,0.5,1.3", "--round", str(rid)],
                     ["--id", "sim-000", "--contract"],
                     ["--id", "sim-001", "--values", str(vals)]):
            res = runner.invoke(market_group, ["bid", *common, *args])
            assert res.exit_code == 0, res.output
            assert json.loads(res.output)["reply"] == "ack"
        vals.write_text(json.dumps({"av-000": [0.1]}))
        res = runner.invoke(market_group, ["bid", *common, "--id", "sim-002", "--values", str(vals),
                                           "--wait-result"])
        out = json.loads(res.output.splitlines()[0])
        assert res.exit_code == 0 and out["result"]["outcome"]["winner_id"] == "av-000"
        # a second, different bid is refused: exit 1
        res = runner.invoke(market_group, ["bid", *common, "--id", "av-000", "--price", "0.9", "--task", "0.2,1,1.2",
                                           "--round", str(rid)])
        assert res.exit_code == 1
        res = runner.invoke(market_group, ["status", *common, "--id", "av-001", "--round", str(rid)])
        st_ = json.loads(res.output)
        assert res.exit_code == 0 and st_["state"] == "PUBLISHED" and st_["n_bids"] == 5
    finally:
        a.stop()
    assert replay(tmp_path / "l.sqlite")["ok"]

"""The main job end to end: every stage on, one run directory with all outputs and the report."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from carla_mr.cli import main

pytest.importorskip("torch")
pytest.importorskip("diffusers")


@pytest.mark.timeout(300)
def test_every_stage_writes_its_output_and_the_report(tmp_path):
    out = tmp_path / "run"
    args = ["run", "scenarios/mr_town.yaml", "--out", str(out), "--json", "--quiet", "--duration", "5",
            "--set", "vehicles.avs=5", "--set", "vehicles.background=10",
            "--set", "twin.enabled=true", "--set", "twin.past=4", "--set", "twin.future=2",
            "--set", "market.enabled=true", "--set", "market.round_period_ticks=10", "--set", "market.num_simulators=5",
            "--set", "genai.enabled=true", "--set", "genai.steps=2", "--set", "genai.swap_only_recognised=false",
            "--set", "recorder.enabled=true", "--set", "recorder.every_k=10",
            "--set", "perception.enabled=true", "--set", "perception.every_k=10"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["status"] == "completed" and summary["ticks"] == 100
    stages = summary["stages"]
    assert set(stages) == {"trajectories", "twin", "market", "genai", "recorder", "perception"}
    assert stages["market"]["rounds"] == 10
    assert stages["genai"]["jobs"] >= 1 and stages["genai"]["signs_swapped"] >= 1
    for f in ("config.yaml", "world.json", "trajectories.parquet", "predictions.parquet", "market/ledger.sqlite",
              "market/rounds.jsonl", "genai/manifest.jsonl", "dataset/annotations.json", "perception/report.json",
              "report.md", "report/market_surplus.png", "report/genai_G.png"):
        assert (out / f).is_file(), f
    report = (out / "report.md").read_text()
    for section in ("## World", "### Tick budget", "## Market", "## Digital twin", "## Generated signs",
                    "## Perception in the loop"):
        assert section in report
    assert set(summary["tick_budget_ms"]) >= {"world", "twin", "market", "genai", "recorder", "perception", "total"}
    # the ledger replays: every outcome recomputed from the stored bids, chain verified
    rep = CliRunner().invoke(main, ["market", "replay", str(out / "market" / "ledger.sqlite"), "--json"])
    assert rep.exit_code == 0, rep.output

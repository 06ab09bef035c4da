"""Scenario files: schema errors exit 2 naming the file and key path, with no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from carla_mr.cli import main
from carla_mr.config import load_scenario
from carla_mr.errors import InputError

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = REPO / "scenarios"


def write(tmp_path: Path, data: dict | str, name: str = "sc.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def run_cli(*args):
    return CliRunner().invoke(main, ["run", *map(str, args)])


def assert_input_error(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for n in needles:
        assert n in result.output, (n, result.output)


@pytest.mark.parametrize("name", ["base", "grid", "arterial", "town01", "town02", "mr_town"])
def test_shipped_scenarios_validate(name):
    sc = load_scenario(SCENARIOS / f"{name}.yaml")
    assert sc.resolved_map_path().is_file()
    assert sc.tick_s == 0.05 and sc.backend == "embedded"
    assert sc.rsus.bandwidth_up_hz == 20e6 and sc.rsus.cpu_hz == 3.6e9 and sc.rsus.gpu_hz == 19e9


def test_main_job_has_every_stage_section():
    raw = yaml.safe_load((SCENARIOS / "mr_town.yaml").read_text())
    for section in ("twin", "market", "genai", "recorder", "perception"):
        assert section in raw and "enabled" in raw[section]


def test_unknown_key(tmp_path):
    p = write(tmp_path, {"extends": str(SCENARIOS / "base.yaml"), "vehicles": {"avs": 2, "bacground": 3}})
    assert_input_error(run_cli(p), str(p), "vehicles.bacground", "unknown key")


def test_unknown_top_level_key(tmp_path):
    p = write(tmp_path, {"map": "mr_town", "durration_s": 3})
    assert_input_error(run_cli(p), str(p), "durration_s")


def test_wrong_type(tmp_path):
    p = write(tmp_path, {"map": "mr_town", "tick_s": "fast"})
    assert_input_error(run_cli(p), str(p), "tick_s", "number")


def test_out_of_range(tmp_path):
    p = write(tmp_path, {"map": "mr_town", "vehicles": {"avs": -1}})
    assert_input_error(run_cli(p), "vehicles.avs", "greater than or equal to 0")


def test_missing_map(tmp_path):
    p = write(tmp_path, {"map": "no_such_town"})
    assert_input_error(run_cli(p), str(p), "map", "no_such_town", "not found")


def test_missing_map_key(tmp_path):
    p = write(tmp_path, {"seed": 3})
    assert_input_error(run_cli(p), "map", "required")


def test_missing_scenario_file(tmp_path):
    assert_input_error(run_cli(tmp_path / "nope.yaml"), "nope.yaml", "not found")


def test_bad_yaml(tmp_path):
    p = write(tmp_path, "map: [unclosed\n")
    assert_input_error(run_cli(p), str(p), "YAML")


def test_bad_override(tmp_path):
    assert_input_error(run_cli(SCENARIOS / "grid.yaml", "--set", "vehicles.avs=many"), "vehicles.avs")
    assert_input_error(run_cli(SCENARIOS / "grid.yaml", "--set", "novalue"), "--set")


def test_explicit_rsus_need_positions(tmp_path):
    p = write(tmp_path, {"map": "mr_town", "rsus": {"mode": "explicit"}})
    assert_input_error(run_cli(p), "rsus", "positions")


def test_bad_sign_kind(tmp_path):
    p = write(tmp_path, {"map": "mr_town", "signs": {"inject": [{"kind": "dragon"}]}})
    assert_input_error(run_cli(p), "signs.inject.0.kind")


def test_sign_on_unknown_road_is_input_error(tmp_path):
    p = write(tmp_path, {"extends": str(SCENARIOS / "base.yaml"), "duration_s": 0.1,
                         "signs": {"inject": [{"kind": "stop", "road_id": 987654}]}})
    assert_input_error(run_cli(p, "--out", tmp_path / "run", "--quiet"), "signs.inject.0.road_id", "987654")


def test_extends_and_overrides(tmp_path):
    p = write(tmp_path, {"extends": str(SCENARIOS / "grid.yaml"), "vehicles": {"avs": 3}})
    sc = load_scenario(p, ["vehicles.background=5", "rsus.range_m=100"])
    assert sc.vehicles.avs == 3 and sc.vehicles.background == 5 and sc.rsus.range_m == 100
    assert sc.map == "mr_town" and sc.name == "grid"


def test_extends_cycle(tmp_path):
    write(tmp_path, {"extends": "b.yaml", "map": "x"}, "a.yaml")
    write(tmp_path, {"extends": "a.yaml"}, "b.yaml")
    with pytest.raises(InputError, match="cycle"):
        load_scenario(tmp_path / "a.yaml")


def test_carla_backend_town_name_needs_no_file(tmp_path):
    p = write(tmp_path, {"map": "Town10HD", "backend": "carla"})
    sc = load_scenario(p)
    assert sc.resolved_map_path() is None

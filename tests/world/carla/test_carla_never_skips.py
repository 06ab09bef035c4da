"""Backend tests never skip for a missing map: the maps ship in maps/, and a skip of that kind fails."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

TOP_CONFTEST = Path(__file__).resolve().parents[2] / "conftest.py"


@pytest.fixture
def hook(request):
    """tests/conftest.py's report hook, as pytest registered it."""
    top = next(p for p in request.config.pluginmanager.get_plugins()
               if Path(getattr(p, "__file__", "") or "").resolve() == TOP_CONFTEST)
    return top.pytest_runtest_makereport


def _report(hook, nodeid: str, reason: str):
    rep = SimpleNamespace(skipped=True, outcome="skipped", longrepr=("file.py", 3, f"Skipped: {reason}"))
    gen = hook(SimpleNamespace(nodeid=nodeid), None)
    next(gen)
    try:
        gen.send(SimpleNamespace(get_result=lambda: rep))
    except StopIteration:
        pass
    return rep


def test_a_backend_test_skipped_for_a_map_fails(hook):
    rep = _report(hook, "tests/world/carla/test_carla_frames.py::test_x", "../shared/maps/Town01.xodr is absent")
    assert rep.outcome == "failed" and "maps/README.md" in rep.longrepr


def test_other_skips_stay_skips(hook):
    assert _report(hook, "tests/world/carla/test_carla_frames.py::test_x", "slow: run with --runslow").outcome == \
        "skipped"
    assert _report(hook, "tests/genai/test_model.py::test_y", "map file missing").outcome == "skipped"


def test_the_committed_towns_are_there(town01, town02):
    assert town01.read_text(encoding="utf-8").lstrip().startswith("<?xml")
    assert "<OpenDRIVE" in town02.read_text(encoding="utf-8")[:2000]

"""Test-wide settings: one torch thread (2 cores oversubscribed make torch 30x slower),
a headless SDL, SIGINT's default (KeyboardInterrupt) handling, and the ``--runslow`` switch
for checks marked ``slow``."""

from __future__ import annotations

import importlib.util
import os
import signal
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

if importlib.util.find_spec("torch") is not None:
    import torch

    torch.set_num_threads(1)

# A background job of a non-interactive shell (``.ci/run ... &``) starts with SIGINT ignored, and
# Python then keeps it ignored: the Ctrl-C tests (in this process and in the children it starts,
# which inherit an ignored signal but not a handler) would see no KeyboardInterrupt at all.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parent.parent
#: The repository's maps: the project's own and CARLA's Town01/Town02 (maps/README.md).
MAPS = REPO / "maps"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


#: Tests of a world backend (by node id) that must never be skipped for want of a map.
BACKEND_TESTS = ("carla", "cosim", "conformance")
_MAP_WORDS = ("map", ".xodr", "town0")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A backend test skipped because a map is missing fails instead: the maps ship in maps/."""
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and any(k in item.nodeid.lower() for k in BACKEND_TESTS):
        reason = str(rep.longrepr[-1] if isinstance(rep.longrepr, tuple) else rep.longrepr).lower()
        if any(w in reason for w in _MAP_WORDS):
            rep.outcome = "failed"
            rep.longrepr = (f"{item.nodeid} was skipped for a missing map ({reason.strip()}); backend tests never "
                            f"skip: the maps are committed in maps/ (see maps/README.md)")


@pytest.fixture(scope="session")
def repo_maps() -> Path:
    return MAPS


def _committed_map(name: str) -> Path:
    p = MAPS / name
    # the repository ships these maps: a missing one is a broken checkout, never a skip
    assert p.is_file(), f"{p} is missing: CARLA's towns are committed in maps/ (see maps/README.md)"
    return p


@pytest.fixture(scope="session")
def town01() -> Path:
    return _committed_map("Town01.xodr")


@pytest.fixture(scope="session")
def town02() -> Path:
    return _committed_map("Town02.xodr")

"""Test-wide settings: one torch thread (2 cores oversubscribed make torch 30x slower),
a headless SDL, and the ``--runslow`` switch for checks marked ``slow``."""

from __future__ import annotations

import importlib.util
import os
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

REPO = Path(__file__).resolve().parent.parent
SHARED_MAPS = REPO.parent / "shared" / "maps"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_maps() -> Path:
    return SHARED_MAPS


@pytest.fixture(scope="session")
def town01(shared_maps) -> Path:
    p = shared_maps / "Town01.xodr"
    if not p.is_file():
        pytest.skip("../shared/maps/Town01.xodr is not present")
    return p


@pytest.fixture(scope="session")
def town02(shared_maps) -> Path:
    p = shared_maps / "Town02.xodr"
    if not p.is_file():
        pytest.skip("../shared/maps/Town02.xodr is not present")
    return p

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def town01_map(town01):
    carla = pytest.importorskip("carla")
    return carla.Map("Town01", town01.read_text())


@pytest.fixture(scope="session")
def town01_signs(town01_map):
    from carla_mr.world.maps import landmarks_to_signs

    return landmarks_to_signs(town01_map)

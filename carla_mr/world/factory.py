"""Pick the world backend a scenario names: ``embedded`` (default) or ``carla``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from carla_mr.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from carla_mr.config import Scenario
    from carla_mr.world.base import World


def make_world(scenario: "Scenario", seed: Optional[int] = None) -> "World":
    """The World for ``scenario.backend``; the CARLA backend is imported only when asked for."""
    if scenario.backend == "embedded":
        from carla_mr.world.embedded import EmbeddedWorld

        return EmbeddedWorld(scenario, seed=seed)
    if scenario.backend == "carla":
        from carla_mr.world.carla_backend import CarlaWorld

        return CarlaWorld(scenario, seed=seed)
    raise InputError(f"unknown backend '{scenario.backend}'; expected 'embedded' or 'carla'", field="backend")

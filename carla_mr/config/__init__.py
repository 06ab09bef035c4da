"""Configuration: the scenario schema, its loader, every stage's section and the vocabulary.

This package is the floor every other layer stands on: it imports nothing of carla_mr but
:mod:`carla_mr.errors` and :mod:`carla_mr.schema`. Modules:

- :mod:`~carla_mr.config.scenario`: :class:`Scenario` and the world's sections (vehicles,
  RSUs, signs, CARLA), map resolution;
- :mod:`~carla_mr.config.loader`: YAML files, ``extends``, ``--set`` overrides, errors;
- :mod:`~carla_mr.config.twin`, :mod:`~carla_mr.config.market`, :mod:`~carla_mr.config.genai`,
  :mod:`~carla_mr.config.dataset`: each stage's section;
- :mod:`~carla_mr.config.camera`: the camera spec both backends share;
- :mod:`~carla_mr.config.vocab`: sign kinds, prompt colours, mechanism names.
"""

from carla_mr.config.loader import (ScenarioError, apply_overrides, dump_scenario, format_validation_error,
                                    load_scenario, parse_override, scenario_from_dict)
from carla_mr.config.scenario import (MAP_SEARCH_ENV, PACKAGE_DIR, CarlaConfig, RsusConfig, RsuSpec, Scenario,
                                      SignsConfig, SignSpec, VehiclesConfig, map_search_dirs, resolve_map)

__all__ = [
    "MAP_SEARCH_ENV", "PACKAGE_DIR", "CarlaConfig", "RsuSpec", "RsusConfig", "Scenario", "ScenarioError",
    "SignSpec", "SignsConfig", "VehiclesConfig", "apply_overrides", "dump_scenario", "format_validation_error",
    "load_scenario", "map_search_dirs", "parse_override", "resolve_map", "scenario_from_dict",
]

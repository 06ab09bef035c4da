"""The scenario's ``twin`` section."""

from __future__ import annotations

from carla_mr.schema import StrictModel


class TwinConfig(StrictModel):
    enabled: bool = False

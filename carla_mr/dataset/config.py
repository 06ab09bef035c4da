"""The scenario's ``recorder`` and ``perception`` sections."""

from __future__ import annotations

from carla_mr.schema import StrictModel


class RecorderConfig(StrictModel):
    enabled: bool = False


class PerceptionConfig(StrictModel):
    enabled: bool = False

"""The scenario's ``genai`` section."""

from __future__ import annotations

from carla_mr.schema import StrictModel


class GenaiConfig(StrictModel):
    enabled: bool = False

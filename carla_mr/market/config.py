"""The scenario's ``market`` section."""

from __future__ import annotations

from carla_mr.schema import StrictModel


class MarketConfig(StrictModel):
    enabled: bool = False

"""The scenario's ``market`` section (all fields optional; an empty section is valid)."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from carla_mr.config.vocab import MechanismName as Mechanism
from carla_mr.config.vocab import ScoringName as Scoring
from carla_mr.schema import StrictModel


class MarketConfig(StrictModel):
    """The GPU-time market the runner drives every ``round_period_ticks`` ticks.

    The auctioneer listens on ``host`` (loopback by default); ``curve: false`` (plain TCP)
    is only accepted on loopback addresses.
    """

    enabled: bool = False
    mechanism: Mechanism = Field("mtepvisa", description="Clearing mechanism.")
    scoring: Scoring = Field("reported", description="EPViSA/MTEPViSA scoring rule.")
    round_period_ticks: int = Field(20, ge=1, description="World ticks between two market rounds.")
    round_deadline_s: float = Field(0.5, gt=0, le=3600, description="Bidding window of a round, seconds.")
    curve: bool = Field(True, description="CURVE-encrypt and authenticate every bidder.")
    num_simulators: int = Field(30, ge=3, le=10000,
                                description="Virtual simulators: 1 driving + (num_simulators - 1) traffic.")
    tasks_per_av: int = Field(3, ge=1, le=64, description="DT tasks (windows) per AV per round; with 1, "
                              "EPViSA and MTEPViSA are the same mechanism.")
    host: str = Field("127.0.0.1", description="Address the auctioneer binds.")
    port: Optional[int] = Field(None, ge=1, le=65535, description="TCP port; None picks a free one.")
    early_close: bool = Field(True, description="Close a round as soon as every eligible bidder has bid.")
    handshake_timeout_s: float = Field(5.0, gt=0, le=600, description="Bidder hello/handshake timeout, seconds.")
    request_timeout_s: float = Field(2.0, gt=0, le=600, description="Bidder per-try reply timeout, seconds.")
    retries: int = Field(3, ge=0, le=100, description="Bidder Lazy Pirate retries per request.")
    generative_ai: bool = Field(True, description="Simulation values with generative AI (F = log2(1+GQ)/theta).")

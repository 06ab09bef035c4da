"""The stage interface the runner wires together (world -> twin -> market -> genai -> recorder).

A stage is a plain object with four methods; the runner calls ``start`` once with the run
context, ``on_tick`` for every Snapshot, ``close`` exactly once on every exit path (it must be
idempotent), and ``summary`` for the run's summary JSON. Stages communicate through
``ctx.shared`` (a dict), e.g. the twin publishes per-AV accuracy there for the market.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    from carla_mr.config import Scenario
    from carla_mr.world.base import Snapshot, World


@dataclass
class RunContext:
    scenario: "Scenario"
    world: "World"
    run_dir: Path
    seed: int
    shared: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Stage(Protocol):
    name: str

    def start(self, ctx: RunContext) -> None: ...

    def on_tick(self, snapshot: "Snapshot", ctx: RunContext) -> None: ...

    def close(self) -> None: ...

    def summary(self) -> dict[str, Any]: ...

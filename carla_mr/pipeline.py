"""The stage registry: which stages a scenario runs, in tick order, and how each is built.

One place lists the built-in stages (:func:`default_registry`)::

    world -> trajectories -> twin -> market -> genai -> recorder -> perception

Adding a stage is one class (with ``name``, ``start``, ``on_tick``, ``close``, ``summary``
and, for the report, a static ``report_section``; :class:`~carla_mr.stages.BaseStage` has
the defaults), its config section in :mod:`carla_mr.config` (a pydantic model with an
``enabled`` flag, added as a field of :class:`~carla_mr.config.Scenario`), and one
:class:`StageEntry` line below. Registries are plain immutable values (no global state):
:meth:`StageRegistry.with_stage` returns a new one, which is how a test or a user adds a
stage of their own::

    registry = default_registry().with_stage(StageEntry(MyStage))
    run_scenario(scenario, run_dir, registry=registry)   # runs it and shows its report section
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from carla_mr.stages import Stage

if TYPE_CHECKING:  # pragma: no cover
    from carla_mr.config import Scenario


@dataclass(frozen=True)
class StageEntry:
    """One registered stage.

    ``cls`` is the stage class (its ``name`` is the stage's name in the summary and report).
    ``section`` names the scenario section that configures it: the stage runs when that
    section's ``enabled`` is true, and is built as ``cls(scenario.<section>)`` unless
    ``build(scenario)`` is given. Without a section the stage always runs.
    """

    cls: type
    section: Optional[str] = None
    build: Optional[Callable[["Scenario"], Stage]] = None

    @property
    def name(self) -> str:
        return str(self.cls.name)

    def enabled(self, scenario: "Scenario") -> bool:
        return self.section is None or bool(getattr(scenario, self.section).enabled)

    def make(self, scenario: "Scenario") -> Stage:
        if self.build is not None:
            return self.build(scenario)
        return self.cls(getattr(scenario, self.section)) if self.section is not None else self.cls()


class StageRegistry:
    """An ordered, immutable list of :class:`StageEntry` (tick order), unique by name."""

    def __init__(self, entries: Sequence[StageEntry] = ()):
        names = [e.name for e in entries]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"stage names must be unique; registered twice: {', '.join(dup)}")
        self.entries: tuple[StageEntry, ...] = tuple(entries)

    def with_stage(self, entry: StageEntry, *, after: Optional[str] = None) -> "StageRegistry":
        """A new registry with ``entry`` added at the end, or right after the stage ``after``."""
        entries = list(self.entries)
        pos = len(entries) if after is None else [e.name for e in entries].index(after) + 1
        entries.insert(pos, entry)
        return StageRegistry(entries)

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def get(self, name: str) -> Optional[StageEntry]:
        for e in self.entries:
            if e.name == name:
                return e
        return None

    def build(self, scenario: "Scenario") -> list[Stage]:
        """The enabled stages of ``scenario``, in tick order, freshly built."""
        return [e.make(scenario) for e in self.entries if e.enabled(scenario)]


def default_registry() -> StageRegistry:
    """The built-in stages in tick order. How they pass values to each other is
    :mod:`carla_mr.stages`'s table."""
    from carla_mr.dataset.perception import PerceptionStage
    from carla_mr.dataset.recorder import RecorderStage
    from carla_mr.genai.stage import GenaiStage
    from carla_mr.market.stage import MarketStage
    from carla_mr.trajectories import TrajectoryStage
    from carla_mr.twin.online import TwinStage

    return StageRegistry([
        StageEntry(TrajectoryStage),
        StageEntry(TwinStage, "twin"),
        StageEntry(MarketStage, "market", lambda sc: MarketStage(sc.market, n_av_slots=sc.vehicles.avs)),
        StageEntry(GenaiStage, "genai", lambda sc: GenaiStage(sc.genai, n_simulators=sc.market.num_simulators)),
        StageEntry(RecorderStage, "recorder"),
        StageEntry(PerceptionStage, "perception"),
    ])


def build_stages(scenario: "Scenario", registry: Optional[StageRegistry] = None) -> list[Stage]:
    """The stages ``scenario`` enables, in tick order (``registry`` defaults to the built-ins)."""
    return (registry or default_registry()).build(scenario)


def write_run_report(run_dir: str | os.PathLike, *, registry: Optional[StageRegistry] = None) -> tuple[Path, dict]:
    """(Re)write ``RUN_DIR/report.md`` from a run directory; ``registry`` defaults to the built-in
    stages. Returns (path, headline figures by stage)."""
    from carla_mr.report import write_report

    return write_report(run_dir, registry or default_registry())


def run_scenario(scenario: "Scenario", run_dir: str | os.PathLike, *, seed: Optional[int] = None,
                 registry: Optional[StageRegistry] = None, progress: bool = True, report: bool = True,
                 **runner_kw: Any) -> dict[str, Any]:
    """Run ``scenario``'s enabled stages into ``run_dir`` and write its report; returns the
    summary (with ``report`` and ``headline`` added when ``report``)."""
    from carla_mr.io import atomic_write_json
    from carla_mr.runner import Runner

    registry = registry or default_registry()
    runner = Runner(scenario, run_dir, registry.build(scenario), seed, progress=progress, **runner_kw)
    summary = runner.run()
    if report:
        path, headline = write_run_report(run_dir, registry=registry)
        summary["report"] = str(path)
        summary["headline"] = headline
        atomic_write_json(Path(run_dir) / "summary.json", summary)
    return summary

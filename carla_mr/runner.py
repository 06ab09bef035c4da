"""The tick loop: one world, a list of stages, a run directory.

``Runner(scenario, run_dir, stages, seed).run()`` makes the world for the scenario's backend,
starts every stage with a :class:`~carla_mr.stages.RunContext`, resets the world and hands
each Snapshot to every stage in order for ``scenario.ticks`` ticks (the reset's Snapshot is
tick 1). Stages and the world are closed (stages in reverse order, then the world) on every
exit path: normal end, exception, Ctrl-C and SIGTERM. The run directory gets:

- ``config.yaml``: the resolved scenario (seed included), written before the first tick;
- ``world.json``: the static world: map path, tick, RSUs (position, range, resources) and
  signs (id, kind, OpenDRIVE type, value, pose, face size), CARLA frame;
- ``summary.json``: ticks, avs, vehicles, mean_speed (m/s), distance_driven_m,
  rsu_coverage_share, wall_time_s, ticks_per_s, landmarks {total, by_type, ...}, seed,
  status ("completed" | "interrupted" | "failed"), and one entry per stage under ``stages``;
- whatever the stages write, e.g. ``trajectories.parquet`` from :class:`TrajectoryStage`.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from carla_mr.errors import RunError
from carla_mr.io import atomic_write_json, atomic_write_text
from carla_mr.stages import RunContext, Stage
from carla_mr.world.base import ROLE_AV, Snapshot

if TYPE_CHECKING:  # pragma: no cover
    from carla_mr.config import Scenario
    from carla_mr.world.base import World


class RunTerminated(RunError):
    """The run got SIGTERM; the world and stages were closed."""

    exit_code = 143


def build_stages(scenario: "Scenario") -> list[Stage]:
    """The stages a scenario asks for, in tick order (world -> twin -> market -> genai -> recorder).

    The trajectory stream always runs; twin, market, genai, recorder and perception run when their
    section is ``enabled``. They talk through ``ctx.shared``: the twin's ``twin_accuracy`` feeds
    the market's R_acc, the market's ``market_round`` schedule drives the genai jobs, whose
    ``genai_scores`` (G, theta) feed the next round, and whose images are on the signs the
    recorder and perception stages see.
    """
    from carla_mr.trajectories import TrajectoryStage

    stages: list[Stage] = [TrajectoryStage()]
    if scenario.twin.enabled:
        from carla_mr.twin.online import TwinStage

        stages.append(TwinStage(scenario.twin))
    if scenario.market.enabled:
        from carla_mr.market.stage import MarketStage

        stages.append(MarketStage(scenario.market, n_av_slots=scenario.vehicles.avs))
    if scenario.genai.enabled:
        from carla_mr.genai.stage import GenaiStage

        stages.append(GenaiStage(scenario.genai))
    if scenario.recorder.enabled:
        from carla_mr.dataset.recorder import RecorderStage

        stages.append(RecorderStage(scenario.recorder))
    if scenario.perception.enabled:
        from carla_mr.dataset.perception import PerceptionStage

        stages.append(PerceptionStage(scenario.perception))
    return stages


# -- the runner -----------------------------------------------------------------------------

class _Stats:
    """Running totals over all ticks (vectorised per tick)."""

    def __init__(self, tick_s: float):
        self.tick_s = tick_s
        self.ticks = 0
        self.vehicle_ticks = 0
        self.speed_sum = 0.0
        self.av_distance = 0.0
        self.av_ticks = 0
        self.av_covered = 0
        self.ids: set[int] = set()
        self.av_ids: set[int] = set()
        self.max_vehicles = 0
        self._last_ids = None

    def add(self, s: Snapshot) -> None:
        self.ticks += 1
        n = len(s)
        self.vehicle_ticks += n
        self.max_vehicles = max(self.max_vehicles, n)
        if n == 0:
            return
        self.speed_sum += float(s.speed.sum())
        av = s.role == ROLE_AV
        self.av_ticks += int(av.sum())
        self.av_covered += int((s.rsu[av] >= 0).sum())
        self.av_distance += float(s.speed[av].sum()) * self.tick_s
        if s.ids is not self._last_ids:  # backends reuse the ids array while the set is unchanged
            self._last_ids = s.ids
            self.ids.update(s.ids.tolist())
            self.av_ids.update(s.ids[av].tolist())

    def summary(self) -> dict[str, Any]:
        return {
            "ticks": self.ticks,
            "avs": len(self.av_ids),
            "vehicles": len(self.ids),
            "max_vehicles_at_once": self.max_vehicles,
            "mean_speed": self.speed_sum / self.vehicle_ticks if self.vehicle_ticks else 0.0,
            "distance_driven_m": self.speed_sum * self.tick_s,
            "av_distance_driven_m": self.av_distance,
            "rsu_coverage_share": self.av_covered / self.av_ticks if self.av_ticks else 0.0,
        }


class Runner:
    """Run a scenario: ``Runner(scenario, run_dir, stages, seed).run() -> summary dict``.

    ``stages`` defaults to :func:`build_stages`; ``seed`` to the scenario's; ``world`` may be
    given (already constructed, not reset) to reuse one, else :func:`make_world` builds it.
    ``ticks`` overrides the scenario's duration. ``progress`` shows a bar on stderr.
    """

    def __init__(self, scenario: "Scenario", run_dir: str | os.PathLike, stages: Optional[Sequence[Stage]] = None,
                 seed: Optional[int] = None, *, progress: bool = True, world: "Optional[World]" = None,
                 ticks: Optional[int] = None):
        self.scenario = scenario
        self.run_dir = Path(run_dir)
        self.stages = list(build_stages(scenario) if stages is None else stages)
        self.seed = int(scenario.seed if seed is None else seed)
        self.progress = progress
        self.world = world
        self.ticks = int(ticks if ticks is not None else scenario.ticks)
        self.summary: dict[str, Any] = {}
        self.tick_budget: dict[str, float] = {}

    def _write_config(self) -> None:
        from carla_mr.config import dump_scenario

        update: dict[str, Any] = {"seed": self.seed}
        try:  # the map as an absolute path, so the copy loads from anywhere
            resolved = self.scenario.resolved_map_path()
            if resolved is not None:
                update["map"] = str(resolved)
        except Exception:  # noqa: BLE001 - the world reports a missing map itself
            pass
        sc = self.scenario.model_copy(update=update)
        atomic_write_text(self.run_dir / "config.yaml", dump_scenario(sc))

    def _write_world_json(self, world: "World") -> None:
        """``world.json``: the static side of the world (map, RSUs, signs) for viewers and analysis."""
        signs = world.signs
        sign_rows = [
            {"id": str(signs.ids[i]), "kind": str(signs.kind[i]), "odr_type": str(signs.odr_type[i]),
             "value": None if signs.value[i] != signs.value[i] else float(signs.value[i]),
             "x": float(signs.x[i]), "y": float(signs.y[i]), "z": float(signs.z[i]), "yaw": float(signs.yaw[i]),
             "width": float(signs.width[i]), "height": float(signs.height[i]), "road_id": int(signs.road_id[i])}
            for i in range(len(signs))
        ]
        data = {"backend": self.scenario.backend, "map": str(getattr(world, "xodr_path", self.scenario.map)),
                "tick_s": float(world.tick_s), "frame": "CARLA (left-handed: x east, y south, yaw clockwise, deg)",
                "net_offset": list(getattr(world, "net_offset", (0.0, 0.0))),
                "rsus": world.rsus.to_records(), "signs": sign_rows}
        atomic_write_json(self.run_dir / "world.json", data, indent=None)

    def run(self) -> dict[str, Any]:
        from carla_mr.cli_common import progress as progress_bar
        from carla_mr.world.factory import make_world

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        stats = _Stats(self.scenario.tick_s)
        started: list[Stage] = []
        status = "failed"
        error: Optional[str] = None
        world = self.world
        t0 = time.perf_counter()
        t_loop = t_end = None
        old_handler = None
        in_main = threading.current_thread() is threading.main_thread()
        term = {"closing": False, "pending": False}
        if in_main:
            def _on_term(signum, frame):
                if term["closing"]:  # let the closing finish; re-raised afterwards
                    term["pending"] = True
                    return
                raise RunTerminated("terminated by SIGTERM; world and stages closed")

            old_handler = signal.signal(signal.SIGTERM, _on_term)
        try:
            if world is None:
                world = make_world(self.scenario, seed=self.seed)
            self.world = world
            self._write_world_json(world)
            ctx = RunContext(scenario=self.scenario, world=world, run_dir=self.run_dir, seed=self.seed)
            self.ctx = ctx
            for st in self.stages:
                st.start(ctx)
                started.append(st)
            snap = world.reset()
            with progress_bar(self.ticks, f"run {self.scenario.name}", enabled=self.progress) as advance:
                pending = 0
                t_loop = time.perf_counter()
                clock = time.perf_counter
                budget = self.tick_budget = {"world": 0.0, **{getattr(st, "name", type(st).__name__): 0.0
                                                              for st in self.stages}}
                names = list(budget)[1:]
                for k in range(self.ticks):
                    c0 = clock()
                    if k:
                        snap = world.tick()
                    stats.add(snap)
                    c1 = clock()
                    budget["world"] += c1 - c0
                    for name, st in zip(names, self.stages):
                        st.on_tick(snap, ctx)
                        c2 = clock()
                        budget[name] += c2 - c1
                        c1 = c2
                    pending += 1
                    if pending >= 10:
                        advance(pending)
                        pending = 0
                t_end = time.perf_counter()
                advance(pending)
            status = "completed"
        except KeyboardInterrupt:
            status = "interrupted"
            error = "interrupted (Ctrl-C)"
            raise
        except RunTerminated as exc:
            status = "interrupted"
            error = str(exc)
            raise
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            term["closing"] = True
            old_int = None
            if in_main:  # a Ctrl-C while closing waits until everything is closed
                def _on_int(signum, frame):
                    term["interrupt"] = True

                old_int = signal.signal(signal.SIGINT, _on_int)
            now = time.perf_counter()
            wall = now - t0
            loop = ((t_end or now) - t_loop) if t_loop is not None else 0.0
            close_errors = []
            for st in reversed(started):
                try:
                    st.close()
                except Exception as exc:  # noqa: BLE001 - keep closing the rest
                    close_errors.append(f"{getattr(st, 'name', type(st).__name__)}: {exc}")
            if world is not None:
                try:
                    world.close()
                except Exception as exc:  # noqa: BLE001
                    close_errors.append(f"world: {exc}")
            if in_main and old_handler is not None:
                signal.signal(signal.SIGTERM, old_handler)
            if in_main and old_int is not None:
                signal.signal(signal.SIGINT, old_int)
            self.summary = self._summary(stats, world, started, status, error, close_errors, wall, loop)
            try:
                atomic_write_json(self.run_dir / "summary.json", self.summary)
            except OSError:
                pass
        if term.get("interrupt"):
            raise KeyboardInterrupt
        if term["pending"]:
            raise RunTerminated("terminated by SIGTERM while closing; world and stages closed")
        if close_errors:
            raise RunError("closing failed: " + "; ".join(close_errors))
        return self.summary

    def _summary(self, stats: _Stats, world, started, status, error, close_errors, wall, loop) -> dict[str, Any]:
        out: dict[str, Any] = {"scenario": self.scenario.name, "backend": self.scenario.backend,
                               "map": self.scenario.map, "status": status}
        if error:
            out["error"] = error
        if close_errors:
            out["close_errors"] = close_errors
        out.update(stats.summary())
        out["sim_time_s"] = stats.ticks * self.scenario.tick_s
        out["wall_time_s"] = wall
        out["ticks_per_s"] = stats.ticks / loop if loop > 0 else 0.0
        try:
            out["landmarks"] = world.landmark_summary() if world is not None else {"total": 0, "by_type": {}}
        except Exception:  # noqa: BLE001 - a world that failed half-way
            out["landmarks"] = {"total": 0, "by_type": {}}
        out["rsus"] = len(world.rsus) if world is not None and hasattr(world, "rsus") else 0
        if stats.ticks and getattr(self, "tick_budget", None):
            per_tick = {k: 1e3 * v / stats.ticks for k, v in self.tick_budget.items()}
            out["tick_budget_ms"] = {**per_tick, "total": sum(per_tick.values()),
                                     "real_time_at_ms": 1e3 * self.scenario.tick_s}
        world_summary = getattr(world, "summary", None)
        if callable(world_summary):
            try:
                out["world"] = world_summary()
            except Exception as exc:  # noqa: BLE001 - a world that failed half-way
                out["world"] = {"error": f"{type(exc).__name__}: {exc}"}
        out["seed"] = self.seed
        out["stages"] = {}
        for st in started:
            name = getattr(st, "name", type(st).__name__)
            try:
                out["stages"][name] = st.summary()
            except Exception as exc:  # noqa: BLE001
                out["stages"][name] = {"error": f"{type(exc).__name__}: {exc}"}
        out["run_dir"] = str(self.run_dir)
        return out

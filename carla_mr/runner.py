"""The tick loop: one world, a list of stages, a run directory. The only loop that ticks a world.

``Runner(scenario, run_dir, stages, seed).run()`` makes the world for the scenario's backend
(or takes the one given), resets it, writes ``world.json``, starts every stage with a
:class:`~carla_mr.stages.RunContext` and hands each Snapshot to every stage in order for
``ticks`` ticks (the reset's Snapshot is tick 1). Everything that steps a world -- the main
job, dataset recording, perception evaluation, the live viewer -- does it through here, with
its stage(s).

Cleanup has one owner. While it drives a world the runner owns the process's signals: it sets
``world.owns_signals = False`` before the reset (a backend installs no handler of its own
then), turns SIGTERM into :class:`RunTerminated`, and defers SIGINT and SIGTERM while it
closes. Every exit path (normal end, exception, Ctrl-C, SIGTERM) closes the stages that
started, in reverse order, then the world; a signal that arrived while closing is re-raised
after everything is closed.

The run directory gets (with ``run_files=True``, the default):

- ``config.yaml``: the resolved scenario (seed included), written before the world is made;
- ``world.json``: the static world after the reset: map path, tick, net offset, RSUs
  (position, range, resources) and signs (id, kind, OpenDRIVE type, value, pose, face size),
  CARLA frame;
- ``summary.json``: ticks, avs, vehicles, mean_speed (m/s), distance_driven_m,
  rsu_coverage_share, wall_time_s, ticks_per_s, landmarks {total, by_type, ...}, seed,
  status ("completed" | "interrupted" | "failed"), the per-stage tick budget
  (``tick_budget_ms``) and one entry per stage under ``stages``;
- whatever the stages write.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np

from carla_mr.errors import InputError, RunError
from carla_mr.io import atomic_write_json, atomic_write_text
from carla_mr.stages import RunContext, Stage
from carla_mr.world.base import ROLE_AV, Snapshot

if TYPE_CHECKING:  # pragma: no cover
    from carla_mr.config import Scenario
    from carla_mr.world.base import World


class RunTerminated(RunError):
    """The run got SIGTERM; the world and stages were closed."""

    exit_code = 143


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
        self._last_role = None
        self._av_idx = np.zeros(0, dtype=np.int64)
        self._n_av = 0

    def add(self, s: Snapshot) -> None:
        self.ticks += 1
        n = len(s)
        self.vehicle_ticks += n
        self.max_vehicles = max(self.max_vehicles, n)
        if n == 0:
            return
        speed = s.speed
        self.speed_sum += float(speed.sum())
        if s.role is not self._last_role:  # backends reuse the role array while the set is unchanged
            self._last_role = s.role
            self._av_idx = np.flatnonzero(s.role == ROLE_AV)
            self._n_av = len(self._av_idx)
        av = self._av_idx
        if self._n_av:
            self.av_ticks += self._n_av
            self.av_covered += int(np.count_nonzero(s.rsu.take(av) >= 0))
            self.av_distance += float(speed.take(av).sum()) * self.tick_s
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


class _Signals:
    """The runner's signal ownership: SIGTERM -> RunTerminated while running; SIGINT and SIGTERM
    deferred while closing (remembered, re-raised by :meth:`reraise` once everything is closed).
    Only the main thread can own signals; elsewhere this does nothing."""

    def __init__(self) -> None:
        self.active = threading.current_thread() is threading.main_thread()
        self.closing = False
        self.pending: list[int] = []
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_Signals":
        if self.active:
            self._old[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def _on_signal(self, signum, frame) -> None:
        if self.closing:
            self.pending.append(signum)
            return
        if signum == signal.SIGTERM:
            raise RunTerminated("terminated by SIGTERM; world and stages closed")
        raise KeyboardInterrupt

    def defer(self) -> None:
        """From now on every SIGINT/SIGTERM waits until :meth:`reraise`."""
        self.closing = True
        if self.active:
            self._old.setdefault(signal.SIGINT, signal.signal(signal.SIGINT, self._on_signal))

    def restore(self) -> None:
        if self.active:
            for sig, old in self._old.items():
                signal.signal(sig, old)
            self._old.clear()

    def __exit__(self, *exc) -> None:
        self.restore()

    def reraise(self) -> None:
        if signal.SIGTERM in self.pending:
            raise RunTerminated("terminated by SIGTERM while closing; world and stages closed")
        if signal.SIGINT in self.pending:
            raise KeyboardInterrupt


class Runner:
    """Run a scenario: ``Runner(scenario, run_dir, stages, seed).run() -> summary dict``.

    ``stages`` are run in the given order (build them with
    :func:`carla_mr.pipeline.build_stages` for a scenario's enabled stages); ``seed`` defaults
    to the scenario's; ``world`` may be given (constructed, not reset) to reuse one, else
    ``world_factory(scenario, seed)`` (default :func:`carla_mr.world.factory.make_world`)
    builds it. ``ticks`` overrides the scenario's duration. ``progress`` shows a bar on stderr.
    ``run_files=False`` writes no config.yaml / world.json / summary.json (for callers whose
    stages own the folder, such as a dataset recording).
    """

    def __init__(self, scenario: "Scenario", run_dir: str | os.PathLike, stages: Sequence[Stage] = (),
                 seed: Optional[int] = None, *, progress: bool = True, world: "Optional[World]" = None,
                 ticks: Optional[int] = None, run_files: bool = True,
                 world_factory: "Optional[Callable[[Scenario, int], World]]" = None,
                 progress_label: Optional[str] = None):
        self.scenario = scenario
        self.run_dir = Path(run_dir)
        self.stages = list(stages)
        self.seed = int(scenario.seed if seed is None else seed)
        self.progress = progress
        self.world = world
        self.world_factory = world_factory
        self.ticks = int(ticks if ticks is not None else scenario.ticks)
        self.run_files = run_files
        self.progress_label = progress_label or f"run {scenario.name}"
        self.summary: dict[str, Any] = {}
        self.tick_budget: dict[str, float] = {}
        self.ctx: Optional[RunContext] = None

    # -- run files ------------------------------------------------------------------------------
    def _write_config(self) -> None:
        from carla_mr.config import dump_scenario

        update: dict[str, Any] = {"seed": self.seed}
        try:  # the map as an absolute path, so the copy loads from anywhere
            resolved = self.scenario.resolved_map_path()
        except InputError:  # the world reports a missing map itself, with its own message
            resolved = None
        if resolved is not None:
            update["map"] = str(resolved)
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
        xodr = world.xodr_path
        data = {"backend": self.scenario.backend, "map": str(xodr if xodr is not None else self.scenario.map),
                "tick_s": float(world.tick_s), "frame": "CARLA (left-handed: x east, y south, yaw clockwise, deg)",
                "net_offset": [float(v) for v in world.net_offset],
                "rsus": world.rsus.to_records(), "signs": sign_rows}
        atomic_write_json(self.run_dir / "world.json", data, indent=None)

    # -- the loop -------------------------------------------------------------------------------
    def _make_world(self) -> "World":
        if self.world_factory is not None:
            return self.world_factory(self.scenario, self.seed)
        from carla_mr.world.factory import make_world

        return make_world(self.scenario, seed=self.seed)

    def _loop(self, world: "World", ctx: RunContext, snap: Snapshot, stats: _Stats) -> None:
        """Tick 1 is the reset's snapshot; each later tick steps the world once. Every stage's
        time is added to ``self.tick_budget`` (seconds) under its name."""
        from carla_mr.cli_common import progress as progress_bar

        names = [st.name for st in self.stages]
        budget = self.tick_budget = {"world": 0.0, **{n: 0.0 for n in names}}
        clock = time.perf_counter
        with progress_bar(self.ticks, self.progress_label, enabled=self.progress) as advance:
            pending = 0
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
                if ctx.stop_requested is not None:
                    break
            advance(pending)

    def run(self) -> dict[str, Any]:
        if self.run_files:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_config()
        stats = _Stats(self.scenario.tick_s)
        started: list[Stage] = []
        status, error = "failed", None
        world = self.world
        ctx: Optional[RunContext] = None
        t0 = time.perf_counter()
        t_loop = t_end = None
        with _Signals() as signals:
            try:
                if world is None:
                    world = self._make_world()
                self.world = world
                world.owns_signals = False  # the runner owns cleanup on every exit path
                snap = world.reset()
                if self.run_files:
                    self._write_world_json(world)
                ctx = self.ctx = RunContext(scenario=self.scenario, world=world, run_dir=self.run_dir, seed=self.seed)
                for st in self.stages:
                    st.start(ctx)
                    started.append(st)
                t_loop = time.perf_counter()
                self._loop(world, ctx, snap, stats)
                t_end = time.perf_counter()
                status = "completed"
                ctx.completed = True
            except KeyboardInterrupt:
                status, error = "interrupted", "interrupted (Ctrl-C)"
                raise
            except RunTerminated as exc:
                status, error = "interrupted", str(exc)
                raise
            except BaseException as exc:
                error = f"{type(exc).__name__}: {exc}"
                raise
            finally:
                signals.defer()
                now = time.perf_counter()
                close_errors = self._close(started, world)
                loop_s = ((t_end or now) - t_loop) if t_loop is not None else 0.0
                self.summary = self._summary(stats, world, started, status, error, close_errors, now - t0, loop_s)
                if self.run_files:
                    try:
                        atomic_write_json(self.run_dir / "summary.json", self.summary)
                    except OSError:
                        pass
            signals.restore()
            signals.reraise()
        if len(close_errors) == 1:  # one failure: raise it as itself (its message, its exit code)
            raise close_errors[0][1]
        if close_errors:
            raise RunError("closing failed: " + "; ".join(f"{who}: {exc}" for who, exc in close_errors))
        return self.summary

    @staticmethod
    def _close(started: list[Stage], world: "Optional[World]") -> list[tuple[str, Exception]]:
        """Close the started stages in reverse order, then the world; collect (who, error) of each
        failure and go on."""
        errors: list[tuple[str, Exception]] = []
        for st in reversed(started):
            try:
                st.close()
            except Exception as exc:  # noqa: BLE001 - keep closing the rest
                errors.append((st.name, exc))
        if world is not None:
            try:
                world.close()
            except Exception as exc:  # noqa: BLE001
                errors.append(("world", exc))
        return errors

    def _summary(self, stats: _Stats, world, started, status, error, close_errors, wall, loop) -> dict[str, Any]:
        out: dict[str, Any] = {"scenario": self.scenario.name, "backend": self.scenario.backend,
                               "map": self.scenario.map, "status": status}
        if error:
            out["error"] = error
        if close_errors:
            out["close_errors"] = [f"{who}: {type(exc).__name__}: {exc}" for who, exc in close_errors]
        if self.ctx is not None and self.ctx.stop_requested is not None:
            out["stopped_early"] = self.ctx.stop_requested
        out.update(stats.summary())
        out["sim_time_s"] = stats.ticks * self.scenario.tick_s
        out["wall_time_s"] = wall
        out["ticks_per_s"] = stats.ticks / loop if loop > 0 else 0.0
        try:
            out["landmarks"] = world.landmark_summary() if world is not None else {"total": 0, "by_type": {}}
        except Exception:  # noqa: BLE001 - a world that failed half-way
            out["landmarks"] = {"total": 0, "by_type": {}}
        out["rsus"] = len(world.rsus) if world is not None else 0
        if stats.ticks and self.tick_budget:
            per_tick = {k: 1e3 * v / stats.ticks for k, v in self.tick_budget.items()}
            out["tick_budget_ms"] = {**per_tick, "total": sum(per_tick.values()),
                                     "real_time_at_ms": 1e3 * self.scenario.tick_s}
        if world is not None:
            try:
                out["world"] = world.summary()
            except Exception as exc:  # noqa: BLE001 - a world that failed half-way
                out["world"] = {"error": f"{type(exc).__name__}: {exc}"}
        out["seed"] = self.seed
        out["stages"] = {}
        for st in started:
            try:
                out["stages"][st.name] = st.summary()
            except Exception as exc:  # noqa: BLE001
                out["stages"][st.name] = {"error": f"{type(exc).__name__}: {exc}"}
        out["run_dir"] = str(self.run_dir)
        return out

"""The stage contract and the one loop: registration, the typed board, request_stop, the close
order on every exit path, signal ownership, and that the Runner is the only tick loop."""

from __future__ import annotations

import ast
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from carla_mr.config import scenario_from_dict
from carla_mr.pipeline import StageEntry, StageRegistry, build_stages, default_registry, run_scenario
from carla_mr.runner import Runner, RunTerminated
from carla_mr.stages import (BaseStage, Board, GenerationScores, MarketRound, ReportSection, TwinAccuracy,
                             board_slots)
from carla_mr.testing.fake_world import FakeWorld
from carla_mr.world.base import Snapshot

PACKAGE = Path(__file__).resolve().parent.parent / "carla_mr"


def _one_vehicle(frame: int) -> Snapshot:
    """One AV (id 7) moving along x at 10 m/s, no RSU."""
    t = frame * 0.05
    return Snapshot(frame, t, np.array([7]), np.array([1], np.uint8), np.array([10.0 * t]), np.zeros(1), np.zeros(1),
                    np.zeros(1), np.array([10.0]), np.array([-1], np.int32))


class CountingWorld(FakeWorld):
    """The shared fake world, logging reset (with its signal ownership) and close."""

    def __init__(self, log: list):
        super().__init__(_one_vehicle)
        self.log = log

    def reset(self):
        self.log.append(("world.reset", self.owns_signals))
        return super().reset()

    def close(self):
        super().close()
        self.log.append(("world.close",))


class Probe(BaseStage):
    """Records its calls; optionally fails, signals or stops at a tick."""

    def __init__(self, name: str, log: list, *, fail_at=None, stop_at=None, signal_at=None, signal_on_close=None):
        self.name = name
        self.log = log
        self.fail_at, self.stop_at, self.signal_at, self.signal_on_close = fail_at, stop_at, signal_at, signal_on_close
        self.ticks = 0
        self.closed = 0

    def start(self, ctx):
        self.log.append((self.name + ".start", len(ctx.world.signs)))

    def on_tick(self, snapshot, ctx):
        self.ticks += 1
        if self.ticks == self.signal_at:
            os.kill(os.getpid(), signal.SIGTERM)
        if self.ticks == self.fail_at:
            raise ValueError(f"{self.name} failed")
        if self.ticks == self.stop_at:
            ctx.request_stop(f"{self.name} is done")

    def close(self):
        self.closed += 1
        self.log.append((self.name + ".close",))
        if self.signal_on_close is not None:
            os.kill(os.getpid(), self.signal_on_close)

    def summary(self):
        return {"ticks": self.ticks}


def _scenario(**kw):
    return scenario_from_dict({"name": "t", "map": "nowhere.xodr", "duration_s": 1.0, **kw})


def _run(log, stages, **kw):
    return Runner(_scenario(), kw.pop("run_dir", "."), stages, 0, progress=False, world=CountingWorld(log),
                  run_files=kw.pop("run_files", False), **kw)


def test_reset_before_start_and_reverse_close_order():
    log: list = []
    a, b = Probe("a", log), Probe("b", log)
    summary = _run(log, [a, b]).run()
    assert summary["status"] == "completed" and summary["ticks"] == 20 and a.ticks == b.ticks == 20
    assert log[0] == ("world.reset", False)  # the runner owns signals while it drives the world
    assert log[1:3] == [("a.start", 0), ("b.start", 0)]
    assert log[-3:] == [("b.close",), ("a.close",), ("world.close",)]


def test_an_error_closes_started_stages_then_the_world():
    log: list = []
    a, b = Probe("a", log), Probe("b", log, fail_at=3)
    r = _run(log, [a, b])
    with pytest.raises(ValueError, match="b failed"):
        r.run()
    assert a.closed == b.closed == 1 and log[-1] == ("world.close",)
    assert r.summary["status"] == "failed" and "b failed" in r.summary["error"] and r.summary["ticks"] == 3


def test_request_stop_ends_the_run_as_completed():
    log: list = []
    a, b = Probe("a", log, stop_at=5), Probe("b", log)
    s = _run(log, [a, b]).run()
    assert s["status"] == "completed" and s["ticks"] == 5 and b.ticks == 5 and s["stopped_early"] == "a is done"


def test_sigterm_in_the_loop_closes_everything():
    log: list = []
    a, b = Probe("a", log), Probe("b", log, signal_at=4)
    r = _run(log, [a, b])
    with pytest.raises(RunTerminated):
        r.run()
    assert log[-3:] == [("b.close",), ("a.close",), ("world.close",)]
    assert r.summary["status"] == "interrupted" and signal.getsignal(signal.SIGTERM) is not None


@pytest.mark.parametrize("sig,exc", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, RunTerminated)])
def test_a_signal_while_closing_waits_until_everything_is_closed(sig, exc):
    log: list = []
    old = signal.getsignal(sig)
    a, b = Probe("a", log), Probe("b", log, signal_on_close=sig)  # b closes first and signals
    with pytest.raises(exc):
        _run(log, [a, b]).run()
    assert log[-3:] == [("b.close",), ("a.close",), ("world.close",)]
    assert signal.getsignal(sig) == old  # handlers restored


def test_a_close_error_is_raised_as_itself_after_everything_closed():
    log: list = []

    class BadClose(Probe):
        def close(self):
            super().close()
            raise OSError(28, "No space left on device")

    a, b = BadClose("a", log), Probe("b", log)
    with pytest.raises(OSError, match="No space"):
        _run(log, [a, b]).run()
    assert log[-2:] == [("a.close",), ("world.close",)]


def test_board_slots_are_typed():
    board = Board()
    assert board_slots() == ("twin_accuracy", "market_round", "generation_scores", "camera_frames")
    assert all(getattr(board, n) is None for n in board_slots())
    with pytest.raises(TypeError, match="market_round takes a MarketRound"):
        board.market_round = {"round_id": 1}
    with pytest.raises(AttributeError, match="no slot 'genai_scores'"):
        board.genai_scores = 1
    board.generation_scores = GenerationScores.unmeasured(3)
    assert board.generation_scores.G.shape == (3,) and np.isnan(board.generation_scores.G).all()


def test_market_round_record_round_trip():
    rnd = MarketRound.from_windows(round_id=2, frame=40, time=2.0, participants=3, winner_vehicle_id=12,
                                   payment_micro=5, mechanism="mtepvisa", windows=[
                                       {"sim_id": "sim-004", "sim_index": 4, "vehicle_id": 12, "task": 0,
                                        "start_s": 0.0, "duration_s": 0.3, "payment_micro": 7},
                                       {"sim_id": "sim-000", "sim_index": 0, "vehicle_id": None, "task": 1,
                                        "start_s": 0.3, "duration_s": 0.1, "payment_micro": 0}])
    rec = json.loads(json.dumps(rnd.to_record()))
    back = MarketRound.from_record({**rec, "extra": "ignored"})
    assert back.to_record() == rnd.to_record() and len(back) == 2 and back.vehicle_id.tolist() == [12, -1]


def test_twin_accuracy_lookup():
    acc = TwinAccuracy(frame=3, time=0.15, ids=np.array([2, 5, 9]), rsu=np.zeros(3, np.int32),
                       r=np.array([0.1, 0.9, 1.0]), n=np.ones(3, np.int64), prior=0.5, hit_radius_m=2.0, window=20)
    assert acc.get(np.array([5, 4, 9])).tolist() == [0.9, 0.5, 1.0]


# -- adding a stage: one class and one registration -------------------------------------------

class ToyStage(BaseStage):
    """Counts AV-ticks and shows them in the report."""

    name = "toy"

    def __init__(self):
        self.av_ticks = 0

    def on_tick(self, snapshot, ctx):
        self.av_ticks += int(snapshot.av_mask.sum())

    def summary(self):
        return {"av_ticks": self.av_ticks}

    @staticmethod
    def report_section(run_dir, summary, figures_dir):
        n = summary["stages"]["toy"]["av_ticks"]
        return ReportSection("Toy counter", f"The toy stage counted {n} AV-ticks.\n", {"av_ticks": n})


def test_a_toy_stage_needs_one_class_and_one_registration(tmp_path):
    registry = StageRegistry([StageEntry(default_registry().get("trajectories").cls)]).with_stage(StageEntry(ToyStage))
    log: list = []
    sc = _scenario(duration_s=0.5)
    summary = run_scenario(sc, tmp_path, registry=registry, progress=False, world=CountingWorld(log))
    assert summary["stages"]["toy"] == {"av_ticks": 10}
    assert summary["headline"]["toy"] == {"av_ticks": 10}
    report = (tmp_path / "report.md").read_text()
    assert "## Toy counter" in report and "counted 10 AV-ticks" in report
    assert json.loads((tmp_path / "world.json").read_text())["tick_s"] == 0.05


def test_default_registry_order_and_enabled_sections():
    assert default_registry().names() == ["trajectories", "twin", "market", "genai", "recorder", "perception"]
    sc = _scenario(twin={"enabled": True}, recorder={"enabled": True})
    assert [s.name for s in build_stages(sc)] == ["trajectories", "twin", "recorder"]
    with pytest.raises(ValueError, match="registered twice: toy"):
        StageRegistry([StageEntry(ToyStage), StageEntry(ToyStage)])


# -- the Runner is the only loop ----------------------------------------------------------------

def _calls(attr: str) -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in ("world", "testing"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr \
                    and not node.args and not node.keywords:
                out.append(f"{rel}:{node.lineno}")
    return out


def test_world_tick_is_called_in_exactly_one_place_outside_world():
    assert _calls("tick") == [f"runner.py:{_line_of('snap = world.tick()')}"]


def _line_of(text: str) -> int:
    lines = (PACKAGE / "runner.py").read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)

"""The world is loaded (signs, RSUs, landmarks) before world.json is written and before any stage
starts, on the CARLA backend too (where the signs come from the server's map at reset()), and
the runner, not the world, owns the process's signals.

Relies on the runner resetting the world before it writes world.json and starts the stages,
and setting ``world.owns_signals = False`` before that reset (docs/architecture.md).
"""

from __future__ import annotations

import json
import signal

from carla_mr.runner import Runner
from carla_mr.world import carla_close
from carla_mr.world.carla_backend import CarlaWorld


class ProbeStage:
    """Records what the world shows a stage when it starts."""

    name = "probe"

    def __init__(self):
        self.seen = None
        self.handlers = None

    def start(self, ctx):
        self.seen = (len(ctx.world.signs), len(ctx.world.rsus))
        self.handlers = signal.getsignal(signal.SIGINT)

    def on_tick(self, snapshot, ctx):
        pass

    def close(self):
        pass

    def summary(self):
        return {"signs": self.seen[0], "rsus": self.seen[1]}


def test_world_json_and_the_stages_see_the_signs_and_rsus(make_server, town_scenario, tmp_path, monkeypatch):
    srv = make_server()
    made = []

    def make_world(scenario, seed=None):
        made.append(CarlaWorld(scenario, seed=seed, client_factory=srv.client_factory))
        return made[0]

    monkeypatch.setattr("carla_mr.world.factory.make_world", make_world)
    sc = town_scenario(duration_s=0.2)
    probe = ProbeStage()
    Runner(sc, tmp_path / "run", stages=[probe], seed=3).run()
    world = made[0]
    data = json.loads((tmp_path / "run" / "world.json").read_text())
    assert len(world.signs) == 58 and len(world.rsus) > 0  # Town01's signs, from the server's map
    assert len(data["signs"]) == len(world.signs) and len(data["rsus"]) == len(world.rsus)
    assert probe.seen == (len(world.signs), len(world.rsus))
    assert world.owns_signals is False and probe.handlers is not carla_close.signal_handler
    assert srv.settings["synchronous_mode"] is False and not srv.tagged("carla_mr/")

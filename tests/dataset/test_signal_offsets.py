"""Issue 17 item 2 (part): seeded per-junction traffic-light offsets in the embedded world."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from carla_mr.world.embedded import stagger_traffic_lights


class FakeTL:
    def __init__(self, programs):
        self.programs = programs  # tls -> phase durations
        self.set = {}

    def getIDList(self):
        return list(self.programs)

    def getProgram(self, tls):
        return "0"

    def getAllProgramLogics(self, tls):
        return [SimpleNamespace(programID="0", phases=[SimpleNamespace(duration=d) for d in self.programs[tls]])]

    def setPhase(self, tls, i):
        self.set[tls] = [i, None]

    def setPhaseDuration(self, tls, d):
        self.set[tls][1] = d


def run(programs, seed):
    tl = FakeTL(programs)
    return stagger_traffic_lights(SimpleNamespace(trafficlight=tl), seed), tl.set


def test_offsets_land_in_the_right_phase_with_the_right_remainder():
    durations = [31.0, 4.0, 6.0, 31.0, 4.0, 6.0]
    programs = {f"j{i}": durations for i in range(40)}
    offsets, applied = run(programs, seed=3)
    ends = np.cumsum(durations)
    for tls, t in offsets.items():
        assert 0 <= t < ends[-1]
        phase, remaining = applied[tls]
        assert (ends[phase - 1] if phase else 0.0) <= t < ends[phase]
        assert remaining == pytest.approx(ends[phase] - t)
    # junctions do not switch together: offsets spread over the cycle
    assert np.std(list(offsets.values())) > 0.2 * ends[-1]


def test_offsets_are_seeded_per_junction_and_order_free():
    programs = {"a": [30.0, 5.0], "b": [30.0, 5.0], "c": [10.0, 10.0]}
    o1, _ = run(programs, seed=7)
    o2, _ = run(dict(reversed(list(programs.items()))), seed=7)
    o3, _ = run(programs, seed=8)
    assert o1 == o2 and o1 != o3
    assert run({"x": [5.0]}, 1)[0] == {}  # a one-phase program has nothing to offset

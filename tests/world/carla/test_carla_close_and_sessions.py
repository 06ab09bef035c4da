"""close() cannot be cut short (interrupts, Ctrl-C, slow servers) and can be resumed; sessions
are swept only when their heartbeat stopped; physics covers long steps; versions must match."""

from __future__ import annotations

import os
import signal
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from carla_mr.errors import RunError
from carla_mr.world import carla_close as cc
from carla_mr.world.carla_actors import heartbeat_location, heartbeat_time, survey_sessions
from carla_mr.world.carla_api import physics_substeps
from carla_mr.world.carla_backend import CarlaWorld
from carla_mr.world.carla_cameras import SensorStream

PREFIX = "carla_mr/"


def _clean(srv):
    return srv.settings["synchronous_mode"] is False and not srv.tagged(PREFIX) and \
        all(not tm.sim_synchronous for tm in srv.tms.values())


def _next(srv, name):
    return srv.counts.get(name, 0) + 1


def _raise_keyboard_interrupt():
    raise KeyboardInterrupt


# -- an uninterruptible, resumable close ---------------------------------------------------------

def test_an_interrupt_inside_a_step_is_retried_after_the_others(make_server, town_scenario):
    srv = make_server()
    w = CarlaWorld(town_scenario(), client_factory=srv.client_factory, owns_signals=False)
    w.reset()
    w.tick()
    # the first server call of close() (destroying our actors) is hit by Ctrl-C once
    srv.fail(name="Client.apply_batch_sync", nth=_next(srv, "Client.apply_batch_sync"),
             action=_raise_keyboard_interrupt)
    with pytest.raises(KeyboardInterrupt):  # the interrupt is not swallowed ...
        w.close()
    assert _clean(srv) and w.close_report.pending == []  # ... but every step ran, the interrupted one again
    assert 100 in srv.actors  # the other client's car


def test_a_step_interrupted_twice_stays_pending_for_the_next_close(make_server, town_scenario):
    srv = make_server()
    w = CarlaWorld(town_scenario(), client_factory=srv.client_factory, owns_signals=False)
    w.reset()
    srv.fail(name="Client.apply_batch_sync", nth=_next(srv, "Client.apply_batch_sync"), persistent=True,
             action=_raise_keyboard_interrupt)
    with pytest.raises(KeyboardInterrupt):
        w.close()
    assert srv.settings["synchronous_mode"] is False  # the other steps ran
    assert "destroy actors" in w.close_report.pending and srv.tagged(w.tag)
    srv.heal()
    w.close()  # resumes: the pending steps run now
    assert _clean(srv) and w.close_report.pending == [] and not cc.is_open(w)


def test_an_interrupt_between_steps_is_resumed_by_the_next_close(make_server, town_scenario, monkeypatch):
    srv = make_server()
    w = CarlaWorld(town_scenario(), client_factory=srv.client_factory, owns_signals=False)
    w.reset()
    real = cc.RestoreSequence._run_one
    seen = {"n": 0}

    def interrupted_once(self, step):
        seen["n"] += 1
        if seen["n"] == 2:
            raise KeyboardInterrupt  # lands in the glue between two steps
        return real(self, step)

    monkeypatch.setattr(cc.RestoreSequence, "_run_one", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        w.close()
    assert srv.settings["synchronous_mode"] is True  # cut short before the restore
    w.close()  # the defect was: every later close() did nothing
    assert _clean(srv)
    w.close()
    assert _clean(srv)


def test_a_second_ctrl_c_during_close_waits_until_the_server_is_restored(make_server, town_scenario):
    srv = make_server()
    w = CarlaWorld(town_scenario(), client_factory=srv.client_factory, owns_signals=True)
    w.reset()
    assert signal.getsignal(signal.SIGINT) is cc.signal_handler  # standalone: the world owns the signals
    srv.fail(name="Client.apply_batch_sync", nth=_next(srv, "Client.apply_batch_sync"), when="after",
             action=lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):  # delivered once everything was restored
        w.close()
    assert _clean(srv) and not cc.is_open(w)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_signal_handlers_only_when_the_world_owns_them_and_only_from_reset(make_server, town_scenario):
    srv = make_server()
    w = CarlaWorld(town_scenario(), client_factory=srv.client_factory)
    assert w.owns_signals is True and signal.getsignal(signal.SIGINT) is not cc.signal_handler  # not before reset
    w.owns_signals = False  # what the runner does before reset()
    w.reset()
    assert signal.getsignal(signal.SIGINT) is not cc.signal_handler
    assert signal.getsignal(signal.SIGTERM) is not cc.signal_handler
    w.close()
    assert _clean(srv)


def test_a_slow_server_is_asked_before_steps_are_skipped(make_server, town_scenario):
    srv = make_server()
    w = CarlaWorld(town_scenario(), client_factory=srv.client_factory, owns_signals=False)
    w.reset()
    # the restore times out once, but the server still answers get_server_version(): retried, not skipped
    srv.fail(name="World.apply_settings", nth=_next(srv, "World.apply_settings"), timeout=True)
    w.close()
    rep = w.close_report
    assert "restore world settings" in rep.done and not rep.skipped and not rep.failed
    assert _clean(srv)
    probes = [c for c in srv.calls if c[0] == "Client.get_server_version"]
    assert len(probes) >= 2  # connect + the probe


def test_a_lost_server_is_probed_once_then_the_rest_is_skipped(make_server, town_scenario):
    srv = make_server()
    w = CarlaWorld(town_scenario(), client_factory=srv.client_factory, owns_signals=False)
    w.reset()
    srv.fail(name="Client.apply_batch_sync", nth=_next(srv, "Client.apply_batch_sync"), lost=True)
    t0 = time.monotonic()
    w.close()
    assert time.monotonic() - t0 < 5.0
    rep = w.close_report
    assert len(rep.failed) == 1 and "restore world settings" in rep.skipped


def test_restore_sequence_runs_every_step_whatever_they_raise():
    rep = cc.CloseReport()
    ran = []

    def boom():
        ran.append("boom")
        raise SystemError("not an Exception subclass problem")

    seq = cc.RestoreSequence(rep, probe=lambda: "0.9.16")
    seq.add(cc.Step("a", boom))
    seq.add(cc.Step("b", lambda: ran.append("b")))
    seq.add(cc.Step("b", lambda: ran.append("again")))  # a name runs once
    seq.run()
    assert ran == ["boom", "boom", "b"] and list(rep.failed) == ["a"] and rep.done == ["b"]


# -- sessions and heartbeats ----------------------------------------------------------------------

def test_heartbeat_location_round_trip():
    for e in (0.0, 12.5, 999.9, 1000.0, 86_400.25):
        x, y = heartbeat_location(1_700_000_000, 1_700_000_000 + e)
        assert 0 <= x < 1000 and 0 <= y < 1000
        assert heartbeat_time(1_700_000_000, np.float32(x), np.float32(y)) == pytest.approx(1_700_000_000 + e,
                                                                                            abs=1e-3)
    assert heartbeat_time(5, 0.0, -1.0) is None  # stopped


def _heartbeat(**over):
    return {"heartbeat_s": 5.0, "heartbeat_stale_s": 60.0, **over}


def test_a_live_session_of_the_same_prefix_is_left_alone(make_server, town_scenario):
    srv = make_server()
    a = CarlaWorld(town_scenario(carla=_heartbeat()), client_factory=srv.client_factory, owns_signals=False)
    a.reset()
    mine = {x.id for x in srv.tagged(a.tag)}
    b = CarlaWorld(town_scenario(carla=_heartbeat()), client_factory=srv.client_factory, owns_signals=False)
    b.reset()
    assert {x.id for x in srv.tagged(a.tag)} == mine, "a live run's actors were swept"
    assert b.stats["live_sessions"] == 1 and b.stats["leftovers_removed"] == 0
    b.close()
    assert {x.id for x in srv.tagged(a.tag)} == mine
    a.close()
    assert _clean(srv)


def test_a_session_whose_heartbeat_stopped_is_swept_and_its_settings_adopted(make_server, town_scenario):
    srv = make_server()
    now = {"t": 1_700_000_000.0}
    a = CarlaWorld(town_scenario(carla=_heartbeat()), client_factory=srv.client_factory, owns_signals=False,
                   clock=lambda: now["t"])
    a.reset()
    now["t"] += 30.0
    a.tick()  # 30 s since the last beat >= heartbeat_s: the marker moves
    beat = survey_sessions(srv_world(srv), PREFIX)[a.session].last_beat
    assert beat == pytest.approx(now["t"], abs=1e-3)
    a._closed = a._close_done = True  # the process dies here
    cc.unregister(a)
    now["t"] += 59.0
    b = CarlaWorld(town_scenario(carla=_heartbeat()), client_factory=srv.client_factory, owns_signals=False,
                   clock=lambda: now["t"])
    b.reset()
    assert srv.tagged(a.tag) and b.stats["live_sessions"] == 1  # 59 s old: maybe only slow
    b.close()
    now["t"] += 2.0
    c = CarlaWorld(town_scenario(carla=_heartbeat()), client_factory=srv.client_factory, owns_signals=False,
                   clock=lambda: now["t"])
    c.reset()
    assert not srv.tagged(a.tag) and c.stats["recovered_settings"] is True
    c.close()
    assert _clean(srv)


def srv_world(srv):
    return srv.client_factory("127.0.0.1", 2000).get_world()


def test_a_session_that_could_not_restore_marks_itself_stopped(make_server, town_scenario):
    srv = make_server()
    a = CarlaWorld(town_scenario(carla=_heartbeat()), client_factory=srv.client_factory, owns_signals=False)
    a.reset()
    srv.fail(name="World.apply_settings", nth=_next(srv, "World.apply_settings"), persistent=True)
    a.close()
    assert "mark session stopped" in a.close_report.done
    srv.heal()
    left = survey_sessions(srv_world(srv), PREFIX)[a.session]
    assert left.last_beat is None and left.marker_id is not None
    # a new run sweeps it at once (no need to wait for the stale time) and restores the settings
    b = CarlaWorld(town_scenario(carla=_heartbeat()), client_factory=srv.client_factory, owns_signals=False)
    b.reset()
    assert b.stats["live_sessions"] == 0 and b.stats["recovered_settings"] is True
    b.close()
    assert _clean(srv)


# -- physics, frames, versions --------------------------------------------------------------------

@pytest.mark.parametrize("tick_s", [0.01, 0.05, 0.1, 0.15, 0.16, 0.2, 0.5, 1.0])
def test_physics_substeps_cover_the_step(tick_s):
    dt, n = physics_substeps(tick_s)
    assert 1 <= n <= 16 and dt * n == pytest.approx(tick_s)
    assert dt <= 0.01 + 1e-12 or n == 16


def test_a_long_step_gets_covering_substeps_and_they_are_restored(make_server, town_scenario):
    srv = make_server()
    w = CarlaWorld(town_scenario(tick_s=0.2), client_factory=srv.client_factory, owns_signals=False)
    w.reset()
    st = srv.settings
    assert st["fixed_delta_seconds"] == 0.2 and st["substepping"]
    assert st["max_substeps"] <= 16 and st["max_substep_delta_time"] * st["max_substeps"] >= 0.2 - 1e-9
    assert w.summary()["physics_substeps_set"] is True
    w.tick()
    w.close()
    assert (st["max_substep_delta_time"], st["max_substeps"]) == (0.01, 10) and _clean(srv)
    # a step the defaults cover leaves them alone
    w = CarlaWorld(town_scenario(tick_s=0.1), client_factory=srv.client_factory, owns_signals=False)
    w.reset()
    assert (st["max_substep_delta_time"], st["max_substeps"]) == (0.01, 10)
    assert w.summary()["physics_substeps_set"] is False
    w.close()


def test_the_standin_refuses_uncovered_physics_like_carlas_rule(make_server):
    import carla

    from carla_mr.testing.carla_standin import StandinError

    srv = make_server()
    world = srv_world(srv)
    s = world.get_settings()
    s.synchronous_mode, s.fixed_delta_seconds = True, 0.2  # 0.01 s x 10 substeps cover 0.1 s only
    with pytest.raises(StandinError, match="substeps cover"):
        world.apply_settings(s)
    s.max_substeps = 17
    s.max_substep_delta_time = 0.05
    with pytest.raises(StandinError, match="1..16"):
        world.apply_settings(s)
    assert isinstance(s, carla.WorldSettings)


def test_a_late_image_waits_in_place_for_its_tick():
    st = SensorStream(actor=None, width=1, height=1)
    for f in (5, 7, 6):  # 7 arrives before 6
        st.put(SimpleNamespace(frame=f))
    deadline = time.monotonic() + 0.05
    st.take(6, deadline)
    assert st.latest.frame == 6 and st.dropped == 1  # 5 is stale, 7 kept
    st.take(7, time.monotonic() + 0.05)
    assert st.latest.frame == 7 and st.matched == 2 and st.missed == 0
    threading.Timer(0.05, lambda: st.put(SimpleNamespace(frame=8))).start()
    st.take(8, time.monotonic() + 2.0)  # waits for the streaming thread
    assert st.latest.frame == 8


def test_a_client_server_version_mismatch_is_an_error_unless_allowed(make_server, town_scenario):
    srv = make_server(client_version="0.9.15")
    w = CarlaWorld(town_scenario(), client_factory=srv.client_factory, owns_signals=False)
    with pytest.raises(RunError, match=r"client 0\.9\.15 and server 0\.9\.16 differ.*allow_version_mismatch"):
        w.reset()
    assert srv.settings["synchronous_mode"] is False and not srv.tagged(PREFIX)  # nothing was changed
    w = CarlaWorld(town_scenario(carla={"allow_version_mismatch": True}), client_factory=srv.client_factory,
                   owns_signals=False)
    w.reset()
    assert w.summary()["client_version"] == "0.9.15"
    w.close()

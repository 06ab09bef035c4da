"""close() is reached from SIGTERM/SIGINT handlers (then the previous handler runs) and atexit."""

from __future__ import annotations

import os
import signal

import pytest

from carla_mr.world import carla_close as cc
from carla_mr.world.carla_backend import CarlaWorld


def _assert_clean(srv):
    assert srv.settings["synchronous_mode"] is False
    assert not srv.tagged("carla_mr/")


def test_sigterm_closes_then_chains_to_the_previous_handler(make_server, town_scenario):
    seen = []
    old = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    try:
        srv = make_server()
        w = CarlaWorld(town_scenario(), client_factory=srv.client_factory)
        w.reset()
        assert signal.getsignal(signal.SIGTERM) is cc.signal_handler
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM]
        _assert_clean(srv)
        assert w._closed
        # our handler is gone again; the user's is back
        assert signal.getsignal(signal.SIGTERM) is not cc.signal_handler
    finally:
        signal.signal(signal.SIGTERM, old)


def test_sigterm_with_default_handler_exits(make_server, town_scenario):
    old = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        srv = make_server()
        w = CarlaWorld(town_scenario(), client_factory=srv.client_factory)
        w.reset()
        with pytest.raises(SystemExit) as ei:
            os.kill(os.getpid(), signal.SIGTERM)
        assert ei.value.code == 128 + signal.SIGTERM
        _assert_clean(srv)
    finally:
        signal.signal(signal.SIGTERM, old)


def test_ctrl_c_closes_and_raises_keyboard_interrupt(make_server, town_scenario):
    srv = make_server()
    w = CarlaWorld(town_scenario(), client_factory=srv.client_factory)
    w.reset()
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
    _assert_clean(srv)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_atexit_hook_closes_open_worlds(make_server, town_scenario):
    srv = make_server()
    w = CarlaWorld(town_scenario(), client_factory=srv.client_factory, owns_signals=False)
    w.reset()
    cc.close_all_open_worlds()  # what the atexit hook runs
    _assert_clean(srv)
    assert not cc.is_open(w)


def test_exception_inside_the_with_block_closes(make_server, town_scenario):
    srv = make_server()
    with pytest.raises(ZeroDivisionError):
        with CarlaWorld(town_scenario(), client_factory=srv.client_factory, owns_signals=False) as w:
            w.reset()
            w.tick()
            1 / 0
    _assert_clean(srv)

"""Closing a CARLA world on every exit path: the restore steps, signals and the atexit hook.

:class:`RestoreSequence` runs a world's named restore steps so that nothing can stop half of
them:

- each step runs once and catches ``BaseException``: an error is recorded and the next step
  runs; a ``KeyboardInterrupt``/``SystemExit`` caught inside a step is handed back to the
  caller (who raises it when the sequence has gone through), the other steps still run and
  the interrupted step is tried again after them;
- a pending step (interrupted, or never reached because the interrupt landed between steps)
  runs when :meth:`RestoreSequence.run` is called again: a world's ``close()`` can be resumed;
- a step that fails with a time-out does not mean the server is gone: the server is asked
  for its version (``probe``); while it answers, the step is retried (up to ``retries``
  times); only when it does not answer are the remaining steps skipped (recorded as such);
- while the sequence runs in the main thread with ``defer_signals``, SIGINT and SIGTERM are
  held and delivered once it is done (a second Ctrl-C cannot cut a restore short).

Worlds that own the process's signals (``World.owns_signals``, standalone use) install
SIGINT/SIGTERM handlers with :func:`install_handlers` at ``reset()``; the handlers close every
open world and then run the previous handler. Every open world is also closed by an
``atexit`` hook. A driver that owns the signals itself (the runner) never lets the world
install them.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import signal
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Protocol

from carla_mr.world.carla_api import is_connection_error

log = logging.getLogger(__name__)


@dataclass
class CloseReport:
    """What close() did: steps done, steps that failed (name -> error), steps skipped
    because the server no longer answered, and steps left pending by an interrupt."""

    done: list = field(default_factory=list)
    failed: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)
    pending: list = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"done": list(self.done), "failed": dict(self.failed), "skipped": list(self.skipped),
                "pending": list(self.pending)}


@dataclass
class Step:
    """One restore step: ``fn`` does it, ``retry`` (default ``fn``) is the second attempt for
    an error other than a time-out."""

    name: str
    fn: Callable[[], Any]
    retry: Optional[Callable[[], Any]] = None


class RestoreSequence:
    """Runs restore steps once each, to the end, whatever happens (see the module docstring).

    ``probe()`` asks the server something cheap (``client.get_server_version()``); it raises
    when the server does not answer. ``retries`` bounds the retries of a timed-out step while
    the server answers.
    """

    def __init__(self, report: CloseReport, probe: Callable[[], Any], *, retries: int = 2):
        self.report = report
        self.probe = probe
        self.retries = int(retries)
        self.server_lost = False
        self._pending: list[Step] = []
        self._queued: set[str] = set()

    def add(self, step: Step) -> None:
        """Queue ``step`` unless a step of that name was queued before (steps run once)."""
        if step.name not in self._queued:
            self._queued.add(step.name)
            self._pending.append(step)

    @property
    def finished(self) -> bool:
        return not self._pending

    def run(self) -> Optional[BaseException]:
        """Run every pending step. Returns the interrupt (KeyboardInterrupt/SystemExit) caught
        inside a step, if any, for the caller to raise once it is done; an interrupted step is
        tried again after the others, and stays pending if interrupted again."""
        interrupt: Optional[BaseException] = None
        while self._pending:
            step = self._pending[0]
            caught = self._run_one(step)
            if caught is None:
                self._pending.pop(0)
                continue
            interrupt = interrupt or caught
            self._pending.append(self._pending.pop(0))
            if all(s.name in self.report.pending for s in self._pending):
                break
        return interrupt

    def _run_one(self, step: Step) -> Optional[BaseException]:
        rep = self.report
        if self.server_lost:
            rep.skipped.append(step.name)
            return None
        attempts = [step.fn, step.retry or step.fn]
        err: Optional[BaseException] = None
        k = 0
        while True:
            try:
                attempts[min(k, 1)]()
            except (KeyboardInterrupt, SystemExit) as exc:
                if step.name not in rep.pending:
                    rep.pending.append(step.name)
                return exc
            except BaseException as exc:  # noqa: BLE001 - every step must get its chance
                err = exc
            else:
                _discard(rep.pending, step.name)
                rep.failed.pop(step.name, None)
                rep.done.append(step.name)
                return None
            k += 1
            if is_connection_error(err):
                if k > self.retries or not self._server_answers():
                    break
            elif k > 1:
                break
        _discard(rep.pending, step.name)
        rep.failed[step.name] = f"{type(err).__name__}: {err}"
        log.warning("CARLA close step '%s' failed: %s", step.name, err)
        if is_connection_error(err) and not self._server_answers():
            self.server_lost = True
        return None

    def _server_answers(self) -> bool:
        try:
            self.probe()
            return True
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # noqa: BLE001 - any failure means "no answer"
            return False


def _discard(items: list, value: Any) -> None:
    if value in items:
        items.remove(value)


#: The handlers each active :func:`deferred_signals` block replaced (innermost last).
_DEFERRED: list[dict[int, Any]] = []


@contextlib.contextmanager
def deferred_signals(enabled: bool) -> Iterator[None]:
    """Hold SIGINT and SIGTERM inside the block (main thread only) and deliver them after it,
    to the handlers in place then."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, lambda signum, frame: held.append(signum))
        except (ValueError, OSError):  # pragma: no cover - not the main interpreter
            continue
    _DEFERRED.append(previous)
    try:
        yield
    finally:
        _DEFERRED.remove(previous)
        for sig, prev in previous.items():
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        for sig in dict.fromkeys(held):
            signal.raise_signal(sig)


# -- the process-wide registry of open worlds ---------------------------------------------------

class Closable(Protocol):
    def close(self) -> None: ...


#: Worlds connected and not yet closed (strong references: a world that holds server state
#: must be closed, even if its owner dropped it, so the atexit hook can still reach it).
_OPEN: "set[Closable]" = set()
_HANDLERS: dict[int, Any] = {}
_ATEXIT = False
_LOCK = threading.RLock()


def register(world: Closable) -> None:
    """Remember an open world for the atexit hook (and the signal handlers, if installed)."""
    global _ATEXIT
    with _LOCK:
        _OPEN.add(world)
        if not _ATEXIT:
            atexit.register(close_all_open_worlds)
            _ATEXIT = True


def unregister(world: Closable) -> None:
    """Forget a closed world; the signal handlers go when no open world is left."""
    with _LOCK:
        _OPEN.discard(world)
        if not _OPEN:
            uninstall_handlers()


def is_open(world: Closable) -> bool:
    return world in _OPEN


def close_all_open_worlds() -> None:
    """close() every world of this process that is still open (atexit and signal hook)."""
    for w in list(_OPEN):
        try:
            w.close()
        except Exception as exc:  # noqa: BLE001 - closing everything matters more than one error
            log.warning("closing a CARLA world failed: %s", exc)


def signal_handler(signum, frame):
    """Close every open world, then run the handler that was in place before ours."""
    prev = _HANDLERS.get(signum, signal.SIG_DFL)  # read first: the last close() uninstalls
    close_all_open_worlds()
    uninstall_handlers()
    if callable(prev):
        prev(signum, frame)
    elif prev == signal.SIG_IGN:
        return
    elif signum == signal.SIGINT:
        raise KeyboardInterrupt
    else:
        raise SystemExit(128 + int(signum))


def install_handlers() -> None:
    """SIGINT/SIGTERM -> :func:`signal_handler` (main thread only; once)."""
    with _LOCK:
        if _HANDLERS or threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                _HANDLERS[sig] = signal.getsignal(sig)
                signal.signal(sig, signal_handler)
            except (ValueError, OSError):  # pragma: no cover - not the main interpreter
                _HANDLERS.pop(sig, None)


def uninstall_handlers() -> None:
    """Put back the handlers :func:`install_handlers` replaced (where ours are still in place,
    or will be again when a :func:`deferred_signals` block ends)."""
    with _LOCK:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, prev in list(_HANDLERS.items()):
            prev = prev if prev is not None else signal.SIG_DFL
            try:
                if signal.getsignal(sig) is signal_handler:
                    signal.signal(sig, prev)
            except (ValueError, OSError):  # pragma: no cover
                pass
            for saved in _DEFERRED:
                if saved.get(sig) is signal_handler:
                    saved[sig] = prev
            _HANDLERS.pop(sig, None)

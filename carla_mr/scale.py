"""Scale-out on Ray: the glue every verb shares (no dataset or market code here).

``--ray`` takes ``local`` (start a Ray cluster inside this process, ``ray.init(num_cpus=...)``),
``auto`` (connect to the cluster ``ray start`` runs on this machine) or an address
(``HOST:PORT`` of a head node, or ``ray://HOST:PORT`` for Ray Client). Ray is the optional
``scale`` extra; without it the same verbs run locally, one item after another, and say so on
stderr (:data:`NO_RAY_NOTE`). Results never depend on where they ran:

- :func:`ray_map` runs ``fn`` over ``items`` as Ray tasks and yields the results in ``items``
  order (the market sweeps own one seed per rep, so any map gives the same numbers);
- :func:`ray_session` starts or joins a cluster (or yields None without Ray), and
  :func:`ray_get` fetches one result, re-raising a task's own error as itself;
- sharded dataset recording (one Ray actor per world) is :mod:`carla_mr.dataset.shards`.

Inside a Ray cluster, Ray moves task arguments and results with its own serialisation
(cloudpickle): run it only on a cluster you trust, as with any Ray job.
"""

from __future__ import annotations

import logging
import re
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Optional

from carla_mr.errors import CarlaMrError, InputError, MissingDependencyError, RunError, require

NO_RAY_NOTE = ("note: Ray is not installed (pip install 'carla-mr[scale]'); running locally, "
               "one item after another (same results)")
_ADDRESS = re.compile(r"^(ray://)?[A-Za-z0-9_.\-]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$")


def _note(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def parse_ray_address(value: Optional[str]) -> Optional[str]:
    """``None``/empty -> None (no Ray); ``local``, ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``."""
    if value is None or not str(value).strip():
        return None
    v = str(value).strip()
    if v in ("local", "auto") or _ADDRESS.match(v):
        return v
    raise InputError(f"expected 'local', 'auto', HOST:PORT or ray://HOST:PORT, got {value!r}", field="--ray")


def parse_carla_hosts(value: Optional[str]) -> list[tuple[str, int]]:
    """``"h1:p1,h2:p2"`` -> [(h1, p1), (h2, p2)] (one CARLA server per world)."""
    if value is None or not str(value).strip():
        return []
    hosts = []
    for part in str(value).split(","):
        part = part.strip()
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise InputError(f"expected a comma-separated list of HOST:PORT (port 1-65535), got {part!r}",
                             field="--carla-hosts")
        hosts.append((host, int(port)))
    if len(set(hosts)) != len(hosts):
        raise InputError("lists a server twice; one world per CARLA server", field="--carla-hosts")
    return hosts


def import_ray():
    """The ``ray`` module, or MissingDependencyError naming the ``scale`` extra."""
    return require("ray", extra="scale", feature="--ray")


@contextmanager
def ray_session(address: Optional[str], *, num_cpus: Optional[int] = None) -> Iterator[Any]:
    """Yield the connected ``ray`` module, or None (run locally) when ``address`` is None or Ray
    is missing (then :data:`NO_RAY_NOTE` goes to stderr). An already initialised Ray (e.g. a
    test's cluster) is reused and left running; a cluster started or joined here is left at
    exit. ``num_cpus`` sizes a ``local`` cluster (default: all cores)."""
    address = parse_ray_address(address)
    if address is None:
        yield None
        return
    try:
        ray = import_ray()
    except MissingDependencyError:
        _note(NO_RAY_NOTE)
        yield None
        return
    if ray.is_initialized():
        yield ray
        return
    # log_to_driver=False: workers' prints must not reach stdout, which --json reserves.
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address == "local":
            ray.init(num_cpus=num_cpus, **kwargs)
        else:
            kwargs.pop("include_dashboard")
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RunError(f"cannot reach a Ray cluster at {address!r}: {exc}. Start one with `ray start --head` "
                       f"(then --ray auto), or use --ray local; a cluster with token authentication (Ray's "
                       f"default) also needs RAY_AUTH_MODE=token here (see docs/scale.md)") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


def ray_get(ray, ref) -> Any:
    """``ray.get(ref)``; a carla_mr error raised in a task comes back as itself (same message and
    exit code, no Ray traceback), anything else as a RunError naming it."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, CarlaMrError):
            raise cause from None
        raise RunError(f"a Ray task failed: {type(cause).__name__ if cause else 'error'}: {cause or exc}") from exc
    except ray.exceptions.RayError as exc:  # an actor or worker died, the cluster went away
        raise RunError(f"Ray failed: {type(exc).__name__}: {exc}") from exc


def _apply(fn: Callable[[Any], Any], item: Any) -> Any:
    return fn(item)


def ray_map(fn: Callable[[Any], Any], items: Iterable[Any], address: Optional[str], *,
            num_cpus: Optional[int] = None) -> Iterator[Any]:
    """``map(fn, items)`` as Ray tasks (one per item, 1 CPU each), results in ``items`` order.

    Without an address, or without Ray (note on stderr), it is the builtin ``map``.
    ``fn`` must be importable by the workers (a module-level function of an installed package).
    """
    items = list(items)
    with ray_session(address, num_cpus=num_cpus) as ray:
        if ray is None:
            yield from map(fn, items)
            return
        remote = ray.remote(num_cpus=1, max_retries=0)(_apply)  # any callable: builtins, partials, lambdas
        fn_ref = ray.put(fn)
        refs = [remote.remote(fn_ref, it) for it in items]
        for ref in refs:
            yield ray_get(ray, ref)

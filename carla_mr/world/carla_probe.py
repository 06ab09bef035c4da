"""Is a CARLA server ready for a run? A tiny probe for health checks and scripts.

``python -m carla_mr.world.carla_probe --host carla --port 2000`` exits 0 once the server
answers ``get_server_version()`` with a supported release equal to the client's (unless
``--allow-version-mismatch``) and its world answers ``get_map()`` (the episode is loaded),
else 1, printing one line either way. docker/docker-compose.yml uses it as the health check
that the client waits for (a port that accepts TCP is not a loaded episode).
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Optional, Sequence

from carla_mr.errors import CarlaMrError
from carla_mr.world.carla_api import check_match, check_version, import_carla


def probe_server(host: str, port: int, *, timeout_s: float = 5.0, allow_version_mismatch: bool = False,
                 client_factory: Optional[Callable[[str, int], Any]] = None) -> str:
    """One line describing the ready server; RunError/InputError (or libcarla's RuntimeError,
    e.g. a time-out) when it is not ready. ``client_factory`` replaces ``carla.Client``."""
    factory = client_factory if client_factory is not None else import_carla().Client
    client = factory(host, int(port))
    client.set_timeout(float(timeout_s))
    server = str(client.get_server_version())
    check_version(server, "server")
    client_version = str(client.get_client_version())
    check_match(client_version, server, allow_mismatch=allow_version_mismatch)
    town = str(client.get_world().get_map().name).rsplit("/", 1)[-1]
    return f"CARLA {server} at {host}:{port} is ready (client {client_version}, map {town})"


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m carla_mr.world.carla_probe", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=2000)
    ap.add_argument("--timeout-s", type=float, default=5.0, help="client time-out of each call, seconds")
    ap.add_argument("--allow-version-mismatch", action="store_true")
    args = ap.parse_args(argv)
    try:
        print(probe_server(args.host, args.port, timeout_s=args.timeout_s,
                           allow_version_mismatch=args.allow_version_mismatch))
        return 0
    except (CarlaMrError, RuntimeError) as exc:
        print(f"CARLA at {args.host}:{args.port} is not ready: {exc}")
        return 1


if __name__ == "__main__":  # pragma: no cover - the command line
    raise SystemExit(main())

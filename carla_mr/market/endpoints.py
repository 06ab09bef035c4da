"""ZeroMQ endpoints of the auctioneer: which addresses are loopback, and what may bind plain."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from carla_mr.errors import InputError


def is_loopback_endpoint(endpoint: str) -> bool:
    """True for ``tcp://`` on a loopback address (127.0.0.0/8, ::1, localhost) and for ipc/inproc."""
    parts = urlsplit(endpoint)
    if parts.scheme != "tcp":
        return parts.scheme in ("inproc", "ipc")
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(endpoint: str, curve: bool) -> None:
    """Refuse plain (unauthenticated) mode on a non-loopback address, with the fix."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("tcp", "ipc", "inproc"):
        raise InputError(f"endpoint {endpoint!r} must be tcp://HOST:PORT", field="endpoint")
    if not curve and not is_loopback_endpoint(endpoint):
        raise InputError(f"plain mode (no CURVE) is refused on the non-loopback address {endpoint}: anyone on "
                         "the network could bid in another bidder's name. Bind 127.0.0.1, or enable CURVE "
                         "(drop --plain / set market.curve: true) and give an allow-list.", field="curve")


def is_ipv6_endpoint(endpoint: str) -> bool:
    """``tcp://[addr]:port``: ZeroMQ sockets must set ``ipv6`` to bind or connect there."""
    host = urlsplit(endpoint).hostname or ""
    return ":" in host


def tcp_endpoint(host: str, port: int | str) -> str:
    """``tcp://HOST:PORT`` with IPv6 addresses in brackets."""
    return f"tcp://[{host}]:{port}" if ":" in host and not host.startswith("[") else f"tcp://{host}:{port}"

"""Small socket helpers."""

from __future__ import annotations

import socket

__all__ = ["free_port", "probe_listen"]


def probe_listen(host: str, port: int = 0) -> int:
    """Bind ``host:port`` once and let go; return the port (a free one for ``port=0``).

    Raises ``OSError`` (``socket.gaierror`` for a host that does not resolve)
    when a server could not listen there. SO_REUSEADDR as servers set it, so a
    port in TIME_WAIT counts as free but one with a listener does not.
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        return int(sock.getsockname()[1])


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago (another process may take it)."""
    return probe_listen(host)

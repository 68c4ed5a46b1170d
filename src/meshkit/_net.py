"""Small socket and URL helpers."""

from __future__ import annotations

import re
import socket
from collections.abc import Collection
from urllib.parse import urlsplit

from meshkit.errors import ConfigError

__all__ = ["check_url", "free_port", "probe_listen", "redacted"]

# "scheme://" and what comes before the last "@" of the authority (a password may hold "@").
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)@")


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


def redacted(url: str) -> str:
    """``url`` fit for messages and logs: its password shown as ``***``.

    A user name without a password is hidden too: NATS takes a token there.
    Never raises, whatever the string.
    """

    def hide(match: re.Match[str]) -> str:
        user, colon, _ = match[2].partition(":")
        return f"{match[1]}{user}:***@" if colon else f"{match[1]}***@"

    return _USERINFO.sub(hide, url, count=1)


def check_url(key: str, url: object, *, schemes: Collection[str], example: str) -> str:
    """``url`` if its scheme is one of ``schemes``, with a host and a numeric port if any.

    A ``unix://`` URL (when ``"unix"`` is one of the schemes) names a socket
    path in place of a host. Otherwise ``ConfigError(key)``, showing
    ``example`` and the URL given, its password hidden.
    """
    if isinstance(url, str):
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 (raises for a port that is not a number)
        except ValueError:
            pass
        else:
            where = parts.path if parts.scheme == "unix" else parts.hostname
            if parts.scheme in schemes and where:
                return url
    shown = redacted(url) if isinstance(url, str) else url
    raise ConfigError(key, f"must look like {example}, got {shown!r}")

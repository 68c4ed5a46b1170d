"""What a proxy changes in the headers it forwards (RFC 9110, 7.6).

Hop-by-hop headers describe one connection and are not forwarded: the
fixed set (``Connection``, ``Proxy-Connection``, ``Keep-Alive``, ``TE``,
``Transfer-Encoding``, ``Upgrade``) and every header the ``Connection``
header names. Each hop adds itself to ``Via``. Requests gain the
``X-Forwarded-For``, ``-Proto`` and ``-Host`` headers that tell the service
who the client was.

Two choices need saying:

- A client can name any header in ``Connection``, and a proxy that simply
  obeyed could be made to drop ``Host`` or the request's framing, or to
  strip headers that a later proxy adds for its own use. ``Host``,
  ``Content-Length`` and the ``X-Forwarded-*`` headers this module sets are
  never dropped that way; the engine frames bodies itself in any case.
- Whether incoming ``X-Forwarded-*`` values are believed is the caller's
  decision (``trust_forwarded``). At the edge nothing the client says about
  itself is believed: the values are replaced. Behind a proxy we run (the
  sidecar behind the gateway), they are extended.

Header names come in as the client sent them; names this module compares
are lower-cased, names it adds are lower-case, and the others keep their
case. Values are bytes, as they arrived.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from meshkit.errors import ConfigError

__all__ = ["HOP_BY_HOP", "Forwarding", "request_headers", "response_headers"]

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"te", b"transfer-encoding", b"upgrade"}
)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
# Never dropped because Connection names them (see the module's docstring).
_KEPT = frozenset({b"host", b"content-length"}) | _FORWARDED


class Forwarding:
    """How one proxy describes itself and treats what clients say: set once, used per request."""

    __slots__ = ("trust_forwarded", "via")

    def __init__(self, *, pseudonym: str, trust_forwarded: bool) -> None:
        if not _TOKEN.fullmatch(pseudonym):
            raise ConfigError("pseudonym", f"{pseudonym!r} is not an HTTP token")
        # Via: "1.1 <pseudonym>" (RFC 9110, 7.6.3): a pseudonym, not a host name.
        self.via = b"1.1 " + pseudonym.encode("ascii")
        self.trust_forwarded = trust_forwarded


def _connection_options(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    options: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            options.update(token.strip().lower() for token in value.split(b","))
    options.discard(b"")
    return options - _KEPT


def request_headers(
    headers: Headers, forwarding: Forwarding, *, client: str, scheme: str
) -> Headers:
    """The headers to send upstream for a request from ``client`` (an address) over ``scheme``."""
    dropped = HOP_BY_HOP | _connection_options(headers)
    trust = forwarding.trust_forwarded
    kept: Headers = []
    chain: list[bytes] = []  # X-Forwarded-For values already there, when trusted
    proto = host = forwarded_host = None
    vias: list[bytes] = []
    for name, value in headers:
        lower = name.lower()
        if lower in dropped:
            continue
        if lower == b"via":
            vias.append(value)
        elif lower == b"x-forwarded-for":
            if trust:
                chain.append(value)
        elif lower == b"x-forwarded-proto":
            if trust and proto is None:
                proto = value
        elif lower == b"x-forwarded-host":
            if trust and forwarded_host is None:
                forwarded_host = value
        else:
            if lower == b"host" and host is None:
                host = value
            kept.append((name, value))
    chain.append(client.encode("ascii"))
    kept.append((b"x-forwarded-for", b", ".join(chain)))
    kept.append((b"x-forwarded-proto", proto or scheme.encode("ascii")))
    if forwarded_host or host:
        kept.append((b"x-forwarded-host", forwarded_host or host or b""))
    kept.append((b"via", b", ".join([*vias, forwarding.via])))
    return kept


def response_headers(headers: Headers, forwarding: Forwarding) -> Headers:
    """The headers to send back to the client for an upstream's response."""
    dropped = HOP_BY_HOP | _connection_options(headers)
    kept: Headers = []
    vias: list[bytes] = []
    for name, value in headers:
        lower = name.lower()
        if lower == b"via":
            vias.append(value)
        elif lower not in dropped:
            kept.append((name, value))
    kept.append((b"via", b", ".join([*vias, forwarding.via])))
    return kept

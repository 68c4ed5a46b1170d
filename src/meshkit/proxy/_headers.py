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

Header names must be lower-case, as the engine's parsers deliver them
(comparing them is then one set lookup per header, which matters on the
proxy's hot path). Values are bytes, as they arrived.
"""

from __future__ import annotations

from meshkit.errors import ConfigError
from meshkit.http._grammar import TOKEN

__all__ = ["HOP_BY_HOP", "Forwarding", "request_headers", "response_headers"]

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"te", b"transfer-encoding", b"upgrade"}
)
_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
# Never dropped because Connection names them (see the module's docstring).
_KEPT = frozenset({b"host", b"content-length"}) | _FORWARDED


class Forwarding:
    """How one proxy describes itself and treats what clients say: set once, used per request."""

    __slots__ = ("trust_forwarded", "via")

    def __init__(self, *, pseudonym: str, trust_forwarded: bool) -> None:
        if not TOKEN.fullmatch(pseudonym):
            raise ConfigError("pseudonym", f"{pseudonym!r} is not an HTTP token")
        # Via: "1.1 <pseudonym>" (RFC 9110, 7.6.3): a pseudonym, not a host name.
        self.via = b"1.1 " + pseudonym.encode("ascii")
        self.trust_forwarded = trust_forwarded


def _connection_options(values: list[bytes]) -> frozenset[bytes]:
    """Header names the ``Connection`` values name, beyond the fixed hop-by-hop set."""
    options = {token.strip().lower() for value in values for token in value.split(b",")}
    return frozenset(options - _KEPT - HOP_BY_HOP - {b"", b"close"})


# Connection values that name nothing beyond the fixed set: almost every
# response says one of these, and the set arithmetic costs microseconds.
_PLAIN = frozenset({b"keep-alive", b"close", b"Keep-Alive", b"Close", b"upgrade", b"Upgrade"})


def _without(kept: Headers, values: list[bytes]) -> Headers:
    if all(value in _PLAIN for value in values):
        return kept
    options = _connection_options(values)
    return [item for item in kept if item[0] not in options] if options else kept


# Every name the request loop treats specially, so other headers cost one lookup.
_REQUEST_SPECIAL = HOP_BY_HOP | _FORWARDED | {b"via", b"host"}
_RESPONSE_SPECIAL = HOP_BY_HOP | {b"via"}


def request_headers(
    headers: Headers, forwarding: Forwarding, *, client: str, scheme: str
) -> Headers:
    """The headers to send upstream for a request from ``client`` (an address) over ``scheme``.

    Names must be lower-case, as the engine's parser delivers them.
    """
    trust = forwarding.trust_forwarded
    kept: Headers = []
    chain: list[bytes] = []  # X-Forwarded-For values already there, when trusted
    proto = host = forwarded_host = None
    vias: list[bytes] = []
    connection: list[bytes] = []
    for item in headers:
        name = item[0]
        if name not in _REQUEST_SPECIAL:
            kept.append(item)
        elif name == b"host":
            if host is None:
                host = item[1]
            kept.append(item)
        elif name == b"via":
            vias.append(item[1])
        elif name == b"connection":
            connection.append(item[1])
        elif not trust or name in HOP_BY_HOP:
            continue
        elif name == b"x-forwarded-for":
            chain.append(item[1])
        elif name == b"x-forwarded-proto":
            proto = proto or item[1]
        else:
            forwarded_host = forwarded_host or item[1]
    if connection:
        kept = _without(kept, connection)
    chain.append(client.encode("ascii"))
    kept.append((b"x-forwarded-for", b", ".join(chain)))
    kept.append((b"x-forwarded-proto", proto or scheme.encode("ascii")))
    if forwarded_host or host:
        kept.append((b"x-forwarded-host", forwarded_host or host or b""))
    vias.append(forwarding.via)
    kept.append((b"via", b", ".join(vias)))
    return kept


def response_headers(headers: Headers, forwarding: Forwarding) -> Headers:
    """The headers to send back to the client for an upstream's response (names lower-case)."""
    kept: Headers = []
    vias: list[bytes] = []
    connection: list[bytes] = []
    for item in headers:
        name = item[0]
        if name not in _RESPONSE_SPECIAL:
            kept.append(item)
        elif name == b"via":
            vias.append(item[1])
        elif name == b"connection":
            connection.append(item[1])
    if connection:
        kept = _without(kept, connection)
    vias.append(forwarding.via)
    kept.append((b"via", b", ".join(vias)))
    return kept

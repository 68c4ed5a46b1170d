"""Route matching: which service a request goes to, and with which path.

A ``Route`` names a service and what requests it takes: a path (a prefix
such as ``/api/orders``, or a pattern with ``{name}`` segments such as
``/api/orders/{id}``, which must match the whole path), optionally methods
and a host. ``strip`` removes a leading part of the path before the request
goes upstream: ``/api/orders/7`` on a route with ``strip="/api"`` reaches
the orders service as ``/orders/7``.

The most specific route wins, whatever the order of declaration:

1. a route for the request's host over one for any host;
2. then the route whose path has more literal segments;
3. then a pattern (a whole path) over a prefix of as many segments;
4. then the one declared first.

Prefixes match whole segments: ``/api`` takes ``/api`` and ``/api/x`` but
not ``/apix``. A route whose path matches but whose methods do not answers
405 with the methods that would have matched.

Paths are matched as they were sent, without decoding, and a path that
upstream servers might read differently from the router is refused with its
reason: dot segments (``/api/../admin``), their percent-encoded forms, an
encoded slash, a backslash, or an empty segment. Normalising such paths
instead would mean guessing what each upstream does with them; refusing
keeps the router and the upstream reading the same path.

Matching is a scan over the routes in precedence order, done once per
request with no allocation but the result: gateways carry tens of routes,
not thousands.
"""

from __future__ import annotations

import re

import msgspec

from meshkit.errors import ConfigError

__all__ = ["BadPath", "NoRoute", "Route", "RouteMatch", "RouteTable"]

_SEGMENT = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@%]+")
_PARAMETER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_METHOD = re.compile(r"[A-Z]+")
_HOST = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
# Dot segments and separators in disguise: %2e is '.', %2f '/', %5c '\'.
_AMBIGUOUS = re.compile(r"%2e|%2f|%5c|\\", re.IGNORECASE)


class Route(msgspec.Struct, frozen=True, kw_only=True):
    """Requests for ``service``: see the module's docstring for each field."""

    service: str
    path: str = "/"
    methods: frozenset[str] | None = None  # None: any method
    host: str | None = None  # "api.example.com" or "*.example.com"; None: any host
    strip: str = ""


class RouteMatch(msgspec.Struct, frozen=True):
    """The route taken, the path to send upstream, and the pattern's parameters."""

    route: Route
    path: str
    params: dict[str, str]


class NoRoute(msgspec.Struct, frozen=True):
    """No route takes the request: 404, or 405 when ``allowed`` names methods that would."""

    allowed: frozenset[str]


class BadPath(msgspec.Struct, frozen=True):
    """The path is refused (400) before any route is tried."""

    reason: str


class _Compiled(msgspec.Struct, frozen=True):
    route: Route
    segments: tuple[str, ...]  # literal, or "{name}" in a pattern
    pattern: bool
    strip: int  # leading segments to remove
    rank: tuple[int, int, int, int]  # smaller is tried first

    def take(self, segments: list[str]) -> dict[str, str] | None:
        """The parameters if the path's segments match, else None."""
        mine = self.segments
        if len(segments) < len(mine) or (self.pattern and len(segments) != len(mine)):
            return None
        params: dict[str, str] = {}
        for expected, got in zip(mine, segments, strict=False):
            if expected[0] == "{":
                params[expected[1:-1]] = got
            elif expected != got:
                return None
        return params


class RouteTable:
    """Routes in precedence order; ``match()`` picks one for a request."""

    def __init__(self, routes: list[Route]) -> None:
        compiled = [_compile(index, route) for index, route in enumerate(routes)]
        self._routes = sorted(compiled, key=lambda c: c.rank)
        self.routes = [c.route for c in self._routes]

    def match(self, method: str, host: str, path: str) -> RouteMatch | NoRoute | BadPath:
        """The route for ``method`` on ``host`` (a Host header) and ``path`` (no query)."""
        segments = _split(path)
        if isinstance(segments, BadPath):
            return segments
        hostname = _hostname(host)
        allowed: set[str] = set()
        for compiled in self._routes:
            route = compiled.route
            if route.host is not None and not _host_matches(route.host, hostname):
                continue
            params = compiled.take(segments)
            if params is None:
                continue
            if route.methods is not None and method not in route.methods:
                allowed |= route.methods
                continue
            rest = segments[compiled.strip :]
            upstream = "/" + "/".join(rest)
            if path.endswith("/") and rest:
                upstream += "/"
            return RouteMatch(route, upstream, params)
        return NoRoute(frozenset(allowed))


def _split(path: str) -> list[str] | BadPath:
    if not path.startswith("/"):
        return BadPath("the path must start with '/'")
    if _AMBIGUOUS.search(path):
        return BadPath("the path holds an encoded '.', '/' or '\\', or a backslash")
    body = path[1:].removesuffix("/")
    if not body:
        return []
    segments = body.split("/")
    for segment in segments:
        if segment in {"", ".", ".."}:
            return BadPath("the path holds an empty, '.' or '..' segment")
    return segments


def _hostname(host: str) -> str:
    """The Host header's name, lower-case and without the port."""
    host = host.lower()
    if host.startswith("["):  # an IPv6 literal: [::1]:8000
        return host.partition("]")[0] + "]"
    return host.rpartition(":")[0] if ":" in host else host


def _host_matches(wanted: str, host: str) -> bool:
    if wanted.startswith("*."):
        return host.endswith(wanted[1:]) and len(host) > len(wanted) - 1
    return host == wanted


def _compile(index: int, route: Route) -> _Compiled:
    where = f"routes[{index}]"
    if not route.service:
        raise ConfigError(f"{where}.service", "must name a service")
    segments = _split(route.path)
    if isinstance(segments, BadPath) or not all(_valid_segment(s) for s in segments):
        raise ConfigError(f"{where}.path", f"{route.path!r} is not a path or a pattern")
    names = [s[1:-1] for s in segments if s[0] == "{"]
    if len(names) != len(set(names)):
        raise ConfigError(f"{where}.path", f"{route.path!r} names a parameter twice")
    strip = 0
    if route.strip:
        stripped = _split(route.strip)
        if isinstance(stripped, BadPath) or segments[: len(stripped)] != stripped:
            raise ConfigError(
                f"{where}.strip", f"{route.strip!r} is not a leading part of {route.path!r}"
            )
        if any(s[0] == "{" for s in stripped):
            raise ConfigError(f"{where}.strip", "cannot strip a parameter")
        strip = len(stripped)
    methods = route.methods
    if methods is not None and not (methods and all(_METHOD.fullmatch(m) for m in methods)):
        raise ConfigError(f"{where}.methods", "must be upper-case method names")
    if route.host is not None and not _HOST.fullmatch(route.host):
        raise ConfigError(f"{where}.host", f"{route.host!r} is not a lower-case host name")
    pattern = bool(names)
    literals = len(segments) - len(names)
    rank = (0 if route.host is not None else 1, -literals, 0 if pattern else 1, index)
    return _Compiled(route, tuple(segments), pattern, strip, rank)


def _valid_segment(segment: str) -> bool:
    return bool(_PARAMETER.fullmatch(segment) or _SEGMENT.fullmatch(segment))

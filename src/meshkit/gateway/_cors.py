"""``Cors``: cross-origin requests from browsers (the Fetch standard's CORS protocol).

A browser asks before a cross-origin request that is not "simple" with a
preflight: ``OPTIONS`` carrying ``Origin`` and
``Access-Control-Request-Method``. The gateway answers preflights itself,
before routing and authentication, since a browser sends no credentials
with them: 204 with the allowed methods and headers when the origin, the
method and every requested header are allowed, 403 otherwise.

Every other request from an allowed origin gets ``Access-Control-Allow-Origin``
on its answer, the gateway's own errors included, so a page can read why it
was refused (a 401, a 429). Answers from a configured origin list carry
``Vary: Origin``, since they differ by origin and caches must know.
"""

from __future__ import annotations

import re

import msgspec

from meshkit.errors import ConfigError
from meshkit.http._grammar import TOKEN
from meshkit.proxy import ProxyRequest, ProxyResponse, error_response

__all__ = ["Cors", "CorsConfig"]

_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:\d{1,5})?|\*")
_DEFAULT_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


class CorsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[gateway.cors]``: which origins may call, with what."""

    allow_origins: list[str]  # "https://shop.example", or ["*"] for any
    allow_methods: list[str] = msgspec.field(default_factory=lambda: list(_DEFAULT_METHODS))
    allow_headers: list[str] = msgspec.field(
        default_factory=lambda: ["content-type", "authorization", "x-api-key"]
    )
    expose_headers: list[str] = msgspec.field(default_factory=list)
    allow_credentials: bool = False
    max_age: int = 600  # seconds a browser may cache a preflight's answer

    def __post_init__(self) -> None:
        if not self.allow_origins:
            raise ConfigError("gateway.cors.allow_origins", "lists no origin")
        for index, origin in enumerate(self.allow_origins):
            if not _ORIGIN.fullmatch(origin):
                raise ConfigError(
                    f"gateway.cors.allow_origins[{index}]",
                    f'must be "*" or like https://shop.example (no path), got {origin!r}',
                )
        lists = {
            "allow_methods": self.allow_methods,
            "allow_headers": self.allow_headers,
            "expose_headers": self.expose_headers,
        }
        for key, names in lists.items():
            for index, name in enumerate(names):
                if not TOKEN.fullmatch(name):
                    raise ConfigError(
                        f"gateway.cors.{key}[{index}]",
                        f"must be a method or header name (an RFC 9110 token), got {name!r}",
                    )
        if self.allow_credentials and "*" in self.allow_origins:
            # The Fetch standard forbids it: browsers reject such answers.
            raise ConfigError(
                "gateway.cors.allow_credentials", 'cannot be true with the origin "*"'
            )
        if not 0 <= self.max_age <= 86_400:
            raise ConfigError(
                "gateway.cors.max_age", f"must be between 0 and 86400, got {self.max_age}"
            )


class Cors:
    """Answers preflights, and marks answers to allowed origins."""

    def __init__(self, config: CorsConfig) -> None:
        self._any = "*" in config.allow_origins
        # Scheme and host are case-insensitive; browsers send them in lower case.
        self._origins = frozenset(origin.lower().encode("ascii") for origin in config.allow_origins)
        self._methods = frozenset(method.upper().encode("ascii") for method in config.allow_methods)
        self._headers = frozenset(name.lower().encode("ascii") for name in config.allow_headers)
        self._preflight_fields = [
            (b"access-control-allow-methods", ", ".join(config.allow_methods).encode("ascii")),
            (b"access-control-allow-headers", ", ".join(config.allow_headers).encode("ascii")),
            (b"access-control-max-age", str(config.max_age).encode("ascii")),
        ]
        self._fields: list[tuple[bytes, bytes]] = []
        if config.allow_credentials:
            self._fields.append((b"access-control-allow-credentials", b"true"))
        if config.expose_headers:
            exposed = ", ".join(config.expose_headers).encode("ascii")
            self._fields.append((b"access-control-expose-headers", exposed))

    def on_request(self, request: ProxyRequest) -> ProxyResponse | None:
        origin = request.header(b"origin")
        if origin is None:
            return None
        allowed = self._any or origin.lower() in self._origins
        wanted = request.header(b"access-control-request-method")
        if request.method == "OPTIONS" and wanted is not None:
            return self._preflight(request, origin, wanted, allowed=allowed)
        request.cors_origin = origin if allowed else b""
        return None

    def on_response(self, request: ProxyRequest, response: ProxyResponse) -> None:
        origin = request.cors_origin
        if origin is None:  # no Origin: not a cross-origin request from a browser
            return
        # The gateway alone decides which origins may read answers: an
        # upstream's own CORS fields (one reflecting any Origin, say) would
        # open what the configuration closes.
        response.headers[:] = [
            (name, value)
            for name, value in response.headers
            if not name.startswith(b"access-control-")
        ]
        if origin:
            response.headers.extend(self._allow(origin))
            response.headers.extend(self._fields)
        elif not self._any:
            response.headers.append((b"vary", b"origin"))  # an allowed origin's answer differs

    def _preflight(
        self, request: ProxyRequest, origin: bytes, wanted: bytes, *, allowed: bool
    ) -> ProxyResponse:
        requested = request.header(b"access-control-request-headers") or b""
        names = {name.strip().lower() for name in requested.split(b",") if name.strip()}
        refused = self._refusal(origin, wanted, names, allowed=allowed)
        if refused is not None:
            return error_response(403, f"CORS preflight refused: {refused}", request.request_id)
        return ProxyResponse(
            204, [*self._allow(origin), *self._preflight_fields, *self._fields], b""
        )

    def _refusal(
        self, origin: bytes, method: bytes, names: set[bytes], *, allowed: bool
    ) -> str | None:
        if not allowed:
            return f"the origin {origin.decode('latin-1')} is not allowed"
        if method.upper() not in self._methods:
            return f"the method {method.decode('latin-1')} is not allowed"
        unknown = sorted(name.decode("latin-1") for name in names - self._headers)
        if unknown:
            return f"the header(s) {', '.join(unknown)} are not allowed"
        return None

    def _allow(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        if self._any:  # never with credentials: the configuration refuses that
            return [(b"access-control-allow-origin", b"*")]
        return [(b"access-control-allow-origin", origin), (b"vary", b"origin")]

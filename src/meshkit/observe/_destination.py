"""Where a process sends its telemetry, and as whom: decided once, from its settings.

By default a meshkit process sends OTLP/HTTP to its control plane (the
registry's URL), with the project's token. When any of OpenTelemetry's
standard endpoint variables is set, the same data goes there instead, to
any collector, as every OpenTelemetry SDK would send it: the
``OTEL_EXPORTER_OTLP_ENDPOINT`` base with ``/v1/traces`` and ``/v1/logs``
added, or a signal's own ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (or
``_LOGS_``) taken as it is; headers from ``OTEL_EXPORTER_OTLP_HEADERS`` and
the signal's own, which win (the OpenTelemetry specification's "Exporter
configuration").
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote, unquote, urlsplit

import msgspec

from meshkit.errors import ConfigError

__all__ = ["Destination", "Endpoint", "Identity", "destination", "standard_variables"]

_PREFIX = "OTEL_EXPORTER_OTLP_"
_SIGNALS = {"traces": "/v1/traces", "logs": "/v1/logs"}


class Endpoint(msgspec.Struct, frozen=True):
    """An OTLP/HTTP URL for one signal, and the headers each request carries."""

    url: str
    headers: tuple[tuple[str, str], ...] = ()


class Destination(msgspec.Struct, frozen=True, kw_only=True):
    """Where traces and logs go; ``None`` for a signal sent nowhere."""

    traces: Endpoint | None = None
    logs: Endpoint | None = None
    to_collector: bool = False  # set by OTEL_EXPORTER_OTLP_* rather than the control plane


class Identity(msgspec.Struct, frozen=True, kw_only=True):
    """Who sends: OpenTelemetry's ``service.name``, ``service.instance.id``, ``service.version``."""

    service: str
    instance: str = ""
    version: str = ""

    def resource(self) -> dict[str, str]:
        """The resource attributes, without the empty ones."""
        attributes = {"service.name": self.service}
        if self.instance:
            attributes["service.instance.id"] = self.instance
        if self.version:
            attributes["service.version"] = self.version
        return attributes


def destination(
    *, control: str | None, token: str | None, variables: Mapping[str, str]
) -> Destination:
    """Where to send, given the control plane's URL (``http://host:port``, or
    ``None``), the project's token and the ``OTEL_EXPORTER_OTLP_*`` variables set.

    Raises ``ConfigError`` naming the variable for a URL that is not http(s)
    or a header that is not ``key=value``.
    """
    for name in ("PROTOCOL", "TRACES_PROTOCOL", "LOGS_PROTOCOL"):
        protocol = variables.get(f"{_PREFIX}{name}", "http/protobuf")
        if protocol not in ("http/protobuf", "http/json"):
            # gRPC would need a client of its own; sending OTLP/HTTP to a
            # gRPC port instead would fail without a word.
            raise ConfigError(
                f"{_PREFIX}{name}",
                f"meshkit sends OTLP over HTTP (http/protobuf or http/json), not {protocol!r};"
                " point it at the collector's OTLP/HTTP port (4318 by default)",
            )
    if any(f"{_PREFIX}{name}" in variables for name in _ENDPOINT_NAMES):
        return Destination(
            traces=_collector("traces", variables),
            logs=_collector("logs", variables),
            to_collector=True,
        )
    if control is None or not control.startswith(("http://", "https://")):
        return Destination()
    base = control.rstrip("/")
    headers = (("authorization", f"Bearer {token}"),) if token else ()
    return Destination(
        traces=Endpoint(base + _SIGNALS["traces"], headers),
        logs=Endpoint(base + _SIGNALS["logs"], headers),
    )


_ENDPOINT_NAMES = ("ENDPOINT", "TRACES_ENDPOINT", "LOGS_ENDPOINT")


def _collector(signal: str, variables: Mapping[str, str]) -> Endpoint | None:
    own = f"{_PREFIX}{signal.upper()}_ENDPOINT"
    if own in variables:
        url = _checked_url(own, variables[own])
    elif f"{_PREFIX}ENDPOINT" in variables:
        base = _checked_url(f"{_PREFIX}ENDPOINT", variables[f"{_PREFIX}ENDPOINT"])
        url = base.rstrip("/") + _SIGNALS[signal]
    else:
        return None
    headers = _headers(f"{_PREFIX}HEADERS", variables)
    headers.update(_headers(f"{_PREFIX}{signal.upper()}_HEADERS", variables))
    return Endpoint(url, tuple(headers.items()))


def _checked_url(name: str, url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(name, f"must be an http:// or https:// URL, got {url!r}")
    return url


def _headers(name: str, variables: Mapping[str, str]) -> dict[str, str]:
    """``key1=value1,key2=value2``, values percent-encoded (W3C Baggage's format)."""
    raw = variables.get(name, "")
    headers: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise ConfigError(name, f"each header is key=value, got {item.strip()!r}")
        headers[unquote(key.strip()).lower()] = unquote(value.strip())
    return headers


def standard_variables(identity: Identity, where: Destination) -> dict[str, str]:
    """OpenTelemetry's standard variables that make any SDK send as ``identity`` to ``where``.

    For a child that is not a meshkit process (an app behind a sidecar, in
    any language): its own OpenTelemetry SDK reads them. Empty when
    ``where`` is a collector named by the user's own variables, which the
    child inherits anyway, or when nothing is sent.
    """
    if where.to_collector or where.traces is None:
        return {}
    base = where.traces.url.removesuffix(_SIGNALS["traces"])
    resource = ",".join(
        f"{key}={quote(value)}"
        for key, value in identity.resource().items()
        if key != "service.name"
    )
    variables = {
        "OTEL_SERVICE_NAME": identity.service,
        f"{_PREFIX}ENDPOINT": base,
        f"{_PREFIX}PROTOCOL": "http/protobuf",
    }
    if resource:
        variables["OTEL_RESOURCE_ATTRIBUTES"] = resource
    if where.traces.headers:
        variables[f"{_PREFIX}HEADERS"] = ",".join(
            f"{key}={quote(value)}" for key, value in where.traces.headers
        )
    return variables

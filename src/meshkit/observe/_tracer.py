"""meshkit's tracers, looked up from the tracer provider in place now.

OpenTelemetry's module-level ``get_tracer()`` returns a proxy that binds to
the first provider it finds and keeps it; asking the current provider each
time, with the tracer cached per provider, lets a test (or a process that
sets its provider after importing meshkit) see every span.
"""

from __future__ import annotations

from opentelemetry import trace

__all__ = ["tracer", "tracing_set_up"]

_tracers: dict[str, tuple[trace.TracerProvider, trace.Tracer]] = {}


def tracing_set_up() -> bool:
    """Whether a tracer provider is set up in this process (by meshkit or its author)."""
    return not isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider
    )


def tracer(name: str) -> trace.Tracer:
    """The tracer ``name`` (``meshkit.service``, ``meshkit.saga``...) of the current provider."""
    provider = trace.get_tracer_provider()
    cached = _tracers.get(name)
    if cached is None or cached[0] is not provider:
        cached = _tracers[name] = (provider, provider.get_tracer(name))
    return cached[1]

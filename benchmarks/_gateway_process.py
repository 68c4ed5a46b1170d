"""``meshkit.gateway.Gateway`` in front of one upstream, as the gateway benchmark runs it.

    python -m benchmarks._gateway_process PORT UPSTREAM_PORT [RATIO SINK_PORT]

One process, uvloop, the gateway's filters all on: the route table, API-key
authentication, a per-client rate limit that never trips, the circuit
breaker per service, the instance pick with per-instance ejection, the
retry policy, and the Prometheus metrics. The registry is the
embedded one, in this process, holding the upstream as the only instance.
The access log is off (wrk's load would be a disk benchmark). With
RATIO and SINK_PORT, tracing is on: new traces sampled at RATIO, spans
sent as OTLP/HTTP to ``http://127.0.0.1:SINK_PORT/v1/traces``; its access
log records stay off, so the figures are the tracing's alone.
"""

from __future__ import annotations

import sys

import uvloop

from meshkit._signals import until_stopped
from meshkit.gateway import ApiKey, Gateway, GatewayConfig, RouteConfig, TracingConfig
from meshkit.observe import Destination, Endpoint, OtlpHttpSink
from meshkit.registry import EmbeddedRegistry, Instance

API_KEY = "benchmark-key"


async def main(port: int, upstream: int, ratio: float | None, sink: int | None) -> None:
    registry = EmbeddedRegistry()
    registry.start()
    await registry.register(
        Instance(service="backend", id="backend-1", host="127.0.0.1", port=upstream), ttl=3600
    )
    config = GatewayConfig(
        port=port,
        routes=[RouteConfig(path="/", service="backend")],
        api_keys=[ApiKey(name="bench", key=API_KEY, rate=1e6, burst=1_000_000)],
        tracing=TracingConfig(ratio=ratio or 0.0),
        access_log=False,
    )
    telemetry = None
    if ratio is not None and sink is not None:
        url = f"http://127.0.0.1:{sink}/v1/traces"
        telemetry = OtlpHttpSink(Destination(traces=Endpoint(url)))
    gateway = Gateway(config, registry, telemetry=telemetry)
    await gateway.start()
    await until_stopped()
    await gateway.aclose(grace=1)
    await registry.aclose()


if __name__ == "__main__":
    traced = len(sys.argv) > 3
    uvloop.run(
        main(
            int(sys.argv[1]),
            int(sys.argv[2]),
            float(sys.argv[3]) if traced else None,
            int(sys.argv[4]) if traced else None,
        )
    )

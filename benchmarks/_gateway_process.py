"""``meshkit.gateway.Gateway`` in front of one upstream, as the gateway benchmark runs it.

    python -m benchmarks._gateway_process PORT UPSTREAM_PORT

One process, uvloop, the gateway's filters all on: the route table, API-key
authentication, a per-client rate limit that never trips, the circuit
breaker per service, the instance pick with per-instance ejection, the
retry policy, and the Prometheus metrics. The registry is the
embedded one, in this process, holding the upstream as the only instance.
The access log is off (wrk's load would be a disk benchmark).
"""

from __future__ import annotations

import sys

import uvloop

from meshkit._signals import until_stopped
from meshkit.gateway import ApiKey, Gateway, GatewayConfig, RouteConfig
from meshkit.registry import EmbeddedRegistry, Instance

API_KEY = "benchmark-key"


async def main(port: int, upstream: int) -> None:
    registry = EmbeddedRegistry()
    registry.start()
    await registry.register(
        Instance(service="backend", id="backend-1", host="127.0.0.1", port=upstream), ttl=3600
    )
    config = GatewayConfig(
        port=port,
        routes=[RouteConfig(path="/", service="backend")],
        api_keys=[ApiKey(name="bench", key=API_KEY, rate=1e6, burst=1_000_000)],
    )
    gateway = Gateway(config, registry)
    await gateway.start()
    await until_stopped()
    await gateway.aclose(grace=1)
    await registry.aclose()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))

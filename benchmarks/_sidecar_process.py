"""One of a pair of ``meshkit.sidecar.Sidecar``s, as the gateway benchmark runs them.

    python -m benchmarks._sidecar_process inbound PORT APP_PORT
    python -m benchmarks._sidecar_process outbound PORT PEER_PORT

The pair is what a call between two services crosses: the caller's
sidecar (outbound: ``/backend/`` found by name, balanced, with retries and
a breaker) and the callee's (inbound: to its app). Each is a
process of its own, on uvloop. The registry is an embedded one in each
process: the outbound side's lists the inbound side's port as the only
instance of ``backend``; the inbound side registers its app in its own.
No telemetry sink is given, so trace headers pass through untouched
(benchmarks.observe measures what tracing costs).
"""

from __future__ import annotations

import sys

import uvloop

from meshkit._signals import until_stopped
from meshkit.registry import EmbeddedRegistry, Instance
from meshkit.sidecar import Sidecar, SidecarConfig


async def main(role: str, port: int, other: int) -> None:
    registry = EmbeddedRegistry()
    registry.start()
    if role == "inbound":
        config = SidecarConfig(
            service="backend", app_host="127.0.0.1", app_port=other, health="/", port=port
        )
    else:
        await registry.register(
            Instance(service="backend", id="backend-1", host="127.0.0.1", port=other), ttl=3600
        )
        config = SidecarConfig(
            service="caller", app_host="127.0.0.1", app_port=other, health="/", outbound_port=port
        )
    sidecar = Sidecar(config, registry)
    await sidecar.start()
    await until_stopped()
    await sidecar.aclose(grace=1)
    await registry.aclose()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))

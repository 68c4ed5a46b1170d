"""meshkit's proxy engine in front of one upstream, as the gateway benchmark runs it.

    python -m benchmarks._proxy_engine PORT UPSTREAM_PORT

One process, uvloop, one filter that routes every request to the upstream:
the engine's own cost, which the gateway's filters add to.
"""

from __future__ import annotations

import sys

import uvloop

from meshkit._signals import until_stopped
from meshkit.proxy import Forwarder, Forwarding, ProxyRequest, ProxyResponse, ProxyServer


class ToUpstream:
    def __init__(self, port: int) -> None:
        self.origin = ("127.0.0.1", port)

    def on_request(self, request: ProxyRequest) -> None:
        request.upstream = self.origin

    def on_response(self, request: ProxyRequest, response: ProxyResponse) -> None:
        pass


async def main(port: int, upstream: int) -> None:
    forwarder = Forwarder(forwarding=Forwarding(pseudonym="meshkit", trust_forwarded=False))
    server = ProxyServer([ToUpstream(upstream)], forwarder)
    await server.start("127.0.0.1", port)
    await until_stopped()
    await server.aclose(grace=1)


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))

"""A small OTLP/HTTP receiver that takes every batch and counts what it holds.

    python -m benchmarks._otlp_sink PORT

``POST /v1/traces`` and ``/v1/logs`` (OTLP JSON) answer 200 at once and
count spans and log records by the occurrences of a field each has once;
``GET /count`` answers ``{"spans": N, "logs": M, "bytes": B}``. It stands
in for the control plane's receiver, so the gateway benchmark measures the
gateway exporting for real without depending on how fast a store writes.
"""

from __future__ import annotations

import sys

import uvloop

from meshkit._signals import until_stopped
from meshkit.http import HTTPServer, Request, Response, ServerLimits, json_response

counts = {"spans": 0, "logs": 0, "bytes": 0}


async def handle(request: Request) -> Response:
    if request.method == "POST" and request.path == "/v1/traces":
        counts["spans"] += request.body.count(b'"kind":')
    elif request.method == "POST" and request.path == "/v1/logs":
        counts["logs"] += request.body.count(b'"timeUnixNano":')
    elif request.path != "/count":
        return json_response(404, {})
    counts["bytes"] += len(request.body)
    return json_response(200, counts if request.path == "/count" else {})


async def main(port: int) -> None:
    server = HTTPServer(handle, limits=ServerLimits(max_body_bytes=64 * 1024 * 1024))
    await server.start("127.0.0.1", port)
    await until_stopped()
    await server.aclose(grace=1)


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))

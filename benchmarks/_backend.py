"""A minimal HTTP backend for client benchmarks: ``python -m benchmarks._backend PORT``.

Answers every request with a small JSON body, on meshkit's own server and
uvloop, so that the client being measured is the slow side.
"""

from __future__ import annotations

import sys

import uvloop

from meshkit._signals import until_stopped
from meshkit.http import HTTPServer, Request, Response

_BODY = Response(200, [(b"content-type", b"application/json")], b'{"id":7,"name":"widget"}')


async def answer(request: Request) -> Response:  # noqa: ARG001 (every request gets the same)
    return _BODY


async def main(port: int) -> None:
    server = HTTPServer(answer)
    await server.start("127.0.0.1", port)
    print("ready", flush=True)
    await until_stopped()
    await server.aclose(grace=0)


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))

"""The HTTP server: answers, keep-alive, pipelining, limits and refusals, in fake time."""

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from meshkit.http import (
    HTTPClient,
    HTTPServer,
    Request,
    Response,
    ServerLimits,
    json_response,
)
from meshkit.testing import FakeClock


async def echo(request: Request) -> Response:
    return json_response(
        200,
        {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "body": request.body.decode(),
            "agent": request.header("user-agent"),
        },
    )


def run(main: Callable[[], Awaitable[None]]) -> None:
    # Real loopback I/O must land before fake time may jump over it; 0.2 s
    # of real idleness allows for a busy machine.
    FakeClock(autojump_threshold=0.2).run(main())  # type: ignore[arg-type]


async def raw(port: int, data: bytes) -> bytes:
    """Send raw bytes; return everything the server sends until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


def test_requests_are_answered_over_one_kept_alive_connection() -> None:
    """Method, path, query, headers and body reach the handler; the connection is reused."""

    async def main() -> None:
        server = HTTPServer(echo)
        _, port = await server.start()
        async with HTTPClient() as client:
            first = await client.request(
                "POST",
                "127.0.0.1",
                port,
                "/v1/x?a=1&b=2",
                body=b"hello",
                headers=[(b"user-agent", b"test")],
            )
            second = await client.request("GET", "127.0.0.1", port, "/y")
        assert first.json() == {
            "method": "POST",
            "path": "/v1/x",
            "query": "a=1&b=2",
            "body": "hello",
            "agent": "test",
        }
        assert second.json()["path"] == "/y"
        assert len(server.connections) == 1
        await server.aclose()

    run(main)


def test_pipelined_requests_are_answered_in_order() -> None:
    """Two requests sent back to back get two answers, in order."""

    async def main() -> None:
        server = HTTPServer(echo)
        _, port = await server.start()
        answer = await raw(
            port,
            b"GET /first HTTP/1.1\r\nhost: x\r\n\r\n"
            b"GET /second HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        assert answer.count(b"HTTP/1.1 200 OK") == 2
        assert answer.index(b"/first") < answer.index(b"/second")
        await server.aclose()

    run(main)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", b"400"),
        (
            b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
            b"400",
        ),
        (
            b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n"
            b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            b"400",
        ),
        (b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n", b"431"),
        (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2000\r\n\r\n" + b"a" * 2000, b"413"),
        (b"GET / HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n", b"400"),
    ],
)
def test_requests_it_cannot_handle_safely_are_refused_and_closed(
    request_bytes: bytes, status: bytes
) -> None:
    """Malformed, smuggling-shaped, oversized and upgrade requests get an error and a close."""

    async def main() -> None:
        server = HTTPServer(echo, limits=ServerLimits(max_body_bytes=1000))
        _, port = await server.start()
        answer = await raw(port, request_bytes)
        assert answer.startswith(b"HTTP/1.1 " + status), answer[:80]
        assert b"connection: close" in answer
        await server.aclose()

    run(main)


def test_a_handler_that_raises_answers_500_and_the_server_lives_on() -> None:
    """A bug in a handler is a 500 for that request only."""

    async def broken(request: Request) -> Response:
        if request.path == "/boom":
            raise RuntimeError("bug")
        return await echo(request)

    async def main() -> None:
        server = HTTPServer(broken)
        _, port = await server.start()
        async with HTTPClient() as client:
            assert (await client.request("GET", "127.0.0.1", port, "/boom")).status == 500
            assert (await client.request("GET", "127.0.0.1", port, "/fine")).status == 200
        assert [str(e) for _, e in server.errors] == ["bug"]
        await server.aclose()

    run(main)


def test_slow_and_idle_clients_are_disconnected() -> None:
    """A request trickling in past request_timeout, or an idle connection, is closed."""

    async def main() -> None:
        limits = ServerLimits(request_timeout=5, idle_timeout=30)
        server = HTTPServer(echo, limits=limits)
        _, port = await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n")  # never finishes the head
        assert await reader.read() == b""  # closed by the server after 5 fake seconds
        writer.close()
        async with HTTPClient() as client:
            await client.request("GET", "127.0.0.1", port, "/")
            assert len(server.connections) == 1
            await asyncio.sleep(31)  # noqa: TID251 (fake time passing)
            assert len(server.connections) == 0
        await server.aclose()

    run(main)


def test_closing_lets_requests_in_flight_finish() -> None:
    """aclose() stops accepting but answers the request already being handled."""
    started = asyncio.Event()

    async def slow(request: Request) -> Response:
        started.set()
        await asyncio.sleep(2)  # noqa: TID251 (fake time: slow work)
        return json_response(200, {"done": True})

    async def main() -> None:
        server = HTTPServer(slow)
        _, port = await server.start()
        async with HTTPClient() as client:
            call = asyncio.create_task(client.request("GET", "127.0.0.1", port, "/"))
            await started.wait()
            await server.aclose(grace=10)
            response = await call
        assert response.json() == {"done": True}
        assert response.header("connection") == "close"

    run(main)


def test_head_requests_get_no_body() -> None:
    """A HEAD answer carries the body's length but not the body."""

    async def main() -> None:
        server = HTTPServer(echo)
        _, port = await server.start()
        answer = await raw(port, b"HEAD /x HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"content-length: " in head
        assert body == b""
        await server.aclose()

    run(main)

"""The HTTP server: answers, keep-alive, pipelining, limits and refusals, in fake time."""

import asyncio
import contextlib
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
from meshkit.http._server import _HTTPConnection
from meshkit.testing import FakeClock


class StubTransport:
    """Just enough of a transport for a server connection that is never really open."""

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 1) if name == "peername" else None

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


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
    # Real loopback I/O must land before fake time may jump over it; 1 s
    # of real idleness allows for a busy machine (0.2 s once failed under the full suite).
    FakeClock(autojump_threshold=1.0).run(main())  # type: ignore[arg-type]


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


def test_pipelined_requests_are_answered_and_a_flood_is_cut_off() -> None:
    """Behind a request that waits, 60 pipelined requests are all answered; 1,000 close it."""
    release = asyncio.Event()

    async def waits(request: Request) -> Response:
        await release.wait()
        return json_response(200, {})

    def handler(request: Request) -> Response | Awaitable[Response]:
        return waits(request) if request.path == "/wait" else json_response(200, {})

    async def main() -> None:
        server = HTTPServer(handler)
        _, port = await server.start()
        request = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /wait HTTP/1.1\r\nhost: x\r\n\r\n" + request * 60)
        await asyncio.sleep(1)  # noqa: TID251 (fake time: the server reads the pipeline)
        release.set()
        received = b""
        while received.count(b"HTTP/1.1 200") < 61:  # bodies end without a newline
            received += await reader.read(65536)
        writer.close()
        release.clear()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /wait HTTP/1.1\r\nhost: x\r\n\r\n" + request * 1000)
        assert await reader.read() == b""  # closed: the flood is not queued
        writer.close()
        await asyncio.sleep(0.1)  # noqa: TID251 (fake time: the server notices the close)
        assert server.in_flight == 0
        await server.aclose()

    run(main)


def test_a_client_that_does_not_read_answers_is_not_read_either() -> None:
    """Once answers pile up unread, the server stops reading that connection's requests."""

    def big(request: Request) -> Response:
        return Response(200, [], b"x" * 1_000_000)

    async def main() -> None:
        server = HTTPServer(big)
        _, port = await server.start()
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n" * 50)  # 50 MB of answers, never read
        await asyncio.sleep(1)  # noqa: TID251 (fake time: the server answers what it reads)
        (connection,) = server.connections
        assert connection._read_paused
        assert connection._transport is not None
        assert connection._transport.get_write_buffer_size() < 5_000_000  # not 50 MB
        writer.close()
        await server.aclose(grace=0)

    run(main)


def test_a_dropped_connection_leaves_nothing_in_flight() -> None:
    """A client gone during a long poll ends the request: nothing counted, nothing leaked."""

    async def waits(request: Request) -> Response:
        await asyncio.Event().wait()
        return json_response(200, {})

    async def main() -> None:
        server = HTTPServer(waits)
        _, port = await server.start()
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        await asyncio.sleep(0.1)  # noqa: TID251 (fake time: the request is being handled)
        assert server.in_flight == 1
        writer.close()
        await asyncio.sleep(0.1)  # noqa: TID251 (fake time: the server notices the close)
        assert server.in_flight == 0
        # The request and the loss in the same turn of the loop, so the handler's
        # task is cancelled before its first step: white-box, with a stub transport.
        connection = _HTTPConnection(server)
        connection.connection_made(StubTransport())  # type: ignore[arg-type]
        connection.data_received(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        worker = connection._worker
        assert worker is not None
        connection.connection_lost(None)
        with contextlib.suppress(asyncio.CancelledError):
            await worker  # our done-callback was added first, so it has run by now
        assert server.in_flight == 0
        await asyncio.wait_for(server.aclose(grace=30), 1)  # nothing left to wait for

    run(main)


def test_no_content_length_on_a_204_and_head_keeps_the_connection() -> None:
    """A 204 has no Content-Length (RFC 9110, 8.6); after a HEAD the connection serves on."""

    def handler(request: Request) -> Response:
        return Response(204, [], b"") if request.path == "/none" else json_response(200, {"a": 1})

    async def main() -> None:
        server = HTTPServer(handler)
        _, port = await server.start()
        answer = await raw(
            port,
            b"GET /none HTTP/1.1\r\nhost: x\r\n\r\n"
            b"HEAD /x HTTP/1.1\r\nhost: x\r\n\r\n"
            b"GET /x HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        first, second, third = answer.split(b"HTTP/1.1 ")[1:]
        assert first.startswith(b"204")
        assert b"content-length" not in first
        assert second.startswith(b"200")
        assert second.endswith(b"\r\n\r\n")  # HEAD: headers only
        assert third.startswith(b"200")
        assert third.endswith(b'{"a":1}')
        await server.aclose()

    run(main)

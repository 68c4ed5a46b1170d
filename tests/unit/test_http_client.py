"""The HTTP client against a scripted server on loopback, in fake time."""

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from meshkit.errors import (
    ConnectError,
    ConnectTimeoutError,
    PeerClosedError,
    ProtocolViolationError,
    ReadTimeoutError,
    ResponseTooLargeError,
    UsageError,
)
from meshkit.http import HTTPClient, Limits, Timeouts
from meshkit.http._client import encode_request
from meshkit.http._pool import ConnectionPool, _Origin
from meshkit.testing import FakeClock

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class ScriptedServer:
    """A loopback server whose connections are handled by a test's function."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.server: asyncio.Server | None = None
        self._handling: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        # Handlers see their client's close a loop turn or more later: wait for
        # them (a handler left pending when the loop closes is a warning, and
        # warnings are errors here), then cancel what a test left waiting.
        if self._handling:
            _, pending = await asyncio.wait(self._handling, timeout=1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handling.add(task)
            task.add_done_callback(self._handling.discard)
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The request head and body (by Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


def ok(body: bytes, *extra: bytes) -> bytes:
    headers = b"".join(h + b"\r\n" for h in extra)
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), headers, body)


async def keep_alive_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        head, body = await read_request(reader)
        method, target = head.split(b" ")[:2]
        writer.write(ok(method + b" " + target + b" " + body, b"x-server: test"))
        await writer.drain()


def run(main: Callable[[], Awaitable[None]]) -> None:
    # Real loopback I/O must land before fake time may jump over it; 1 s
    # of real idleness allows for a busy machine (0.2 s once failed under the full suite).
    FakeClock(autojump_threshold=1.0).run(main())  # type: ignore[arg-type]


def test_requests_share_one_kept_alive_connection() -> None:
    """Sequential requests to one origin reuse a single connection."""

    async def main() -> None:
        server = ScriptedServer(keep_alive_echo)
        async with server as port, HTTPClient() as client:
            first = await client.request("GET", "127.0.0.1", port, "/a?x=1")
            second = await client.request("POST", "127.0.0.1", port, "/b", body=b"hi")
        assert (first.status, first.body) == (200, b"GET /a?x=1 ")
        assert second.body == b"POST /b hi"
        assert first.header("X-Server") == "test"
        assert server.connections == 1

    run(main)


def test_connection_close_is_honoured() -> None:
    """A response with Connection: close is not reused."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok(b"bye", b"connection: close"))
        await writer.drain()

    async def main() -> None:
        server = ScriptedServer(handler)
        async with server as port, HTTPClient() as client:
            for _ in range(3):
                assert (await client.request("GET", "127.0.0.1", port, "/")).body == b"bye"
        assert server.connections == 3

    run(main)


def test_a_slow_response_times_out_and_the_connection_is_dropped() -> None:
    """No response within the read timeout raises ReadTimeoutError; the next request reconnects."""
    answered = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        await read_request(reader)
        if answered == 0:
            answered = 1
            await asyncio.Event().wait()  # never answers the first request
        writer.write(ok(b"late but fine"))
        await writer.drain()
        await reader.read()

    async def main() -> None:
        server = ScriptedServer(handler)
        async with server as port, HTTPClient(timeouts=Timeouts(read=2.0)) as client:
            with pytest.raises(ReadTimeoutError, match=r"within 2\.0s"):
                await client.request("GET", "127.0.0.1", port, "/")
            assert (await client.request("GET", "127.0.0.1", port, "/")).body == b"late but fine"
        assert server.connections == 2

    run(main)


def test_total_timeout_bounds_the_whole_request() -> None:
    """Timeouts.total is a bound on the request as a whole."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.Event().wait()

    async def main() -> None:
        async with ScriptedServer(handler) as port, HTTPClient() as client:
            with pytest.raises(ReadTimeoutError, match=r"longer than 1\.5s"):
                await client.request(
                    "GET", "127.0.0.1", port, "/", timeouts=Timeouts(read=30, total=1.5)
                )

    run(main)


def test_refused_connection_is_a_connect_error() -> None:
    """Nothing listening: ConnectError naming the address."""

    async def main() -> None:
        server = await asyncio.start_server(keep_alive_echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        async with HTTPClient() as client:
            with pytest.raises(ConnectError, match=f"127.0.0.1:{port}"):
                await client.request("GET", "127.0.0.1", port, "/")

    run(main)


def test_idempotent_request_survives_a_stale_kept_alive_connection() -> None:
    """A GET on a connection the server dropped after reading is sent again on a new one."""
    requests = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        while True:
            await read_request(reader)
            requests += 1
            if requests == 2:
                return  # closes without answering, as a server timing out idle does
            writer.write(ok(b"fine"))
            await writer.drain()

    async def main() -> None:
        server = ScriptedServer(handler)
        async with server as port, HTTPClient() as client:
            await client.request("GET", "127.0.0.1", port, "/")
            assert (await client.request("GET", "127.0.0.1", port, "/")).body == b"fine"
        assert server.connections == 2

    run(main)


def test_non_idempotent_request_is_not_sent_twice() -> None:
    """A POST whose connection closes unanswered raises PeerClosedError instead of resending."""
    posts = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal posts
        await read_request(reader)
        writer.write(ok(b"first"))
        await writer.drain()
        await read_request(reader)
        posts += 1

    async def main() -> None:
        async with ScriptedServer(handler) as port, HTTPClient() as client:
            await client.request("GET", "127.0.0.1", port, "/")
            with pytest.raises(PeerClosedError, match="closed the connection"):
                await client.request("POST", "127.0.0.1", port, "/charge", body=b"{}")
        assert posts == 1

    run(main)


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (b"HTTP/1.1 2OO OK\r\n\r\n", ProtocolViolationError),
        (b"NOT HTTP AT ALL\r\n\r\n", ProtocolViolationError),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999\r\n\r\n" + b"x" * 2000,
            ResponseTooLargeError,
        ),
        (b"HTTP/1.1 200 OK\r\nx-big: " + b"y" * 70_000 + b"\r\n\r\n", ResponseTooLargeError),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", PeerClosedError),
    ],
)
def test_a_misbehaving_server_gets_a_clear_error(response: bytes, error: type[Exception]) -> None:
    """Malformed, oversized or truncated responses raise the matching meshkit error."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response)
        await writer.drain()

    async def main() -> None:
        limits = Limits(max_body_bytes=1000)
        async with ScriptedServer(handler) as port, HTTPClient(limits=limits) as client:
            with pytest.raises(error):
                await client.request("GET", "127.0.0.1", port, "/")

    run(main)


def test_chunked_bodies_and_head_responses() -> None:
    """Chunked bodies are joined; a HEAD response ends at its headers and keeps the connection."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(reader)
            if head.startswith(b"HEAD"):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n")
            else:
                writer.write(
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                )
            await writer.drain()

    async def main() -> None:
        server = ScriptedServer(handler)
        async with server as port, HTTPClient() as client:
            head = await client.request("HEAD", "127.0.0.1", port, "/")
            assert (head.status, head.body, head.header("content-length")) == (200, b"", "1234")
            assert (await client.request("GET", "127.0.0.1", port, "/")).body == b"hello world"
        assert server.connections == 1

    run(main)


def test_connections_per_origin_are_capped() -> None:
    """With max_connections=2, ten concurrent requests never open more than two."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await asyncio.sleep(0.5)  # noqa: TID251 (fake time: the server is busy for a while)
            writer.write(ok(b"done"))
            await writer.drain()

    async def main() -> None:
        server = ScriptedServer(handler)
        limits = Limits(max_connections=2, max_idle=2)
        async with server as port, HTTPClient(limits=limits) as client:
            responses = await asyncio.gather(
                *(client.request("GET", "127.0.0.1", port, "/") for _ in range(10))
            )
        assert [r.body for r in responses] == [b"done"] * 10
        assert server.most_open == 2

    run(main)


def test_idle_connections_are_closed_after_the_idle_timeout() -> None:
    """A connection idle past idle_timeout is closed, and the next request opens a new one."""

    async def main() -> None:
        server = ScriptedServer(keep_alive_echo)
        async with server as port, HTTPClient(limits=Limits(idle_timeout=4.0)) as client:
            await client.request("GET", "127.0.0.1", port, "/")
            await asyncio.sleep(3)  # noqa: TID251 (fake time passing)
            await client.request("GET", "127.0.0.1", port, "/")
            assert server.connections == 1
            await asyncio.sleep(5)  # noqa: TID251 (fake time passing)
            await client.request("GET", "127.0.0.1", port, "/")
        assert server.connections == 2

    run(main)


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("GET", "/ok", [(b"x-evil", b"a\r\nhost: other")]),
        ("GET", "/ok", [(b"x:evil", b"a")]),
        ("get", "/ok", []),
        ("GET", "no-slash", []),
        ("GET", "/a b", []),
    ],
)
def test_requests_that_would_be_malformed_are_refused(
    method: str, target: str, headers: list[tuple[bytes, bytes]]
) -> None:
    """Header injection, bad methods and bad targets raise UsageError before anything is sent."""

    async def main() -> None:
        async with ScriptedServer(keep_alive_echo) as port, HTTPClient() as client:
            with pytest.raises(UsageError):
                await client.request(method, "127.0.0.1", port, target, headers=headers)

    run(main)


def test_bytes_after_a_response_never_reach_the_next_request() -> None:
    """A server sending more than one response: the first is intact, the rest is discarded."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(reader)
            if b"/first" in head:
                writer.write(
                    ok(b"one") + b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nx-evil: 1\r\n\r\nEVIL"
                )
            else:
                writer.write(ok(b"two"))
            await writer.drain()

    async def main() -> None:
        server = ScriptedServer(handler)
        async with server as port, HTTPClient() as client:
            first = await client.request("GET", "127.0.0.1", port, "/first")
            second = await client.request("GET", "127.0.0.1", port, "/second")
        assert (first.body, first.headers) == (b"one", [(b"content-length", b"3")])
        assert second.body == b"two"
        assert server.connections == 2  # the out-of-step connection was not reused

    run(main)


def test_interim_responses_are_read_past() -> None:
    """A 103 Early Hints before the final 200 is not mistaken for the answer."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n" + ok(b"final")
        )
        await writer.drain()
        await reader.read()

    async def main() -> None:
        async with ScriptedServer(handler) as port, HTTPClient() as client:
            response = await client.request("GET", "127.0.0.1", port, "/")
        assert (response.status, response.body) == (200, b"final")
        assert response.header("link") is None

    run(main)


def test_a_body_delimited_by_closing_is_complete() -> None:
    """Without Content-Length or chunking, the body ends when the server closes (RFC 9112, 6.3)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        await writer.drain()

    async def main() -> None:
        async with ScriptedServer(handler) as port, HTTPClient() as client:
            response = await client.request("GET", "127.0.0.1", port, "/")
        assert response.body == b"all of it"

    run(main)


def test_a_waiter_cancelled_as_it_is_woken_passes_its_slot_on() -> None:
    """Handing the one free slot to a task that is being cancelled does not strand the others."""

    async def main() -> None:
        client = HTTPClient(limits=Limits(max_connections=1, max_idle=1))
        pool = client._pool
        entry = pool._origins[("127.0.0.1", 1)] = _Origin()
        entry.open = 1  # the one connection is in use
        waiting = [asyncio.create_task(pool.wait_for_slot(("127.0.0.1", 1), 30)) for _ in range(2)]
        await asyncio.sleep(0)  # noqa: TID251 (both tasks reach their waits)
        entry.open = 0
        pool._wake(entry)  # the first waiter is handed the slot...
        waiting[0].cancel()  # ...and cancelled before it can use it
        await asyncio.wait_for(waiting[1], 1)  # the second still gets it
        assert waiting[0].cancelled()

    run(main)


def test_waiting_for_a_free_connection_is_bounded() -> None:
    """With every connection busy, a request gives up after its connect timeout."""
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await release.wait()
        writer.write(ok(b"late"))
        await writer.drain()

    async def main() -> None:
        limits = Limits(max_connections=1, max_idle=1)
        async with ScriptedServer(handler) as port, HTTPClient(limits=limits) as client:
            busy = asyncio.create_task(client.request("GET", "127.0.0.1", port, "/"))
            await asyncio.sleep(0.1)  # noqa: TID251 (fake time: the first request holds the connection)
            with pytest.raises(ConnectTimeoutError, match="came free"):
                await client.send("GET", "127.0.0.1", port, "/", connect=0.5, read=5)
            release.set()
            assert (await busy).body == b"late"

    run(main)


def test_an_inner_timeout_keeps_its_name_under_a_total() -> None:
    """A read timeout inside a longer total timeout is reported as the read timeout."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.Event().wait()

    async def main() -> None:
        async with ScriptedServer(handler) as port, HTTPClient() as client:
            with pytest.raises(ReadTimeoutError, match=r"within 0\.2s"):
                await client.request(
                    "GET", "127.0.0.1", port, "/", timeouts=Timeouts(read=0.2, total=30)
                )

    run(main)


def test_a_put_marked_not_idempotent_is_not_resent() -> None:
    """idempotent=False stops the resend on a stale connection even for PUT."""
    puts = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal puts
        await read_request(reader)
        writer.write(ok(b"first"))
        await writer.drain()
        await read_request(reader)
        puts += 1  # closes without answering

    async def main() -> None:
        async with ScriptedServer(handler) as port, HTTPClient() as client:
            await client.request("GET", "127.0.0.1", port, "/")
            with pytest.raises(PeerClosedError):
                await client.send(
                    "PUT", "127.0.0.1", port, "/x", body=b"{}", connect=1, read=5, idempotent=False
                )
        assert puts == 1

    run(main)


def test_a_deadline_bounds_the_whole_request() -> None:
    """send(deadline=...) ends the request at the deadline, however long its read timeout."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.Event().wait()

    async def main() -> None:
        async with ScriptedServer(handler) as port, HTTPClient() as client:
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(ReadTimeoutError):
                await client.send(
                    "GET", "127.0.0.1", port, "/", connect=5, read=60, deadline=start + 1.5
                )
            assert loop.time() - start == pytest.approx(1.5, abs=0.01)

    run(main)


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/ok", [(b"content-length", b"5")]),
        ("/ok", [(b"Transfer-Encoding", b"chunked")]),
        ("/ok", [(b"host", b"other")]),
        ("/ok", [(b"bad name", b"x")]),
        ("/ok", [(b"x-nul", b"a\0b")]),
        ("/caf\u00e9", []),
        ("/tab\there", []),
    ],
)
def test_ambiguous_requests_are_refused(target: str, headers: list[tuple[bytes, bytes]]) -> None:
    """Framing headers from callers, bad names and non-ASCII or control targets raise UsageError."""
    with pytest.raises(UsageError):
        encode_request("GET", target, "127.0.0.1", 80, headers, b"")


def test_ipv6_hosts_are_bracketed() -> None:
    """The Host header of an IPv6 literal is written in brackets (RFC 9110, 7.2)."""
    assert b"host: [::1]:8080\r\n" in encode_request("GET", "/", "::1", 8080, [], b"")


class _Idle:
    """A stand-in connection for the pool's books."""

    def __init__(self) -> None:
        self.closed = False
        self.idle_since = 0.0
        self.loop = asyncio.get_running_loop()

    @property
    def reusable(self) -> bool:
        return not self.closed

    def close(self) -> None:
        self.closed = True


class _CountingPool(ConnectionPool[_Idle]):
    """Counts sweeps, and stops sweeping after many: a spinning sweeper never yields."""

    sweeps = 0

    def _sweep(self) -> None:
        self.sweeps += 1
        if self.sweeps < 1000:
            super()._sweep()


def test_idle_connections_expire_whatever_the_float_rounding() -> None:
    """Connections released at awkward times all close after idle_timeout, in a few sweeps."""
    clock = FakeClock(autojump_threshold=0)

    async def main() -> None:
        pool = _CountingPool(
            lambda origin: _Idle(), Limits(max_connections=50, max_idle=50, idle_timeout=4.0)
        )
        origin = ("127.0.0.1", 1)
        entry = pool._origins[origin] = _Origin()
        idle = []
        for _ in range(30):
            await asyncio.sleep(0.1)  # noqa: TID251 (fake time: 1.1 - 4.0 + 4.0 != 1.1 in floats)
            connection = _Idle()
            entry.open += 1
            pool.release(origin, connection)
            idle.append(connection)
        await asyncio.sleep(10)  # noqa: TID251 (fake time: past every idle timeout)
        assert all(connection.closed for connection in idle)
        assert entry.open == 0
        assert pool.sweeps <= 31

    clock.run(main())

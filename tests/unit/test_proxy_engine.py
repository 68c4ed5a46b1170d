"""The proxy engine on loopback: a real ProxyServer between raw clients and scripted upstreams."""

import asyncio
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import msgspec
import pytest

from meshkit.errors import ServiceUnavailableError
from meshkit.http import Timeouts
from meshkit.proxy import (
    Forwarder,
    Forwarding,
    ProxyLimits,
    ProxyRequest,
    ProxyResponse,
    ProxyServer,
    RequestOnly,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Upstream:
    """A loopback upstream whose connections a test scripts; it records what arrived."""

    def __init__(self, handler: Handler | None) -> None:
        self.heads: list[bytes] = []
        self.handler = handler or make_echo(self.heads)
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def read_head(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes]]:
    head = await reader.readuntil(b"\r\n\r\n")
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        if b":" in line:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
    return head, fields


async def read_body(reader: asyncio.StreamReader, fields: dict[bytes, bytes]) -> bytes:
    if b"content-length" in fields:
        return await reader.readexactly(int(fields[b"content-length"]))
    if fields.get(b"transfer-encoding") == b"chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            parts.append(await reader.readexactly(size + 2))
            if size == 0:
                return b"".join(p[:-2] for p in parts)
    return b""


def make_echo(upstream_heads: list[bytes]) -> Handler:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, fields = await read_head(reader)
            upstream_heads.append(head)
            body = await read_body(reader, fields)
            method, target = head.split(b" ")[:2]
            reply = method + b" " + target + b" " + body
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nx-up: 1\r\n\r\n" % len(reply))
            if method != b"HEAD":
                writer.write(reply)
            await writer.drain()

    return echo


class To:
    """A filter that sends everything to one upstream."""

    def __init__(self, port: int) -> None:
        self.port = port

    def on_request(self, request: ProxyRequest) -> None:
        request.upstream = ("127.0.0.1", self.port)

    def on_response(self, request: ProxyRequest, response: ProxyResponse) -> None:
        response.headers.append((b"x-filter", b"seen"))


@asynccontextmanager
async def proxy(
    handler: Handler | None = None,
    *,
    filters: list[object] | None = None,
    limits: ProxyLimits | None = None,
    timeouts: Timeouts | None = None,
) -> AsyncIterator[tuple[int, Upstream, ProxyServer]]:
    upstream = Upstream(handler)
    await upstream.start()
    forwarder = Forwarder(
        forwarding=Forwarding(pseudonym="meshkit", trust_forwarded=False), timeouts=timeouts
    )
    chain = filters if filters is not None else [To(upstream.port)]
    server = ProxyServer(chain, forwarder, limits=limits)  # type: ignore[arg-type]
    _, port = await server.start()
    try:
        yield port, upstream, server
    finally:
        await server.aclose(grace=1)
        upstream.close()


async def exchange(port: int, data: bytes, *, until_close: bool = True) -> bytes:
    """Send raw bytes; everything the proxy sends back until it closes (or 5 s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        async with asyncio.timeout(5):
            return await reader.read(-1) if until_close else await reader.read(65536)
    finally:
        writer.close()


async def response(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    """One response: status, headers, body (by length or chunked)."""
    head, fields = await read_head(reader)
    status = int(head.split(b" ")[1])
    return status, fields, await read_body(reader, fields)


GET = b"GET /a?b=1 HTTP/1.1\r\nHost: shop.test\r\n\r\n"


async def test_a_request_goes_upstream_with_the_proxy_headers_and_comes_back() -> None:
    """The upstream sees Via and X-Forwarded-*; the client gets its answer, Via and a request id."""
    async with proxy() as (port, upstream, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(GET)
        status, fields, body = await response(reader)
        assert (status, body) == (200, b"GET /a?b=1 ")
        assert fields[b"via"] == b"1.1 meshkit"
        assert fields[b"x-filter"] == b"seen"
        assert len(fields[b"x-request-id"]) > 8
        head = upstream.heads[0].lower()
        assert b"x-forwarded-for: 127.0.0.1" in head
        assert b"x-forwarded-host: shop.test" in head
        assert b"via: 1.1 meshkit" in head
        assert b"x-request-id: " + fields[b"x-request-id"] in head
        writer.close()


async def test_keep_alive_reuses_one_upstream_connection() -> None:
    """Ten requests on one client connection travel over one upstream connection."""
    async with proxy() as (port, upstream, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(10):
            writer.write(GET)
            assert (await response(reader))[0] == 200
        assert upstream.connections == 1
        writer.close()


async def test_pipelined_requests_are_answered_in_order() -> None:
    """Three requests in one write get three answers, in the order asked."""
    async with proxy() as (port, _, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(3)))
        bodies = [(await response(reader))[2] for _ in range(3)]
        assert bodies == [b"GET /0 ", b"GET /1 ", b"GET /2 "]
        writer.close()


async def test_bodies_are_reframed_a_chunked_request_arrives_with_a_length() -> None:
    """A chunked body complete on arrival is sent upstream with Content-Length."""
    async with proxy() as (port, upstream, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        assert (await response(reader))[2] == b"POST /p abcde"
        head = upstream.heads[0].lower()
        assert b"content-length: 5" in head
        assert b"transfer-encoding" not in head
        writer.close()


async def test_head_keeps_the_length_and_sends_no_body() -> None:
    """A HEAD answer carries the upstream's Content-Length, no body, and the connection goes on."""
    async with proxy() as (port, _, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n")
        head, fields = await read_head(reader)
        assert head.startswith(b"HTTP/1.1 200")
        assert fields[b"content-length"] == b"8"
        writer.write(GET)
        assert (await response(reader))[2] == b"GET /a?b=1 "  # nothing of a body came between
        writer.close()


async def test_expect_100_continue_is_answered_when_the_request_is_forwarded() -> None:
    """The client waiting for 100 Continue gets it, then sends its body."""
    async with proxy() as (port, upstream, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"PUT /u HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        async with asyncio.timeout(5):
            interim = await reader.readuntil(b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"data")
        assert (await response(reader))[2] == b"PUT /u data"
        assert b"expect" not in upstream.heads[0].lower()
        writer.close()


class Refuse:
    def on_request(self, request: ProxyRequest) -> ProxyResponse:
        return ProxyResponse(401, [(b"www-authenticate", b"ApiKey")], b"no")

    def on_response(self, request: ProxyRequest, response: ProxyResponse) -> None:
        response.headers.append((b"x-seen", b"1"))


async def test_a_refused_request_never_gets_100_continue_and_the_connection_closes() -> None:
    """A filter's 401 is sent without 100 Continue; the unsent body cannot follow, so it closes."""
    async with proxy(filters=[Refuse()]) as (port, upstream, _):
        raw = await exchange(
            port,
            b"PUT /u HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
        )
        assert raw.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
        assert b"100 Continue" not in raw
        assert b"connection: close" in raw
        assert b"x-seen: 1" in raw
        assert upstream.connections == 0


def json_body(raw: bytes) -> dict[str, object]:
    return msgspec.json.decode(raw.partition(b"\r\n\r\n")[2])  # type: ignore[no-any-return]


async def test_an_unreachable_upstream_is_a_502_with_a_request_id() -> None:
    """Connection refused answers a 502 problem whose instance is the request id."""
    async with proxy(filters=[To(1)]) as (port, _, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(GET)
        status, fields, body = await response(reader)
        assert status == 502
        answer = msgspec.json.decode(body)
        assert fields[b"content-type"] == b"application/problem+json"
        assert answer["instance"] == fields[b"x-request-id"].decode()
        assert "could not connect" in answer["detail"]
        writer.close()


async def test_an_upstream_that_closes_without_answering_is_a_502() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)

    async with proxy(hang_up) as (port, _, _):
        raw = await exchange(
            port, b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", until_close=False
        )
        assert raw.startswith(b"HTTP/1.1 502 Bad Gateway")


async def test_a_slow_upstream_is_a_504() -> None:
    """An upstream silent past the read timeout answers 504."""

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await asyncio.sleep(5)  # noqa: TID251 (the silence the proxy must time out)

    async with proxy(slow, timeouts=Timeouts(read=0.2)) as (port, _, _):
        raw = await exchange(port, GET, until_close=False)
        assert raw.startswith(b"HTTP/1.1 504 Gateway Timeout")
        assert b"sent nothing for 0.2s" in raw


class NoInstances:
    def on_request(self, request: ProxyRequest) -> None:
        raise ServiceUnavailableError("orders", "no instances registered")

    def on_response(self, request: ProxyRequest, response: ProxyResponse) -> None:
        pass


async def test_a_filter_raising_service_unavailable_is_a_503() -> None:
    async with proxy(filters=[NoInstances()]) as (port, _, _):
        raw = await exchange(port, GET, until_close=False)
        assert raw.startswith(b"HTTP/1.1 503 Service Unavailable")
        detail = json_body(raw)["detail"]
        assert detail == "service 'orders' is unavailable: no instances registered"


async def test_a_kept_alive_connection_closed_by_the_upstream_is_retried_once() -> None:
    """An upstream that closes after each answer without saying so costs the client nothing."""

    async def one_shot(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()

    async with proxy(one_shot) as (port, upstream, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(3):
            writer.write(GET)
            assert (await response(reader))[:3:2] == (200, b"ok")
        assert upstream.connections == 3
        writer.close()


async def test_a_chunked_answer_is_relayed_chunked_and_close_delimited_to_http_1_0() -> None:
    """An answer without a length is chunked for HTTP/1.1 and ends with the close for HTTP/1.0."""

    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for part in (b"hello ", b"world"):
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                await writer.drain()
            writer.write(b"0\r\n\r\n")

    async with proxy(chunked) as (port, _, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(GET)
        status, fields, body = await response(reader)
        assert (status, fields[b"transfer-encoding"], body) == (200, b"chunked", b"hello world")
        writer.close()
        raw = await exchange(port, b"GET / HTTP/1.0\r\n\r\n")
        assert raw.endswith(b"\r\n\r\nhello world")
        assert b"transfer-encoding" not in raw
        assert b"connection: close" in raw


MiB = 1024 * 1024


async def test_a_large_upload_and_download_stream_with_bounded_memory() -> None:
    """32 MiB up and 32 MiB down pass through while the proxy holds a few MiB at most."""
    size = 32 * MiB
    block = b"x" * 65536

    async def sink_and_source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, fields = await read_head(reader)
        left = int(fields[b"content-length"])
        while left:
            left -= len(await reader.read(min(left, 1 << 20)))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()

    limits = ProxyLimits(max_body_bytes=64 * MiB)
    async with proxy(sink_and_source, limits=limits) as (port, _, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        tracemalloc.start()
        try:
            writer.write(b"PUT /big HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
            for _ in range(size // len(block)):
                writer.write(block)
                await writer.drain()
            _, fields = await read_head(reader)
            received = 0
            while received < int(fields[b"content-length"]):
                received += len(await reader.read(1 << 20))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert received == size
        # Client, upstream and proxy share this process, so the figure covers
        # all three; a proxy that buffered a body whole would hold 32 MiB.
        assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB"
        writer.close()


MALFORMED = [
    (
        "both Content-Length and Transfer-Encoding",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "two Content-Lengths",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    ),
    (
        "a Content-Length that is not a number",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3a\r\n\r\nabc",
        400,
    ),
    ("a negative Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
    (
        "a Content-Length with a plus sign",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
        400,
    ),
    (
        "Transfer-Encoding not ending in chunked",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        400,
    ),
    (
        "an obfuscated Transfer-Encoding",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
        400,
    ),
    (
        "whitespace before the colon",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("obsolete line folding", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n 2\r\n\r\n", 400),
    ("a bare LF line end", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("words after the version", b"GET / HTTP/1.1 x\r\nHost: a\r\n\r\n", 400),
    ("a space inside the target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("a method that is not a token", b"GE(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("a lower-case method", b"get / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("an HTTP/0.9 request", b"GET /\r\n\r\n", 400),
    ("an unknown HTTP version", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 400),
    ("HTTP/1.1 without Host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two Host headers", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("an absolute-form target", b"GET http://evil.test/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("a NUL in a header value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\x002\r\n\r\n", 400),
    (
        "a malformed chunk size",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        400,
    ),
    ("CONNECT", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 501),
    (
        "an expectation other than 100-continue",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nExpect: 200-ok\r\n\r\n",
        417,
    ),
    (
        "a Content-Length over the body limit",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999\r\n\r\n",
        413,
    ),
    (
        "a chunked body over the body limit",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4000\r\n"
        + b"x" * 0x4000
        + b"\r\n",
        413,
    ),
    (
        "headers over the size limit",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 5000 + b"\r\n\r\n",
        431,
    ),
    (
        "too many header fields",
        b"GET / HTTP/1.1\r\nHost: a\r\n"
        + b"".join(b"X-%d: 1\r\n" % i for i in range(40))
        + b"\r\n",
        431,
    ),
]


@pytest.mark.parametrize(("case", "data", "status"), MALFORMED, ids=[c for c, _, _ in MALFORMED])
async def test_malformed_and_smuggling_requests_are_refused_and_the_connection_closed(
    case: str, data: bytes, status: int
) -> None:
    """Each gets its status and a closed connection, and nothing reaches the upstream."""
    limits = ProxyLimits(max_header_bytes=4096, max_headers=32, max_body_bytes=8192)
    async with proxy(limits=limits) as (port, upstream, _):
        raw = await exchange(port, data)  # returns only once the proxy has closed
        assert raw.startswith(b"HTTP/1.1 %d " % status), (case, raw[:200])
        assert b"connection: close" in raw
        assert upstream.connections == 0 or status == 413, case
        assert not upstream.heads or status == 413, case


async def test_a_smuggled_second_request_in_a_body_is_just_body() -> None:
    """A request hidden in a Content-Length body goes upstream as that body, not as a request."""
    hidden = b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n"
    async with proxy() as (port, upstream, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (len(hidden), hidden)
        )
        assert (await response(reader))[2] == b"POST /p " + hidden
        writer.close()
        assert len(upstream.heads) == 1


async def test_a_client_that_trickles_its_head_is_disconnected() -> None:
    """Half a request head and then silence: the connection closes after header_timeout."""
    async with proxy(limits=ProxyLimits(header_timeout=0.3)) as (port, _, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n")
        async with asyncio.timeout(3):
            assert await reader.read(-1) == b""
        writer.close()


async def test_an_idle_kept_alive_connection_is_closed() -> None:
    async with proxy(limits=ProxyLimits(idle_timeout=0.3)) as (port, _, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(GET)
        assert (await response(reader))[0] == 200
        async with asyncio.timeout(3):
            assert await reader.read(-1) == b""
        writer.close()


async def test_observers_get_one_record_per_request() -> None:
    """The access-log hook sees the method, path, status and sizes of each request."""
    async with proxy() as (port, _, server):
        records = []
        server.on_exchange.append(records.append)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /r HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
        await response(reader)
        writer.close()
    (record,) = records
    assert (record.method, record.path, record.status) == ("POST", "/r", 200)
    assert (record.received, record.sent) == (3, len(b"POST /r abc"))
    assert record.error is None
    assert record.upstream is not None


async def test_draining_lets_a_request_in_flight_finish() -> None:
    """aclose() stops accepting but the answer being waited for still arrives."""
    arrived, release = asyncio.Event(), asyncio.Event()

    async def waits(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        arrived.set()
        await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlate")
        await writer.drain()

    async with proxy(waits) as (port, _, server):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(GET)
        await arrived.wait()
        closing = asyncio.create_task(server.aclose(grace=5))
        await asyncio.sleep(0)  # noqa: TID251 (one turn of the loop: aclose begins draining)
        assert server.draining
        release.set()
        status, fields, body = await response(reader)
        assert (status, body, fields[b"connection"]) == (200, b"late", b"close")
        await closing
        writer.close()


async def test_a_pipelined_request_whose_body_fails_waits_for_its_turn() -> None:
    """Request 2's malformed body does not answer before request 1, which still gets its answer."""

    async def slow_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Both requests came in one read, so request 2's body had already
        # failed when request 1 reached this upstream: no wait is needed.
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst")
        await writer.drain()

    async with proxy(slow_first) as (port, _, server):
        raw = await exchange(
            port,
            b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /two HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
        )
        first, _, rest = raw.partition(b"first")
        assert first.startswith(b"HTTP/1.1 200 OK")
        assert rest.startswith(b"HTTP/1.1 400 Bad Request")
        assert server.in_flight == 0


async def test_head_then_a_pipelined_get_on_one_upstream_connection() -> None:
    """After a HEAD answer the pooled connection carries the next request without a desync."""
    async with proxy() as (port, _, server):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\nGET /g HTTP/1.1\r\nHost: a\r\n\r\n")
        head, fields = await read_head(reader)
        assert head.startswith(b"HTTP/1.1 200")
        assert fields[b"content-length"] == b"8"
        status, _, body = await response(reader)
        assert (status, body) == (200, b"GET /g ")
        writer.close()
        (only,) = server.forwarder.pool.statistics().values()
        assert only["open"] == 1  # one connection carried both


class WaitsFirst:
    """Decides only after a moment, as a filter waiting for I/O would."""

    def __init__(self, port: int) -> None:
        self.port = port

    def on_request(self, request: ProxyRequest) -> Awaitable[None]:
        request.upstream = ("127.0.0.1", self.port)
        return asyncio.sleep(0.1)  # noqa: TID251 (a filter awaiting something)

    def on_response(self, request: ProxyRequest, response: ProxyResponse) -> None:
        pass


async def test_a_large_body_that_paused_reading_does_not_leave_the_connection_paused() -> None:
    """A 300 KiB body arriving while a filter waits pauses reading; the next request is read."""
    async with proxy() as (port, upstream, server):
        server.filters = (WaitsFirst(upstream.port),)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = b"x" * (300 * 1024)
        writer.write(
            b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        status, _, answer = await response(reader)
        assert (status, len(answer)) == (200, len(b"POST /big ") + len(body))
        writer.write(GET)
        async with asyncio.timeout(5):
            assert (await response(reader))[2] == b"GET /a?b=1 "
        writer.close()


async def test_a_body_failing_after_the_answer_began_frees_the_upstream_connection() -> None:
    """The upstream answered early, then the client's chunked body went bad: the slot is freed."""

    async def answers_early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await reader.read(-1)  # waits for the rest of the request, which never comes right

    async with proxy(answers_early) as (port, _, server):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        await reader.readuntil(b"hello\r\n")
        writer.write(b"ZZ\r\n")  # not a chunk size
        async with asyncio.timeout(5):
            await reader.read(-1)  # the proxy drops the client: the answer cannot be finished
        pool = server.forwarder.pool.statistics()
        assert all(entry["open"] == 0 for entry in pool.values()), pool
        writer.close()


class Adds(RequestOnly):
    """Looks at responses after all: its own on_response counts, RequestOnly or not."""

    def on_request(self, request: ProxyRequest) -> None:
        return None

    def on_response(self, request: ProxyRequest, response: ProxyResponse) -> None:
        response.headers.append((b"x-adds", b"1"))


class Passes(RequestOnly):
    def on_request(self, request: ProxyRequest) -> None:
        return None


async def test_only_filters_with_a_response_side_run_on_the_response_in_reverse() -> None:
    """A filter that inherits RequestOnly's on_response is left out of the response side,
    and a reload's new filters are sorted the same way."""
    first, second, third, fourth = Passes(), Adds(), Passes(), To(1)
    server = ProxyServer(
        [first, second, third, fourth],
        Forwarder(forwarding=Forwarding(pseudonym="meshkit", trust_forwarded=False)),
    )
    assert server.filters == (first, second, third, fourth)
    assert server.chain.responders == (fourth, second)
    server.filters = [third, fourth]
    assert server.chain.responders == (fourth,)

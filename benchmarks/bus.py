"""The event bus end to end on each backend, beside the raw client of the same engine.

    python -m benchmarks.bus [--json FILE] [--quick]

For each backend (``embedded``: the control plane's broker reached with
``RemoteBus``; ``jetstream``: ``JetStreamBus`` on NATS; ``redis``:
``RedisBus`` on Redis Streams), one publisher process and one consumer
process, started together:

1. Throughput: 100,000 messages (5,000 with ``--quick``) of a 200-byte JSON
   document, published with ``publish_batch`` in batches of 500, each awaited
   (durable) before the next; consumed through ``subscribe()``, the driver
   services use, with 500 handlers at once and a no-op handler, its acks
   sent in batches. The rate is the messages over the time from the first
   publish to the backend's confirmation of the last ack.
2. Latency at a steady 1,000 messages a second for 10 s (1 s with
   ``--quick``), after 200 not timed: one message a millisecond on an
   absolute schedule, each published from a task of its own and carrying its
   send time; the consumer times it on arrival in its handler. p50 and p99.

The same two runs with the raw client of each engine, same shape, count
and size: nats-py on JetStream (a file stream; ``publish_async`` for a batch
of 500 and its acks gathered; a durable pull consumer fetching 500 at a time
and acking each message, nats-py's ack being sent without waiting for the
server's word, then one flush at the end), and redis-py with hiredis on
Streams (``XADD`` pipelined 500 at a time; ``XREADGROUP COUNT 500``, then
one ``XACK`` for the batch); paced, each message is a ``js.publish`` or an
``XADD`` of its own. The embedded broker's reference is JetStream's raw
figure (what the target names), and raw SQLite gets rows of its own: one
process appending the messages to the broker's table in WAL mode with
``synchronous=FULL``, 500 a transaction, then reading them back 500 at a
time, on core 1 as the control plane (write+read, and the write alone).

The control plane runs on core 1; the publisher and consumer of every run
share core 0 (the NATS and Redis servers are the machine's own, unpinned).
Every run has streams, keys or a data directory of its own, removed after it.

Needs NATS with JetStream at 127.0.0.1:4222 and Redis at 127.0.0.1:6379.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import redis.asyncio
import uvloop
from nats.js.errors import NotFoundError as StreamNotFoundError

from benchmarks._bus_process import SIZE, Settings
from benchmarks._load import percentile, pinned, wait_answering
from benchmarks._report import Row, arguments, report
from meshkit._net import free_port
from meshkit.testing.servers import spawn_control_plane

NATS_URL = "nats://127.0.0.1:4222"
REDIS_URL = "redis://127.0.0.1:6379/0"
ROOT = Path(__file__).resolve().parent.parent
BATCH = 500
RATE = 1000
WARMUP = 200
# The reference of each backend: the raw client of its engine.
PEERS = {"embedded": "nats-raw", "jetstream": "nats-raw", "redis": "redis-raw"}
LABELS = {
    "nats-raw": "nats-py on JetStream (raw)",
    "redis-raw": "redis-py on Streams (raw)",
    "sqlite": "raw SQLite write+read (WAL, synchronous=FULL)",
}
ORDER = ("nats-raw", "embedded", "jetstream", "redis-raw", "redis")
# The longest line a process may write: its results (10,000 latencies are about 200 kB).
_LINE_LIMIT = 16 * 1024 * 1024


# -- processes ----------------------------------------------------------------------------


class _Side:
    """One process of a run, speaking ``benchmarks._bus_process``'s protocol."""

    def __init__(self, process: asyncio.subprocess.Process, what: str) -> None:
        self.process = process
        self.what = what

    @classmethod
    async def start(cls, *arguments: str, core: int) -> _Side:
        command = pinned([sys.executable, "-m", "benchmarks._bus_process", *arguments], core)
        process = await asyncio.create_subprocess_exec(
            *command,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=_LINE_LIMIT,
        )
        return cls(process, " ".join(arguments[:1]))

    async def line(self, within: float) -> bytes:
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), within)
        except TimeoutError:
            raise RuntimeError(f"the {self.what} process said nothing in {within:g} s") from None
        if not line:
            raise RuntimeError(f"the {self.what} process exited with {await self.process.wait()}")
        return line

    async def ready(self) -> None:
        if await self.line(60) != b"ready\n":
            raise RuntimeError(f"the {self.what} process did not start as expected")

    async def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")
        await self.process.stdin.drain()

    async def result(self, within: float) -> dict[str, Any]:
        found: dict[str, Any] = msgspec.json.decode(await self.line(within))
        await asyncio.wait_for(self.process.wait(), 30)
        return found

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()


async def run_pair(settings: Settings, *, within: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The publisher's and the consumer's results of one run."""
    encoded = msgspec.json.encode(settings).decode()
    consumer = await _Side.start("consume", encoded, core=0)
    try:
        await consumer.ready()
        publisher = await _Side.start("publish", encoded, core=0)
        try:
            await publisher.ready()
            await publisher.go()
            sent = await publisher.result(within)
            got = await consumer.result(within)
        finally:
            await publisher.stop()
    finally:
        await consumer.stop()
    expected = settings.count + (settings.warmup if settings.rate else 0)
    if got["acked"] != expected:
        raise RuntimeError(f"{settings.backend}: {got['acked']} acked of {expected}")
    return sent, got


# -- a place of its own for each run ----------------------------------------------------------


@contextlib.asynccontextmanager
async def place(backend: str) -> AsyncIterator[Settings]:
    """Settings naming fresh streams, keys or a control plane for ``backend``; all removed after."""
    name = secrets.token_hex(4)
    if backend == "embedded":
        async with control_plane() as (url, token):
            yield Settings(backend=backend, url=url, token=token)
        return
    prefix = {
        "jetstream": f"bench-{name}",
        "nats-raw": f"BENCH_RAW_{name}",
        "redis": f"meshkit-bench:{name}:",
        "redis-raw": f"meshkit-bench:{name}:raw",
    }[backend]
    url = REDIS_URL if backend.startswith("redis") else NATS_URL
    try:
        yield Settings(backend=backend, url=url, prefix=prefix)
    finally:
        if backend == "jetstream":
            await remove_streams(prefix.upper(), f"{prefix.upper()}_DLQ")
        elif backend == "nats-raw":
            await remove_streams(prefix)
        else:
            await remove_keys(prefix)


@contextlib.asynccontextmanager
async def control_plane() -> AsyncIterator[tuple[str, str]]:
    """A control plane of its own on core 1, in a temporary data directory: (url, token)."""
    token = secrets.token_urlsafe(24)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="meshkit-bus-bench-") as data:
        plane = spawn_control_plane(Path(data), token=token, port=port, prefix=pinned([], 1))
        try:
            await asyncio.to_thread(wait_answering, f"http://127.0.0.1:{port}/healthz")
            yield f"http://127.0.0.1:{port}", token
        finally:
            plane.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(plane.wait, 15)
            except subprocess.TimeoutExpired:
                plane.kill()
                plane.wait()


async def remove_streams(*names: str) -> None:
    client = await nats.connect(NATS_URL)
    try:
        js = client.jetstream()
        for name in names:
            with contextlib.suppress(StreamNotFoundError):
                await js.delete_stream(name)
    finally:
        await client.close()


async def remove_keys(prefix: str) -> None:
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.unlink(*keys)
    finally:
        await client.aclose()


# -- measurements ---------------------------------------------------------------------------


async def throughput(backend: str, count: int) -> float:
    """Messages a second, from the first publish to the last ack confirmed."""
    async with place(backend) as settings:
        run = msgspec.structs.replace(settings, topic="bench.throughput", count=count, batch=BATCH)
        sent, got = await run_pair(run, within=120 + count / 500)
    return count / (float(got["last_ack"]) - float(sent["start"]))


async def latency(backend: str, seconds: float) -> tuple[float, float]:
    """p50 and p99 in ms of ``RATE`` messages a second, send to arrival."""
    count = int(RATE * seconds)
    async with place(backend) as settings:
        run = msgspec.structs.replace(
            settings, topic="bench.latency", count=count, rate=RATE, warmup=WARMUP
        )
        _, got = await run_pair(run, within=60 + seconds)
    found: list[float] = got["latencies"]
    return percentile(found, 0.5) * 1000, percentile(found, 0.99) * 1000


async def sqlite_raw(count: int) -> dict[str, float]:
    """Seconds to write ``count`` messages to SQLite and to read them back, on core 1."""
    with tempfile.TemporaryDirectory(prefix="meshkit-bus-bench-") as data:
        side = await _Side.start(
            "sqlite", str(Path(data) / "raw.sqlite3"), str(count), str(BATCH), core=1
        )
        try:
            found: dict[str, float] = await side.result(120 + count / 500)
        finally:
            await side.stop()
    return found


def reachable(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


async def measure(*, quick: bool) -> list[Row]:
    count, seconds = (5_000, 1.0) if quick else (100_000, 10.0)
    rates = {backend: await throughput(backend, count) for backend in ORDER}
    sqlite = await sqlite_raw(count)
    paced = {backend: await latency(backend, seconds) for backend in ORDER}
    sqlite_rate = count / (sqlite["write"] + sqlite["read"])
    rows = [
        Row(f"{backend} end-to-end", rates[backend], "msg/s", rates[peer], LABELS[peer])
        for backend, peer in PEERS.items()
    ]
    rows += [
        Row(
            "embedded end-to-end vs raw SQLite",
            rates["embedded"],
            "msg/s",
            sqlite_rate,
            LABELS["sqlite"],
        ),
        Row("sqlite raw write+read", sqlite_rate, "msg/s"),
        Row("sqlite raw write", count / sqlite["write"], "msg/s"),
    ]
    for backend, peer in PEERS.items():
        for index, metric in enumerate(("p50", "p99")):
            rows.append(
                Row(
                    f"{backend} at 1,000 msg/s, latency {metric}",
                    paced[backend][index],
                    "ms",
                    paced[peer][index],
                    LABELS[peer],
                )
            )
    return rows


def main() -> None:
    parser = arguments(__doc__.splitlines()[0] if __doc__ else "bus benchmark")
    parser.add_argument("--quick", action="store_true", help="5,000 messages and 1 s paced")
    args = parser.parse_args()
    missing = [
        what
        for what, port in (
            ("NATS with JetStream at 127.0.0.1:4222", 4222),
            ("Redis at 127.0.0.1:6379", 6379),
        )
        if not reachable(port)
    ]
    if missing:
        raise SystemExit(f"benchmarks.bus needs {' and '.join(missing)}")
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})
    rows = uvloop.run(measure(quick=args.quick))
    count = 5_000 if args.quick else 100_000
    report(
        f"The bus end to end: {count:,} messages of {SIZE} B, batches of {BATCH};"
        f" latency at {RATE:,} msg/s",
        rows,
        args.json,
    )


if __name__ == "__main__":
    main()

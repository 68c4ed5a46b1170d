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
and acking them with the server's confirmation, as ``JetStreamBus`` does:
``+ACK`` to each message with a reply subject under one wildcard inbox, the
answers of the batch gathered, which measured faster than nats-py's
``ack_sync()`` gathered; nats-py's plain ``ack()`` confirms nothing), and
redis-py with hiredis on Streams (``XADD`` pipelined 500 at a time;
``XREADGROUP COUNT 500``, then one ``XACK`` for the batch); paced, each
message is a ``js.publish`` or an ``XADD`` of its own. The embedded broker's
reference is JetStream's raw figure (what the target names), and raw SQLite
gets rows of its own: one process appending the messages to the broker's
table with the broker's settings (WAL, ``synchronous=FULL``, no automatic
checkpoint), 500 a transaction, then reading them back 500 at a time, on
core 1 as the control plane (write+read, and the write alone).

What "durable" costs differs: the embedded broker fsyncs every commit (a
published batch is on the disk before it is acknowledged); JetStream 2.9
writes each message to the OS at once but fsyncs its files periodically
(every 2 minutes by default); and the Redis here keeps nothing on disk
(no RDB, no AOF), as Redis Streams are usually benchmarked.

Each run has servers of its own on free ports, pinned to core 1 as the
control plane is, each in a temporary data directory removed after it:
``nats-server -js`` (``GOMAXPROCS=1``), ``redis-server`` without
persistence, or the control plane. The publisher and consumer of every run
share core 0. The full run takes three rounds, every backend in each, each
raw client just before the backends it is the reference of, and reports the
median round of each (``--quick``: one round).

Needs nats-server and redis-server on PATH (Debian: apt-get install
nats-server redis-server); the machine's own servers are not used.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import uvloop

from benchmarks._bus_process import SIZE, Settings
from benchmarks._load import median_run, percentile, pinned, start_control_plane, stop, tied
from benchmarks._report import Row, arguments, report
from meshkit._net import free_port

ROOT = Path(__file__).resolve().parent.parent
BATCH = 500
RATE = 1000
WARMUP = 200
# The reference of each backend: the raw client of its engine.
PEERS = {"embedded": "nats-raw", "jetstream": "nats-raw", "redis": "redis-raw"}
LABELS = {
    "nats-raw": "nats-py on JetStream (raw)",
    "redis-raw": "redis-py on Streams (raw)",
    "sqlite": "raw SQLite write+read (WAL, synchronous=FULL: an fsync a commit)",
}
# A round's order: each raw client just before the backends it is the reference of.
ORDER = ("nats-raw", "embedded", "jetstream", "redis-raw", "redis")
SERVERS = ("nats-server", "redis-server")
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
        return cls(process, arguments[0])

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
    if got["acked"] != settings.expected:
        raise RuntimeError(f"{settings.backend}: {got['acked']} acked of {settings.expected}")
    return sent, got


# -- servers of each run's own ----------------------------------------------------------------


@contextlib.contextmanager
def place(backend: str) -> Iterator[Settings]:
    """Settings for one run of ``backend``, on a server of its own; stopped and removed after.

    Blocks while the server starts and stops: the loop has nothing else to do then.
    """
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="meshkit-bus-bench-") as data:
        if backend == "embedded":
            token = secrets.token_urlsafe(24)
            with serving(start_control_plane(Path(data), token, port), port):
                yield Settings(backend=backend, url=f"http://127.0.0.1:{port}", token=token)
            return
        if backend in ("jetstream", "nats-raw"):
            command = ["nats-server", "-js", "-sd", data, "-a", "127.0.0.1", "-p", str(port)]
            url = f"nats://127.0.0.1:{port}"
            # JetStreamBus names its streams from its prefix; nats-raw's is the stream.
            prefix = "bench" if backend == "jetstream" else "BENCH_RAW"
        else:
            command = [
                *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", data),
            ]
            url = f"redis://127.0.0.1:{port}/0"
            # RedisBus's prefix for its keys; redis-raw's is the stream's key.
            prefix = "meshkit-bench:" if backend == "redis" else "meshkit-bench:raw"
        with serving(start_server(command), port):
            yield Settings(backend=backend, url=url, prefix=prefix)


def start_server(command: list[str]) -> subprocess.Popen[bytes]:
    """``command`` on core 1, as the control plane; output discarded."""
    return subprocess.Popen(
        tied(pinned(command, 1)),
        env={**os.environ, "GOMAXPROCS": "1"},  # nats-server: one thread running Go, one core
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def serving(process: subprocess.Popen[bytes], port: int) -> Iterator[None]:
    """Once ``process`` accepts connections on ``port``; stopped after (SIGTERM, wait, kill)."""
    try:
        deadline = time.monotonic() + 60
        while not listening(port):
            if process.poll() is not None:
                raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{process.args!r} did not listen on {port} within 60 s")
            time.sleep(0.02)
        yield
    finally:
        stop(process)


def listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


# -- measurements ---------------------------------------------------------------------------


async def throughput(backend: str, count: int) -> dict[str, float]:
    """``rate``: messages a second, from the first publish to the last ack confirmed."""
    with place(backend) as settings:
        run = msgspec.structs.replace(settings, topic="bench.throughput", count=count, batch=BATCH)
        sent, got = await run_pair(run, within=120 + count / 500)
    return {"rate": count / (float(got["last_ack"]) - float(sent["start"]))}


async def latency(backend: str, seconds: float) -> dict[str, float]:
    """``p50`` and ``p99`` in ms of ``RATE`` messages a second, send to arrival."""
    count = int(RATE * seconds)
    with place(backend) as settings:
        run = msgspec.structs.replace(
            settings, topic="bench.latency", count=count, rate=RATE, warmup=WARMUP
        )
        _, got = await run_pair(run, within=60 + seconds)
    found: list[float] = got["latencies"]
    return {"p50": percentile(found, 0.5) * 1000, "p99": percentile(found, 0.99) * 1000}


async def sqlite_raw(count: int) -> dict[str, float]:
    """Seconds to write ``count`` messages to SQLite and to read them back, on core 1; the rate."""
    with tempfile.TemporaryDirectory(prefix="meshkit-bus-bench-") as data:
        side = await _Side.start(
            "sqlite", str(Path(data) / "raw.sqlite3"), str(count), str(BATCH), core=1
        )
        try:
            found: dict[str, float] = await side.result(120 + count / 500)
        finally:
            await side.stop()
    return {**found, "rate": count / (found["write"] + found["read"])}


async def measure(*, quick: bool) -> list[Row]:
    count, seconds, rounds = (5_000, 1.0, 1) if quick else (100_000, 10.0, 3)
    runs: dict[str, list[dict[str, float]]] = {}
    # Rounds, every backend in each: a neighbour's burst on this shared
    # machine then spoils one round of one backend, not the comparison.
    for _ in range(rounds):
        for backend in ORDER:
            runs.setdefault(backend, []).append(await throughput(backend, count))
        runs.setdefault("sqlite", []).append(await sqlite_raw(count))
        for backend in ORDER:
            runs.setdefault(f"{backend} paced", []).append(await latency(backend, seconds))
    rate = {name: median_run(runs[name], by="rate") for name in (*ORDER, "sqlite")}
    paced = {name: median_run(runs[f"{name} paced"], by="p99") for name in ORDER}
    sqlite = rate["sqlite"]
    rows = [
        Row(
            f"{backend} end-to-end",
            rate[backend]["rate"],
            "msg/s",
            rate[peer]["rate"],
            LABELS[peer],
        )
        for backend, peer in PEERS.items()
    ]
    rows += [
        Row(
            "embedded end-to-end vs raw SQLite",
            rate["embedded"]["rate"],
            "msg/s",
            sqlite["rate"],
            LABELS["sqlite"],
        ),
        Row("sqlite raw write+read", sqlite["rate"], "msg/s"),
        Row("sqlite raw write", count / sqlite["write"], "msg/s"),
    ]
    rows += [
        Row(
            f"{backend} at 1,000 msg/s, latency {metric}",
            paced[backend][metric],
            "ms",
            paced[peer][metric],
            LABELS[peer],
        )
        for backend, peer in PEERS.items()
        for metric in ("p50", "p99")
    ]
    return rows


def main() -> None:
    parser = arguments(__doc__.splitlines()[0] if __doc__ else "bus benchmark")
    parser.add_argument("--quick", action="store_true", help="5,000 messages, 1 s paced, one round")
    args = parser.parse_args()
    missing = [server for server in SERVERS if shutil.which(server) is None]
    if missing:
        raise SystemExit(
            f"benchmarks.bus needs {' and '.join(missing)}: apt-get install {' '.join(missing)}"
        )
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

"""One side of a bus benchmark: a publisher or a consumer, each a process of its own.

    python -m benchmarks._bus_process publish|consume SETTINGS_JSON
    python -m benchmarks._bus_process sqlite PATH COUNT BATCH

Started by ``benchmarks.bus``, which reads this module's protocol on stdout:
a line ``ready`` once connected (and, for a consumer, joined to its group),
then one line of JSON with the results. A publisher waits for a line on
stdin before its first publish, so both sides are set up when the clock
starts. The end of stdin means the parent is gone: a publisher then exits
instead of starting, and either side stops what it is doing and exits, so a
child never outlives the benchmark.

Backends: ``embedded`` (``RemoteBus`` to a control plane), ``jetstream``
(``JetStreamBus``), ``redis`` (``RedisBus``), each consumed through
``subscribe()`` with a no-op handler; ``nats-raw`` (nats-py on JetStream:
``publish_async`` with the acks of a batch gathered; a durable pull consumer
fetching batches and acking each message with the server's confirmation,
as ``JetStreamBus`` does) and ``redis-raw`` (redis-py with hiredis on
Streams: pipelined ``XADD``, ``XREADGROUP COUNT N`` then one ``XACK`` for
the batch).

Modes: with ``rate`` 0, ``count`` messages as fast as they go, in batches of
``batch``; with a ``rate``, ``warmup + count`` messages one at a time on an
absolute schedule, each published from a task of its own (a slow publish
delays no later one), the consumer timing each from the send time in its
payload to its arrival (``time.monotonic()``: CLOCK_MONOTONIC, one clock for
every process on the machine). A paced side runs with the collector off
once it is set up, as ``benchmarks._load``'s paced client does: its pauses
were this process's own p99, not the bus's.

Times are ``time.monotonic()`` seconds: the publisher reports when its first
publish started, the consumer when the backend confirmed its last ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import sqlite3
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import msgspec
import nats
import redis.asyncio
import uvloop
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from meshkit.bus import Bus, Consumer, Delivery, Message, RemoteBus, outgoing, subscribe
from meshkit.bus._log import _SCHEMA as _BROKER_SCHEMA
from meshkit.bus.nats import JetStreamBus
from meshkit.bus.redis import RedisBus
from meshkit.policy import Redelivery

__all__ = ["SIZE", "Settings"]

T = TypeVar("T")

# Every message's payload: a JSON document of exactly this many bytes.
SIZE = 200


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """One run of one backend, as both of its processes get it."""

    backend: str  # embedded, jetstream, redis, nats-raw, redis-raw
    url: str
    token: str = ""
    prefix: str = ""  # the bus's prefix; for nats-raw the stream, for redis-raw the stream key
    topic: str = "bench.orders"
    group: str = "bench"
    count: int = 5_000
    batch: int = 500  # messages a publish carries, and a raw fetch asks for
    concurrency: int = 500  # subscribe()'s handlers at once
    rate: int = 0  # messages a second, one at a time; 0: as fast as they go, in batches
    warmup: int = 0  # paced messages sent first and not timed

    @property
    def expected(self) -> int:
        """The messages the consumer acks: ``count``, and the warm-up too when paced."""
        return self.count + (self.warmup if self.rate else 0)


class _Stamp(msgspec.Struct):
    n: int
    sent: float


_stamp = msgspec.json.Decoder(_Stamp).decode


def payload(number: int, sent: float) -> bytes:
    """``{"n": number, "sent": sent, "pad": "xx..."}``, padded to exactly ``SIZE`` bytes."""
    head = b'{"n":%d,"sent":%r,"pad":"' % (number, sent)
    body = head + b"x" * (SIZE - len(head) - 2) + b'"}'
    assert len(body) == SIZE
    return body


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# -- the parent: stdin ---------------------------------------------------------------------


async def _parent() -> asyncio.StreamReader:
    """Stdin, read on the loop: the parent's ``go`` line, then its end when the parent dies."""
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    return reader


def _ready(settings: Settings) -> None:
    """Say ``ready``; a paced side goes on without the collector (see the module's docstring)."""
    if settings.rate:
        gc.disable()
    _say("ready")


async def _go(parent: asyncio.StreamReader) -> None:
    """Until the parent's line; exits instead if stdin ends first (the parent is gone)."""
    if not await parent.readline():
        raise SystemExit("benchmarks._bus_process: the parent is gone")


async def _unless_orphaned(parent: asyncio.StreamReader, work: Awaitable[T]) -> T:
    """``work``'s result; or, if stdin ends first (the parent is gone), ``work`` cancelled, exit."""
    working = asyncio.ensure_future(work)
    orphaned = asyncio.ensure_future(parent.read())  # everything up to the end
    await asyncio.wait((working, orphaned), return_when=asyncio.FIRST_COMPLETED)
    orphaned.cancel()
    if not working.done():
        working.cancel()
        await asyncio.wait((working,))
        raise SystemExit("benchmarks._bus_process: the parent is gone")
    return working.result()


# -- publishing: one loop, a connection per backend ------------------------------------------

One = Callable[[bytes], Coroutine[Any, Any, None]]  # publish one message, durably
Batch = Callable[[list[bytes]], Coroutine[Any, Any, None]]  # publish a batch, durably


async def _publish(settings: Settings, one: One, batch: Batch) -> dict[str, object]:
    """Once the parent says go, ``settings``' messages: when the first publish started."""
    parent = await _parent()
    _ready(settings)
    await _go(parent)
    start = time.monotonic()
    await _unless_orphaned(
        parent, _paced(one, settings) if settings.rate else _batched(batch, settings)
    )
    return {"start": start}


async def _batched(batch: Batch, settings: Settings) -> None:
    """``count`` messages in batches of ``batch``, each confirmed before the next."""
    for first in range(0, settings.count, settings.batch):
        now = time.monotonic()
        last = min(first + settings.batch, settings.count)
        await batch([payload(n, now) for n in range(first, last)])


async def _paced(one: One, settings: Settings) -> None:
    """``warmup + count`` messages at ``rate`` a second on an absolute schedule, a task each."""
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()
    start = time.monotonic()
    for n in range(settings.warmup + settings.count):
        delay = start + n / settings.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = loop.create_task(one(payload(n, time.monotonic())))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)


@contextlib.asynccontextmanager
async def _bus_sender(settings: Settings) -> AsyncIterator[tuple[One, Batch]]:
    bus = await _open(settings)
    try:
        # The first call opens the connection (RemoteBus connects lazily): a
        # message to another topic, which no group reads.
        await bus.publish_batch([outgoing(f"{settings.topic}.warm", b"{}")])

        async def one(body: bytes) -> None:
            await bus.publish_batch([outgoing(settings.topic, body)])

        async def batch(bodies: list[bytes]) -> None:
            await bus.publish_batch([outgoing(settings.topic, body) for body in bodies])

        yield one, batch
    finally:
        await bus.aclose()


@contextlib.asynccontextmanager
async def _nats_sender(settings: Settings) -> AsyncIterator[tuple[One, Batch]]:
    client, js = await _nats(settings)
    try:
        # Opens the async-reply inbox, to a subject the consumer does not read.
        await (await js.publish_async(f"{settings.topic}.warm", b"{}"))

        async def one(body: bytes) -> None:
            await js.publish(settings.topic, body)

        async def batch(bodies: list[bytes]) -> None:
            await asyncio.gather(*[await js.publish_async(settings.topic, body) for body in bodies])

        yield one, batch
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def _redis_sender(settings: Settings) -> AsyncIterator[tuple[One, Batch]]:
    client = redis.asyncio.Redis.from_url(settings.url)
    try:
        await client.ping()

        async def one(body: bytes) -> None:
            await client.xadd(settings.prefix, {"p": body})

        async def batch(bodies: list[bytes]) -> None:
            pipe = client.pipeline(transaction=False)
            for body in bodies:
                pipe.xadd(settings.prefix, {"p": body})
            await pipe.execute()

        yield one, batch
    finally:
        await client.aclose()


_SENDERS = {
    "embedded": _bus_sender,
    "jetstream": _bus_sender,
    "redis": _bus_sender,
    "nats-raw": _nats_sender,
    "redis-raw": _redis_sender,
}


# -- consuming -------------------------------------------------------------------------------


class _Tally:
    """What a consumer saw: acks confirmed, when the last one was, and the paced latencies."""

    def __init__(self, settings: Settings) -> None:
        self.expected = settings.expected
        self.warmup = settings.warmup
        self.paced = settings.rate > 0
        self.acked = 0
        self.last_ack = 0.0
        self.latencies: list[float] = []
        self.all_acked = asyncio.Event()

    def arrived(self, body: bytes, now: float) -> None:
        stamp = _stamp(body)
        if stamp.n >= self.warmup:
            self.latencies.append(now - stamp.sent)

    def confirmed(self, count: int) -> None:
        self.acked += count
        if self.acked >= self.expected and not self.all_acked.is_set():
            self.last_ack = time.monotonic()
            self.all_acked.set()

    def result(self) -> dict[str, object]:
        return {"acked": self.acked, "last_ack": self.last_ack, "latencies": self.latencies}


async def _open(settings: Settings) -> Bus:
    if settings.backend == "embedded":
        return RemoteBus(settings.url, token=settings.token)
    if settings.backend == "jetstream":
        return await JetStreamBus.open(settings.url, prefix=settings.prefix)
    if settings.backend == "redis":
        return RedisBus(settings.url, prefix=settings.prefix)
    raise SystemExit(f"no such bus backend: {settings.backend}")


class _CountedConsumer:
    """A consumer that reports each batch of acks once the backend has confirmed it."""

    def __init__(self, consumer: Consumer, acked: Callable[[int], None]) -> None:
        self._consumer = consumer
        self._acked = acked

    async def fetch(self, limit: int, *, wait: float) -> list[Delivery]:
        return await self._consumer.fetch(limit, wait=wait)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        await self._consumer.ack(deliveries)
        self._acked(len(deliveries))

    async def fail(self, delivery: Delivery, error: str) -> None:
        await self._consumer.fail(delivery, error)

    async def aclose(self) -> None:
        await self._consumer.aclose()


class _CountedBus:
    """``bus`` as a subscription uses it (``consumer`` alone), its consumers counted."""

    def __init__(self, bus: Bus, acked: Callable[[int], None]) -> None:
        self._bus = bus
        self._acked = acked

    async def consumer(self, topic: str, group: str, *, redelivery: Redelivery) -> Consumer:
        inner = await self._bus.consumer(topic, group, redelivery=redelivery)
        return _CountedConsumer(inner, self._acked)


async def _consume_bus(settings: Settings) -> dict[str, object]:
    tally = _Tally(settings)
    bus = await _open(settings)

    async def handler(message: Message) -> None:
        # A no-op but for reading the send time when paced.
        if tally.paced:
            tally.arrived(message.payload, time.monotonic())

    try:
        # A Subscription calls nothing of its bus but ``consumer``.
        counted = cast(Bus, _CountedBus(bus, tally.confirmed))
        subscription = subscribe(
            counted, settings.topic, settings.group, handler, concurrency=settings.concurrency
        )
        await subscription.start()
        try:
            parent = await _parent()
            _ready(settings)
            await _unless_orphaned(parent, tally.all_acked.wait())
        finally:
            await subscription.aclose(grace=5)
    finally:
        await bus.aclose()
    return tally.result()


# A raw client's two steps: up to ``batch`` messages as (payload, handle), [] when none came
# within a second; and acking the handles, returning once the server has confirmed them.
Fetch = Callable[[], Awaitable[list[tuple[bytes, Any]]]]
Ack = Callable[[list[Any]], Awaitable[None]]


async def _consume_raw(settings: Settings, fetch: Fetch, ack: Ack) -> dict[str, object]:
    tally = _Tally(settings)

    async def drain() -> None:
        while tally.acked < tally.expected:
            found = await fetch()
            if tally.paced:
                now = time.monotonic()
                for body, _ in found:
                    tally.arrived(body, now)
            if found:
                await ack([handle for _, handle in found])
                tally.confirmed(len(found))

    parent = await _parent()
    _ready(settings)
    await _unless_orphaned(parent, drain())
    return tally.result()


async def _nats(settings: Settings) -> tuple[Any, Any]:
    client = await nats.connect(settings.url)
    js = client.jetstream()
    # As JetStreamBus makes its stream: on file. The second subject takes the warm-up.
    subjects = [settings.topic, f"{settings.topic}.warm"]
    await js.add_stream(
        StreamConfig(
            name=settings.prefix, subjects=subjects, storage=StorageType.FILE, allow_direct=True
        )
    )
    return client, js


@contextlib.asynccontextmanager
async def _nats_receiver(settings: Settings) -> AsyncIterator[tuple[Fetch, Ack]]:
    client, js = await _nats(settings)
    try:
        subscription = await js.pull_subscribe(
            settings.topic,
            durable=settings.group,
            stream=settings.prefix,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL),
        )
        confirm = await _Confirmations.start(client)

        async def fetch() -> list[tuple[bytes, Any]]:
            try:
                messages = await subscription.fetch(settings.batch, timeout=1.0)
            except (NatsTimeout, TimeoutError):
                return []
            return [(message.data, message.reply) for message in messages]

        async def ack(replies: list[Any]) -> None:
            await confirm.ask(replies, b"+ACK")

        yield fetch, ack
    finally:
        await client.close()


class _Confirmations:
    """Requests whose answers come to one wildcard inbox: a batch sent whole, its answers gathered.

    JetStream answers an ack that carries a reply subject once it has
    applied it. nats-py's own ``ack()`` carries none and waits for nothing;
    its ``ack_sync()`` is a request each, with a task each to overlap them.
    This is ``JetStreamBus``'s way, in the fewest lines, and the faster of
    the two here: 500 acks confirmed in 4.5 ms against 15 ms for 500
    ``ack_sync()`` gathered (a pull consumer of 20,000 messages, nats-server
    2.9 on a core of its own, three runs each).
    """

    def __init__(self, client: Any, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._tokens = itertools.count()
        self._waiting: dict[str, asyncio.Future[None]] = {}

    @classmethod
    async def start(cls, client: Any) -> _Confirmations:
        confirmations = cls(client, f"{client.new_inbox()}.")
        await client.subscribe(f"{confirmations._prefix}*", cb=confirmations._answered)
        return confirmations

    async def _answered(self, message: Any) -> None:
        future = self._waiting.pop(message.subject, None)
        if future is not None and not future.done():
            future.set_result(None)

    async def ask(self, subjects: list[str], body: bytes) -> None:
        """``body`` to each subject; returns once every one has answered (or raises after 10 s)."""
        loop = asyncio.get_running_loop()
        futures = []
        for subject in subjects:
            reply = f"{self._prefix}{next(self._tokens):x}"
            self._waiting[reply] = future = loop.create_future()
            futures.append(future)
            await self._client.publish(subject, body, reply=reply)
        async with asyncio.timeout(10):
            await asyncio.gather(*futures)


@contextlib.asynccontextmanager
async def _redis_receiver(settings: Settings) -> AsyncIterator[tuple[Fetch, Ack]]:
    # Any: redis-py types XREADGROUP's answer as whatever any command may return.
    client: Any = redis.asyncio.Redis.from_url(settings.url)
    stream = settings.prefix
    try:
        await client.xgroup_create(stream, settings.group, id="0", mkstream=True)

        async def fetch() -> list[tuple[bytes, Any]]:
            answer = await client.xreadgroup(
                settings.group, "raw-1", {stream: ">"}, count=settings.batch, block=1000
            )
            if not answer:
                return []
            [(_, entries)] = answer
            return [(fields[b"p"], entry_id) for entry_id, fields in entries]

        async def ack(entry_ids: list[Any]) -> None:
            await client.xack(stream, settings.group, *entry_ids)

        yield fetch, ack
    finally:
        await client.aclose()


_RECEIVERS = {"nats-raw": _nats_receiver, "redis-raw": _redis_receiver}


async def _run(role: str, settings: Settings) -> dict[str, object]:
    if role == "publish":
        async with _SENDERS[settings.backend](settings) as (one, batch):
            return await _publish(settings, one, batch)
    if settings.backend in _RECEIVERS:
        async with _RECEIVERS[settings.backend](settings) as (fetch, ack):
            return await _consume_raw(settings, fetch, ack)
    return await _consume_bus(settings)


# -- SQLite, raw --------------------------------------------------------------------------------


def sqlite_raw(path: Path, count: int, batch: int) -> dict[str, object]:
    """Append ``count`` messages in transactions of ``batch``, then read them back in ``batch``es.

    The embedded broker's schema and settings: WAL, ``synchronous=FULL`` (an
    fsync a commit) and no automatic checkpoints (the broker runs its own, in
    the background; here there is none). Times in seconds.
    """
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA synchronous=FULL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.executescript(_BROKER_SCHEMA)
    topic = "bench.orders"
    start = time.monotonic()
    for first in range(0, count, batch):
        now = time.time()
        rows = [
            (topic, uuid.uuid4().hex, None, b"{}", payload(n, now), now)
            for n in range(first, min(first + batch, count))
        ]
        writer.execute("BEGIN IMMEDIATE")
        writer.executemany(
            "INSERT INTO messages (topic, id, key, headers, payload, published)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
        writer.execute("COMMIT")
    written = time.monotonic()
    reader = sqlite3.connect(path, isolation_level=None)
    cursor, read = 0, 0
    while True:
        found = reader.execute(
            "SELECT sequence, id, topic, key, headers, payload, published FROM messages"
            " WHERE topic = ? AND sequence >= ? ORDER BY sequence LIMIT ?",
            (topic, cursor, batch),
        ).fetchall()
        if not found:
            break
        read += len(found)
        cursor = found[-1][0] + 1
    end = time.monotonic()
    writer.close()
    reader.close()
    if read != count:
        raise RuntimeError(f"read back {read} of {count} rows")
    return {"write": written - start, "read": end - written}


# -- main -----------------------------------------------------------------------------------------


def main() -> None:
    role = sys.argv[1]
    if role == "sqlite":
        found = sqlite_raw(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        found = uvloop.run(_run(role, msgspec.json.decode(sys.argv[2], type=Settings)))
    _say(msgspec.json.encode(found).decode())


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()

"""One side of a bus benchmark: a publisher or a consumer, each a process of its own.

    python -m benchmarks._bus_process publish|consume SETTINGS_JSON
    python -m benchmarks._bus_process sqlite PATH COUNT BATCH

Started by ``benchmarks.bus``, which reads this module's protocol on stdout:
a line ``ready`` once connected (and, for a consumer, joined to its group),
then one line of JSON with the results. A publisher waits for a line on
stdin before its first publish, so both sides are set up when the clock
starts.

Backends: ``embedded`` (``RemoteBus`` to a control plane), ``jetstream``
(``JetStreamBus``), ``redis`` (``RedisBus``), each consumed through
``subscribe()`` with a no-op handler; ``nats-raw`` (nats-py on JetStream:
``publish_async`` with the acks of a batch gathered, a durable pull consumer
fetching batches and acking each message) and ``redis-raw`` (redis-py with
hiredis on Streams: pipelined ``XADD``, ``XREADGROUP COUNT N`` then one
``XACK`` for the batch).

Modes: with ``rate`` 0, ``count`` messages as fast as they go, in batches of
``batch``; with a ``rate``, ``warmup + count`` messages one at a time on an
absolute schedule, each published from a task of its own (a slow publish
delays no later one), the consumer timing each from the send time in its
payload to its arrival (``time.monotonic()``: CLOCK_MONOTONIC, one clock for
every process on the machine).

Times are ``time.monotonic()`` seconds: the publisher reports when its first
publish started, the consumer when the backend confirmed its last ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import nats
import redis.asyncio
import uvloop
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from meshkit.bus import (
    Bus,
    Consumer,
    DeadLetter,
    Delivery,
    Message,
    Outgoing,
    Published,
    RemoteBus,
    outgoing,
    subscribe,
)
from meshkit.bus.nats import JetStreamBus
from meshkit.bus.redis import RedisBus
from meshkit.policy import Redelivery

__all__ = ["SIZE", "Settings", "payload"]

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


async def _go() -> None:
    """Until the parent writes a line on stdin."""
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


# -- meshkit's buses ---------------------------------------------------------------------


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
    """``bus``, its consumers counted (see ``_CountedConsumer``); the rest passed through."""

    def __init__(self, bus: Bus, acked: Callable[[int], None]) -> None:
        self._bus = bus
        self._acked = acked

    async def consumer(self, topic: str, group: str, *, redelivery: Redelivery) -> Consumer:
        inner = await self._bus.consumer(topic, group, redelivery=redelivery)
        return _CountedConsumer(inner, self._acked)

    async def publish(
        self,
        topic: str,
        payload: object,
        *,
        headers: Mapping[str, str] | None = None,
        key: str | None = None,
        message_id: str | None = None,
    ) -> Published:
        return await self._bus.publish(
            topic, payload, headers=headers, key=key, message_id=message_id
        )

    async def publish_batch(self, messages: Sequence[Outgoing]) -> list[Published]:
        return await self._bus.publish_batch(messages)

    async def dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:
        return await self._bus.dead_letters(limit=limit)

    async def dead_letter(self, letter_id: str) -> DeadLetter:
        return await self._bus.dead_letter(letter_id)

    async def replay(self, letter_id: str) -> None:
        await self._bus.replay(letter_id)

    async def purge(self, ids: Sequence[str] | None = None) -> int:
        return await self._bus.purge(ids)

    async def aclose(self) -> None:
        await self._bus.aclose()


class _Tally:
    """What a consumer saw: acks confirmed, when the last one was, and the paced latencies."""

    def __init__(self, settings: Settings) -> None:
        self.expected = settings.count + (settings.warmup if settings.rate else 0)
        self.warmup = settings.warmup
        self.paced = settings.rate > 0
        self.acked = 0
        self.last_ack = 0.0
        self.latencies: list[float] = []
        self.all_acked = asyncio.Event()

    def arrived(self, body: bytes, now: float) -> None:
        if self.paced:
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


async def _consume_bus(settings: Settings) -> dict[str, object]:
    tally = _Tally(settings)
    bus = await _open(settings)

    async def handler(message: Message) -> None:
        # A no-op but for reading the send time when paced.
        if tally.paced:
            tally.arrived(message.payload, time.monotonic())

    try:
        subscription = subscribe(
            _CountedBus(bus, tally.confirmed),
            settings.topic,
            settings.group,
            handler,
            concurrency=settings.concurrency,
        )
        await subscription.start()
        try:
            _say("ready")
            await tally.all_acked.wait()
        finally:
            await subscription.aclose(grace=5)
    finally:
        await bus.aclose()
    return tally.result()


async def _publish_bus(settings: Settings) -> dict[str, object]:
    bus = await _open(settings)
    try:
        # The first call opens the connection (RemoteBus connects lazily): a
        # message to another topic, which no group reads.
        await bus.publish_batch([outgoing(f"{settings.topic}.warm", b"{}")])
        _say("ready")
        await _go()
        if settings.rate:

            async def one(body: bytes) -> None:
                await bus.publish_batch([outgoing(settings.topic, body)])

            return await _paced(one, settings)
        start = time.monotonic()
        for first in range(0, settings.count, settings.batch):
            now = time.monotonic()
            last = min(first + settings.batch, settings.count)
            await bus.publish_batch(
                [outgoing(settings.topic, payload(n, now)) for n in range(first, last)]
            )
        return {"start": start, "end": time.monotonic()}
    finally:
        await bus.aclose()


async def _paced(
    send: Callable[[bytes], Coroutine[Any, Any, None]], settings: Settings
) -> dict[str, object]:
    """``warmup + count`` messages at ``rate`` a second on an absolute schedule, a task each."""
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()
    total = settings.warmup + settings.count
    start = time.monotonic()
    for n in range(total):
        delay = start + n / settings.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = loop.create_task(send(payload(n, time.monotonic())))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    return {"start": start, "end": time.monotonic()}


# -- nats-py on JetStream, raw -------------------------------------------------------------


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


async def _consume_nats(settings: Settings) -> dict[str, object]:
    tally = _Tally(settings)
    client, js = await _nats(settings)
    try:
        subscription = await js.pull_subscribe(
            settings.topic,
            durable=settings.group,
            stream=settings.prefix,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL),
        )
        _say("ready")
        while tally.acked < tally.expected:
            try:
                messages = await subscription.fetch(settings.batch, timeout=1.0)
            except (NatsTimeout, TimeoutError):
                continue
            now = time.monotonic()
            for message in messages:
                tally.arrived(message.data, now)
                await message.ack()  # nats-py's ack: sent, not confirmed
            if tally.acked + len(messages) >= tally.expected:
                await client.flush()  # the server has every ack: one round trip at the end
            tally.confirmed(len(messages))
    finally:
        await client.close()
    return tally.result()


async def _publish_nats(settings: Settings) -> dict[str, object]:
    client, js = await _nats(settings)
    try:
        # Opens the async-reply inbox, to a subject the consumer does not read.
        await (await js.publish_async(f"{settings.topic}.warm", b"{}"))
        _say("ready")
        await _go()
        if settings.rate:

            async def one(body: bytes) -> None:
                await js.publish(settings.topic, body)

            return await _paced(one, settings)
        start = time.monotonic()
        for first in range(0, settings.count, settings.batch):
            now = time.monotonic()
            last = min(first + settings.batch, settings.count)
            acks = [
                await js.publish_async(settings.topic, payload(n, now)) for n in range(first, last)
            ]
            await asyncio.gather(*acks)
        return {"start": start, "end": time.monotonic()}
    finally:
        await client.close()


# -- redis-py on Streams, raw ------------------------------------------------------------------


def _redis(settings: Settings) -> Any:
    return redis.asyncio.Redis.from_url(settings.url)


async def _consume_redis(settings: Settings) -> dict[str, object]:
    tally = _Tally(settings)
    client = _redis(settings)
    stream = settings.prefix
    try:
        await client.xgroup_create(stream, settings.group, id="0", mkstream=True)
        _say("ready")
        while tally.acked < tally.expected:
            answer = await client.xreadgroup(
                settings.group, "raw-1", {stream: ">"}, count=settings.batch, block=1000
            )
            if not answer:
                continue
            [(_, entries)] = answer
            now = time.monotonic()
            for _, fields in entries:
                tally.arrived(fields[b"p"], now)
            await client.xack(stream, settings.group, *(entry_id for entry_id, _ in entries))
            tally.confirmed(len(entries))
    finally:
        await client.aclose()
    return tally.result()


async def _publish_redis(settings: Settings) -> dict[str, object]:
    client = _redis(settings)
    stream = settings.prefix
    try:
        await client.ping()
        _say("ready")
        await _go()
        if settings.rate:

            async def one(body: bytes) -> None:
                await client.xadd(stream, {"p": body})

            return await _paced(one, settings)
        start = time.monotonic()
        for first in range(0, settings.count, settings.batch):
            now = time.monotonic()
            pipe = client.pipeline(transaction=False)
            for n in range(first, min(first + settings.batch, settings.count)):
                pipe.xadd(stream, {"p": payload(n, now)})
            await pipe.execute()
        return {"start": start, "end": time.monotonic()}
    finally:
        await client.aclose()


# -- SQLite, raw --------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE messages (
    sequence INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    id TEXT NOT NULL,
    key TEXT,
    headers BLOB NOT NULL,
    payload BLOB NOT NULL,
    published REAL NOT NULL
);
CREATE INDEX messages_by_topic ON messages (topic, sequence);
"""


def sqlite_raw(path: Path, count: int, batch: int) -> dict[str, object]:
    """Append ``count`` messages in transactions of ``batch``, then read them back in ``batch``es.

    The embedded broker's table and index, WAL, ``synchronous=FULL`` (an
    fsync a commit), SQLite's own checkpoints. Times in seconds.
    """
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA synchronous=FULL")
    writer.executescript(_SCHEMA)
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

_ROLES: dict[tuple[str, str], Callable[[Settings], Coroutine[Any, Any, dict[str, object]]]] = {
    **{("consume", name): _consume_bus for name in ("embedded", "jetstream", "redis")},
    **{("publish", name): _publish_bus for name in ("embedded", "jetstream", "redis")},
    ("consume", "nats-raw"): _consume_nats,
    ("publish", "nats-raw"): _publish_nats,
    ("consume", "redis-raw"): _consume_redis,
    ("publish", "redis-raw"): _publish_redis,
}


def main() -> None:
    role = sys.argv[1]
    if role == "sqlite":
        found = sqlite_raw(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        settings = msgspec.json.decode(sys.argv[2], type=Settings)
        found = uvloop.run(_ROLES[role, settings.backend](settings))
    _say(msgspec.json.encode(found).decode())


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()

"""The bus on Redis Streams: for services spread over machines that already run Redis.

Layout, under ``prefix`` (default ``meshkit:bus:``):

    s:{topic}             the topic's stream; each consumer group is a Redis consumer group
    due:{topic}:{group}   sorted set: entries waiting out a backoff, scored by due time (ms)
    id:{topic}:{id}       a given message id, kept for the duplicate window (SET NX PX)
    dlq                   the dead-letter stream

A group is created at ``0``, so it starts at the earliest entry the stream
keeps. A member reads new entries with ``XREADGROUP``; they stay in the
group's pending list until acked. A failed entry stays pending too, parked
in the due set until its backoff ends, when whichever member fetches next
claims it (``XCLAIM``, which counts the delivery). Entries whose member went
silent for ``ack_wait`` are claimed from the pending list by a script that
skips the parked ones: ``XAUTOCLAIM`` cannot skip them, and would take a
parked entry as soon as its backoff outlasts ``ack_wait``, counting a
delivery nobody made. The pending list's delivery count decides the
dead-letter move, so a member killed on a message's last delivery still
sends it to the dead-letter queue, and every move is one atomic script.

Durability is the Redis server's: a publish returns once Redis has the entry
in memory. For the embedded broker's guarantee (on disk before the
acknowledgement), run Redis with ``appendonly yes`` and ``appendfsync
always``. Needs the ``redis`` extra (``pip install 'meshkit[redis]'``).
"""

from __future__ import annotations

import importlib
import os
import re
import socket
import uuid
from collections.abc import Sequence
from typing import Any

import msgspec

from meshkit._clock import Clock, SystemClock
from meshkit._optional import require
from meshkit.bus._model import (
    DUPLICATE_WINDOW,
    REPLAY_HEADER,
    DeadLetter,
    Delivery,
    Message,
    Outgoing,
    Published,
    check_group,
    check_limit,
    check_redelivery,
    check_topic,
    clip_error,
    expired_error,
)
from meshkit.bus._protocol import PublishOne
from meshkit.errors import ConfigError, EnvironmentFaultError, NotFoundError
from meshkit.policy import Redelivery
from meshkit.ratelimit.redis import check_url

__all__ = ["RedisBus"]

_encode = msgspec.json.encode
_decode_headers = msgspec.json.Decoder(dict[str, str]).decode
_ENTRY_ID = re.compile(r"\d{1,20}(-\d{1,20})?")
# The longest a fetch blocks in one XREADGROUP before it looks for due and
# abandoned entries again; the client's socket timeout must exceed it.
_MAX_BLOCK = 5.0

# KEYS: stream, dedup key. ARGV: id, payload, headers, key ('' for none),
# published, given ('1' or '0'), window (ms). Returns 1 if appended, 0 for a repeat.
_PUBLISH = """
if ARGV[6] == '1' and not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[7]) then
  return 0
end
redis.call('XADD', KEYS[1], '*', 'id', ARGV[1], 'p', ARGV[2], 'h', ARGV[3], 'k', ARGV[4],
           't', ARGV[5])
return 1
"""

# KEYS: stream, due set. ARGV: group, consumer, now (ms), room, ack_wait (ms),
# max_deliveries. Claims for this consumer, up to ``room`` entries: first the
# parked ones now due, then those pending longer than ack_wait that are not
# parked. Returns {claimed, last, next_due}: claimed is {id, fields, count}
# per entry; last lists entries whose final delivery ran out (claimed too,
# for the caller to dead-letter); next_due is the earliest due time left.
_CLAIM = """
local group, me, now, room = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local claimed, last = {}, {}
local function take(ids, min_idle)
  if #ids == 0 then return end
  for _, entry in ipairs(redis.call('XCLAIM', KEYS[1], group, me, min_idle, unpack(ids))) do
    local info = redis.call('XPENDING', KEYS[1], group, entry[1], entry[1], 1)[1]
    claimed[#claimed + 1] = {entry[1], entry[2], info[4]}
  end
end
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, room)
if #due > 0 then
  redis.call('ZREM', KEYS[2], unpack(due))
  take(due, 0)
end
room = room - #claimed
if room > 0 then
  local abandoned, over = {}, {}
  local start = '-'
  for _ = 1, 10 do
    local page = redis.call('XPENDING', KEYS[1], group, 'IDLE', ARGV[5], start, '+', 100)
    for _, p in ipairs(page) do
      if #abandoned < room and not redis.call('ZSCORE', KEYS[2], p[1]) then
        if tonumber(p[4]) >= tonumber(ARGV[6]) then over[#over + 1] = p[1]
        else abandoned[#abandoned + 1] = p[1] end
      end
    end
    if #page < 100 or #abandoned >= room then break end
    start = '(' .. page[#page][1]
  end
  take(abandoned, ARGV[5])
  if #over > 0 then
    for _, entry in ipairs(redis.call('XCLAIM', KEYS[1], group, me, ARGV[5], unpack(over))) do
      last[#last + 1] = {entry[1], entry[2], ARGV[6]}
    end
  end
end
local next_due = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')[2] or ''
return {claimed, last, next_due}
"""

# KEYS: stream, due set. ARGV: group, consumer, entry id, deliveries, due (ms).
# Parks a failed entry until ``due``, if this consumer still holds that delivery.
_PARK = """
local info = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)[1]
if not info or info[2] ~= ARGV[2] or tostring(info[4]) ~= ARGV[4] then return 0 end
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[3])
return 1
"""

# KEYS: stream, due set, dead-letter stream. ARGV: group, consumer, entry id,
# deliveries ('' to skip the holder check), then the dead letter's fields.
_DEAD = """
if ARGV[4] ~= '' then
  local info = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)[1]
  if not info or info[2] ~= ARGV[2] or tostring(info[4]) ~= ARGV[4] then return 0 end
end
redis.call('XADD', KEYS[3], '*', unpack(ARGV, 5))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[3])
return 1
"""

# KEYS: dead-letter stream, topic stream. ARGV: dead letter id, then the
# entry's fields. Appends only if this call removed the dead letter.
_REPLAY = """
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
return 1
"""


def _redis() -> Any:
    return require("redis.asyncio", extra="redis", what="the bus on Redis")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _fields(flat: Sequence[bytes]) -> dict[str, bytes]:
    return {_text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}


def _message(fields: dict[str, bytes], topic: str, deliveries: int) -> Message:
    key = fields.get("k", b"")
    return Message(
        id=_text(fields["id"]),
        topic=topic,
        payload=fields["p"],
        headers=_decode_headers(fields["h"]),
        key=_text(key) if key else None,
        published=float(fields["t"]),
        deliveries=deliveries,
    )


def _check_entry_id(letter_id: object) -> str:
    """A stream entry id, ``ms-seq``; a bare ``ms`` is ``ms-0``, as Redis reads it."""
    if not isinstance(letter_id, str) or _ENTRY_ID.fullmatch(letter_id) is None:
        raise ConfigError(
            "id", f"a dead letter id on Redis looks like 1700000000000-0, got {letter_id!r}"
        )
    return letter_id if "-" in letter_id else f"{letter_id}-0"


class RedisBus(PublishOne):
    """A ``Bus`` on the Redis at ``url`` (``redis://host:port/db``).

    ``max_length`` caps each topic's stream (``XADD MAXLEN ~``); without it
    streams keep every entry, and a new group can start at the first.
    ``timeout`` bounds connecting and each call that does not block.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "meshkit:bus:",
        window: float = DUPLICATE_WINDOW,
        timeout: float = 5.0,
        clock: Clock | None = None,
    ) -> None:
        self.url = check_url("url", url)
        self.prefix = prefix
        self._window_ms = round(window * 1000)
        self._clock = clock or SystemClock()
        aioredis = _redis()
        self._errors: tuple[type[BaseException], ...] = (
            importlib.import_module("redis.exceptions").RedisError,
            OSError,
        )
        try:
            self._client = aioredis.Redis.from_url(
                url,
                socket_connect_timeout=timeout,
                # A blocking read waits up to _MAX_BLOCK on the same sockets.
                socket_timeout=timeout + _MAX_BLOCK,
            )
        except ValueError as error:
            raise ConfigError("url", f"{url!r}: {error}") from error
        self._publish = self._client.register_script(_PUBLISH)
        self.claim = self._client.register_script(_CLAIM)
        self.park = self._client.register_script(_PARK)
        self.dead = self._client.register_script(_DEAD)
        self._replay = self._client.register_script(_REPLAY)
        self.dlq = f"{prefix}dlq"

    def stream(self, topic: str) -> str:
        return f"{self.prefix}s:{topic}"

    def due(self, topic: str, group: str) -> str:
        return f"{self.prefix}due:{topic}:{group}"

    def failed(self, error: BaseException) -> EnvironmentFaultError:
        return EnvironmentFaultError(f"the bus's Redis at {self.url} failed: {error}")

    async def call(self, command: Any) -> Any:
        """Await one Redis call, translating its failure."""
        try:
            return await command
        except self._errors as error:
            raise self.failed(error) from error

    # -- publishing ---------------------------------------------------------------

    async def publish_batch(self, messages: Sequence[Outgoing]) -> list[Published]:
        if not messages:
            return []
        published = repr(self._clock.time())
        pipe = self._client.pipeline(transaction=False)
        for m in messages:
            await self._publish(
                keys=[self.stream(m.topic), f"{self.prefix}id:{m.topic}:{m.id}"],
                args=[
                    m.id,
                    m.payload,
                    _encode(m.headers),
                    m.key or "",
                    published,
                    "1" if m.given_id else "0",
                    self._window_ms,
                ],
                client=pipe,
            )
        appended = await self.call(pipe.execute())
        return [
            Published(id=m.id, duplicate=added == 0)
            for m, added in zip(messages, appended, strict=True)
        ]

    # -- groups ---------------------------------------------------------------------

    async def consumer(self, topic: str, group: str, *, redelivery: Redelivery) -> RedisConsumer:
        check_topic(topic)
        check_group(group)
        check_redelivery(redelivery)
        try:
            await self._client.xgroup_create(self.stream(topic), group, id="0", mkstream=True)
        except self._errors as error:
            if "BUSYGROUP" not in str(error):  # the group exists: join it
                raise self.failed(error) from error
        name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        return RedisConsumer(self, topic, group, name, redelivery, self._clock)

    # -- dead letters -----------------------------------------------------------------

    async def dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:
        check_limit(limit)
        entries = await self.call(self._client.xrange(self.dlq, count=limit))
        return [_dead_letter(entry_id, fields) for entry_id, fields in entries]

    async def dead_letter(self, letter_id: str) -> DeadLetter:
        entry_id = _check_entry_id(letter_id)
        entries = await self.call(self._client.xrange(self.dlq, entry_id, entry_id))
        if not entries:
            raise NotFoundError(f"no dead letter has id {letter_id!r}")
        return _dead_letter(*entries[0])

    async def replay(self, letter_id: str) -> None:
        letter = await self.dead_letter(letter_id)
        message = letter.message
        headers = {**message.headers, REPLAY_HEADER: letter.group}
        fields = ["id", message.id, "p", message.payload, "h", _encode(headers)]
        fields += ["k", message.key or "", "t", repr(self._clock.time())]
        replayed = await self.call(
            self._replay(keys=[self.dlq, self.stream(message.topic)], args=[letter.id, *fields])
        )
        if not replayed:
            raise NotFoundError(f"no dead letter has id {letter_id!r}")  # replayed meanwhile

    async def purge(self, ids: Sequence[str] | None = None) -> int:
        if ids is None:
            pipe = self._client.pipeline(transaction=True)
            pipe.xlen(self.dlq)
            pipe.delete(self.dlq)
            held, _ = await self.call(pipe.execute())
            return int(held)
        checked = [_check_entry_id(letter_id) for letter_id in ids]
        if not checked:
            return 0
        return int(await self.call(self._client.xdel(self.dlq, *checked)))

    async def aclose(self) -> None:
        await self._client.aclose()


def _dead_letter(entry_id: bytes | str, raw: dict[bytes, bytes]) -> DeadLetter:
    fields = {_text(k): v for k, v in raw.items()}
    deliveries = int(fields["n"])
    return DeadLetter(
        id=_text(entry_id),
        group=_text(fields["g"]),
        message=_message(fields, _text(fields["topic"]), deliveries),
        deliveries=deliveries,
        error=_text(fields["e"]),
        failed=float(fields["f"]),
    )


class RedisConsumer:
    """One member of a group: a Redis consumer name of its own in the topic's consumer group."""

    def __init__(
        self,
        bus: RedisBus,
        topic: str,
        group: str,
        name: str,
        redelivery: Redelivery,
        clock: Clock,
    ) -> None:
        self._bus = bus
        self._topic = topic
        self._group = group
        self._name = name
        self._redelivery = redelivery
        self._clock = clock
        self._stream = bus.stream(topic)
        self._due = bus.due(topic, group)
        self._client = bus._client
        self._ack_wait_ms = round(redelivery.ack_wait * 1000)
        # How often a waiting fetch looks for entries abandoned by silent members.
        self._recheck = min(max(redelivery.ack_wait / 4, 0.05), _MAX_BLOCK)
        self._held: dict[str, tuple[dict[str, bytes], int]] = {}

    async def fetch(self, limit: int, *, wait: float) -> list[Delivery]:
        check_limit(limit)
        deadline = self._clock.monotonic() + wait
        while True:
            found, next_due = await self._claim(limit)
            room = limit - len(found)
            block = 0.0
            if not found:
                block = min(deadline - self._clock.monotonic(), self._recheck)
                if next_due is not None:
                    block = min(block, next_due - self._clock.time())
            if room > 0:
                found += await self._read(room, block)
            if found or self._clock.monotonic() >= deadline:
                return await self._deliver(found)

    async def _claim(
        self, room: int
    ) -> tuple[list[tuple[str, dict[str, bytes], int]], float | None]:
        claimed, last, next_due = await self._bus.call(
            self._bus.claim(
                keys=[self._stream, self._due],
                args=[
                    self._group,
                    self._name,
                    int(self._clock.time() * 1000),
                    room,
                    self._ack_wait_ms,
                    self._redelivery.max_deliveries,
                ],
            )
        )
        error = expired_error(self._redelivery.ack_wait)
        for entry_id, flat, deliveries in last:
            await self._dead_letter(
                _text(entry_id), _fields(flat), int(deliveries), error, check=False
            )
        entries = [(_text(e), _fields(flat), int(n)) for e, flat, n in claimed]
        return entries, float(next_due) / 1000 if next_due else None

    async def _read(self, room: int, block: float) -> list[tuple[str, dict[str, bytes], int]]:
        block_ms = max(round(block * 1000), 0)
        answer = await self._bus.call(
            self._client.xreadgroup(
                self._group, self._name, {self._stream: ">"}, count=room, block=block_ms or None
            )
        )
        if not answer:
            return []
        [(_, entries)] = answer
        return [(_text(e), {_text(k): v for k, v in raw.items()}, 1) for e, raw in entries]

    async def _deliver(self, found: list[tuple[str, dict[str, bytes], int]]) -> list[Delivery]:
        deliveries: list[Delivery] = []
        passed: list[str] = []
        for entry_id, fields, count in found:
            message = _message(fields, self._topic, count)
            if not message.for_group(self._group):
                passed.append(entry_id)
                continue
            self._held[entry_id] = (fields, count)
            deliveries.append(Delivery(message=message, receipt=entry_id))
        if passed:
            await self._bus.call(self._client.xack(self._stream, self._group, *passed))
        return deliveries

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        ids = [d.receipt for d in deliveries]
        if ids:
            await self._bus.call(self._client.xack(self._stream, self._group, *ids))
        for entry_id in ids:
            self._held.pop(entry_id, None)

    async def fail(self, delivery: Delivery, error: str) -> None:
        entry_id = delivery.receipt
        deliveries = delivery.message.deliveries
        held = self._held.pop(entry_id, None)
        if held is None:
            raise ConfigError("receipt", f"{entry_id!r} is not a delivery this consumer holds")
        wait = self._redelivery.after_failure(deliveries)
        if wait is None:
            await self._dead_letter(entry_id, held[0], deliveries, error, check=True)
            return
        due_ms = int((self._clock.time() + wait) * 1000)
        await self._bus.call(
            self._bus.park(
                keys=[self._stream, self._due],
                args=[self._group, self._name, entry_id, deliveries, due_ms],
            )
        )

    async def _dead_letter(
        self, entry_id: str, fields: dict[str, bytes], deliveries: int, error: str, *, check: bool
    ) -> None:
        letter = ["g", self._group, "topic", self._topic, "n", deliveries, "e", clip_error(error)]
        letter += ["f", repr(self._clock.time())]
        for name in ("id", "p", "h", "k", "t"):
            letter += [name, fields.get(name, b"")]
        await self._bus.call(
            self._bus.dead(
                keys=[self._stream, self._due, self._bus.dlq],
                args=[self._group, self._name, entry_id, deliveries if check else "", *letter],
            )
        )

    async def aclose(self) -> None:
        self._held.clear()  # what it held goes to other members after ack_wait

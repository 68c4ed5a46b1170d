"""The bus on Redis Streams: for services spread over machines that already run Redis.

Layout, under ``prefix`` (default ``meshkit:bus:``):

    s:{topic}             the topic's stream; each consumer group is a Redis consumer group
    due:{topic}:{group}   sorted set: entries waiting out a backoff, scored by due time (ms)
    id:{topic}:{id}       a given message id, kept for the duplicate window (SET NX PX)
    dlq                   the dead-letter stream

A group is created at ``0``, so it starts at the earliest entry the stream
keeps. A member reads new entries with ``XREADGROUP``; they stay in the
group's pending list until acked. A failed entry stays pending too, moved to
a consumer name of its own (``meshkit:parked``, with ``JUSTID``, which keeps
its delivery count) and listed in the due set until its backoff ends; then
whichever member fetches next claims it (``XCLAIM``, which counts the
delivery). Entries a member held past ``ack_wait`` are claimed by a script
that looks only at the members' own pending lists: ``XAUTOCLAIM`` cannot
skip parked entries, and would take one as soon as its backoff outlasts
``ack_wait``, counting a delivery nobody made. The delivery count decides the
dead-letter move, so a member killed on a message's last delivery still
sends it to the dead-letter queue, in the same script that finds it.

Each publish trims its stream of entries older than ``max_age`` (default
seven days, ``MAX_AGE``), whether every group has had them or not; a new
group starts at the first entry kept. Due times are read from the Redis
server's clock, so members on hosts whose clocks disagree still wait out
each backoff exactly.

Durability is the Redis server's: a publish returns once Redis has the entry
in memory. For the embedded broker's guarantee (on disk before the
acknowledgement), run Redis with ``appendonly yes`` and ``appendfsync
always``. Needs the ``redis`` extra (``pip install 'meshkit[redis]'``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import uuid
from collections.abc import Awaitable, Sequence
from typing import Any

import msgspec

from meshkit._clock import Clock, SystemClock
from meshkit._net import redacted
from meshkit._optional import require
from meshkit._redis import hiredis_packing
from meshkit.bus._model import (
    DUPLICATE_WINDOW,
    MAX_AGE,
    REPLAY_HEADER,
    DeadLetter,
    Delivery,
    GroupInfo,
    Message,
    Outgoing,
    Published,
    check_group,
    check_letter_ids,
    check_limit,
    check_redelivery,
    check_topic,
    clip_error,
    decode_headers,
    expired_error,
)
from meshkit.bus._protocol import PublishOne
from meshkit.errors import (
    ConfigError,
    EnvironmentFaultError,
    GroupLostError,
    InvalidArgumentError,
    NotFoundError,
)
from meshkit.policy import Redelivery
from meshkit.policy import _check as check
from meshkit.ratelimit.redis import check_url

__all__ = ["RedisBus"]

_encode = msgspec.json.encode
_ENTRY_ID = re.compile(r"\d{1,20}(-\d{1,20})?")
_RECEIPT = re.compile(r"\d{1,20}-\d{1,20}")
# The longest a fetch blocks in one XREADGROUP before it looks for due and
# abandoned entries again; the client's socket timeout must exceed it.
_MAX_BLOCK = 5.0
# The consumer name that holds failed entries while they wait out their backoff.
_PARKED = "meshkit:parked"
# What a field missing from a malformed entry is kept as in its dead letter.
_BLANK = {b"p": b"null", b"t": b"0"}

# Due times are the Redis server's clock (TIME, in ms), never a member's:
# members on several hosts then agree on them whatever their clocks say.
_NOW_MS = """
local function now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
"""

# KEYS: stream, and a message id's key when one was given. ARGV: published,
# the duplicate window (ms), the longest a message is kept (ms, '' for ever),
# then id, payload, headers, key of each message ('' for no headers or no
# key, which leaves the field out). Appends them in order, trims the stream
# of entries past their age, and returns 1; returns 0 when the given id is a
# repeat. One script for a run of messages instead of an XADD each:
# redis-py spends more per pipelined command (building it, then parsing and
# matching its reply) than Redis spends appending. A given id is checked and
# its message appended atomically.
_PUBLISH = (
    _NOW_MS
    + """
if #KEYS == 2 and not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[2]) then return 0 end
for i = 4, #ARGV, 4 do
  -- 'h' is always written: consumers older than the optional field read it.
  local fields = {'id', ARGV[i], 'p', ARGV[i + 1], 'h', ARGV[i + 2] ~= '' and ARGV[i + 2] or '{}'}
  if ARGV[i + 3] ~= '' then fields[#fields + 1] = 'k'; fields[#fields + 1] = ARGV[i + 3] end
  fields[#fields + 1] = 't'
  fields[#fields + 1] = ARGV[1]
  redis.call('XADD', KEYS[1], '*', unpack(fields))
end
if ARGV[3] ~= '' then
  -- Entry ids are the server's ms at XADD; '~' trims whole nodes only, cheaply.
  local oldest = now_ms() - tonumber(ARGV[3])
  if oldest > 0 then redis.call('XTRIM', KEYS[1], 'MINID', '~', oldest) end
end
return 1
"""
)
# The most messages one _PUBLISH appends: Redis runs nothing else
# meanwhile, and 1,000 appends take about a millisecond.
_RUN = 1000

# KEYS: stream, due set, dead-letter stream. ARGV: group, consumer, room,
# ack_wait (ms), max_deliveries, topic, expired error, failed (s, for the
# letters). Claims for this consumer, up to ``room`` entries: first the
# parked ones now due, then those a member has held past ack_wait. One held
# past ack_wait on its last delivery becomes a dead letter here. Returns
# {claimed, next_due}: claimed is {id, fields, count} per entry; next_due
# how many ms until the earliest due time left ('' if none). A stream that is
# gone (flushed, deleted) is a NOGROUP error, as XREADGROUP answers then:
# XINFO's own answer, "no such key", would not say the group went with it.
_CLAIM = (
    _NOW_MS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('NOGROUP No such key ' .. KEYS[1] .. ' or consumer group ' .. ARGV[1])
end
local group, me, room = ARGV[1], ARGV[2], tonumber(ARGV[3])
local ack_wait, max_deliveries = ARGV[4], tonumber(ARGV[5])
local now = now_ms()
local claimed = {}
-- unpack() stops short of 8,000 values: a call with many ids goes in chunks.
local function in_chunks(ids, call)
  for i = 1, #ids, 1000 do call(unpack(ids, i, math.min(i + 999, #ids))) end
end
local function take(ids, min_idle)
  in_chunks(ids, function(...)
    for _, entry in ipairs(redis.call('XCLAIM', KEYS[1], group, me, min_idle, ...)) do
      if entry then  -- Redis 6.2 answers false for an entry trimmed meanwhile
        local info = redis.call('XPENDING', KEYS[1], group, entry[1], entry[1], 1)[1]
        claimed[#claimed + 1] = {entry[1], entry[2], info[4]}
      end
    end
  end)
end
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, room)
in_chunks(due, function(...) redis.call('ZREM', KEYS[2], ...) end)
take(due, 0)
room = room - #claimed
if room > 0 then
  local abandoned = {}
  for _, member in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], group)) do
    local name, pending = member[2], member[4]
    if name ~= 'meshkit:parked' and pending > 0 and #abandoned < room then
      local held = redis.call('XPENDING', KEYS[1], group, 'IDLE', ack_wait, '-', '+', room, name)
      for _, p in ipairs(held) do
        if tonumber(p[4]) >= max_deliveries then
          for _, entry in ipairs(redis.call('XCLAIM', KEYS[1], group, me, ack_wait, p[1])) do
            if not entry then break end
            local letter = {'g', group, 'topic', ARGV[6], 'n', ARGV[5], 'e', ARGV[7], 'f', ARGV[8]}
            for i = 1, #entry[2] do letter[#letter + 1] = entry[2][i] end
            redis.call('XADD', KEYS[3], '*', unpack(letter))
            redis.call('XACK', KEYS[1], group, p[1])
          end
        elseif #abandoned < room then
          abandoned[#abandoned + 1] = p[1]
        end
      end
    end
  end
  take(abandoned, ack_wait)
end
local next_due = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')[2]
return {claimed, next_due and tostring(tonumber(next_due) - now) or ''}
"""
)

# KEYS: stream, due set. ARGV: group, consumer, entry id, deliveries, wait (ms).
# Parks a failed entry for ``wait``, if this consumer still holds that delivery.
_PARK = (
    _NOW_MS
    + """
local info = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)[1]
if not info or info[2] ~= ARGV[2] or tostring(info[4]) ~= ARGV[4] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], 'meshkit:parked', 0, ARGV[3], 'JUSTID')
redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[5]), ARGV[3])
return 1
"""
)

# KEYS: stream, due set, dead-letter stream. ARGV: group, consumer, entry id,
# deliveries, then the dead letter's fields. Only if this consumer still
# holds that delivery.
_DEAD = """
local info = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)[1]
if not info or info[2] ~= ARGV[2] or tostring(info[4]) ~= ARGV[4] then return 0 end
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

# KEYS: stream. ARGV: group, consumer. A member leaving removes its name,
# unless it still holds entries (removing it would drop them from the group).
_LEAVE = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) == 0 then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return 1
"""


def _redis() -> Any:
    return require("redis.asyncio", extra="redis", what="the bus on Redis")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _fields(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def _message(fields: dict[bytes, bytes], topic: str, deliveries: int) -> Message:
    """The message an entry holds; ``KeyError`` or a decoding error if it is malformed.

    Fields are looked up by their bytes, as Redis returns them: this runs
    once per message a consumer receives.
    """
    headers = fields.get(b"h")
    key = fields.get(b"k")
    return Message(
        id=fields[b"id"].decode(),
        topic=topic,
        payload=fields[b"p"],
        headers=decode_headers(headers) if headers and headers != b"{}" else {},
        key=key.decode() if key else None,
        published=float(fields[b"t"]),
        deliveries=deliveries,
    )


def _fields_of(message: Message) -> dict[bytes, Any]:
    """A message as a stream entry's fields, as ``_PUBLISH`` writes them."""
    fields: dict[bytes, Any] = {
        b"id": message.id,
        b"p": message.payload,
        b"h": _encode(message.headers),
    }
    if message.key:
        fields[b"k"] = message.key
    fields[b"t"] = repr(message.published)
    return fields


def _runs(messages: Sequence[Outgoing]) -> list[Sequence[Outgoing]]:
    """``messages`` in order, in runs that one script each publishes: a message with
    a given id alone; else consecutive messages of one topic, at most ``_RUN``."""
    runs: list[Sequence[Outgoing]] = []
    start = 0
    for index in range(1, len(messages)):
        m, previous = messages[index], messages[index - 1]
        if m.given_id or previous.given_id or m.topic != previous.topic or index - start == _RUN:
            runs.append(messages[start:index])
            start = index
    if messages:
        runs.append(messages[start:])
    return runs


def _flat(fields: dict[bytes, Any]) -> list[Any]:
    return [item for pair in fields.items() for item in pair]


def _check_entry_id(letter_id: object) -> str:
    """A stream entry id, ``ms-seq``; a bare ``ms`` is ``ms-0``, as Redis reads it."""
    if not isinstance(letter_id, str) or _ENTRY_ID.fullmatch(letter_id) is None:
        raise InvalidArgumentError(
            "id", f"a dead letter id on Redis looks like 1700000000000-0, got {letter_id!r}"
        )
    return letter_id if "-" in letter_id else f"{letter_id}-0"


def _check_receipt(receipt: object) -> str:
    if not isinstance(receipt, str) or _RECEIPT.fullmatch(receipt) is None:
        raise InvalidArgumentError("receipt", f"is not one this backend gave: {receipt!r}")
    return receipt


class RedisBus(PublishOne):
    """A ``Bus`` on the Redis at ``url`` (``redis://host:port/db``).

    ``timeout`` bounds connecting and each call that does not block;
    ``window`` is how long a given message id is remembered; ``max_age``
    how long a message is kept (``None``: for ever). ``connections`` bounds
    the connections open at once, each subscription's blocking read holding
    one: a call finding them all busy waits up to ``timeout`` for one.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "meshkit:bus:",
        window: float = DUPLICATE_WINDOW,
        max_age: float | None = MAX_AGE,
        timeout: float = 5.0,
        connections: int = 100,
        clock: Clock | None = None,
    ) -> None:
        self.url = check_url("url", url)
        self._shown = redacted(url)  # for messages: never a password
        self.prefix = prefix
        self._window_ms = round(check.seconds("window", window) * 1000)
        self._max_age_ms = (
            "" if max_age is None else round(check.seconds("max_age", max_age) * 1000)
        )
        check.seconds("timeout", timeout)
        check.whole("connections", connections, minimum=1)
        self._clock = clock or SystemClock()
        aioredis = _redis()
        self._exceptions = require("redis.exceptions", extra="redis", what="the bus on Redis")
        self._errors: tuple[type[BaseException], ...] = (self._exceptions.RedisError, OSError)
        # A blocking pool: redis-py's default pool fails a call at once
        # ("Too many connections") when a burst of publishes finds its 100
        # connections in use; waiting for one is what a publisher wants.
        try:
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=connections,
                timeout=timeout,
                socket_connect_timeout=timeout,
                # A blocking read waits up to _MAX_BLOCK on the same sockets.
                socket_timeout=timeout + _MAX_BLOCK,
            )
            self._client = hiredis_packing(aioredis.Redis.from_pool(pool))
        except ValueError as error:
            raise ConfigError("url", f"{self._shown!r}: {error}") from error
        self._publish = self._client.register_script(_PUBLISH)
        self._claim = self._client.register_script(_CLAIM)
        self._park = self._client.register_script(_PARK)
        self._dead = self._client.register_script(_DEAD)
        self._replay = self._client.register_script(_REPLAY)
        self._leave = self._client.register_script(_LEAVE)
        self._dlq = f"{prefix}dlq"

    def _stream(self, topic: str) -> str:
        return f"{self.prefix}s:{topic}"

    def _due(self, topic: str, group: str) -> str:
        return f"{self.prefix}due:{topic}:{group}"

    async def _call(self, command: Awaitable[Any]) -> Any:
        """Await one Redis call, translating its failure.

        A group or stream that is gone (``NOGROUP``: the group was deleted,
        the data flushed or lost) is ``GroupLostError``: the broker's state
        changed under the caller, who joins again. On Python
        3.11, redis-py's writes run under ``asyncio.wait_for``, which can drop
        a cancel arriving as the write completes: a cancel asked for during
        the call is raised after it, so that closing a subscription is prompt.
        """
        task = asyncio.current_task()
        cancels = task.cancelling() if task is not None else 0
        try:
            result = await command
        except self._errors as error:
            if isinstance(error, self._exceptions.ResponseError) and "NOGROUP" in str(error):
                raise GroupLostError(f"the bus's Redis at {self._shown}: {error}") from error
            raise EnvironmentFaultError(
                f"the bus's Redis at {self._shown} failed: {error}"
            ) from error
        if task is not None and task.cancelling() > cancels:
            raise asyncio.CancelledError
        return result

    # -- publishing ---------------------------------------------------------------

    async def publish_batch(self, messages: Sequence[Outgoing]) -> list[Published]:
        """A script per run of messages: a given id costs one of its own (the check and
        the append are atomic); consecutive messages of one topic without one share one.
        Several runs go in one pipeline; a single run is one call, which saves the
        round trip a pipeline of scripts begins with (``SCRIPT EXISTS``)."""
        if not messages:
            return []
        published = repr(self._clock.time())
        runs = _runs(messages)
        calls = [self._script_call(run, published) for run in runs]
        if len(calls) == 1:
            keys, args = calls[0]
            replies = [await self._call(self._publish(keys=keys, args=args))]
        else:
            pipe = self._client.pipeline(transaction=False)
            for keys, args in calls:
                await self._publish(keys=keys, args=args, client=pipe)
            replies = await self._call(pipe.execute())
        return [
            # Only a run with a given id (a run of one) can be a repeat.
            Published(id=m.id, duplicate=run[0].given_id and reply == 0)
            for run, reply in zip(runs, replies, strict=True)
            for m in run
        ]

    def _script_call(self, run: Sequence[Outgoing], published: str) -> tuple[list[str], list[Any]]:
        """The keys and arguments of the ``_PUBLISH`` that appends ``run``."""
        first = run[0]
        keys = [self._stream(first.topic)]
        if first.given_id:
            keys.append(f"{self.prefix}id:{first.topic}:{first.id}")
        args: list[Any] = [published, self._window_ms, self._max_age_ms]
        for m in run:
            args += (m.id, m.payload, _encode(m.headers) if m.headers else "", m.key or "")
        return keys, args

    # -- groups ---------------------------------------------------------------------

    async def delete_group(self, topic: str, group: str) -> None:
        stream = self._stream(check_topic(topic))
        pipe = self._client.pipeline(transaction=True)
        pipe.xgroup_destroy(stream, check_group(group))
        pipe.delete(self._due(topic, group))
        try:
            destroyed, _ = await self._call(pipe.execute())
        except EnvironmentFaultError as error:
            if "requires the key to exist" not in str(error.__cause__):  # no stream at all
                raise
            destroyed = 0
        if not destroyed:
            raise NotFoundError(f"no group {group!r} on topic {topic!r}")

    async def groups(self) -> list[GroupInfo]:
        """Each stream's groups from ``XINFO GROUPS``: its ``lag`` (Redis 7; unknown on 6.2,
        or after a trim removed entries the group had not read) and its ``pending``."""
        head = f"{self.prefix}s:"
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", head) + "*"  # the prefix, glob-escaped
        streams = await self._call(self._streams(pattern))
        found: list[GroupInfo] = []
        for stream in sorted(streams):
            topic = stream.decode()[len(head) :]
            try:
                rows = await self._call(self._client.xinfo_groups(stream))
            except EnvironmentFaultError as error:
                if "no such key" in str(error):
                    continue  # deleted since the scan
                raise
            found += (
                GroupInfo(
                    topic=topic,
                    group=row["name"].decode(),
                    lag=row.get("lag"),
                    pending=int(row["pending"]),
                )
                for row in rows
            )
        return sorted(found, key=lambda g: (g.topic, g.group))

    async def _streams(self, pattern: str) -> list[bytes]:
        return [key async for key in self._client.scan_iter(match=pattern, _type="stream")]

    async def consumer(self, topic: str, group: str, *, redelivery: Redelivery) -> RedisConsumer:
        check_topic(topic)
        check_group(group)
        check_redelivery(redelivery)
        try:
            await self._call(
                self._client.xgroup_create(self._stream(topic), group, id="0", mkstream=True)
            )
        except EnvironmentFaultError as error:
            if "BUSYGROUP" not in str(error):  # the group exists: join it
                raise
        name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        return RedisConsumer(self, topic, group, name, redelivery)

    # -- dead letters -----------------------------------------------------------------

    async def dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:
        check_limit(limit)
        entries = await self._call(self._client.xrange(self._dlq, count=limit))
        return [_dead_letter(entry_id, fields) for entry_id, fields in entries]

    async def dead_letter(self, letter_id: str) -> DeadLetter:
        entry_id = _check_entry_id(letter_id)
        entries = await self._call(self._client.xrange(self._dlq, entry_id, entry_id))
        if not entries:
            raise NotFoundError(f"no dead letter has id {letter_id!r}")
        return _dead_letter(*entries[0])

    async def replay(self, letter_id: str) -> None:
        letter = await self.dead_letter(letter_id)
        message = msgspec.structs.replace(
            letter.message,
            headers={**letter.message.headers, REPLAY_HEADER: letter.group},
            published=self._clock.time(),
        )
        replayed = await self._call(
            self._replay(
                keys=[self._dlq, self._stream(message.topic)],
                args=[letter.id, *_flat(_fields_of(message))],
            )
        )
        if not replayed:
            raise NotFoundError(f"no dead letter has id {letter_id!r}")  # replayed meanwhile

    async def purge(self, ids: Sequence[str] | None = None) -> int:
        if ids is None:
            pipe = self._client.pipeline(transaction=True)
            pipe.xlen(self._dlq)
            pipe.delete(self._dlq)
            held, _ = await self._call(pipe.execute())
            return int(held)
        checked = [_check_entry_id(letter_id) for letter_id in check_letter_ids(ids)]
        if not checked:
            return 0
        return int(await self._call(self._client.xdel(self._dlq, *checked)))

    async def aclose(self) -> None:
        await self._client.aclose()


def _readable(fields: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """A malformed entry's fields without headers that do not decode: its dead letter
    must be readable, or it would spoil every listing of the queue."""
    try:
        decode_headers(fields.get(b"h") or b"{}")
    except msgspec.DecodeError:
        return {name: value for name, value in fields.items() if name != b"h"}
    return fields


def _malformed(error: Exception) -> str:
    if isinstance(error, KeyError):
        return f"a malformed stream entry: no field {_text(error.args[0])!r}"
    return f"a malformed stream entry: {error!r}"


def _dead_letter(entry_id: bytes | str, fields: dict[bytes, bytes]) -> DeadLetter:
    deliveries = int(fields[b"n"])
    return DeadLetter(
        id=_text(entry_id),
        group=fields[b"g"].decode(),
        message=_message(fields, fields[b"topic"].decode(), deliveries),
        deliveries=deliveries,
        error=fields[b"e"].decode(),
        failed=float(fields[b"f"]),
    )


class RedisConsumer:
    """One member of a group: a Redis consumer name of its own in the topic's consumer group."""

    def __init__(
        self, bus: RedisBus, topic: str, group: str, name: str, redelivery: Redelivery
    ) -> None:
        self._bus = bus
        self._topic = topic
        self._group = group
        self._name = name
        self._redelivery = redelivery
        self._clock = bus._clock
        self._stream = bus._stream(topic)
        self._due = bus._due(topic, group)
        self._client = bus._client
        self._ack_wait_ms = round(redelivery.ack_wait * 1000)
        # How often a waiting fetch looks for due and abandoned entries. A
        # failure parked while it blocks is due no sooner than the shortest
        # wait of the backoff, so looking that often keeps retries on time.
        self._recheck = max(
            min(redelivery.ack_wait / 4, redelivery.backoff.ceiling(1), _MAX_BLOCK), 0.05
        )

    async def fetch(self, limit: int, *, wait: float) -> list[Delivery]:
        check_limit(limit)
        deadline = self._clock.monotonic() + check.seconds("wait", wait, allow_zero=True)
        while True:
            found, next_due = await self._claimed(limit)
            room = limit - len(found)
            block = 0.0
            if not found:
                block = min(deadline - self._clock.monotonic(), self._recheck)
                if next_due is not None:
                    block = min(block, next_due)
            if room > 0:
                found += await self._read(room, block)
            if found or self._clock.monotonic() >= deadline:
                return await self._deliver(found)

    async def _claimed(
        self, room: int
    ) -> tuple[list[tuple[str, dict[bytes, bytes], int]], float | None]:
        """What this member claimed, and in how many seconds the next parked entry is due."""
        claimed, next_due = await self._bus._call(
            self._bus._claim(
                keys=[self._stream, self._due, self._bus._dlq],
                args=[
                    *(self._group, self._name, room, self._ack_wait_ms),
                    self._redelivery.max_deliveries,
                    self._topic,
                    expired_error(self._redelivery.ack_wait),
                    repr(self._clock.time()),
                ],
            )
        )
        entries = [(_text(e), _fields(flat), int(n)) for e, flat, n in claimed]
        return entries, float(next_due) / 1000 if next_due else None

    async def _read(self, room: int, block: float) -> list[tuple[str, dict[bytes, bytes], int]]:
        block_ms = max(round(block * 1000), 0)
        answer = await self._bus._call(
            self._client.xreadgroup(
                self._group, self._name, {self._stream: ">"}, count=room, block=block_ms or None
            )
        )
        if not answer:
            return []
        [(_, entries)] = answer
        return [(e.decode(), raw, 1) for e, raw in entries]

    async def _deliver(self, found: list[tuple[str, dict[bytes, bytes], int]]) -> list[Delivery]:
        deliveries: list[Delivery] = []
        passed: list[str] = []
        for entry_id, fields, count in found:
            try:
                message = _message(fields, self._topic, count)
            except (KeyError, ValueError, msgspec.DecodeError) as error:
                # Not written by this bus: kept as a dead letter, not retried for ever.
                await self._bury(entry_id, _readable(fields), count, _malformed(error))
                continue
            if message.for_group(self._group):
                deliveries.append(Delivery(message=message, receipt=entry_id))
            else:
                passed.append(entry_id)
        if passed:
            await self._bus._call(self._client.xack(self._stream, self._group, *passed))
        return deliveries

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        ids = [_check_receipt(d.receipt) for d in deliveries]
        if ids:
            await self._bus._call(self._client.xack(self._stream, self._group, *ids))

    async def fail(self, delivery: Delivery, error: str) -> None:
        """Park it until its backoff ends, or dead-letter it: only if this member still holds
        that delivery (after ack_wait it went to another, and this answer is late)."""
        entry_id = _check_receipt(delivery.receipt)
        message = delivery.message
        wait = self._redelivery.after_failure(message.deliveries)
        if wait is None:
            await self._bury(entry_id, _fields_of(message), message.deliveries, error)
            return
        await self._bus._call(
            self._bus._park(
                keys=[self._stream, self._due],
                args=[self._group, self._name, entry_id, message.deliveries, round(wait * 1000)],
            )
        )

    async def _bury(
        self, entry_id: str, fields: dict[bytes, Any], deliveries: int, error: str
    ) -> None:
        letter = ["g", self._group, "topic", self._topic, "n", deliveries, "e", clip_error(error)]
        letter += ["f", repr(self._clock.time()), "id", fields.get(b"id", entry_id)]
        letter += [item for name in (b"h", b"k") if name in fields for item in (name, fields[name])]
        for name, blank in _BLANK.items():
            letter += [name, fields.get(name, blank)]
        await self._bus._call(
            self._bus._dead(
                keys=[self._stream, self._due, self._bus._dlq],
                args=[self._group, self._name, entry_id, deliveries, *letter],
            )
        )

    async def aclose(self) -> None:
        """Leave the group; what it still holds goes to other members after ack_wait.

        A group that is gone (deleted meanwhile) has no member left to remove.
        """
        with contextlib.suppress(GroupLostError):
            await self._bus._call(
                self._bus._leave(keys=[self._stream], args=[self._group, self._name])
            )

"""The bus on NATS JetStream: for services spread over more than one machine.

Layout on the server, for a bus with ``prefix="meshkit"``:

- stream ``MESHKIT``, subjects ``meshkit.msg.>``: every message; topic
  ``order.created`` is subject ``meshkit.msg.order.created``. Its duplicate
  window is the embedded broker's (120 s, JetStream's default); a given
  message id is sent as ``Nats-Msg-Id: {topic}/{id}``, because JetStream
  remembers ids per stream and the bus promises them per topic.
- one durable pull consumer per (topic, group), named ``{group}_{hash}``
  (durable names cannot hold the topic's dots; the hash of the topic has a
  fixed length, so the name cannot be read two ways). It starts at the
  earliest retained message, acks explicitly, and has the group's
  ``ack_wait`` and ``max_deliveries``; joining again with another
  ``Redelivery`` updates it (the last member to join sets the policy; the
  waits between deliveries are each member's own, so members of a group
  should share one). A group holds at most 1,000 deliveries unanswered at
  once, those waiting out a backoff included (JetStream's MaxAckPending).
- stream ``MESHKIT_DLQ``, subjects ``meshkit.dlq.{group}.{topic}``: dead
  letters, one message each; a letter's id is its sequence there.

Headers: ``meshkit-id``, ``meshkit-key`` and the publisher's own. A value
NATS would alter (nats-py strips surrounding spaces and turns line breaks
into spaces), an empty one, or one that starts with ``"`` travels as a JSON
string, so every value arrives exactly as it was published.

Redelivery: see ``_Consumer.fail``. Publishes, acks and NAKs are all
confirmed by the server, and sent in batches over one connection, each batch
then awaited together (``_Inbox``). Needs the ``nats`` extra (``pip install
'meshkit[nats]'``, which brings nats-py); its errors are translated here:
an unreachable or failing server is ``EnvironmentFaultError`` naming the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import itertools
import json
import logging
import re
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import msgspec

from meshkit._clock import Clock, SystemClock
from meshkit.bus._model import (
    DUPLICATE_WINDOW,
    REPLAY_HEADER,
    DeadLetter,
    Delivery,
    Message,
    Outgoing,
    Published,
    check_group,
    check_letter_number,
    check_limit,
    check_topic,
    expired_error,
)
from meshkit.bus._protocol import PublishOne
from meshkit.errors import (
    ConfigError,
    EnvironmentFaultError,
    MeshkitError,
    NotFoundError,
    UsageError,
)
from meshkit.policy import Redelivery
from meshkit.policy import _check as check

__all__ = ["JetStreamBus"]

T = TypeVar("T")
# A message to send: subject, payload, headers.
_Request = tuple[str, bytes, dict[str, str] | None]
_log = logging.getLogger("meshkit.bus")

_ID, _KEY = "meshkit-id", "meshkit-key"
_GROUP, _TOPIC, _DELIVERIES = "meshkit-group", "meshkit-topic", "meshkit-deliveries"
_ERROR, _PUBLISHED = "meshkit-error", "meshkit-published"
_MSG_ID = "Nats-Msg-Id"
# A dead letter keeps this much of its error, as the embedded broker does.
_MAX_ERROR = 4096
# The embedded broker's words for a delivery whose ack deadline passed.
_PREFIX = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_SCHEMES = ("nats", "tls", "ws", "wss")
# The shortest expiry a pull is given (a fetch with wait=0 has it): a pull
# must expire, see _Consumer._pull.
_SHORTEST_PULL = 0.01


class _PubAck(msgspec.Struct):
    seq: int = 0
    duplicate: bool = False
    error: dict[str, Any] | None = None


_decode_pub_ack = msgspec.json.Decoder(_PubAck).decode


class _Nats:
    """nats-py, imported when a bus is made, so meshkit imports without it."""

    def __init__(self) -> None:
        try:
            client = importlib.import_module("nats.aio.client")
            errors = importlib.import_module("nats.errors")
            js_errors = importlib.import_module("nats.js.errors")
            self.api = importlib.import_module("nats.js.api")
        except ImportError as error:
            raise UsageError(
                "the JetStream bus needs the nats extra: pip install 'meshkit[nats]'"
            ) from error
        self.Client: Any = client.Client
        self.Error: type[Exception] = errors.Error
        self.MaxPayloadError: type[Exception] = errors.MaxPayloadError
        self.APIError: Any = js_errors.APIError
        self.NotFoundError: type[Exception] = js_errors.NotFoundError


# -- header values ---------------------------------------------------------------------


def _encode_text(value: str) -> str:
    """``value`` as a header value NATS carries unchanged (see the module docstring)."""
    if (
        value.isprintable()
        and value
        and not (value[0].isspace() or value[-1].isspace())
        and value[0] != '"'
    ):
        return value
    return json.dumps(value, ensure_ascii=False)  # escapes line breaks; quotes keep the spaces


def _decode_text(value: str) -> str:
    if value.startswith('"'):
        with contextlib.suppress(ValueError):
            decoded = json.loads(value)
            if isinstance(decoded, str):
                return decoded
    return value


def _wire_headers(headers: Mapping[str, str], message_id: str, key: str | None) -> dict[str, str]:
    wire = {name: _encode_text(value) for name, value in headers.items()}
    wire[_ID] = _encode_text(message_id)
    if key is not None:
        wire[_KEY] = _encode_text(key)
    return wire


def _message(
    topic: str,
    payload: bytes,
    headers: Mapping[str, str] | None,
    *,
    published: float,
    deliveries: int,
    fallback_id: str,
) -> Message:
    """The message as published, from its NATS headers (JetStream's own are dropped)."""
    found: dict[str, str] = {}
    message_id, key = fallback_id, None
    for name, value in (headers or {}).items():
        lower = name.lower()
        if lower == _ID:
            message_id = _decode_text(value)
        elif lower == _KEY:
            key = _decode_text(value)
        elif lower.startswith("nats-") or (lower.startswith("meshkit-") and lower != REPLAY_HEADER):
            continue
        else:
            found[name] = _decode_text(value)
    return Message(
        id=message_id,
        topic=topic,
        payload=payload,
        headers=found,
        key=key,
        published=published,
        deliveries=deliveries,
    )


def _ack_fields(reply: str) -> tuple[str, str, int, int, int] | None:
    """``(stream, consumer, deliveries, stream sequence, timestamp ns)`` from an ack subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>``,
    or the newer form with a domain and an account hash after ``ACK``.
    """
    tokens = reply.split(".")
    if len(tokens) < 9 or tokens[0] != "$JS" or tokens[1] != "ACK":
        return None
    fields = tokens[2:9] if len(tokens) == 9 else tokens[4:11]
    if len(fields) < 7 or not all(t.isdigit() for t in fields[2:6]):
        return None
    return fields[0], fields[1], int(fields[2]), int(fields[3]), int(fields[5])


def _wire_size(payload: bytes, headers: Mapping[str, str] | None) -> int:
    """Bytes of a message as the server counts them: "NATS/1.0\\r\\n", lines, "\\r\\n"."""
    lines = sum(len(k) + len(v.encode()) + 4 for k, v in (headers or {}).items())
    return len(payload) + (12 + lines if headers else 0)


def _durable(group: str, topic: str) -> str:
    return f"{group}_{hashlib.blake2b(topic.encode(), digest_size=8).hexdigest()}"


def _check_prefix(value: object) -> str:
    if not isinstance(value, str) or _PREFIX.fullmatch(value) is None:
        # No '_': it parts the prefix from the dead-letter stream's suffix.
        raise ConfigError(
            "prefix", f"must be 1 to 32 lower-case letters, digits and '-', got {value!r}"
        )
    return value


def _check_url(url: object) -> str:
    if isinstance(url, str):
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 (raises for a port that is not a number)
        except ValueError:
            pass
        else:
            if parts.scheme in _SCHEMES and parts.hostname:
                return url
    raise ConfigError("url", f"must look like nats://127.0.0.1:4222, got {url!r}")


# -- replies ------------------------------------------------------------------------------


class _Inbox:
    """One wildcard subscription for the answers to many requests in flight at once.

    Each request gets a token; its answer resolves that token's future. A
    batch is written out whole and then awaited together: one round trip for
    the batch, not one per request. (nats-py's ``request`` waits for each
    answer in turn, or takes a task each to overlap them: 27,000 acks/s here
    against 90,000; its ``publish_async`` futures never time out.)
    Deliveries from pull requests also come here; they go to ``deliveries``.
    """

    def __init__(self, client: Any, deliveries: Callable[[Any], None] | None = None) -> None:
        self._client = client
        self.prefix = f"{client.new_inbox()}."
        self._deliveries = deliveries
        self._waiting: dict[str, asyncio.Future[Any]] = {}
        self._tokens = itertools.count()
        self._subscription: Any = None

    async def start(self) -> None:
        self._subscription = await self._client.subscribe(f"{self.prefix}*", cb=self._arrived)

    async def stop(self) -> None:
        for future in self._waiting.values():
            future.cancel()
        self._waiting.clear()
        if self._subscription is not None:
            subscription, self._subscription = self._subscription, None
            await subscription.unsubscribe()

    async def _arrived(self, msg: Any) -> None:
        if self._deliveries is not None and msg.reply.startswith("$JS.ACK."):
            self._deliveries(msg)
            return
        future = self._waiting.pop(msg.subject[len(self.prefix) :], None)
        if future is not None and not future.done():
            future.set_result(msg)

    def expect(self) -> tuple[str, asyncio.Future[Any]]:
        """A reply subject, and the future its first answer resolves."""
        token = f"{next(self._tokens):x}"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        return self.prefix + token, future

    def forget(self, reply: str) -> None:
        future = self._waiting.pop(reply[len(self.prefix) :], None)
        if future is not None:
            future.cancel()

    async def ask(self, requests: Sequence[_Request], *, within: float) -> list[Any]:
        """Send every request, then wait for all the answers, in order (``TimeoutError``)."""
        replies: list[str] = []
        try:
            futures = []
            for subject, payload, headers in requests:
                reply, future = self.expect()
                replies.append(reply)
                futures.append(future)
                await self._client.publish(subject, payload, reply=reply, headers=headers)
            async with asyncio.timeout(within):
                return list(await asyncio.gather(*futures))
        finally:
            for reply in replies:
                self.forget(reply)


# -- the bus --------------------------------------------------------------------------------


class JetStreamBus(PublishOne):
    """A ``Bus`` on the NATS server at ``url``, with JetStream enabled (``nats-server -js``).

    ``await JetStreamBus.open(url)``, or ``async with JetStreamBus(url) as bus``;
    both create the two streams or bring their settings up to date.
    ``prefix`` names them, so buses with different prefixes share nothing.
    ``max_age`` bounds how long messages are kept (``None``: until removed
    by other limits); dead letters are kept until replayed or purged.
    ``timeout`` bounds each call to the server, ``connect_timeout`` the first
    connection; after that the client reconnects for as long as it takes,
    and calls made meanwhile fail with ``EnvironmentFaultError``.
    """

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        prefix: str = "meshkit",
        max_age: float | None = None,
        timeout: float = 5.0,
        connect_timeout: float = 2.0,
        clock: Clock | None = None,
    ) -> None:
        self.url = _check_url(url)
        self.prefix = _check_prefix(prefix)
        self.stream = prefix.upper()
        self.dead_letter_stream = f"{self.stream}_DLQ"
        self._max_age = None if max_age is None else check.seconds("max_age", max_age)
        self._timeout = check.seconds("timeout", timeout)
        self._connect_timeout = check.seconds("connect_timeout", connect_timeout)
        self._clock = clock or SystemClock()
        self._nats = _Nats()
        self._client: Any = None
        self._js: Any = None
        self._inbox: _Inbox | None = None
        self._last_error: Exception | None = None

    @classmethod
    async def open(
        cls,
        url: str = "nats://127.0.0.1:4222",
        *,
        prefix: str = "meshkit",
        max_age: float | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109 (the bus's bound on each call, not on this one)
        connect_timeout: float = 2.0,
        clock: Clock | None = None,
    ) -> JetStreamBus:
        """A connected bus (see the class); close it with ``aclose()``."""
        bus = cls(
            url,
            prefix=prefix,
            max_age=max_age,
            timeout=timeout,
            connect_timeout=connect_timeout,
            clock=clock,
        )
        await bus.connect()
        return bus

    async def __aenter__(self) -> JetStreamBus:
        await self.connect()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def connect(self) -> None:
        """Connect and set up the streams; does nothing when connected already."""
        if self._client is not None:
            return
        client = self._nats.Client()
        try:
            # Two attempts 0.1 s apart, within connect_timeout: nats-py's
            # defaults would retry a server that is down for two minutes.
            async with asyncio.timeout(self._connect_timeout):
                await client.connect(
                    servers=[self.url],
                    name="meshkit",
                    connect_timeout=self._connect_timeout,
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0.1,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                )
        except (self._nats.Error, OSError, TimeoutError) as error:
            with contextlib.suppress(self._nats.Error, OSError):
                await client.close()
            # The last error nats-py met (a refused connection) says more than "no servers".
            cause = self._last_error or error
            raise EnvironmentFaultError(f"NATS at {self.url} is unreachable: {cause!r}") from error
        # Connected: from now on ride out restarts of the server, however long,
        # trying every 2 s (nats-py's default wait).
        client.options["max_reconnect_attempts"] = -1
        client.options["reconnect_time_wait"] = 2.0
        self._client = client
        self._js = client.jetstream(timeout=self._timeout)
        try:
            await self._ensure_stream(self.stream, f"{self.prefix}.msg.>", self._max_age)
            await self._ensure_stream(self.dead_letter_stream, f"{self.prefix}.dlq.>", None)
            inbox = _Inbox(client)
            await self._guard("subscribing", inbox.start())
        except BaseException:
            await self.aclose()
            raise
        self._inbox = inbox

    async def _ensure_stream(self, name: str, subjects: str, max_age: float | None) -> None:
        config = self._nats.api.StreamConfig(
            name=name,
            subjects=[subjects],
            storage="file",
            max_age=max_age,
            duplicate_window=DUPLICATE_WINDOW,
            allow_direct=True,  # reads by sequence without a JetStream API round trip
        )
        try:
            await self._guard(f"creating stream {name}", self._js.add_stream(config))
        except EnvironmentFaultError as error:
            cause = error.__cause__
            if getattr(cause, "err_code", None) != 10058:  # not "exists with another config"
                raise
            info = await self._guard(f"reading stream {name}", self._js.stream_info(name))
            if info.config.subjects != [subjects]:
                raise ConfigError(
                    "prefix",
                    f"stream {name} on {self.url} exists for subjects {info.config.subjects},"
                    f" not {subjects}: choose another prefix",
                ) from error
            await self._guard(f"updating stream {name}", self._js.update_stream(config))

    async def aclose(self) -> None:
        client, self._client = self._client, None
        self._inbox = None
        if client is not None:
            with contextlib.suppress(self._nats.Error, OSError):
                await client.close()

    # -- connection events (nats-py calls these) ---------------------------------

    async def _on_error(self, error: Exception) -> None:
        self._last_error = error
        # Before the first connection, the error raised says it already.
        level = logging.DEBUG if self._client is None else logging.WARNING
        _log.log(level, "NATS at %s: %r", self.url, error)

    async def _on_disconnected(self) -> None:
        if self._client is not None:
            _log.warning("NATS at %s: disconnected; reconnecting", self.url)

    async def _on_reconnected(self) -> None:
        _log.info("NATS at %s: reconnected", self.url)

    # -- publishing ---------------------------------------------------------------

    async def publish_batch(self, messages: Sequence[Outgoing]) -> list[Published]:
        """Publish in order: all sent, then every PubAck awaited together.

        When it raises ``EnvironmentFaultError``, some of the messages may
        have been stored: publish them again with their ids (``given_id``)
        to have each once.
        """
        requests = [self._prepare(message) for message in messages]  # all checked, then sent
        duplicates = await self._publish("publishing", requests)
        return [
            Published(id=message.id, duplicate=duplicate)
            for message, duplicate in zip(messages, duplicates, strict=True)
        ]

    def _prepare(self, message: Outgoing) -> _Request:
        if not isinstance(message, Outgoing):
            raise UsageError(f"publish_batch() takes outgoing() messages, got {message!r}")
        for name in message.headers:
            if name.lower().startswith("nats-"):
                # JetStream acts on these (ids, expected sequences, rollups).
                raise ConfigError("headers", f"names starting 'nats-' are NATS's: {name!r}")
        headers = _wire_headers(message.headers, message.id, message.key)
        if message.given_id:
            headers[_MSG_ID] = f"{message.topic}/{message.id}"
        return self._subject(message.topic), message.payload, headers

    def _subject(self, topic: str) -> str:
        return f"{self.prefix}.msg.{topic}"

    async def _publish(self, what: str, requests: Sequence[_Request]) -> list[bool]:
        """Store each message, all sent before the first PubAck is awaited: whether a duplicate.

        Sizes are checked first: the server closes the connection of a client
        that sends more than its ``max_payload`` (nats-py counts only the payload).
        """
        if not requests:
            return []
        largest = self._client_or_raise().max_payload
        for _, payload, headers in requests:
            size = _wire_size(payload, headers)
            if size > largest:
                raise ConfigError(
                    "payload",
                    f"is {size} bytes with its headers, more than NATS at {self.url} takes"
                    f" ({largest})",
                )
        answers = await self._ask(what, requests)
        return [
            self._pub_ack(answer, subject)
            for (subject, _, _), answer in zip(requests, answers, strict=True)
        ]

    def _pub_ack(self, answer: Any, subject: str) -> bool:
        """Whether JetStream took the message for a duplicate; raises if it did not store it."""
        status = (answer.headers or {}).get("Status")
        if status is not None:  # 503: no stream takes the subject
            raise EnvironmentFaultError(
                f"JetStream at {self.url} did not store a message to {subject}"
                f" (status {status}): is stream {self.stream} there?"
            )
        try:
            ack = _decode_pub_ack(answer.data)
        except msgspec.DecodeError as error:
            raise EnvironmentFaultError(
                f"JetStream at {self.url} answered a publish with {answer.data[:200]!r}"
            ) from error
        if ack.error is not None:
            raise EnvironmentFaultError(
                f"JetStream at {self.url} refused a message to {subject}: {ack.error}"
            )
        return ack.duplicate

    # -- groups ---------------------------------------------------------------------

    async def consumer(self, topic: str, group: str, *, redelivery: Redelivery) -> _Consumer:
        check_topic(topic)
        check_group(group)
        if not isinstance(redelivery, Redelivery):
            raise ConfigError("redelivery", f"must be a Redelivery, got {redelivery!r}")
        durable = _durable(group, topic)
        # Deliberately no BackOff: see _Consumer.fail.
        config = self._nats.api.ConsumerConfig(
            name=durable,
            durable_name=durable,
            description=f"meshkit group {group} on topic {topic}",
            filter_subject=self._subject(topic),
            deliver_policy="all",
            ack_policy="explicit",
            ack_wait=redelivery.ack_wait,
            max_deliver=redelivery.max_deliveries,
        )
        await self._guard(
            f"joining group {group!r} on {topic!r}",
            self._jetstream().add_consumer(self.stream, config),
        )
        consumer = _Consumer(self, topic, group, durable, redelivery)
        await consumer.start()
        return consumer

    # -- dead letters ------------------------------------------------------------------

    async def _bury(
        self, message: Message, *, group: str, deliveries: int, error: str, sequence: int
    ) -> None:
        """Store ``message`` (stream sequence ``sequence``) as a dead letter of ``group``.

        Its ``Nats-Msg-Id`` names the group's consumer and the sequence, so
        the same message buried twice within the window (a failure reported
        and, its ack lost, the server's max-deliveries advisory) is one letter.
        """
        headers = _wire_headers(message.headers, message.id, message.key)
        headers |= {
            _GROUP: group,
            _TOPIC: message.topic,
            _DELIVERIES: str(deliveries),
            _ERROR: _encode_text(error[:_MAX_ERROR]),
            _PUBLISHED: repr(message.published),
            _MSG_ID: f"{_durable(group, message.topic)}/{sequence}",
        }
        subject = f"{self.prefix}.dlq.{group}.{message.topic}"
        await self._publish("storing a dead letter", [(subject, message.payload, headers)])

    async def _stored(self, sequence: int) -> Message | None:
        """The message at ``sequence`` in the message stream, if it is still there."""
        raw = await self._get(self.stream, sequence)
        if raw is None:
            return None
        return _message(
            raw.subject.removeprefix(f"{self.prefix}.msg."),
            raw.data or b"",
            raw.headers,
            published=raw.time.timestamp() if raw.time is not None else 0.0,
            deliveries=1,
            fallback_id=f"nats-{sequence}",
        )

    async def dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:
        check_limit(limit)
        letters: list[DeadLetter] = []
        sequence = 1
        # One direct get per letter, each the first at or after a sequence:
        # removed letters leave gaps, which this steps over.
        while len(letters) < limit:
            raw = await self._get(
                self.dead_letter_stream, sequence, first_of=f"{self.prefix}.dlq.>"
            )
            if raw is None:
                break
            letters.append(self._letter(raw))
            sequence = raw.seq + 1
        return letters

    async def dead_letter(self, letter_id: str) -> DeadLetter:
        sequence = check_letter_number(letter_id)
        raw = await self._get(self.dead_letter_stream, sequence) if sequence else None
        if raw is None:
            raise NotFoundError(f"no dead letter has id {letter_id!r}")
        return self._letter(raw)

    async def replay(self, letter_id: str) -> None:
        """Publish the letter again for its group, then remove it.

        Without ``Nats-Msg-Id``: the original id may still be in the
        duplicate window. Two replays of one letter at the same moment may
        both publish it (delivery is at least once in any case).
        """
        letter = await self.dead_letter(letter_id)
        message = letter.message
        headers = _wire_headers(
            {**message.headers, REPLAY_HEADER: letter.group}, message.id, message.key
        )
        request = (self._subject(message.topic), message.payload, headers)
        await self._publish("replaying a dead letter", [request])
        await self._delete(int(letter_id))

    async def purge(self, ids: Sequence[str] | None = None) -> int:
        if ids is None:
            subject = f"$JS.API.STREAM.PURGE.{self.dead_letter_stream}"
            [answer] = await self._ask("purging dead letters", [(subject, b"{}", None)])
            try:
                return int(json.loads(answer.data)["purged"])
            except (ValueError, KeyError, TypeError) as error:
                raise EnvironmentFaultError(
                    f"JetStream at {self.url} answered a purge with {answer.data[:200]!r}"
                ) from error
        numbers = [check_letter_number(letter_id) for letter_id in ids]
        removed = await asyncio.gather(*(self._delete(number) for number in numbers))
        return sum(removed)

    def _letter(self, raw: Any) -> DeadLetter:
        headers: Mapping[str, str] = raw.headers or {}
        topic = _decode_text(headers.get(_TOPIC, ""))
        try:
            deliveries = int(headers.get(_DELIVERIES, "0"))
            published = float(headers.get(_PUBLISHED, "0"))
        except ValueError:
            deliveries, published = 0, 0.0
        message = _message(
            topic,
            raw.data or b"",
            headers,
            published=published,
            deliveries=deliveries,
            fallback_id=f"nats-dlq-{raw.seq}",
        )
        return DeadLetter(
            id=str(raw.seq),
            group=_decode_text(headers.get(_GROUP, "")),
            message=message,
            deliveries=deliveries,
            error=_decode_text(headers.get(_ERROR, "")),
            failed=raw.time.timestamp() if raw.time is not None else 0.0,
        )

    async def _get(self, stream: str, sequence: int, *, first_of: str | None = None) -> Any:
        """The stored message at ``sequence`` (or the first of subjects ``first_of`` from there).

        ``None`` when there is none.
        """
        call = self._jetstream().get_msg(
            stream, seq=sequence, subject=first_of, next=first_of is not None, direct=True
        )
        try:
            return await self._guard(f"reading {stream} at {sequence}", call)
        except EnvironmentFaultError as error:
            if isinstance(error.__cause__, self._nats.NotFoundError):
                return None
            raise

    async def _delete(self, sequence: int) -> bool:
        """Remove a dead letter: whether it was there."""
        try:
            return bool(
                await self._guard(
                    f"removing dead letter {sequence}",
                    self._jetstream().delete_msg(self.dead_letter_stream, sequence),
                )
            )
        except EnvironmentFaultError as error:
            if getattr(error.__cause__, "err_code", None) == 10057:  # no message found
                return False
            raise

    # -- talking to the server ----------------------------------------------------------

    def _client_or_raise(self) -> Any:
        if self._client is None:
            raise UsageError("the JetStreamBus is not connected: open() it first")
        return self._client

    def _jetstream(self) -> Any:
        self._client_or_raise()
        return self._js

    async def _ask(self, what: str, requests: Sequence[_Request]) -> list[Any]:
        self._client_or_raise()
        assert self._inbox is not None
        return await self._ask_on(self._inbox, what, requests)

    async def _ask_on(self, inbox: _Inbox, what: str, requests: Sequence[_Request]) -> list[Any]:
        """``inbox.ask`` with this bus's timeout and errors."""
        return await self._guard(what, inbox.ask(requests, within=self._timeout))

    async def _guard(self, what: str, call: Awaitable[T]) -> T:
        """Await a nats-py call, translating its errors at this boundary."""
        try:
            return await call
        except self._nats.MaxPayloadError as error:
            raise ConfigError(
                "payload", f"with its headers, is more than NATS at {self.url} takes"
            ) from error
        except self._nats.APIError as error:
            raise EnvironmentFaultError(
                f"JetStream at {self.url}: {what} failed: {error.description} (code {error.code},"
                f" {error.err_code})"
            ) from error
        except (self._nats.Error, OSError, TimeoutError) as error:
            connected = self._client is not None and self._client.is_connected
            why = repr(error) if connected else f"not connected ({error!r})"
            raise EnvironmentFaultError(f"NATS at {self.url}: {what} failed: {why}") from error


# -- a member of a group ------------------------------------------------------------------


class _Consumer:
    """One member of a group: pull requests on its own inbox, answers confirmed.

    Receipts are ``"{ack subject}|{deadline}"``: the ack subject is the
    handle JetStream gives the delivery, and the deadline (on this
    process's monotonic clock) tells a late answer apart.
    """

    def __init__(
        self, bus: JetStreamBus, topic: str, group: str, durable: str, redelivery: Redelivery
    ) -> None:
        self._bus = bus
        self._topic = topic
        self._group = group
        self._durable = durable
        self._redelivery = redelivery
        self._client = bus._client_or_raise()
        self._inbox = _Inbox(self._client, self._delivered)
        self._ready: deque[tuple[Any, float]] = deque()  # (msg, monotonic arrival)
        self._changed = asyncio.Event()
        self._fetching = asyncio.Lock()
        self._advisories: Any = None
        self._closed = False
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{bus.stream}.{durable}"
        self._topic_prefix = f"{bus.prefix}.msg."

    async def start(self) -> None:
        await self._bus._guard("subscribing", self._inbox.start())
        # A member that stops holding a message on its last delivery never
        # answers it: the server gives up on the message and only says so in
        # this advisory, which is core NATS, so nobody keeps it. A queue
        # group, so one member of the group buries it; if none is listening
        # then (no member running), the letter is lost and the message stays
        # in the stream, not delivered again. The server sends the advisory
        # when it would have redelivered the message, which is when a member
        # asks for messages.
        subject = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self._bus.stream}.{self._durable}"
        self._advisories = await self._bus._guard(
            "subscribing",
            self._client.subscribe(
                subject, queue=f"meshkit-{self._bus.stream}-{self._durable}", cb=self._expired
            ),
        )

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError(f"this member of group {self._group!r} on {self._topic!r} has left")

    def _delivered(self, msg: Any) -> None:
        self._ready.append((msg, self._bus._clock.monotonic()))
        self._changed.set()

    # -- the Consumer protocol ----------------------------------------------------------

    async def fetch(self, limit: int, *, wait: float) -> list[Delivery]:
        self._check_open()
        check_limit(limit)
        wait = check.seconds("wait", wait, allow_zero=True)
        clock = self._bus._clock
        async with self._fetching:
            deadline = clock.monotonic() + wait
            while True:
                if len(self._ready) < limit:
                    remaining = max(deadline - clock.monotonic(), _SHORTEST_PULL)
                    await self._pull(limit - len(self._ready), expires=remaining, no_wait=True)
                    remaining = deadline - clock.monotonic()
                    if not self._ready and remaining >= _SHORTEST_PULL:
                        # A server that ends a no-wait pull at once when nothing
                        # is there, its expiry notwithstanding (as ADR-13 has
                        # it): wait for one message, which it answers at once.
                        await self._pull(1, expires=remaining, no_wait=False)
                found = await self._deliveries(limit)
                if found or clock.monotonic() >= deadline:
                    return found

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        self._check_open()
        subjects = [self._receipt(delivery)[0] for delivery in deliveries]
        await self._answer(subjects, b"+ACK", "acking")

    async def fail(self, delivery: Delivery, error: str) -> None:
        """Due again after the backoff (a delayed NAK), or buried and acked on the last delivery.

        The backoff is not the consumer's JetStream ``BackOff``: with one set,
        the server times every delivery's redelivery by it in place of
        ``AckWait``, so a healthy handler slower than the first wait (1 s by
        default) would see its message go to another member while it is
        still working. A NAK with a delay (nats-server >= 2.7) only moves the
        failed delivery's own timer, measured against nats-server 2.9.10: due
        again 0.25 s after a 0.25 s NAK, to the millisecond.
        """
        self._check_open()
        subject, deadline, deliveries = self._receipt(delivery)
        if self._bus._clock.monotonic() > deadline:
            # Its ack deadline passed: the server has taken it back (a NAK
            # now would move the timer of its next delivery, to another member).
            return
        wait = self._redelivery.after_failure(deliveries)
        if wait is not None:
            await self._answer([subject], b'-NAK {"delay": %d}' % round(wait * 1e9), "failing")
            return
        fields = _ack_fields(subject)
        assert fields is not None  # checked by _receipt
        await self._bus._bury(
            delivery.message,
            group=self._group,
            deliveries=deliveries,
            error=error,
            sequence=fields[3],
        )
        await self._answer([subject], b"+ACK", "acking a dead letter")

    async def aclose(self) -> None:
        """Leave; messages not acked go to other members after their ack deadline."""
        self._closed = True
        advisories, self._advisories = self._advisories, None
        with contextlib.suppress(self._bus._nats.Error, OSError):
            if advisories is not None:
                await advisories.unsubscribe()
            # Also ends the interest of any pull still open on the server:
            # it delivers to other members, not to this closed inbox.
            await self._inbox.stop()

    # -- pulling ------------------------------------------------------------------------

    async def _pull(self, batch: int, *, expires: float, no_wait: bool) -> None:
        """Ask for up to ``batch`` messages, within ``expires`` seconds.

        With ``no_wait``, nats-server 2.9 answers at once with those ready
        (ending the request with a 408), and when none is, with the first
        that comes within ``expires``: the fetch contract in one request.
        Without ``expires`` it would answer at once even with none, but a
        group at its MaxAckPending would hold the request, unanswered, until
        another came. Without ``no_wait``, a pull waits for its whole batch.
        Returns once the server ends the request (a 404 or 408 status) or
        ``batch`` messages are in hand; the messages go to ``_ready``.
        """
        request = {"batch": batch, "expires": int(expires * 1e9), "no_wait": no_wait}
        want = len(self._ready) + batch
        reply, answer = self._inbox.expect()
        answer.add_done_callback(lambda _: self._changed.set())
        try:
            await self._bus._guard(
                "fetching",
                self._client.publish(self._next, json.dumps(request).encode(), reply=reply),
            )
            limit = self._bus._timeout + expires
            try:
                async with asyncio.timeout(limit):
                    while len(self._ready) < want and not answer.done():
                        self._changed.clear()
                        await self._changed.wait()
            except TimeoutError as error:
                raise EnvironmentFaultError(
                    f"JetStream at {self._bus.url} did not answer a fetch for group"
                    f" {self._group!r} on {self._topic!r} within {limit:.1f} s"
                    + ("" if self._client.is_connected else " (not connected)")
                ) from error
        finally:
            self._inbox.forget(reply)
        if answer.done() and not answer.cancelled():
            self._check_status(answer.result())

    def _check_status(self, msg: Any) -> None:
        headers = msg.headers or {}
        status = headers.get("Status")
        if status in ("404", "408"):  # no messages; request expired
            return
        raise EnvironmentFaultError(
            f"JetStream at {self._bus.url} refused a fetch for group {self._group!r} on"
            f" {self._topic!r}: {status} {headers.get('Description', '')}"
        )

    async def _deliveries(self, limit: int) -> list[Delivery]:
        """Up to ``limit`` ready messages as deliveries; those for other groups are acked."""
        found: list[Delivery] = []
        others: list[str] = []
        ack_wait = self._redelivery.ack_wait
        while self._ready and len(found) < limit:
            msg, arrived = self._ready.popleft()
            fields = _ack_fields(msg.reply)
            if fields is None:
                continue
            _, _, deliveries, _, nanoseconds = fields
            message = _message(
                msg.subject.removeprefix(self._topic_prefix),
                msg.data,
                msg.headers,
                published=nanoseconds / 1e9,
                deliveries=deliveries,
                fallback_id=f"nats-{fields[3]}",
            )
            if not message.for_group(self._group):
                others.append(msg.reply)  # a dead letter replayed to another group
                continue
            found.append(Delivery(message=message, receipt=f"{msg.reply}|{arrived + ack_wait!r}"))
        if others:
            await self._answer(others, b"+ACK", "passing by another group's message")
        return found

    # -- answers ------------------------------------------------------------------------

    def _receipt(self, delivery: Delivery) -> tuple[str, float, int]:
        """``(ack subject, deadline, deliveries)`` from a receipt this consumer gave."""
        subject, _, deadline = delivery.receipt.rpartition("|")
        fields = _ack_fields(subject)
        try:
            deadline_at = float(deadline)
        except ValueError:
            fields = None
        if fields is None or fields[:2] != (self._bus.stream, self._durable):
            raise ConfigError("receipt", f"is not one this consumer gave: {delivery.receipt!r}")
        return subject, deadline_at, fields[2]

    async def _answer(self, subjects: Sequence[str], verb: bytes, what: str) -> None:
        """Send ``verb`` for each delivery and wait until the server has applied them all.

        With a reply subject JetStream confirms an answer once it has taken
        it; unconfirmed, an ack lost on the way would mean a second delivery.
        """
        if subjects:
            await self._bus._ask_on(self._inbox, what, [(s, verb, None) for s in subjects])

    # -- the server's max-deliveries advisory -------------------------------------------

    async def _expired(self, msg: Any) -> None:
        try:
            event = json.loads(msg.data)
            sequence, deliveries = int(event["stream_seq"]), int(event["deliveries"])
        except (ValueError, KeyError, TypeError):
            _log.warning("%s/%s: unreadable advisory %r", self._topic, self._group, msg.data[:200])
            return
        try:
            message = await self._bus._stored(sequence)
            if message is None or not message.for_group(self._group):
                return  # gone from the stream (max_age), or not this group's
            message = msgspec.structs.replace(message, deliveries=deliveries)
            error = expired_error(self._redelivery.ack_wait)
            await self._bus._bury(
                message, group=self._group, deliveries=deliveries, error=error, sequence=sequence
            )
        except MeshkitError as error:
            _log.warning(
                "%s/%s: message %d reached its last delivery unanswered, and could not be"
                " stored as a dead letter: %s",
                self._topic,
                self._group,
                sequence,
                error,
            )

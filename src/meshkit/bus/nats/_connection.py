"""One connection to NATS: connecting, the two streams, requests in flight, translated errors."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from meshkit import _net
from meshkit._clock import Clock
from meshkit._optional import require
from meshkit.bus._model import DUPLICATE_WINDOW
from meshkit.bus.nats import _wire as wire
from meshkit.bus.nats._wire import Request
from meshkit.errors import ConfigError, EnvironmentFaultError, MessageRefusedError, UsageError

__all__ = ["Connection", "Inbox", "Nats", "Settings", "check_prefix", "check_url", "connect"]

T = TypeVar("T")
_log = logging.getLogger("meshkit.bus")
_PREFIX = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")


class Nats:
    """nats-py, imported when a bus is made, so meshkit imports without it."""

    def __init__(self) -> None:
        def load(module: str) -> Any:
            return require(module, extra="nats", what="the JetStream bus")

        self.client = load("nats.aio.client")  # Client is looked up when connecting
        self.api = load("nats.js.api")
        self.Error: type[Exception] = load("nats.errors").Error
        js_errors = load("nats.js.errors")
        self.APIError: Any = js_errors.APIError
        self.NotFoundError: type[Exception] = js_errors.NotFoundError


def check_prefix(value: object) -> str:
    if not isinstance(value, str) or _PREFIX.fullmatch(value) is None:
        # No '_': it parts the prefix from the dead-letter stream's suffix.
        raise ConfigError(
            "prefix", f"must be 1 to 32 lower-case letters, digits and '-', got {value!r}"
        )
    return value


def check_url(url: object) -> str:
    return _net.check_url(
        "url", url, schemes=("nats", "tls", "ws", "wss"), example="nats://127.0.0.1:4222"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """A bus's options, checked. ``where`` is the URL for messages: its password hidden."""

    url: str
    where: str
    prefix: str
    max_age: float | None
    timeout: float
    connect_timeout: float
    clock: Clock

    @property
    def stream(self) -> str:
        return self.prefix.upper()

    @property
    def dead_letter_stream(self) -> str:
        return f"{self.stream}_DLQ"


class Inbox:
    """One wildcard subscription for the answers to many requests in flight at once.

    Each request gets a token; its answer resolves that token's future. A
    batch is written out whole and then awaited together: one round trip for
    the batch, not one per request. (nats-py's ``request`` waits for each
    answer in turn, or takes a task each to overlap them: 27,000 acks/s here
    against 90,000; its ``publish_async`` futures never time out.)
    Deliveries from pull requests also come here; they go to ``deliveries``.
    ``name`` says whose inbox it is, in the ``UsageError`` that requests
    waiting when it stops, and those made after, raise.
    """

    def __init__(
        self, client: Any, name: str, deliveries: Callable[[Any], None] | None = None
    ) -> None:
        self._client = client
        self._name = name
        self.prefix = f"{client.new_inbox()}."
        self._deliveries = deliveries
        self._waiting: dict[str, asyncio.Future[Any]] = {}
        self._tokens = itertools.count()
        self._subscription: Any = None
        self._stopped = False

    async def start(self) -> None:
        self._subscription = await self._client.subscribe(f"{self.prefix}*", cb=self._arrived)

    async def stop(self) -> None:
        """Stop listening; every request still waiting raises ``UsageError`` at once."""
        self._stopped = True
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(self._closed())
                future.exception()  # marked as seen: it may have no awaiter left
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await subscription.unsubscribe()

    def _closed(self) -> UsageError:
        return UsageError(f"{self._name} is closed")

    async def _arrived(self, msg: Any) -> None:
        if self._deliveries is not None and msg.reply.startswith("$JS.ACK."):
            self._deliveries(msg)
            return
        future = self._waiting.pop(msg.subject[len(self.prefix) :], None)
        if future is not None and not future.done():
            future.set_result(msg)

    def expect(self) -> tuple[str, asyncio.Future[Any]]:
        """A reply subject, and the future its first answer resolves."""
        if self._stopped:
            raise self._closed()
        token = f"{next(self._tokens):x}"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        return self.prefix + token, future

    def forget(self, reply: str) -> None:
        future = self._waiting.pop(reply[len(self.prefix) :], None)
        if future is not None:
            future.cancel()

    async def ask(self, requests: Sequence[Request], *, within: float) -> list[Any]:
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

    async def flush(self, *, within: float) -> None:
        """Return once what the server sent here before now has reached ``deliveries``.

        A message to this inbox comes back after them: the server sends what
        one connection receives in order, and nats-py hands one
        subscription's messages over in order (``TimeoutError``).
        """
        reply, future = self.expect()
        try:
            await self._client.publish(reply, b"")
            async with asyncio.timeout(within):
                await future
        finally:
            self.forget(reply)


class _Events:
    """nats-py's connection callbacks: logs, and the last error it met."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.last_error: Exception | None = None
        self.live = False  # from the first connection to aclose(): failures are warnings

    async def on_error(self, error: Exception) -> None:
        self.last_error = error
        # Before the first connection, the error raised says it already.
        _log.log(
            logging.WARNING if self.live else logging.DEBUG, "NATS at %s: %r", self.where, error
        )

    async def on_disconnected(self) -> None:
        if self.live:
            _log.warning("NATS at %s: disconnected; reconnecting", self.where)

    async def on_reconnected(self) -> None:
        self.last_error = None
        _log.info("NATS at %s: reconnected", self.where)


async def connect(settings: Settings, nats: Nats) -> Connection:
    """A connection to NATS with both streams up to date (``EnvironmentFaultError``)."""
    events = _Events(settings.where)
    client = nats.client.Client()
    try:
        # Two attempts 0.1 s apart, within connect_timeout: nats-py's
        # defaults would retry a server that is down for two minutes.
        async with asyncio.timeout(settings.connect_timeout):
            await client.connect(
                servers=[settings.url],
                name="meshkit",
                connect_timeout=settings.connect_timeout,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.1,
                error_cb=events.on_error,
                disconnected_cb=events.on_disconnected,
                reconnected_cb=events.on_reconnected,
            )
    except (nats.Error, OSError, TimeoutError) as error:
        with contextlib.suppress(nats.Error, OSError):
            await client.close()
        # The last error nats-py met (a refused connection) says more than "no servers".
        cause = events.last_error or error
        raise EnvironmentFaultError(
            f"NATS at {settings.where} is unreachable: {cause!r}"
        ) from error
    # Connected: from now on ride out restarts of the server, however long,
    # trying every 2 s (nats-py's default wait).
    client.options["max_reconnect_attempts"] = -1
    client.options["reconnect_time_wait"] = 2.0
    events.live, events.last_error = True, None
    connection = Connection(settings, nats, client, events)
    try:
        prefix = settings.prefix
        await connection.ensure_stream(settings.stream, f"{prefix}.msg.>", settings.max_age)
        await connection.ensure_stream(settings.dead_letter_stream, f"{prefix}.dlq.>", None)
        await connection.guard("subscribing", connection.inbox.start())
    except BaseException:
        await connection.aclose()
        raise
    return connection


class Connection:
    """A connected client, its JetStream context and the bus's inbox; made by ``connect()``."""

    def __init__(self, settings: Settings, nats: Nats, client: Any, events: _Events) -> None:
        self.settings = settings
        self.nats = nats
        self.client = client
        self.js: Any = client.jetstream(timeout=settings.timeout)
        self._events = events
        self._inboxes: weakref.WeakSet[Inbox] = weakref.WeakSet()
        self.inbox = self.new_inbox(f"the JetStreamBus on NATS at {settings.where}")

    def new_inbox(self, name: str, deliveries: Callable[[Any], None] | None = None) -> Inbox:
        """An inbox on this connection (not started), stopped when the connection closes."""
        inbox = Inbox(self.client, name, deliveries)
        self._inboxes.add(inbox)
        return inbox

    async def aclose(self) -> None:
        """Close: requests waiting for an answer, the members' too, raise ``UsageError`` at once."""
        self._events.live = False
        for inbox in list(self._inboxes):
            await self.quietly(inbox.stop())
        await self.quietly(self.client.close())

    async def quietly(self, call: Awaitable[object]) -> None:
        """Await a call that lets go of something, whatever the connection's state."""
        with contextlib.suppress(self.nats.Error, OSError):
            await call

    async def ensure_stream(self, name: str, subjects: str, max_age: float | None) -> None:
        # JetStream's window may not outlast max_age: the ids go with their messages.
        window = DUPLICATE_WINDOW if max_age is None else min(DUPLICATE_WINDOW, max_age)
        config = self.nats.api.StreamConfig(
            name=name,
            subjects=[subjects],
            storage="file",
            max_age=max_age,
            duplicate_window=window,
            allow_direct=True,  # reads by sequence without a JetStream API round trip
        )
        try:
            await self.guard(f"creating stream {name}", self.js.add_stream(config))
        except EnvironmentFaultError as error:
            cause = error.__cause__
            if getattr(cause, "err_code", None) != 10058:  # not "exists with another config"
                raise
            info = await self.guard(f"reading stream {name}", self.js.stream_info(name))
            if info.config.subjects != [subjects]:
                raise ConfigError(
                    "prefix",
                    f"stream {name} on {self.settings.where} exists for subjects"
                    f" {info.config.subjects}, not {subjects}: choose another prefix",
                ) from error
            await self.guard(f"updating stream {name}", self.js.update_stream(config))

    # -- requests -------------------------------------------------------------------------

    async def guard(self, what: str, call: Awaitable[T]) -> T:
        """Await a nats-py call, translating its errors at this boundary."""
        where = self.settings.where
        try:
            return await call
        except self.nats.APIError as error:
            raise EnvironmentFaultError(
                f"JetStream at {where}: {what} failed: {error.description} (code {error.code},"
                f" {error.err_code})"
            ) from error
        except (self.nats.Error, OSError, TimeoutError) as error:
            raise EnvironmentFaultError(
                f"NATS at {where}: {what} failed: {self.why(error)}"
            ) from error

    def why(self, error: BaseException) -> str:
        if self.client.is_connected:
            return repr(error)
        last = self._events.last_error
        return f"not connected ({error!r}" + (f"; last error: {last!r})" if last else ")")

    async def ask(
        self, what: str, requests: Sequence[Request], *, inbox: Inbox | None = None
    ) -> list[Any]:
        """``inbox.ask`` (the bus's own by default) with the bus's timeout and errors."""
        return await self.guard(
            what, (inbox or self.inbox).ask(requests, within=self.settings.timeout)
        )

    async def store(self, what: str, requests: Sequence[Request], *, room: int = 0) -> list[bool]:
        """Store each message, all sent before the first PubAck is awaited: whether a duplicate.

        Each must leave ``room`` bytes of the server's ``max_payload`` free.
        Sizes are checked first: the server closes the connection of a client
        that sends more than its ``max_payload`` (nats-py counts only the payload).
        """
        if not requests:
            return []
        largest = self.client.max_payload - room
        for _, payload, headers in requests:
            size = wire.wire_size(payload, headers)
            if size > largest:
                kept = ", keeping room for its dead letter" if room else ""
                raise MessageRefusedError(
                    "payload",
                    f"is {size} bytes with its headers, more than NATS at"
                    f" {self.settings.where} takes ({largest}{kept})",
                )
        answers = await self.ask(what, requests)
        settings = self.settings
        return [
            wire.read_pub_ack(answer, subject, where=settings.where, stream=settings.stream)
            for (subject, _, _), answer in zip(requests, answers, strict=True)
        ]

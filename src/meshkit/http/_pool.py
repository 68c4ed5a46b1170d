"""Keep-alive connections per origin, shared by the HTTP client and the proxy engine.

The pool only keeps books: which connections to an origin are idle, how
many are open, and who is waiting for one. Idle connections are expired by
one sweeping timer per pool rather than a timer each: on the proxy's path
a connection goes back to the pool on every request, and arming and
cancelling a timer each time was a measurable share of the work. Connections are any asyncio
protocol with the few attributes ``Pooled`` names; the client's buffered
``Connection`` and the proxy's streaming upstream connection both are.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar, cast

from meshkit.errors import ConnectError, ConnectTimeoutError, UsageError
from meshkit.http._config import Limits

__all__ = ["ConnectionPool", "Origin", "Pooled"]

Origin = tuple[str, int]


class Pooled(Protocol):
    """What the pool needs of a connection."""

    closed: bool
    idle_since: float
    loop: asyncio.AbstractEventLoop

    @property
    def reusable(self) -> bool: ...

    def close(self) -> None: ...


C = TypeVar("C", bound=Pooled)


class _Origin(Generic[C]):
    """Connections to one origin: idle ones for reuse, and waiters for a free slot."""

    __slots__ = ("idle", "open", "waiters")

    def __init__(self) -> None:
        self.idle: deque[C] = deque()
        self.open = 0
        self.waiters: deque[asyncio.Future[None]] = deque()


class ConnectionPool(Generic[C]):
    """Up to ``limits.max_connections`` connections per origin, made by ``factory``;
    over TLS, checked against the host's name, when ``tls`` is given."""

    def __init__(
        self, factory: Callable[[Origin], C], limits: Limits, *, tls: ssl.SSLContext | None = None
    ) -> None:
        self.limits = limits
        self._tls = tls
        self._factory = factory
        self._origins: dict[Origin, _Origin[C]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self.closed = False

    def statistics(self) -> dict[str, dict[str, int]]:
        """Open and idle connections and waiters, per ``host:port``; cheap, for dashboards."""
        return {
            f"{host}:{port}": {
                "open": entry.open,
                "idle": len(entry.idle),
                "waiting": len(entry.waiters),
            }
            for (host, port), entry in self._origins.items()
        }

    async def acquire(
        self, origin: Origin, connect: float, *, fresh: bool = False
    ) -> tuple[C, bool]:
        """A connection to ``origin`` and whether it was reused.

        Waits up to ``connect`` seconds for a free slot and the connection
        together; ``fresh`` skips idle connections. Raises ``ConnectError``
        or ``ConnectTimeoutError``.
        """
        if self.closed:
            raise UsageError("this connection pool is closed")
        if not fresh and (connection := self.take_idle(origin)) is not None:
            return connection, True
        entry = self._origins.get(origin)
        if entry is None:
            entry = self._origins[origin] = _Origin()
        if entry.open >= self.limits.max_connections:
            loop = asyncio.get_running_loop()
            started = loop.time()
            await self.wait_for_slot(origin, connect)
            connect -= loop.time() - started
            if not fresh and entry.idle:
                return await self.acquire(origin, connect)
            if fresh and entry.open >= self.limits.max_connections and entry.idle:
                # Make room for the fresh one rather than go over the limit.
                entry.idle.popleft().close()
                entry.open -= 1
        entry.open += 1
        try:
            return await self._connect(origin, connect), False
        except BaseException:
            entry.open -= 1
            self._wake(entry)
            raise

    def take_idle(self, origin: Origin) -> C | None:
        """An idle connection to ``origin``, or ``None``: the proxy's path, with no await."""
        entry = self._origins.get(origin)
        if entry is None:
            return None
        while entry.idle:
            connection = entry.idle.pop()  # the most recently used: least likely to be stale
            if not connection.closed:
                return connection
            entry.open -= 1
        return None

    def release(self, origin: Origin, connection: C) -> None:
        """Hand a connection back: kept for reuse if it can be, closed otherwise."""
        entry = self._origins.get(origin)
        if entry is None:
            connection.close()
            return
        if self.closed or not connection.reusable or len(entry.idle) >= self.limits.max_idle:
            self.discard(origin, connection)
            return
        # The connection's loop, not asyncio.get_running_loop(): on Python 3.11
        # that costs a getpid() system call, and the proxy releases on every request.
        loop = connection.loop
        connection.idle_since = loop.time()
        entry.idle.append(connection)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self.limits.idle_timeout, self._sweep)
        self._wake(entry)

    def discard(self, origin: Origin, connection: C) -> None:
        """Close a connection and free its slot."""
        connection.close()
        entry = self._origins.get(origin)
        if entry is not None:
            entry.open -= 1
            self._wake(entry)

    def close(self) -> None:
        """Close idle connections now; those in use close when handed back."""
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for entry in self._origins.values():
            while entry.idle:
                entry.idle.pop().close()
            for waiter in entry.waiters:
                if not waiter.done():
                    waiter.set_exception(UsageError("the connection pool was closed"))
        self._origins.clear()

    async def wait_for_slot(self, origin: Origin, connect: float) -> None:
        """Until a connection is free to use or open; waiting counts against ``connect``."""
        entry = self._origins[origin]
        try:
            async with asyncio.timeout(connect):
                while entry.open >= self.limits.max_connections and not entry.idle:
                    waiter = asyncio.get_running_loop().create_future()
                    entry.waiters.append(waiter)
                    try:
                        await waiter
                    except BaseException:
                        # Woken and cancelled in the same moment: the slot it was
                        # handed must go to the next waiter, or it is lost.
                        if waiter.done() and not waiter.cancelled():
                            self._wake(entry)
                        raise
                    finally:
                        if waiter in entry.waiters:
                            entry.waiters.remove(waiter)
        except TimeoutError as error:
            host, port = origin
            raise ConnectTimeoutError(
                f"no connection to {host}:{port} came free within {connect:.3g}s"
                f" ({self.limits.max_connections} in use)"
            ) from error

    async def _connect(self, origin: Origin, connect: float) -> C:
        host, port = origin
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect):
                # (The cast: a typing.Protocol cannot also say "is an asyncio protocol".)
                _, made = await loop.create_connection(
                    lambda: cast(asyncio.Protocol, self._factory(origin)),
                    host,
                    port,
                    ssl=self._tls,
                    server_hostname=host if self._tls is not None else None,
                )
        except TimeoutError as error:
            raise ConnectTimeoutError(
                f"could not connect to {host}:{port} within {connect}s"
            ) from error
        except OSError as error:
            raise ConnectError(f"could not connect to {host}:{port}: {error}") from error
        # asyncio and uvloop set TCP_NODELAY on TCP connections themselves.
        return cast(C, made)

    def _sweep(self) -> None:
        """Close connections idle for ``idle_timeout``; come back for the next oldest."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        # A millisecond of slack: the loop runs timers up to its clock resolution
        # early, and a sweep that found nothing due would re-arm for the same
        # moment and spin (forever, under a fake clock that only jumps when idle).
        cutoff = loop.time() - self.limits.idle_timeout + 0.001
        oldest = None
        for entry in self._origins.values():
            idle = entry.idle  # oldest first: connections are taken from the right
            while idle and idle[0].idle_since <= cutoff:
                idle.popleft().close()
                entry.open -= 1
                self._wake(entry)
            if idle and (oldest is None or idle[0].idle_since < oldest):
                oldest = idle[0].idle_since
        if oldest is not None:
            self._sweeper = loop.call_at(oldest + self.limits.idle_timeout, self._sweep)

    @staticmethod
    def _wake(entry: _Origin[C]) -> None:
        while entry.waiters:
            waiter = entry.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

"""Keeping an instance registered, from a thread of its own.

The lease is renewed every third of its TTL by a thread with its own event
loop and its own registry client. A handler hogging the application's event
loop with Python code therefore cannot starve renewals: the interpreter
switches threads every 5 ms however busy the other one is. (A registry
passed to a Service as an object has no client of the thread's own: its
calls run on the application's loop; see ``_registration``.) (A native call
that holds the GIL for longer than the TTL, such as a huge regular
expression, stops every thread, this one included; the instance then leaves
discovery, which for its callers is the truth.) So an instance that is alive
but slow stays listed, while one that is dead or frozen stops renewing and
leaves the registry within its TTL.

Each beat is bounded by a third of the TTL. When a renewal finds the lease
gone (expired during a pause, or lost by a restarted registry) the thread
registers again at once; when the registry cannot be reached, or anything
else goes wrong, it logs why and retries every second. Once the lease has
gone unconfirmed for a whole TTL, ``registered`` turns false.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable

from meshkit.errors import EnvironmentFaultError, LeaseError
from meshkit.registry import Instance, Registration, Registry

__all__ = ["Heartbeat"]

log = logging.getLogger("meshkit.service")

_RETRY = 1.0  # seconds between attempts while the registry is unreachable


class Heartbeat:
    """Registers ``instance`` and renews its lease until ``stop()``.

    ``registry`` is called in the thread, on its loop, for the registry it
    uses; the thread closes that registry when it ends.
    """

    def __init__(self, registry: Callable[[], Registry], instance: Instance, *, ttl: float) -> None:
        self._open_registry = registry
        self.instance = instance
        self.ttl = ttl
        self.registrations = 0  # times the instance was (re-)registered
        self.renewals = 0
        self.failures = 0  # beats that did not confirm the lease
        self._registered = threading.Event()
        self._confirmed_at = 0.0  # the thread's loop time of the last confirmation
        self._thread = threading.Thread(
            target=self._run, name=f"meshkit-heartbeat-{instance.id}", daemon=True
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()

    @property
    def registered(self) -> bool:
        return self._registered.is_set()

    def start(self) -> None:
        self._thread.start()
        self._started.wait()

    def wait_registered(self, timeout: float) -> bool:
        """Block until the first registration succeeds; ``False`` after ``timeout`` s."""
        return self._registered.wait(timeout)

    def stop(self, *, timeout: float = 3.0) -> None:
        """Deregister and end the thread, waiting at most ``timeout`` seconds."""
        if not self._started.is_set():
            return  # never started: nothing registered, nothing to stop
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    # -- the thread ----------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main(loop))
        finally:
            loop.close()

    async def _main(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._stop = asyncio.Event()
        self._started.set()
        registry = self._open_registry()
        registration: Registration | None = None
        try:
            while not self._stop.is_set():
                registration, ok = await self._bounded_beat(registry, registration)
                if ok:
                    self._confirmed_at = loop.time()
                else:
                    self.failures += 1
                    if loop.time() - self._confirmed_at >= self.ttl:
                        self._registered.clear()  # the lease has lapsed by now
                pause = self.ttl / 3 if ok else _RETRY
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await self._stop.wait()
            self._registered.clear()
            if registration is not None:
                with contextlib.suppress(EnvironmentFaultError, LeaseError, TimeoutError):
                    async with asyncio.timeout(2.0):
                        await registry.deregister(registration)
        finally:
            await registry.aclose()

    async def _bounded_beat(
        self, registry: Registry, registration: Registration | None
    ) -> tuple[Registration | None, bool]:
        """One beat, in at most a third of the TTL, surviving whatever goes wrong."""
        try:
            async with asyncio.timeout(self.ttl / 3):
                return await self._beat(registry, registration)
        except TimeoutError:
            log.warning(
                "%s: the registry did not answer within %.3gs", self.instance.key, self.ttl / 3
            )
        except Exception:
            log.exception("%s: the heartbeat failed; trying again", self.instance.key)
        return registration, False

    async def _beat(
        self, registry: Registry, registration: Registration | None
    ) -> tuple[Registration | None, bool]:
        """Renew, or register when there is no live lease; returns it and whether that worked."""
        try:
            if registration is not None:
                await registry.renew(registration)
                self.renewals += 1
                return registration, True
        except LeaseError:
            log.warning("%s: the registry lost our lease; registering again", self.instance.key)
        except EnvironmentFaultError as error:
            log.warning("%s: could not renew: %s", self.instance.key, error)
            return registration, False  # try again soon; the lease may still be live
        try:
            registration = await registry.register(self.instance, ttl=self.ttl)
        except EnvironmentFaultError as error:
            log.warning("%s: could not register: %s", self.instance.key, error)
            return None, False
        self.registrations += 1
        self._registered.set()
        return registration, True

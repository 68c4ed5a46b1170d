"""The app's health decides its registration: checked, then registered, renewed or removed.

``HealthGate`` is the decision (no I/O): a check result in, whether the
app counts as healthy out. As in HAProxy's ``fall`` and ``rise``, one
failed check is not enough to pull an app out of discovery, nor one good
check after failures to put it back, so a flapping app does not flap its
callers' view. An app that is starting is neither: failed checks before
its first pass do not count, and that first pass registers it at once.

``Registrar`` is the driver: it checks the app every ``interval``, and
while the gate says healthy keeps the instance registered, renewing its
lease every third of the TTL; when the gate says unhealthy it deregisters
at once, so callers stop being sent there before the lease would lapse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from meshkit._clock import Clock
from meshkit._tasks import stop
from meshkit.errors import (
    ConfigError,
    DeadlineExceededError,
    EnvironmentFaultError,
    LeaseError,
    MeshkitError,
    PeerError,
)
from meshkit.http import HTTPClient, Timeouts
from meshkit.registry import Instance, Registration, Registry

__all__ = ["HealthGate", "Registrar"]

log = logging.getLogger("meshkit.sidecar")

# While the app starts, it is checked every 0.1 s (registration waits on
# its first pass) for this long, then every ``interval``; and how long it
# may go without passing before the log says so (again at each multiple).
_EAGER = 10.0
_NOTICE = 10.0


class HealthGate:
    """Healthy after ``rise`` good checks in a row, unhealthy after ``fall`` bad ones."""

    __slots__ = ("_streak", "fall", "healthy", "rise")

    def __init__(self, *, fall: int = 3, rise: int = 2) -> None:
        if fall < 1 or rise < 1:
            raise ConfigError("fall" if fall < 1 else "rise", "must be 1 or more")
        self.fall = fall
        self.rise = rise
        self.healthy: bool | None = None  # not checked yet
        self._streak = 0  # checks in a row that disagree with ``healthy``

    def observe(self, *, passed: bool) -> bool:
        """Take one check's result; returns whether the app counts as healthy now.

        Until a first check passes, the app is starting, not unhealthy (``healthy`` is None).
        """
        if self.healthy is None:
            # Starting: failures are the app still coming up, and the
            # first pass is enough.
            self.healthy = True if passed else None
        elif passed == self.healthy:
            self._streak = 0
        else:
            self._streak += 1
            if self._streak >= (self.rise if passed else self.fall):
                self.healthy = passed
                self._streak = 0
        return bool(self.healthy)


class Registrar:
    """Checks ``health`` on the app and keeps ``instance`` registered while it passes."""

    def __init__(
        self,
        registry: Registry,
        instance: Instance,
        *,
        app: tuple[str, int],
        health: str,
        ttl: float,
        interval: float,
        clock: Clock,
        gate: HealthGate | None = None,
    ) -> None:
        self.instance = instance
        self.gate = gate or HealthGate()
        self.registration: Registration | None = None
        self.present = asyncio.Event()  # set while the app is in the registry
        self.last_problem = ""  # why the last check failed, for the logs
        self._registry = registry
        self._app = app
        self._health = health
        self._ttl = ttl
        # The lease must be renewed every third of the TTL whatever the check interval.
        self._interval = min(interval, ttl / 3)
        self._clock = clock
        self._renew_at = 0.0
        self._http = HTTPClient(timeouts=Timeouts(connect=self._interval, read=self._interval))

    async def run(self) -> None:
        """Check, decide and register until cancelled; then deregister."""
        started = self._clock.monotonic()
        notices = 0
        try:
            while True:
                await self.step()
                waited = self._clock.monotonic() - started
                starting = self.gate.healthy is None
                if starting and waited >= _NOTICE * (notices + 1):
                    notices = int(waited // _NOTICE)
                    log.warning(
                        "%s has not passed %s in %.0fs: %s",
                        self.instance.id,
                        self._health,
                        waited,
                        self.last_problem,
                    )
                eager = starting and waited < _EAGER
                await self._clock.sleep(min(self._interval, 0.1) if eager else self._interval)
        finally:
            with contextlib.suppress(Exception):
                await self._leave("the sidecar is stopping")
            await self._http.aclose()

    async def step(self) -> None:
        """One check and what follows from it."""
        healthy = self.gate.observe(passed=await self._check())
        try:
            if healthy:
                await self._keep()
            elif self.registration is not None:
                await self._leave(f"its health check failed: {self.last_problem}")
        except (EnvironmentFaultError, PeerError, DeadlineExceededError) as error:
            log.warning("the registry could not be reached (%s); trying again", error)
        except MeshkitError as error:
            # Refused by the registry (a bad token, say): nothing a retry
            # at once would change, but the app must not silently stay out.
            log.error("the registry refused %s: %s; trying again", self.instance.id, error)

    async def _check(self) -> bool:
        host, port = self._app
        try:
            answer = await self._http.request("GET", host, port, self._health)
        except (PeerError, DeadlineExceededError) as error:
            self.last_problem = str(error)
            return False
        if 200 <= answer.status < 400:
            return True
        self.last_problem = f"{self._health} answered {answer.status}"
        return False

    async def _keep(self) -> None:
        now = self._clock.monotonic()
        if self.registration is not None and now < self._renew_at:
            return
        if self.registration is not None:
            try:
                await self._registry.renew(self.registration)
            except LeaseError:
                self.registration = None  # it lapsed: register again, below
        if self.registration is None:
            self.registration = await self._registry.register(self.instance, ttl=self._ttl)
            self.present.set()
            log.info("%s registered as %s", self.instance.service, self.instance.id)
        self._renew_at = now + self._ttl / 3

    async def _leave(self, why: str) -> None:
        registration, self.registration = self.registration, None
        self.present.clear()
        if registration is not None:
            with contextlib.suppress(LeaseError):  # gone already (it lapsed): as good
                await self._registry.deregister(registration)
            log.info("%s deregistered: %s", self.instance.id, why)


async def cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it to finish its cleanup; its failure is logged, not raised.

    A cancellation of the caller while it waits is raised (``stop``), not
    taken for the task's own.
    """
    try:
        await stop(task)
    except Exception:
        log.exception("the registration task had failed")

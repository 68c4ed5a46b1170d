"""Load balancers: which backend serves the next request.

All three share one protocol, ``pick(now, exclude)`` then either
``complete(backend, now, latency, success=...)`` or, for a request that ended
with no outcome (cancelled), ``cancel(backend)``, so a driver can hold any of
them. ``exclude`` lets a retry go to a backend not tried yet. ``pick``
returns ``None`` when no backend can be chosen, and the driver turns that
into an error that names the service.

- ``RoundRobin``: each backend in turn.
- ``SmoothWeightedRoundRobin``: nginx's algorithm. Over every cycle of
  ``sum(weights)`` picks each backend is chosen exactly its weight, spread
  out rather than in runs (weights 5, 1, 1 give a a b a c a a, not
  a a a a a b c). Canary and blue-green splits drive these weights.
- ``PowerOfTwoChoices``: pick two backends at random and take the one with
  the lower cost, peak-EWMA latency times (outstanding requests + 1), as
  Finagle's and Linkerd's balancers do. It sends load away from slow or
  busy instances without the herding of "always the least loaded".
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Hashable, Iterable, Mapping
from typing import Generic, Protocol, TypeVar

from meshkit.policy import _check as check
from meshkit.policy._events import BackendsChanged, Hook

__all__ = ["Balancer", "PowerOfTwoChoices", "RoundRobin", "SmoothWeightedRoundRobin"]

T = TypeVar("T", bound=Hashable)

# Seconds: the lowest latency estimate power-of-two-choices keeps. Comparisons
# on this path are written out because the builtin max() costs about 0.18 us
# a call here, a tenth of a whole pick.
_FLOOR = 1e-6


class Balancer(Protocol[T]):
    """Chooses a backend per request and learns from how requests went."""

    def pick(self, now: float, exclude: Collection[T] | None = None) -> T | None:
        """The backend for the next request, or ``None`` if none can be used."""
        ...

    def complete(self, backend: T, now: float, latency: float, *, success: bool = True) -> None:
        """A request sent to ``backend`` (by ``pick``) ended after ``latency`` seconds."""
        ...

    def cancel(self, backend: T) -> None:
        """A request sent to ``backend`` ended without an outcome; nothing is learnt."""
        ...


def _announce(hook: Hook | None, name: str, backends: list[T], weights: list[int]) -> None:
    if hook is not None:
        hook(BackendsChanged(balancer=name, backends=tuple(backends), weights=tuple(weights)))


class RoundRobin(Generic[T]):
    """Each backend in turn, skipping excluded ones."""

    __slots__ = ("_backends", "_hook", "_next", "name")

    def __init__(self, backends: Iterable[T] = (), *, name: str = "", hook: Hook | None = None):
        self.name = name
        self._hook = hook
        self._backends: list[T] = []
        self._next = 0
        self.update(backends)

    @property
    def backends(self) -> tuple[T, ...]:
        return tuple(self._backends)

    def update(self, backends: Iterable[T]) -> None:
        """Replace the set of backends (duplicates are dropped, order kept)."""
        unique = list(dict.fromkeys(backends))
        if unique == self._backends:
            return
        self._backends = unique
        self._next = self._next % len(unique) if unique else 0
        _announce(self._hook, self.name, unique, [1] * len(unique))

    def pick(self, now: float, exclude: Collection[T] | None = None) -> T | None:  # noqa: ARG002
        backends = self._backends
        n = len(backends)
        for _ in range(n):
            i = self._next
            self._next = (i + 1) % n
            if exclude is None or backends[i] not in exclude:
                return backends[i]
        return None

    def complete(self, backend: T, now: float, latency: float, *, success: bool = True) -> None:
        """Round-robin does not learn from outcomes."""

    def cancel(self, backend: T) -> None:
        """Round-robin keeps no count of requests in flight."""


class SmoothWeightedRoundRobin(Generic[T]):
    """nginx's smooth weighted round-robin; weight 0 keeps a backend out of rotation."""

    __slots__ = ("_backends", "_current", "_hook", "_weights", "name")

    def __init__(
        self, weights: Mapping[T, int] | None = None, *, name: str = "", hook: Hook | None = None
    ):
        self.name = name
        self._hook = hook
        self._backends: list[T] = []
        self._weights: list[int] = []
        self._current: list[int] = []
        self.update(weights or {})

    @property
    def weights(self) -> dict[T, int]:
        return dict(zip(self._backends, self._weights, strict=True))

    def update(self, weights: Mapping[T, int]) -> None:
        """Replace backends and weights.

        Backends that stay keep the weight they have accumulated and newcomers
        start at zero. nginx restarts the whole cycle on a reload, but here the
        registry calls this whenever an instance comes or goes; restarting
        each time would hand the heaviest backends extra turns, and a split
        such as a 5% canary would drift under churn.
        """
        for backend, weight in weights.items():
            check.whole(f"weights[{backend!r}]", weight, minimum=0)
        if dict(weights) == self.weights:
            return
        accumulated = dict(zip(self._backends, self._current, strict=True))
        self._backends = list(weights)
        self._weights = list(weights.values())
        self._current = [accumulated.get(backend, 0) for backend in self._backends]
        _announce(self._hook, self.name, self._backends, self._weights)

    def pick(self, now: float, exclude: Collection[T] | None = None) -> T | None:  # noqa: ARG002
        # Every eligible backend gains its weight; the one with the most
        # accumulated weight wins and pays back the total gained this round.
        current, weights, backends = self._current, self._weights, self._backends
        best = -1
        total = 0
        for i, weight in enumerate(weights):
            if weight == 0 or (exclude is not None and backends[i] in exclude):
                continue
            current[i] += weight
            total += weight
            if best < 0 or current[i] > current[best]:
                best = i
        if best < 0:
            return None
        current[best] -= total
        return backends[best]

    def complete(self, backend: T, now: float, latency: float, *, success: bool = True) -> None:
        """Weighted round-robin does not learn from outcomes."""

    def cancel(self, backend: T) -> None:
        """Weighted round-robin keeps no count of requests in flight."""


class _Load(Generic[T]):
    """What power-of-two-choices knows about one backend.

    ``stamp`` is when ``ewma`` was last brought up to date; ``None`` until the
    first measurement. ``measured`` is the estimate as the last completed
    request left it.
    """

    __slots__ = ("backend", "ewma", "measured", "outstanding", "stamp")

    def __init__(self, backend: T, ewma: float) -> None:
        self.backend = backend
        self.ewma = ewma
        self.measured = 0.0
        self.outstanding = 0
        self.stamp: float | None = None

    def decayed(self, now: float, decay: float, typical: float) -> float:
        """The estimate at ``now``: half of ``typical`` until measured, then decayed to a floor."""
        if self.stamp is None:
            return typical / 2
        floor = typical / 10
        if now > self.stamp:
            ewma = self.ewma * math.exp((self.stamp - now) / decay)
            self.ewma = ewma if ewma > floor else floor  # not max(): see _FLOOR
            self.stamp = now
        return self.ewma


class PowerOfTwoChoices(Generic[T]):
    """Two random candidates, the cheaper wins: peak-EWMA latency x (outstanding + 1).

    ``decay`` is the EWMA's time constant in seconds (Finagle's and Linkerd's
    10 s). A backend not measured yet counts as half the typical latency
    (the mean of the others' latest measurements, or ``default_latency``,
    Linkerd's 30 ms, while none has been measured): a little optimism about
    the unknown, so a newcomer is tried at once and measured, and gets at
    most about twice its share before its first answer comes back. A fixed
    guess would starve it whenever the real latency is lower. A failed
    request counts as taking at least ``failure_latency``: an instance that
    fails fast must not look like the fastest one.

    While a backend goes unmeasured its estimate decays, as Finagle's does on
    every read: a backend left out for a while becomes the cheaper choice,
    which spreads the load, and an instance that was slow once gets tried
    again instead of being shunned forever. Unlike Finagle's, the decay stops
    at a tenth of the pool's typical latency (the mean of the latest
    measurements): decayed to nothing, a backend idle for hours would look
    free and take a whole burst before its first reply came back. The floor
    follows the pool rather than a constant, because a fixed floor above the
    real latency would stop decayed backends from ever winning again.
    """

    __slots__ = (
        "_by_backend",
        "_hook",
        "_loads",
        "_measured_count",
        "_measured_sum",
        "_rng",
        "decay",
        "default_latency",
        "failure_latency",
        "name",
    )

    def __init__(
        self,
        backends: Iterable[T] = (),
        *,
        rng: random.Random,
        decay: float = 10.0,
        default_latency: float = 0.03,
        failure_latency: float = 1.0,
        name: str = "",
        hook: Hook | None = None,
    ) -> None:
        self.name = name
        self.decay = check.seconds("decay", decay)
        self.default_latency = check.seconds("default_latency", default_latency)
        self.failure_latency = check.seconds("failure_latency", failure_latency)
        self._rng = rng
        self._hook = hook
        self._loads: list[_Load[T]] = []
        self._by_backend: dict[T, _Load[T]] = {}
        self._measured_sum = 0.0
        self._measured_count = 0
        self.update(backends)

    @property
    def backends(self) -> tuple[T, ...]:
        return tuple(self._by_backend)

    def update(self, backends: Iterable[T]) -> None:
        """Replace the set of backends; those that stay keep what was learned about them."""
        unique = list(dict.fromkeys(backends))
        if unique == list(self._by_backend):
            return
        old = self._by_backend
        self._by_backend = {b: old.get(b) or _Load(b, self.default_latency) for b in unique}
        self._loads = list(self._by_backend.values())
        measured = [entry.measured for entry in self._loads if entry.stamp is not None]
        self._measured_sum, self._measured_count = math.fsum(measured), len(measured)
        _announce(self._hook, self.name, unique, [1] * len(unique))

    def load(self, backend: T) -> tuple[float | None, int]:
        """``(ewma_latency, outstanding)`` for one backend as last updated, for dashboards.

        The latency is ``None`` until the backend has been measured.
        """
        entry = self._by_backend[backend]
        return (entry.ewma if entry.stamp is not None else None), entry.outstanding

    def pick(self, now: float, exclude: Collection[T] | None = None) -> T | None:
        loads = self._loads
        if exclude is not None:
            loads = [entry for entry in loads if entry.backend not in exclude]
        n = len(loads)
        if n == 0:
            return None
        if n == 1:
            chosen = loads[0]
        else:
            random_ = self._rng.random
            i = int(random_() * n)
            j = int(random_() * (n - 1))
            if j >= i:
                j += 1
            a, b = loads[i], loads[j]
            count = self._measured_count
            typical = self._measured_sum / count if count else self.default_latency
            decay = self.decay
            cost_a = a.decayed(now, decay, typical) * (a.outstanding + 1)
            cost_b = b.decayed(now, decay, typical) * (b.outstanding + 1)
            chosen = a if cost_a <= cost_b else b
        chosen.outstanding += 1
        return chosen.backend

    def complete(self, backend: T, now: float, latency: float, *, success: bool = True) -> None:
        entry = self._by_backend.get(backend)
        if entry is None:
            return  # it left the pool while the request was in flight
        if entry.outstanding > 0:
            entry.outstanding -= 1
        if not success and latency < self.failure_latency:
            latency = self.failure_latency
        # A measured zero (a coarse clock) would make the cost ignore
        # outstanding requests altogether.
        if latency < _FLOOR:
            latency = _FLOOR
        if entry.stamp is None:
            self._measured_count += 1
            entry.ewma = latency
        elif latency > entry.ewma:
            entry.ewma = latency  # "peak": react to a slowdown at once, recover gradually
        else:
            weight = math.exp(min(0.0, entry.stamp - now) / self.decay)
            entry.ewma = entry.ewma * weight + latency * (1.0 - weight)
        entry.stamp = now
        self._measured_sum += entry.ewma - entry.measured
        entry.measured = entry.ewma

    def cancel(self, backend: T) -> None:
        entry = self._by_backend.get(backend)
        if entry is not None and entry.outstanding > 0:
            entry.outstanding -= 1

"""One call's attempts across a service's instances: retrying on another instance.

The SDK's client, the gateway and the sidecar drive a call the same way:
pick an instance, send, report the outcome, and after a failure ask
``retry`` whether another instance may be tried and after how long. The
I/O (sending, sleeping) stays with the caller.
"""

from __future__ import annotations

import math
import random

from meshkit.discovery._instances import InstanceSet, Pick
from meshkit.discovery._policy import may_retry
from meshkit.http import RETRYABLE_STATUSES
from meshkit.policy import RetryPolicy, RetryRun

__all__ = ["Attempts"]


class Attempts:
    """The attempts of one call: ``next``, then ``answered`` or ``failed``, then ``retry``.

    ``current`` is the attempt under way, if any. Call ``close`` however the
    call ends: an attempt without an outcome gives back what it took, and
    the retry budget gets its slots back.
    """

    __slots__ = ("_failed", "current", "idempotent", "instances", "last_error", "patience", "run")

    def __init__(
        self,
        instances: InstanceSet,
        policy: RetryPolicy,
        now: float,
        *,
        rng: random.Random,
        idempotent: bool,
        patience: float = math.inf,
    ) -> None:
        self.instances = instances
        self.idempotent = idempotent
        # An attempt's usual time (a call's timeout, a proxy's per-try one):
        # an attempt given less has a short budget (see caller_ran_out).
        self.patience = patience
        self.current: Pick | None = None
        self.last_error = ""
        # The instances that failed this call, not tried again: a tuple, so
        # that a call answered at the first attempt allocates nothing for it.
        self._failed: tuple[str, ...] = ()
        # RetryRun itself rather than policy.start(): one call less per request.
        self.run = RetryRun(policy, now, rng=rng, budget=instances.budget, hook=None)

    @property
    def count(self) -> int:
        """Attempts made so far, the one under way included."""
        return self.run.attempts

    def next(self, now: float, *, time_left: float | None = None) -> Pick | None:
        """An instance not tried yet for an attempt that has ``time_left`` seconds (``None``:
        no bound); ``None`` if ejection leaves no instance."""
        short = time_left is not None and time_left < self.patience
        pick = self.current = self.instances.pick(now, self._failed, short_budget=short)
        return pick

    def answered(self, now: float, status: int) -> bool:
        """The current attempt was answered with ``status``; whether that is a success.

        A 502, 503 or 504 counts against the instance; anything else is an
        answer the caller takes, and ends the call's retries.
        """
        pick, self.current = self.current, None
        if status in RETRYABLE_STATUSES:  # failed_status(), inline: once per request
            if pick is not None:
                self.instances.failed(pick, now, status)
                self.last_error = f"{status} from {pick.key}"
                self._failed += (pick.key,)
            return False
        if pick is not None:
            self.instances.record(pick, now, success=True)
        self.run.succeeded(now)
        return True

    def failed(self, now: float, error: BaseException) -> None:
        """The current attempt failed with ``error`` before an answer came."""
        pick, self.current = self.current, None
        self.last_error = str(error)
        if pick is not None:
            self.instances.failed(pick, now, error)
            self._failed += (pick.key,)

    def retry(
        self,
        now: float,
        failure: BaseException | int,
        *,
        time_left: float | None,
        retry_after: float | None = None,
    ) -> float | None:
        """After a failed attempt: the seconds to wait before the next, whose instance is
        ``current``; ``None`` when no other attempt may follow.

        Another attempt may follow when the failure allows it (``may_retry``),
        the retry policy and the service's retry budget do, the wait ends
        before ``time_left`` runs out, and an instance not tried yet is there.
        """
        decision = self.run.failed(
            now, retryable=may_retry(failure, idempotent=self.idempotent), retry_after=retry_after
        )
        if not decision.retry:
            return None
        starts = now + decision.delay
        left = None if time_left is None else time_left - decision.delay
        if (left is not None and left <= 0) or self.next(starts, time_left=left) is None:
            self.run.close(now)  # the retry slot it took goes back
            return None
        return decision.delay

    def abandon(self) -> None:
        """The attempt under way ends without an outcome to record (the caller's own
        deadline ended it): the instance is not charged for it."""
        pick, self.current = self.current, None
        if pick is not None:
            self.instances.release(pick)

    def close(self, now: float) -> None:
        """The call is over: release an attempt left without an outcome, end the run."""
        pick, self.current = self.current, None
        if pick is not None:
            self.instances.release(pick)
        self.run.close(now)

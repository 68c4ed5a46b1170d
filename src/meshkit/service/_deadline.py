"""Deadline propagation: the time left for the request being served, across calls.

A service serving a request with a deadline passes the time that remains to
the services it calls, in the ``x-meshkit-timeout-ms`` header (the idea of
gRPC's ``grpc-timeout`` and Envoy's ``x-envoy-expected-rq-timeout-ms``), so
no callee works on after its caller has given up. The budget for the request
in hand lives in a context variable: each asyncio task sees its own.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from meshkit.policy import DeadlineBudget

__all__ = [
    "TIMEOUT_HEADER",
    "current_deadline",
    "deadline_from_header",
    "use_deadline",
    "without_deadline",
]

TIMEOUT_HEADER = b"x-meshkit-timeout-ms"

_deadline: contextvars.ContextVar[DeadlineBudget | None] = contextvars.ContextVar(
    "meshkit_deadline", default=None
)


def current_deadline() -> DeadlineBudget | None:
    """The deadline of the request being served in this task, if it has one."""
    return _deadline.get()


@contextlib.contextmanager
def use_deadline(deadline: DeadlineBudget | None) -> Iterator[None]:
    """Make ``deadline`` the current one inside the block."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


def without_deadline() -> contextlib.AbstractContextManager[None]:
    """Calls inside the block ignore the deadline of the request being served.

    For work that must finish even though the caller has given up, such as
    undoing a half-done operation: give those calls a ``timeout=`` of their own.
    """
    return use_deadline(None)


def deadline_from_header(value: bytes | None, now: float) -> DeadlineBudget | None:
    """The budget an ``x-meshkit-timeout-ms`` value gives from ``now``; ``None`` if absent or bad.

    A malformed value is ignored rather than refused: the deadline is advice
    from the caller, and the call can still be served without it.
    """
    if not value:
        return None
    try:
        milliseconds = int(value)
    except ValueError:
        return None
    if milliseconds <= 0:
        return DeadlineBudget(now)  # already spent
    return DeadlineBudget(now + min(milliseconds, 3_600_000) / 1000)

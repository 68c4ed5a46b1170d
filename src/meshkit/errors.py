"""The errors meshkit raises: one tree, one root.

Every error meshkit raises is a ``MeshkitError``. Below the root, each branch
says whose fault the failure is, because that decides what the caller does
next: fix its input, try another peer, or wait for the environment.

    MeshkitError
    ├── UsageError                  the caller's fault: fix the input, do not retry
    │   ├── InvalidArgumentError    a value passed in is invalid; ``key`` names it
    │   │   ├── ConfigError         an option or a configuration key is invalid
    │   │   └── MessageRefusedError the bus will never take this message as it is
    │   ├── NotFoundError           the thing asked for by id is not there
    │   ├── ConflictError           the thing is not in a state that allows this
    │   │   └── RunTakenError       another driver took this saga run: stop driving it
    │   └── RequestRefusedError     a proxy will not forward a client's request
    ├── PeerError                   the other side failed: another peer may do
    │   ├── ConnectError            no connection could be made to the peer
    │   ├── PeerClosedError         the peer closed the connection before answering
    │   ├── ProtocolViolationError  the peer's HTTP was malformed
    │   ├── ResponseTooLargeError   the peer's answer exceeded the configured limit
    │   ├── ServiceUnavailableError no instance of a service could serve a call
    │   └── CompositionError        a required part of a composed answer failed
    ├── EnvironmentFaultError       a broker, store or network is unreachable: wait
    │   └── GroupLostError          the broker no longer has a group a member joined
    ├── DeadlineExceededError       the time allowed ran out (also TimeoutError)
    │   ├── ConnectTimeoutError     connecting took longer than allowed
    │   └── ReadTimeoutError        the answer took longer than allowed
    └── LeaseError                  a lease cannot be used any more: register again
        ├── LeaseNotFoundError      no lease has this id
        └── LeaseExpiredError       the lease outlived its TTL without a renewal

Adapters for other libraries (NATS, Redis, etcd, databases) never let those
libraries' exceptions escape: they raise the meshkit error ``from`` the
original, so the cause stays in the traceback.

``InvalidArgumentError`` is gRPC's INVALID_ARGUMENT: the value is wrong
whatever the state of the system. Its two specific kinds say where the value
came from: ``ConfigError`` for how a thing was set up (an option, a key of
``meshkit.toml``), ``MessageRefusedError`` for a message handed to the bus,
which an outbox sets aside (parks) instead of publishing it again for ever.
Other bad values of one call (a receipt, a dead letter's id, a field of an
HTTP request) are ``InvalidArgumentError`` itself.

Where a stdlib type describes the failure too, the class also derives from
it (``ConfigError`` is a ``ValueError``, ``DeadlineExceededError`` a
``TimeoutError``), so code that already catches those keeps working.
"""

from __future__ import annotations

__all__ = [
    "CompositionError",
    "ConfigError",
    "ConflictError",
    "ConnectError",
    "ConnectTimeoutError",
    "DeadlineExceededError",
    "EnvironmentFaultError",
    "GroupLostError",
    "InvalidArgumentError",
    "LeaseError",
    "LeaseExpiredError",
    "LeaseNotFoundError",
    "MeshkitError",
    "MessageRefusedError",
    "NotFoundError",
    "PeerClosedError",
    "PeerError",
    "ProtocolViolationError",
    "ReadTimeoutError",
    "RequestRefusedError",
    "ResponseTooLargeError",
    "RunTakenError",
    "ServiceUnavailableError",
    "UsageError",
]


class MeshkitError(Exception):
    """The root of every error meshkit raises."""


class UsageError(MeshkitError, ValueError):
    """The caller passed something meshkit cannot use; retrying will not help."""


class InvalidArgumentError(UsageError):
    """A value passed in is invalid: ``key`` names it, ``problem`` says what is wrong.

    ``key`` is a field or parameter (``"receipt"``, ``"ids"``), or a path to
    one (``"gateway.routes[2].prefix"``), so a message or an HTTP answer can
    point at it.
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem

    def __reduce__(self) -> tuple[type[InvalidArgumentError], tuple[str, str]]:
        # Rebuild from the constructor's arguments, so the error survives
        # pickling (process pools, multiprocessing logging).
        return type(self), (self.key, self.problem)


class ConfigError(InvalidArgumentError):
    """An option or configuration key has an invalid value.

    ``key`` names the option (``"capacity"``, ``"gateway.routes[2].prefix"``).
    """


class MessageRefusedError(InvalidArgumentError):
    """The bus refuses this message for good; ``key`` names the field at fault.

    A bad topic, header, message id or partition key, a payload that is not
    JSON or larger than the bus (or the broker behind it) takes: publishing
    it again unchanged would be refused again, so an outbox parks it.
    """


class NotFoundError(UsageError, LookupError):
    """Nothing has the id asked for (a dead letter already replayed or purged, say)."""


class ConflictError(UsageError):
    """The thing asked for exists, but its state does not allow this (HTTP's 409).

    Retrying a saga run that is not stuck, say: read its state, then decide.
    """


class RunTakenError(ConflictError):
    """A write named a version of a saga run that is no longer its latest.

    Another driver claimed the run (this one's lease lapsed), or a person
    retried it: the driver that gets this stops driving the run and leaves
    it to its new owner.
    """


class RequestRefusedError(UsageError):
    """A proxy refuses a client's request; ``status`` is the HTTP status to answer with.

    The client's fault (a body over the limit, a request the proxy cannot
    forward safely): another upstream would not change the answer.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __reduce__(self) -> tuple[type[RequestRefusedError], tuple[int, str]]:
        return type(self), (self.status, self.message)


class PeerError(MeshkitError):
    """A service, instance or upstream failed to answer properly."""


class ConnectError(PeerError):
    """No connection could be made (refused, unreachable, reset while connecting)."""


class PeerClosedError(PeerError):
    """The peer closed the connection before a complete response arrived."""


class ProtocolViolationError(PeerError):
    """The peer sent something that is not valid HTTP/1.1."""


class ResponseTooLargeError(PeerError):
    """The response's headers or body exceeded the configured limit."""


class ServiceUnavailableError(PeerError):
    """No instance of ``service`` could serve the call; ``reason`` says why."""

    def __init__(self, service: str, reason: str) -> None:
        super().__init__(f"service {service!r} is unavailable: {reason}")
        self.service = service
        self.reason = reason

    def __reduce__(self) -> tuple[type[ServiceUnavailableError], tuple[str, str]]:
        return type(self), (self.service, self.reason)


class CompositionError(PeerError):
    """A required ``part`` of a composition failed; ``reason`` says how.

    It raised, its answer was refused, or it ran out of time: the peers it
    called failed the caller, whose answer cannot be whole without it. The
    error the part raised, if any, is the ``__cause__``.
    """

    def __init__(self, part: str, reason: str) -> None:
        super().__init__(f"required part {part!r} failed: {reason}")
        self.part = part
        self.reason = reason

    def __reduce__(self) -> tuple[type[CompositionError], tuple[str, str]]:
        return type(self), (self.part, self.reason)


class EnvironmentFaultError(MeshkitError):
    """Infrastructure meshkit depends on (a broker, a store, the network) failed."""


class GroupLostError(EnvironmentFaultError):
    """The broker no longer has a consumer group that a member joined: join it again.

    Its state changed under the member (the group was deleted, or the
    broker's data was flushed or lost), which no input of the member's
    caused. Joining again creates the group anew, at the earliest message
    the broker keeps.
    """


class DeadlineExceededError(MeshkitError, TimeoutError):
    """The time allowed for an operation ran out before it could finish."""


class ConnectTimeoutError(DeadlineExceededError):
    """Connecting to the peer took longer than the connect timeout."""


class ReadTimeoutError(DeadlineExceededError):
    """The peer's response did not arrive within the read timeout."""


class LeaseError(MeshkitError):
    """A lease can no longer be renewed or removed; the holder must register again."""

    def __init__(self, lease_id: int, problem: str) -> None:
        super().__init__(f"lease {lease_id}: {problem}")
        self.lease_id = lease_id
        self.problem = problem

    def __reduce__(self) -> tuple[type[LeaseError], tuple[int, str]]:
        return type(self), (self.lease_id, self.problem)


class LeaseNotFoundError(LeaseError, LookupError):
    """No lease has this id (it was never granted, or was removed or replaced)."""


class LeaseExpiredError(LeaseError):
    """The lease reached its TTL without a renewal."""

"""What the registry holds: instances of services, and snapshots of them.

Names are checked where they enter, so a bad one is refused with the field
named instead of turning into an odd key in etcd or a broken URL later.
"""

from __future__ import annotations

import ipaddress
import re

import msgspec

from meshkit.errors import ConfigError
from meshkit.policy import WeightedSplit
from meshkit.policy import _check as check

__all__ = [
    "Instance",
    "Registration",
    "ServiceCount",
    "ServiceList",
    "Snapshot",
    "Weights",
    "check_host",
    "check_name",
    "check_weights",
]

# A service's traffic split by instance version: version -> weight.
Weights = dict[str, int]

# DNS-label-like, as Kubernetes service names are: they end up in URLs,
# etcd keys, metric labels and log prefixes.
_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_INSTANCE_ID = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,126}[A-Za-z0-9])?")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?")


def check_host(key: str, value: object) -> str:
    """An IP address or a DNS host name: what will stand in URLs and Host headers."""
    if isinstance(value, str) and len(value) <= 253:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if _HOSTNAME.fullmatch(value):
                return value
        else:
            return value
    raise ConfigError(key, f"must be an IP address (no brackets) or a host name, got {value!r}")


def check_name(key: str, value: object) -> str:
    """A service name: lower-case letters, digits and dashes, at most 63 characters."""
    return _matching(key, value, _NAME, "lower-case letters, digits and '-', at most 63")


def _matching(key: str, value: object, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise ConfigError(key, f"must be {what} characters, got {value!r}")
    return value


def _string_map(key: str, value: object) -> None:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(key, "must map strings to strings")


class Instance(msgspec.Struct, frozen=True, kw_only=True):
    """One running copy of a service, reachable at ``host:port``."""

    service: str
    id: str
    host: str
    port: int
    version: str = ""
    metadata: dict[str, str] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name("service", self.service)
        _matching("id", self.id, _INSTANCE_ID, "letters, digits, '.', '_' or '-', at most 128")
        check_host("host", self.host)
        if check.whole("port", self.port, minimum=1) > 65535:
            raise ConfigError("port", f"must be at most 65535, got {self.port}")
        if len(check.text("version", self.version or "-")) > 128:
            raise ConfigError("version", "must be at most 128 characters")
        _string_map("metadata", self.metadata)

    @property
    def key(self) -> str:
        """``service/id``: unique in a registry."""
        return f"{self.service}/{self.id}"

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port


class Registration(msgspec.Struct, frozen=True, kw_only=True):
    """A registered instance and the lease that keeps it listed."""

    instance: Instance
    lease_id: int
    ttl: float


def check_weights(service: str, weights: object) -> Weights:
    """A service's version weights: versions (as instances name them) to whole weights
    from 0 to 1,000,000, at least one above 0."""
    key = f"weights.{service}"
    if not isinstance(weights, dict):
        raise ConfigError(key, f"must map versions to weights, got {weights!r}")
    for version in weights:
        if not isinstance(version, str) or len(version) > 128:
            raise ConfigError(key, f"a version is text of at most 128 characters: {version!r}")
    WeightedSplit(weights, key=key)  # the weights' own rules, where the split is made
    return dict(weights)


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A service's live instances as of ``(epoch, index)``, and its traffic weights.

    ``weights`` splits the service's traffic between versions (a canary, a
    blue-green switch): each caller picks a version by weight among those
    with live instances, then an instance of it. ``None``: no split, every
    instance alike. Pass a snapshot back to ``Registry.watch`` to wait for
    the next change of either.
    """

    service: str
    instances: tuple[Instance, ...]
    epoch: int
    index: int
    weights: Weights | None = None


class ServiceCount(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    instances: int


class ServiceList(msgspec.Struct, frozen=True, kw_only=True):
    """Every service with at least one live instance, as of ``(epoch, index)``."""

    services: tuple[ServiceCount, ...]
    epoch: int
    index: int

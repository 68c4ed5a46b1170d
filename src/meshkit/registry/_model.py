"""What the registry holds: instances of services, and snapshots of them.

Names are checked where they enter, so a bad one is refused with the field
named instead of turning into an odd key in etcd or a broken URL later.
"""

from __future__ import annotations

import ipaddress
import re

import msgspec

from meshkit.errors import ConfigError
from meshkit.policy import _check as check

__all__ = ["Instance", "Registration", "ServiceCount", "ServiceList", "Snapshot", "check_name"]

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


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A service's live instances as of ``(epoch, index)``.

    Pass a snapshot back to ``Registry.watch`` to wait for the next change.
    """

    service: str
    instances: tuple[Instance, ...]
    epoch: int
    index: int


class ServiceCount(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    instances: int


class ServiceList(msgspec.Struct, frozen=True, kw_only=True):
    """Every service with at least one live instance, as of ``(epoch, index)``."""

    services: tuple[ServiceCount, ...]
    epoch: int
    index: int

"""Choose a bus backend by URL, as ``open_registry`` chooses a registry."""

from __future__ import annotations

from meshkit._net import redacted
from meshkit.bus._protocol import Bus
from meshkit.bus._remote import RemoteBus
from meshkit.errors import ConfigError

__all__ = ["bus_url", "open_bus"]

_SCHEMES = "http://host:port (a control plane), nats://host:port or redis://host:port/db"


async def open_bus(url: str, *, token: str | None = None) -> Bus:
    """The bus at ``url``: a control plane's embedded broker, NATS JetStream or Redis Streams.

    ``http://`` is a control plane and needs ``token``; ``nats://`` and
    ``tls://`` are NATS JetStream (``meshkit[nats]``); ``redis://``,
    ``rediss://`` and ``unix://`` are Redis Streams (``meshkit[redis]``).
    NATS is connected and its streams set up before this returns; the
    others connect at their first call. Raises ``ConfigError`` naming
    ``bus`` for any other URL, ``token`` when a control plane has none, and
    whatever connecting to NATS raises.
    """
    scheme = url.partition("://")[0] if "://" in url else ""
    if scheme == "http":
        if not token:
            raise ConfigError("token", f"the control plane at {url} needs a token (MESHKIT_TOKEN)")
        return RemoteBus(url, token=token)
    if scheme in ("nats", "tls"):
        from meshkit.bus.nats import JetStreamBus  # lazily: nats-py is an extra

        return await JetStreamBus.open(url)
    if scheme in ("redis", "rediss", "unix"):
        from meshkit.bus.redis import RedisBus  # lazily: redis is an extra

        return RedisBus(url)
    raise ConfigError("bus", f"must be {_SCHEMES}, got {redacted(url)!r}")


def bus_url(bus: str | None, registry: str | None) -> str | None:
    """Where a process's bus is: ``bus`` if named, else its registry if that is a control plane.

    ``None`` when there is neither (a registry on etcd, and no bus named).
    """
    if bus:
        return bus
    if registry and registry.startswith("http://"):
        return registry
    return None

"""Which registry and bus a Service uses, and who closes them.

Each is given either as a URL, which the service opens when it starts
serving and closes when it stops, or as an object (anything implementing
``meshkit.registry.Registry`` or ``meshkit.bus.Bus``), which the service
uses and leaves open: whoever made it closes it. An object is often shared
(a test's ``EmbeddedRegistry`` that the test reads and several services
register in), so the service cannot know that it is the last user. This is
the rule ``EmbeddedBus`` follows for a broker it is handed, and redis-py for
a connection pool; httpx, which closes a transport it is handed, can afford
the other rule because a transport is rarely shared.
"""

from __future__ import annotations

import contextlib

from meshkit.bus import Bus, open_bus
from meshkit.bus._open import bus_url
from meshkit.errors import ConfigError
from meshkit.registry import Registry, open_registry

__all__ = ["check_bus", "check_registry", "use_bus", "use_registry"]

# What ``Registry`` and ``Bus`` need of an object, checked when a Service is
# built so that a wrong argument is named there, not at the first heartbeat.
_REGISTRY_METHODS = ("register", "renew", "deregister", "lookup", "services", "watch", "aclose")
_BUS_METHODS = ("publish", "publish_batch", "consumer", "delete_group", "aclose")


def _check(key: str, value: object, methods: tuple[str, ...], what: str) -> None:
    missing = [name for name in methods if not callable(getattr(value, name, None))]
    if missing:
        raise ConfigError(
            key,
            f"must be a URL or a {what}, got {type(value).__name__} (it has no {missing[0]}())",
        )


def check_registry(given: str | Registry | None, env_url: str | None) -> str | Registry | None:
    """The registry a Service was given, else ``$MESHKIT_REGISTRY``; ``None`` if neither.

    Raises ``ConfigError`` for an object that is not a ``Registry``. A URL
    is checked when the service starts serving, so that a module defining a
    service imports cleanly outside the mesh (tests, tools).
    """
    if given is None or isinstance(given, str):
        return given or env_url
    _check("registry", given, _REGISTRY_METHODS, "Registry")
    return given


def check_bus(
    given: str | Bus | None, env_url: str | None, registry: str | Registry | None
) -> str | Bus | None:
    """The bus a Service was given, else ``$MESHKIT_BUS``, else a control plane registry's.

    ``None`` when there is none (a registry on etcd or passed as an object,
    and no bus named). Raises ``ConfigError`` for an object that is not a
    ``Bus``.
    """
    if given is None or isinstance(given, str):
        return bus_url(given or env_url, registry if isinstance(registry, str) else None)
    _check("bus", given, _BUS_METHODS, "Bus")
    return given


def use_registry(
    registry: str | Registry | None, *, token: str | None, opened: contextlib.AsyncExitStack
) -> Registry:
    """``registry`` itself, or the registry its URL names, closed with ``opened``.

    Raises ``ConfigError`` when there is no registry, or its URL or token is
    unusable (see ``open_registry``).
    """
    if registry is None:
        raise ConfigError("registry", "no registry given: pass registry= or set MESHKIT_REGISTRY")
    if not isinstance(registry, str):
        return registry  # the caller's, and the caller closes it
    connected = open_registry(registry, token=token)
    opened.push_async_callback(connected.aclose)
    return connected


async def use_bus(
    bus: str | Bus | None,
    *,
    token: str | None,
    opened: contextlib.AsyncExitStack,
    needed_by: str | None,
) -> Bus | None:
    """``bus`` itself, or the bus its URL names, closed with ``opened``; ``None`` if there is none.

    ``needed_by`` names the service when its handlers or outboxes need a
    bus: then having none is a ``ConfigError``. Raises what ``open_bus``
    raises for an unusable URL or an unreachable NATS.
    """
    if bus is None:
        if needed_by is not None:
            raise ConfigError(
                "bus",
                f"{needed_by} subscribes or has an outbox, but no bus is given: "
                "pass bus= or set MESHKIT_BUS (a control plane's registry is its bus too)",
            )
        return None
    if not isinstance(bus, str):
        return bus  # the caller's, and the caller closes it
    connected = await open_bus(bus, token=token)
    opened.push_async_callback(connected.aclose)
    return connected

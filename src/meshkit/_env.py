"""The environment a supervised process is started with: read here and nowhere else.

``meshkit up`` hands each child what it needs through ``MESHKIT_*``
variables. A service started by hand can set the same variables, or pass the
values to ``Service`` directly. A bad value is a ``ConfigError`` naming the
variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import msgspec

from meshkit.errors import ConfigError

__all__ = [
    "ENV",
    "PROJECT_ENV",
    "MeshEnvironment",
    "read_bus",
    "read_environment",
    "read_project",
    "read_registry",
    "read_token",
]

ENV = {
    "registry": "MESHKIT_REGISTRY",
    "bus": "MESHKIT_BUS",
    "token": "MESHKIT_TOKEN",
    "service": "MESHKIT_SERVICE",
    "instance_id": "MESHKIT_INSTANCE_ID",
    "host": "MESHKIT_HOST",
    "port": "MESHKIT_PORT",
    "ttl": "MESHKIT_TTL",
    "version": "MESHKIT_VERSION",
    "data_dir": "MESHKIT_DATA_DIR",
    "restarts": "MESHKIT_RESTARTS",
}


class MeshEnvironment(msgspec.Struct, frozen=True, kw_only=True):
    """What the ``MESHKIT_*`` variables say; ``None`` where a variable is unset."""

    registry: str | None = None
    bus: str | None = None  # default: the registry's control plane, when it is one
    token: str | None = None
    service: str | None = None
    instance_id: str | None = None
    host: str | None = None
    port: int | None = None
    ttl: float | None = None
    version: str | None = None
    data_dir: Path | None = None
    restarts: int = 0


def _number(name: str, raw: str, kind: type[int] | type[float]) -> int | float:
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(name, f"must be a number, got {raw!r}") from None


def read_environment(environ: Mapping[str, str] | None = None) -> MeshEnvironment:
    """The ``MESHKIT_*`` settings of ``environ`` (the process environment by default)."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for field, name in ENV.items():
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        if field in ("port", "restarts"):
            values[field] = int(_number(name, raw, int))
        elif field == "ttl":
            values[field] = float(_number(name, raw, float))
        elif field == "data_dir":
            values[field] = Path(raw)
        else:
            values[field] = raw
    return MeshEnvironment(**values)  # type: ignore[arg-type]


# -- what the command line reads ---------------------------------------------------

PROJECT_ENV = "MESHKIT_PROJECT"


def _variable(name: str, environ: Mapping[str, str] | None) -> str | None:
    """``name``'s value, ``None`` when unset or empty (as ``read_environment`` treats them)."""
    value = (os.environ if environ is None else environ).get(name)
    return value or None


def read_project(environ: Mapping[str, str] | None = None) -> Path | None:
    """The project directory ``MESHKIT_PROJECT`` names, for commands given no ``--project``."""
    value = _variable(PROJECT_ENV, environ)
    return None if value is None else Path(value)


def read_registry(environ: Mapping[str, str] | None = None) -> str | None:
    """``MESHKIT_REGISTRY``: the registry's URL (a control plane's, or ``etcd://``)."""
    return _variable(ENV["registry"], environ)


def read_bus(environ: Mapping[str, str] | None = None) -> str | None:
    """``MESHKIT_BUS``: the bus's URL, when it is not the registry's control plane."""
    return _variable(ENV["bus"], environ)


def read_token(environ: Mapping[str, str] | None = None) -> str | None:
    """``MESHKIT_TOKEN``: the project's token, for a process ``meshkit up`` did not start."""
    return _variable(ENV["token"], environ)

"""The process environment: read here and nowhere else.

``meshkit up`` hands each child what it needs through ``MESHKIT_*``
variables. A service started by hand can set the same variables, or pass the
values to ``Service`` directly. Every other variable meshkit looks at has a
function of its own below, so that one file answers "what does meshkit read
from the environment, and what does a bad value do". A bad value is a
``ConfigError`` naming the variable; an empty value counts as unset, as a
shell's ``VAR= command`` means it to.

``tests/unit/test_env.py`` fails if another module of ``src/meshkit`` reads
the environment.
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
    "REQUIRE_BACKENDS",
    "TOKEN",
    "MeshEnvironment",
    "child_environment",
    "force_colour",
    "otlp_variables",
    "python_path",
    "read_bus",
    "read_environment",
    "read_project",
    "read_registry",
    "require_backends",
    "secret",
    "token",
]

TOKEN = "MESHKIT_TOKEN"  # noqa: S105 (the variable's name, not a secret)
REQUIRE_BACKENDS = "MESHKIT_REQUIRE_BACKENDS"
PROJECT_ENV = "MESHKIT_PROJECT"

ENV = {
    "registry": "MESHKIT_REGISTRY",
    "bus": "MESHKIT_BUS",
    "token": TOKEN,
    "service": "MESHKIT_SERVICE",
    "instance_id": "MESHKIT_INSTANCE_ID",
    "host": "MESHKIT_HOST",
    "port": "MESHKIT_PORT",
    "ttl": "MESHKIT_TTL",
    "version": "MESHKIT_VERSION",
    "data_dir": "MESHKIT_DATA_DIR",
    "restarts": "MESHKIT_RESTARTS",
    # For reliability tests only: the saga crash point (see meshkit.saga.SagaRunner).
    "saga_crash_at": "MESHKIT_SAGA_CRASH_AT",
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
    saga_crash_at: str | None = None


def _get(name: str) -> str | None:
    """``$name``, or ``None`` when it is unset or empty."""
    return os.environ.get(name) or None


def _number(name: str, raw: str, kind: type[int] | type[float]) -> int | float:
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(name, f"must be a number, got {raw!r}") from None


def read_environment(environ: Mapping[str, str] | None = None) -> MeshEnvironment:
    """The ``MESHKIT_*`` settings of ``environ`` (the process environment by default).

    ``MESHKIT_PORT`` and ``MESHKIT_RESTARTS`` must be whole numbers and
    ``MESHKIT_TTL`` a number, or this raises ``ConfigError`` naming the
    variable; the others are taken as they are (``Service`` checks them).
    """
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


def token() -> str | None:
    """``$MESHKIT_TOKEN``: the control plane's shared secret; ``None`` when unset.

    Its length is checked where it is used (``meshkit.control.load_token``).
    """
    return _get(TOKEN)


def secret(variable: str) -> str | None:
    """The secret held in ``$variable``, a name the project's configuration chose.

    For example the HS256 key named by ``[gateway.jwt] secret_env``.
    ``None`` when unset; the caller judges the value (length, format).
    """
    return _get(variable)


def force_colour() -> bool:
    """``$FORCE_COLOR``: any non-empty value asks for colour even off a terminal.

    The convention of force-color.org, which CI systems set. Default: off,
    and colour then follows whether the output is a terminal. No value is bad.
    """
    return _get("FORCE_COLOR") is not None


def python_path() -> str | None:
    """``$PYTHONPATH`` as this process was given it; ``None`` when unset.

    The supervisor puts a project's directory in front of it for its children.
    """
    return _get("PYTHONPATH")


def child_environment(overrides: Mapping[str, str]) -> dict[str, str]:
    """This process's whole environment with ``overrides`` on top, for a child process.

    A child inherits what its parent was started with (``PATH``, a virtual
    environment, locale), as a shell would pass it on.
    """
    return {**os.environ, **overrides}


def require_backends() -> bool:
    """``$MESHKIT_REQUIRE_BACKENDS``: ``1`` turns a test's skip for a missing server into a failure.

    CI sets it so that a backend it should have installed cannot go
    untested. Default (unset, empty or ``0``): missing servers skip.
    Raises ``ConfigError`` for any other value, rather than guessing what
    ``true`` or ``yes`` meant.
    """
    raw = _get(REQUIRE_BACKENDS)
    if raw not in (None, "0", "1"):
        raise ConfigError(REQUIRE_BACKENDS, f"must be 1 or 0, got {raw!r}")
    return raw == "1"


def otlp_variables() -> dict[str, str]:
    """The standard ``OTEL_EXPORTER_OTLP_*`` variables that are set, by name.

    OpenTelemetry's exporters read these in every language; when one names
    an endpoint, meshkit sends its telemetry there instead of to the control
    plane (``meshkit.observe.destination`` decides, and checks the values).
    """
    return {
        name: value
        for name, value in os.environ.items()
        if name.startswith("OTEL_EXPORTER_OTLP_") and value
    }


# -- what the command line reads ---------------------------------------------------


def read_project() -> Path | None:
    """``$MESHKIT_PROJECT``: the project directory for commands given no ``--project``."""
    value = _get(PROJECT_ENV)
    return None if value is None else Path(value)


def read_registry() -> str | None:
    """``$MESHKIT_REGISTRY``: the registry's URL (a control plane's, or ``etcd://``)."""
    return _get(ENV["registry"])


def read_bus() -> str | None:
    """``$MESHKIT_BUS``: the bus's URL, when it is not the registry's control plane."""
    return _get(ENV["bus"])

"""The ``meshkit`` command line. Commands call library APIs only."""

from meshkit.cli import (  # noqa: F401 (importing registers the commands)
    _bus,
    _gateway,
    _manifests,
    _outbox,
    _rollout,
    _sagas,
    _serve,
    _sidecar,
    _telemetry,
    _up,
)
from meshkit.cli._app import app, main

__all__ = ["app", "main"]

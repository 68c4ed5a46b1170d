"""The ``meshkit`` command line. Commands call library APIs only."""

from meshkit.cli import _bus, _gateway, _outbox, _sagas, _serve, _sidecar, _telemetry, _up  # noqa: F401 (importing registers the commands)
from meshkit.cli._app import app, main

__all__ = ["app", "main"]

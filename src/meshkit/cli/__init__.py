"""The ``meshkit`` command line. Commands call library APIs only."""

from meshkit.cli._app import app, main

__all__ = ["app", "main"]

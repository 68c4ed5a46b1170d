"""meshkit: a microservices platform for Python.

The top-level namespace is for building services. ``meshkit.policy`` holds the
pure decision logic the gateway, sidecar and clients share;
``meshkit.testing`` holds what tests need (a fake clock, conformance suites);
``meshkit.errors`` the one error tree.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from meshkit._clock import Clock, SystemClock
from meshkit.errors import MeshkitError
from meshkit.http import FieldError, Problem
from meshkit.service import (
    CallPolicy,
    Composition,
    Part,
    Service,
    ServiceClient,
    compose,
    install_problem_handlers,
    problem_handlers,
)

try:
    __version__ = _version("meshkit")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "CallPolicy",
    "Clock",
    "Composition",
    "FieldError",
    "MeshkitError",
    "Part",
    "Problem",
    "Service",
    "ServiceClient",
    "SystemClock",
    "__version__",
    "compose",
    "install_problem_handlers",
    "problem_handlers",
]

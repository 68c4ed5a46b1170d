"""The service SDK: serve an ASGI application in the mesh and call other services by name.

``compose`` calls several at once within one deadline budget (API composition).
"""

from meshkit.discovery import Directory
from meshkit.service._client import CallPolicy, ServiceClient
from meshkit.service._compose import Composition, Part, compose
from meshkit.service._deadline import TIMEOUT_HEADER, current_deadline, without_deadline
from meshkit.service._metrics import METRICS_PATH
from meshkit.service._problems import (
    http_exception_handler,
    install_problem_handlers,
    problem_handlers,
    unhandled_exception_handler,
    validation_exception_handler,
)
from meshkit.service._service import Service

__all__ = [
    "METRICS_PATH",
    "TIMEOUT_HEADER",
    "CallPolicy",
    "Composition",
    "Directory",
    "Part",
    "Service",
    "ServiceClient",
    "compose",
    "current_deadline",
    "http_exception_handler",
    "install_problem_handlers",
    "problem_handlers",
    "unhandled_exception_handler",
    "validation_exception_handler",
    "without_deadline",
]

"""One running replica of a service, as the supervisor and the rollout driver see it."""

from __future__ import annotations

from dataclasses import dataclass

from meshkit.deploy._config import ServiceConfig
from meshkit.deploy._process import Child

__all__ = ["Replica"]


@dataclass(eq=False)
class Replica:
    """A replica's process (and its sidecar, beside an app of any language), its port and
    the definition it runs; ``candidate`` while a rollout brings that definition."""

    service: str
    id: str
    port: int
    config: ServiceConfig
    child: Child
    sidecar: Child | None
    candidate: bool
    started: float  # Unix seconds

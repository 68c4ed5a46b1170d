"""Running a project: ``meshkit.toml``, the ``meshkit up`` supervisor, ``meshkit status``."""

from meshkit.deploy._config import (
    ControlPlaneConfig,
    Project,
    ProjectConfig,
    ServiceConfig,
    load_project,
)

__all__ = ["ControlPlaneConfig", "Project", "ProjectConfig", "ServiceConfig", "load_project"]

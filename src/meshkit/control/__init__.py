"""The control plane: the process that holds the registry (and later the broker and telemetry)."""

from meshkit.control._api import RegistryAPI
from meshkit.control._plane import DEFAULT_PORT, ControlPlane
from meshkit.control._token import TOKEN_ENV, load_token, token_path

__all__ = ["DEFAULT_PORT", "TOKEN_ENV", "ControlPlane", "RegistryAPI", "load_token", "token_path"]

"""The control plane: the process that holds the registry, the broker, the telemetry and the
rollouts, served over HTTP."""

from meshkit.control._api import RegistryAPI
from meshkit.control._plane import DEFAULT_PORT, ControlPlane
from meshkit.control._rollout_trace import rollout_trace_id
from meshkit.control._rollouts import HistoryLine, RolloutRecord
from meshkit.control._targets import PLANE_SERVICE
from meshkit.control._token import TOKEN_ENV, load_token, token_path

__all__ = [
    "DEFAULT_PORT",
    "PLANE_SERVICE",
    "TOKEN_ENV",
    "ControlPlane",
    "HistoryLine",
    "RegistryAPI",
    "RolloutRecord",
    "load_token",
    "rollout_trace_id",
    "token_path",
]

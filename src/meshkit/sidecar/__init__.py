"""The sidecar: an app in any language joins the mesh through two local ports.

``meshkit sidecar --service NAME --app HOST:PORT --health PATH`` registers
the app while its health check passes, proxies inbound traffic to it with
metrics and trace spans (sent as OTLP, as the gateway's are), and gives it an outbound port where
``/<service>/<path>`` reaches any service by name. With ``--subscribe``
it also takes a consumer group's messages from the bus and POSTs them to
the app.
"""

from meshkit.sidecar._events import EventRoute
from meshkit.sidecar._filters import METRICS_PATH, READY_PATH
from meshkit.sidecar._health import HealthGate
from meshkit.sidecar._sidecar import Sidecar, SidecarConfig

__all__ = [
    "METRICS_PATH",
    "READY_PATH",
    "EventRoute",
    "HealthGate",
    "Sidecar",
    "SidecarConfig",
]

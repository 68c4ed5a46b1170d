"""Service registry and discovery: where instances announce themselves and are found.

``Registry`` is the interface; ``EmbeddedRegistry`` keeps it in this process
(the control plane serves it), ``RemoteRegistry`` reaches a control plane
over HTTP, and ``meshkit.registry.etcd.EtcdRegistry`` keeps it in etcd.
"""

from meshkit.registry._embedded import MAX_TTL, MIN_TTL, EmbeddedRegistry
from meshkit.registry._model import (
    Instance,
    Registration,
    ServiceCount,
    ServiceList,
    Snapshot,
    check_host,
    check_name,
)
from meshkit.registry._open import open_registry
from meshkit.registry._protocol import Registry
from meshkit.registry._remote import RemoteRegistry, parse_http_url

__all__ = [
    "MAX_TTL",
    "MIN_TTL",
    "EmbeddedRegistry",
    "Instance",
    "Registration",
    "Registry",
    "RemoteRegistry",
    "ServiceCount",
    "ServiceList",
    "Snapshot",
    "check_host",
    "check_name",
    "open_registry",
    "parse_http_url",
]

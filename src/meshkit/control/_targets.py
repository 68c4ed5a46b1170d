"""Prometheus HTTP service discovery: every registered instance, and the control plane.

    GET /v1/prometheus/targets   (token needed, as for the registry listing)

The answer is what Prometheus's ``http_sd_configs`` reads
(https://prometheus.io/docs/prometheus/latest/http_sd/): a JSON list of
target groups, one per instance here::

    [
        {
            "targets": ["127.0.0.1:8104"],
            "labels": {
                "service": "orders",
                "instance": "orders-1",
                "version": "1.0.0",
                "__metrics_path__": "/-/metrics",
            },
        }
    ]

``instance`` is the registry's instance id, not Prometheus's default
``host:port``, so a series keeps its name when an instance restarts on
another port. Each instance says where it serves metrics in its
registration's ``metrics_path`` metadata (a Service: ``/-/metrics``, a
sidecar: ``/.meshkit/metrics``); an instance that does not say is
scraped at Prometheus's default, ``/metrics``. The control plane lists
itself as service ``meshkit-control-plane``.
"""

from __future__ import annotations

import msgspec

from meshkit import __version__
from meshkit.control._metrics import METRICS_PATH
from meshkit.registry import EmbeddedRegistry, Instance

__all__ = ["PLANE_SERVICE", "TARGETS_PATH", "targets"]

TARGETS_PATH = "/v1/prometheus/targets"
PLANE_SERVICE = "meshkit-control-plane"
_DEFAULT_PATH = "/metrics"  # Prometheus's own default


class TargetGroup(msgspec.Struct, frozen=True):
    targets: list[str]
    labels: dict[str, str]


def targets(registry: EmbeddedRegistry, plane: tuple[str, int] | None) -> list[TargetGroup]:
    """The target groups, instances sorted by service then id, the control plane first."""
    groups = []
    if plane is not None:
        host, port = plane
        groups.append(
            _group(
                _hostport(host if host not in ("0.0.0.0", "::", "") else "127.0.0.1", port),  # noqa: S104 (the wildcard, compared)
                service=PLANE_SERVICE,
                instance=PLANE_SERVICE,
                version=__version__,
                path=METRICS_PATH,
            )
        )
    for listed in registry.service_list().services:
        found = sorted(registry.snapshot(listed.name).instances, key=_by_id)
        groups.extend(_instance_group(instance) for instance in found)
    return groups


def _instance_group(instance: Instance) -> TargetGroup:
    return _group(
        _hostport(instance.host, instance.port),
        service=instance.service,
        instance=instance.id,
        version=instance.version,
        path=instance.metadata.get("metrics_path", _DEFAULT_PATH),
    )


def _group(target: str, *, service: str, instance: str, version: str, path: str) -> TargetGroup:
    labels = {"service": service, "instance": instance, "version": version}
    labels["__metrics_path__"] = path
    return TargetGroup(targets=[target], labels=labels)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _by_id(instance: Instance) -> str:
    return instance.id

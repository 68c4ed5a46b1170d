"""Kubernetes manifests for a project: what ``meshkit manifests`` writes.

What ``meshkit up`` runs on one machine, as Kubernetes objects (plain dicts,
in the order to apply them):

- the **control plane**: a StatefulSet of one pod (the registry, the bus
  and the telemetry live in SQLite, one writer) running ``meshkit
  control-plane --data-dir /data --host 0.0.0.0``, with a
  PersistentVolumeClaim for ``/data`` (twice the telemetry's ``max_size``,
  at least 1Gi) from its ``volumeClaimTemplates``, so that ``kubectl
  delete`` of the manifests leaves the data; and its Service
  ``<project>-control-plane``, which every ``MESHKIT_REGISTRY`` names.
- per **service**: a Deployment of ``replicas`` pods (a ``Rollout`` for the
  canary and blue-green strategies, see ``_argo``) and a ClusterIP Service
  on its port. An ``app`` runs ``meshkit serve MODULE:ATTRIBUTE``; a
  ``command`` runs with ``{port}`` as the container's port and
  ``{python}`` as ``python``; with ``sidecar = true`` a second container
  runs ``meshkit sidecar`` on the service's port, the app beside it on
  ``APP_PORT`` (its outbound port is ``OUTBOUND_PORT``), as ``meshkit up``
  places them. A service without a fixed port listens on ``DEFAULT_PORT``
  (every pod has its own address); with ``ports = [...]``, on the first. A
  command without a sidecar listens on the pod's address
  (``$MESHKIT_HOST``) or on all, not on 127.0.0.1, or nothing reaches it.
- the **gateway**, with a ``[gateway]`` section: a Deployment of one pod
  running ``meshkit gateway --host 0.0.0.0`` on the project's file, which a
  ConfigMap ``<project>-config`` holds (mounted over the image's copy, and
  hashed into the pod's annotations so that a changed file rolls it), and a
  ClusterIP Service.

Every pod runs one image, which the user builds: the project directory at
``workdir`` and meshkit installed (``meshkit`` on the PATH). Each gets the
``MESHKIT_*`` variables ``meshkit up`` gives (``_supervisor``), and
``MESHKIT_HOST``, the pod's IP, which an app listens on and registers (it
is how other pods reach it); ``MESHKIT_INSTANCE_ID`` is the pod's name.
``MESHKIT_TOKEN`` comes from the Secret ``<project>-token`` (key
``token``), which these manifests only name: the user creates it
(``needed_secrets``), so no secret is ever written into a file. The
variables the gateway reads API keys and its JWT secret from come from the
Secret ``<project>-gateway``. ``MESHKIT_DATA_DIR`` is an ``emptyDir``: each
pod has its own and loses it with the pod, where ``meshkit up`` gives the
replicas of a service one directory.

Kubernetes starts every pod at once: ``depends_on`` has no counterpart
here. A service is not ready until it has registered, and calls to a
service not up yet fail as they would while it restarts.

Probes use the SDK's endpoints: readiness on the service's health path
(``/-/ready`` for an app: 200 once registered), liveness on ``/-/live``
for an app and on the health path for a command (a TCP connection when it
has none); a sidecar is ready on ``/.meshkit/sidecar/ready``. A startup
probe gives a process 60 seconds to come up before liveness counts, as
long as ``meshkit up`` waits before it says a service is slow.

Resources (requests, limits) are starting points, to be adjusted to what
``kubectl top pods`` shows: a service 100m/128Mi, up to 1 CPU and 512Mi;
a sidecar 50m/64Mi, up to 500m and 256Mi; the gateway as a service; the
control plane 250m/256Mi, up to 2 CPUs and 1Gi.

A problem that Kubernetes would refuse (a name that is not a DNS label, a
version that is not a label value) is a ``ConfigError`` naming the key.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import msgspec

import meshkit
from meshkit._env import ENV, TOKEN
from meshkit.deploy._argo import PREVIEW_SUFFIX, rollout_objects
from meshkit.deploy._config import Project, ServiceConfig
from meshkit.errors import ConfigError
from meshkit.gateway import READY_PATH as GATEWAY_READY
from meshkit.observe import Identity, destination, standard_variables
from meshkit.policy import BlueGreenConfig, RollingConfig
from meshkit.service import METRICS_PATH as SERVICE_METRICS
from meshkit.sidecar import METRICS_PATH as SIDECAR_METRICS
from meshkit.sidecar import READY_PATH as SIDECAR_READY

__all__ = [
    "APP_PORT",
    "DEFAULT_IMAGE",
    "DEFAULT_PORT",
    "DEFAULT_PROMETHEUS",
    "DEFAULT_WORKDIR",
    "OUTBOUND_PORT",
    "KubernetesOptions",
    "NeededSecret",
    "kubernetes_manifests",
    "needed_secrets",
]

Manifest = dict[str, Any]

DEFAULT_IMAGE = "meshkit-app:latest"
DEFAULT_WORKDIR = "/app"
# The Prometheus Helm chart's server, installed as "prometheus" in namespace "monitoring".
DEFAULT_PROMETHEUS = "http://prometheus-server.monitoring.svc"
DEFAULT_PORT = 8080
APP_PORT = 8081  # the app beside a sidecar, unless the service's port is this one
OUTBOUND_PORT = 15001  # a sidecar's outbound port (unless the service's port is this one)
DATA_DIR = "/data"
TOKEN_KEY = "token"  # noqa: S105 (the key's name in the Secret, not a secret)
OUTBOUND_ENV = "MESHKIT_OUTBOUND"  # where a sidecar's app calls other services

_SERVICE_RESOURCES = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"cpu": "1", "memory": "512Mi"},
}
_SIDECAR_RESOURCES = {
    "requests": {"cpu": "50m", "memory": "64Mi"},
    "limits": {"cpu": "500m", "memory": "256Mi"},
}
_PLANE_RESOURCES = {
    "requests": {"cpu": "250m", "memory": "256Mi"},
    "limits": {"cpu": "2", "memory": "1Gi"},
}
# A startup probe's period and failures: 60 s to come up (the supervisor's _STARTUP).
_STARTUP_PERIOD, _STARTUP_FAILURES = 2, 30
_LIVE_PATH = "/-/live"  # answered by every meshkit Service (meshkit.service._asgi)
_PLANE_HEALTH = "/healthz"
_ANY_ADDRESS = "0.0.0.0"  # noqa: S104 (in a pod: the Service and the probes come from outside)

# Kubernetes' own rules (k8s.io/apimachinery validation): a Service's name is
# an RFC 1035 label; a label's value at most 63 letters, digits, '-', '_', '.'.
_DNS_1035 = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


class KubernetesOptions(msgspec.Struct, frozen=True, kw_only=True):
    """What the manifests cannot learn from ``meshkit.toml``."""

    image: str = DEFAULT_IMAGE  # holds the project at ``workdir``, and meshkit
    workdir: str = DEFAULT_WORKDIR  # the project directory in the image
    prometheus: str = DEFAULT_PROMETHEUS  # what canary analyses query


class NeededSecret(msgspec.Struct, frozen=True, kw_only=True):
    """A key of a Secret the manifests read, which the user creates.

    ``variable`` is the variable it becomes (and, for the gateway's keys, the
    one ``meshkit up`` reads it from); without a ``required`` one, a pod
    does not start.
    """

    secret: str
    key: str
    variable: str
    required: bool


def kubernetes_manifests(
    project: Project, *, config_text: str, options: KubernetesOptions | None = None
) -> list[Manifest]:
    """Every object of ``project``; ``config_text`` is its ``meshkit.toml`` (for the gateway).

    Raises ``ConfigError`` naming the key when a name or a version cannot
    be used in Kubernetes.
    """
    options = options or KubernetesOptions()
    _check_names(project)
    objects = _control_plane(project, options)
    for name in project.order:
        objects += _service(project, name, options)
    if project.gateway is not None:
        objects += _gateway(project, config_text, options)
    return objects


def needed_secrets(project: Project) -> list[NeededSecret]:
    """The Secrets' keys the manifests of ``project`` read: the token, then the gateway's."""
    found = [
        NeededSecret(secret=_token_secret(project), key=TOKEN_KEY, variable=TOKEN, required=True)
    ]
    gateway = project.gateway
    if gateway is not None:
        # Unset, an API key is disabled (the gateway says so); a JWT secret is needed.
        optional = [key.key_env for key in gateway.api_keys if key.key_env is not None]
        required = (
            []
            if gateway.jwt is None or gateway.jwt.secret_env is None
            else [gateway.jwt.secret_env]
        )
        found += [
            NeededSecret(
                secret=_gateway_name(project),
                key=variable,
                variable=variable,
                required=variable in required,
            )
            for variable in dict.fromkeys([*required, *optional])
        ]
    return found


# -- names ------------------------------------------------------------------------------


def _plane_name(project: Project) -> str:
    return f"{project.project.name}-control-plane"


def _gateway_name(project: Project) -> str:
    return f"{project.project.name}-gateway"


def _token_secret(project: Project) -> str:
    return f"{project.project.name}-token"


def _registry_url(project: Project) -> str:
    return f"http://{_plane_name(project)}:{project.control_plane.port}"


def _check_names(project: Project) -> None:
    """What Kubernetes would refuse, said before anything is written."""
    name = project.project.name
    if not _DNS_1035.fullmatch(_plane_name(project)):
        raise ConfigError(
            "project.name",
            f"{name!r} cannot name Kubernetes objects: lower-case letters, digits and '-',"
            f" starting with a letter, at most {63 - len('-control-plane')} characters",
        )
    owners = {_plane_name(project): "the control plane", _gateway_name(project): "the gateway"}
    for service, config in project.services.items():
        preview = isinstance(config.deploy, BlueGreenConfig)
        for service_name in [service, *([f"{service}{PREVIEW_SUFFIX}"] if preview else [])]:
            if not _DNS_1035.fullmatch(service_name):
                raise ConfigError(
                    f"services.{service}",
                    f"{service_name!r} cannot name a Kubernetes Service: it starts with a letter"
                    " and has at most 63 characters",
                )
            if service_name in owners:
                raise ConfigError(
                    f"services.{service}",
                    f"its Kubernetes Service {service_name!r} would also be {owners[service_name]}",
                )
            owners[service_name] = f"the Service of services.{service}"
        if not _LABEL_VALUE.fullmatch(config.version):
            raise ConfigError(
                f"services.{service}.version",
                f"{config.version!r} is not a Kubernetes label value: at most 63 letters, digits,"
                " '-', '_' or '.', beginning and ending with a letter or digit",
            )


# -- metadata ---------------------------------------------------------------------------


def _labels(project: Project, name: str, version: str, component: str) -> dict[str, str]:
    """Kubernetes' recommended labels; the version only when there is one."""
    labels = {
        **_selector(project, name),
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "meshkit",
    }
    if version:
        labels["app.kubernetes.io/version"] = version
    return labels


def _selector(project: Project, name: str) -> dict[str, str]:
    """What a workload's pods are found by: never the version, which changes."""
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": project.project.name}


def _object(kind: str, name: str, labels: dict[str, str], body: Manifest) -> Manifest:
    api = "apps/v1" if kind in ("Deployment", "StatefulSet") else "v1"
    return {
        "apiVersion": api,
        "kind": kind,
        "metadata": {"name": name, "labels": labels},
        **body,
    }


def _kube_service(
    name: str, labels: dict[str, str], selector: dict[str, str], port: int
) -> Manifest:
    spec = {
        "type": "ClusterIP",
        "selector": selector,
        "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
    }
    return _object("Service", name, labels, {"spec": spec})


def _workload_spec(
    selector: dict[str, str], replicas: int, template: Manifest, **settings: Any
) -> Manifest:
    """A Deployment's or StatefulSet's ``spec``: ``settings`` before the long template."""
    return {
        "replicas": replicas,
        "selector": {"matchLabels": selector},
        **settings,
        "template": template,
    }


# -- containers ---------------------------------------------------------------------------


def _value(name: str, value: str) -> Manifest:
    return {"name": name, "value": value}


def _from_pod(name: str, field: str) -> Manifest:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field}}}


def _from_secret(name: str, secret: str, key: str, *, required: bool = True) -> Manifest:
    reference: Manifest = {"name": secret, "key": key}
    if not required:
        reference["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": reference}}


def _literal(text: str) -> str:
    """``text``, escaped so that Kubernetes passes it on as it is: it expands
    ``$(VAR)`` in commands and variables' values, and reads ``$$`` as ``$``."""
    return text.replace("$", "$$")


def _pod_variables(project: Project) -> list[Manifest]:
    """The variables every meshkit process of a pod gets, first, so that later
    values can refer to them as ``$(NAME)``."""
    return [
        _from_pod(ENV["instance_id"], "metadata.name"),
        _from_pod(ENV["host"], "status.podIP"),
        _from_secret(TOKEN, _token_secret(project), TOKEN_KEY),
        _value(ENV["registry"], _registry_url(project)),
        _value("PYTHONUNBUFFERED", "1"),  # lines reach `kubectl logs` as they are printed
    ]


def _http_probe(path: str, port: str) -> Manifest:
    return {"httpGet": {"path": path, "port": port}}


def _ready(path: str, port: str) -> Manifest:
    """A GET of the health ``path``; without one, a connection to ``port``."""
    return _http_probe(path, port) if path else {"tcpSocket": {"port": port}}


def _probes(ready: Manifest, live: Manifest) -> Manifest:
    return {
        "readinessProbe": {**ready, "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 3},
        "livenessProbe": {**live, "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3},
        "startupProbe": {
            **live,
            "periodSeconds": _STARTUP_PERIOD,
            "failureThreshold": _STARTUP_FAILURES,
        },
    }


def _container(
    name: str,
    options: KubernetesOptions,
    command: list[str],
    ports: dict[str, int],
    env: Iterable[Manifest],
    probes: Manifest,
    resources: Manifest,
) -> Manifest:
    return {
        "name": name,
        "image": options.image,
        "workingDir": options.workdir,
        "command": command,
        "ports": [
            {"name": port_name, "containerPort": port, "protocol": "TCP"}
            for port_name, port in ports.items()
        ],
        "env": list(env),
        **probes,
        "resources": resources,
    }


# -- services -----------------------------------------------------------------------------


def _port(project: Project, name: str) -> int:
    """The service's port in its pods: the first it is given, else ``DEFAULT_PORT``."""
    return next((port for port in project.fixed_ports(name) if port is not None), DEFAULT_PORT)


def _beside(port: int, preferred: int) -> int:
    """A port for a sidecar's pod other than the service's own ``port``."""
    return preferred if preferred != port else preferred + 1


def _service(project: Project, name: str, options: KubernetesOptions) -> list[Manifest]:
    config = project.services[name]
    port = _port(project, name)
    labels = _labels(project, name, config.version, "service")
    selector = _selector(project, name)
    template = {
        "metadata": {"labels": labels, "annotations": _scraped(port, sidecar=config.sidecar)},
        "spec": {
            # Kubernetes would set a variable per Service, such as MESHKIT_PORT
            # for one named "meshkit": meshkit finds services by DNS and the registry.
            "enableServiceLinks": False,
            "containers": _service_containers(project, name, port, options),
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    }
    objects = [_kube_service(name, labels, selector, port)]
    strategy = config.deploy
    if isinstance(strategy, RollingConfig):
        rolling = {"maxSurge": strategy.max_surge, "maxUnavailable": strategy.max_unavailable}
        spec = _workload_spec(
            selector,
            config.replicas,
            template,
            progressDeadlineSeconds=max(1, math.ceil(strategy.ready_timeout)),
            strategy={"type": "RollingUpdate", "rollingUpdate": rolling},
        )
        return [*objects, _object("Deployment", name, labels, {"spec": spec})]
    if isinstance(strategy, BlueGreenConfig):
        objects.append(_kube_service(f"{name}{PREVIEW_SUFFIX}", labels, selector, port))
    return objects + rollout_objects(
        name=name,
        labels=labels,
        workload=_workload_spec(selector, config.replicas, template),
        strategy=strategy,
        port=port,
        sidecar=config.sidecar,
        prometheus=options.prometheus,
    )


def _scraped(port: int, *, sidecar: bool) -> dict[str, str]:
    """The annotations Prometheus's ``kubernetes-pods`` job finds a pod's metrics by."""
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": SIDECAR_METRICS if sidecar else SERVICE_METRICS,
    }


def _service_containers(
    project: Project, name: str, port: int, options: KubernetesOptions
) -> list[Manifest]:
    config = project.services[name]
    env = _by_name(
        [
            *_pod_variables(project),
            _value(ENV["service"], name),
            _value(ENV["port"], str(port)),
            _value(ENV["ttl"], f"{config.ttl:g}"),
            _value(ENV["version"], config.version),
            _value(ENV["data_dir"], DATA_DIR),
            _value("PYTHONPATH", options.workdir),
        ]
    )
    if config.app is None:
        return _command_containers(project, name, port, options, env)
    env.update(_user_variables(config))
    probes = _probes(_ready(config.health_path(), "http"), _http_probe(_LIVE_PATH, "http"))
    command = ["meshkit", "serve", config.app]
    app = _container(
        name, options, command, {"http": port}, env.values(), probes, _SERVICE_RESOURCES
    )
    return [_with_data(app)]


def _command_containers(
    project: Project,
    name: str,
    port: int,
    options: KubernetesOptions,
    env: dict[str, Manifest],
) -> list[Manifest]:
    """A ``command``'s container, and the sidecar beside it when it has one."""
    config = project.services[name]
    env.update(_by_name(_telemetry_variables(project, name, config)))
    app_port, port_name = (_beside(port, APP_PORT), "app") if config.sidecar else (port, "http")
    outbound = _beside(port, OUTBOUND_PORT)
    if config.sidecar:
        env[OUTBOUND_ENV] = _value(OUTBOUND_ENV, f"http://127.0.0.1:{outbound}")
    env.update(_user_variables(config))
    check = _ready(config.health_path(), port_name)
    command = [_literal(part) for part in config.argv(app_port, "python")]
    app = _container(
        name,
        options,
        command,
        {port_name: app_port},
        env.values(),
        _probes(check, check),
        _SERVICE_RESOURCES,
    )
    if not config.sidecar:
        return [_with_data(app)]
    return [_with_data(app), _sidecar(project, name, (port, app_port, outbound), options)]


def _by_name(entries: Iterable[Manifest]) -> dict[str, Manifest]:
    """Variables by name, in order: a later one of a name replaces the earlier in its place."""
    return {entry["name"]: entry for entry in entries}


def _with_data(container: Manifest) -> Manifest:
    return {**container, "volumeMounts": [{"name": "data", "mountPath": DATA_DIR}]}


def _user_variables(config: ServiceConfig) -> dict[str, Manifest]:
    """The service's own ``env``, last: as with ``meshkit up``, it may replace ours."""
    return {name: _value(name, _literal(value)) for name, value in config.env.items()}


# Stand-ins that URL quoting leaves alone, replaced by references once quoted.
_TOKEN_MARK, _INSTANCE_MARK = "meshkit-token-mark", "meshkit-instance-mark"


def _telemetry_variables(project: Project, name: str, config: ServiceConfig) -> list[Manifest]:
    """OpenTelemetry's variables, as ``meshkit up`` gives a command: any SDK sends to
    the control plane as this instance, with the token from the Secret."""
    identity = Identity(service=name, instance=_INSTANCE_MARK, version=config.version)
    where = destination(control=_registry_url(project), token=_TOKEN_MARK, variables={})
    return [
        _value(
            variable,
            _literal(value)
            .replace(quote(_TOKEN_MARK), f"$({TOKEN})")
            .replace(quote(_INSTANCE_MARK), f"$({ENV['instance_id']})"),
        )
        for variable, value in standard_variables(identity, where).items()
    ]


def _sidecar(
    project: Project, name: str, ports: tuple[int, int, int], options: KubernetesOptions
) -> Manifest:
    """``meshkit sidecar`` as ``_supervisor`` starts it beside an app, but listening for
    the pod's callers and registering the pod's address; ``ports``: its own, the
    app's and its outbound port."""
    config = project.services[name]
    port, app_port, outbound = ports
    command = [
        *("meshkit", "sidecar", "--service", name),
        *("--app", f"127.0.0.1:{app_port}", "--health", config.health_path()),
        *("--host", _ANY_ADDRESS, "--port", str(port)),
        *("--advertise", f"$({ENV['host']})", "--outbound-port", str(outbound)),
        *("--id", f"$({ENV['instance_id']})", "--ttl", f"{config.ttl:g}"),
        *("--version", config.version),
        *(f"--subscribe={route.topic}:{route.group}:{route.path}" for route in config.events(name)),
    ]
    if config.max_deliveries is not None:
        command += ["--max-deliveries", str(config.max_deliveries)]
    probes = _probes(_http_probe(SIDECAR_READY, "http"), {"tcpSocket": {"port": "http"}})
    return _container(
        "meshkit-sidecar",
        options,
        command,
        {"http": port, "outbound": outbound},
        _pod_variables(project),
        probes,
        _SIDECAR_RESOURCES,
    )


# -- the control plane and the gateway ---------------------------------------------------


def _control_plane(project: Project, options: KubernetesOptions) -> list[Manifest]:
    name = _plane_name(project)
    port = project.control_plane.port
    retention = project.retention
    labels = _labels(project, name, meshkit.__version__, "control-plane")
    selector = _selector(project, name)
    command = [
        *("meshkit", "control-plane", "--data-dir", DATA_DIR),
        *("--host", _ANY_ADDRESS, "--port", str(port)),
        *("--retention", f"{retention.max_age:g}s", "--max-size", str(retention.max_size)),
    ]
    env = [_from_secret(TOKEN, _token_secret(project), TOKEN_KEY), _value("PYTHONUNBUFFERED", "1")]
    check = _http_probe(_PLANE_HEALTH, "http")
    plane = _container(
        name, options, command, {"http": port}, env, _probes(check, check), _PLANE_RESOURCES
    )
    plane["volumeMounts"] = [{"name": "data", "mountPath": DATA_DIR}]
    template = {
        "metadata": {"labels": labels},
        "spec": {
            "enableServiceLinks": False,
            # The volume's files belong to this group, whatever user the image runs as.
            "securityContext": {"fsGroup": 1000},
            "containers": [plane],
        },
    }
    gibibytes = max(1, math.ceil(2 * retention.max_size / 2**30))
    claim = {
        "metadata": {"name": "data"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": f"{gibibytes}Gi"}},
        },
    }
    spec = _workload_spec(selector, 1, template, serviceName=name, volumeClaimTemplates=[claim])
    return [
        _kube_service(name, labels, selector, port),
        _object("StatefulSet", name, labels, {"spec": spec}),
    ]


def _gateway(project: Project, config_text: str, options: KubernetesOptions) -> list[Manifest]:
    gateway = project.gateway
    assert gateway is not None
    name = _gateway_name(project)
    config_map = f"{project.project.name}-config"
    labels = _labels(project, name, meshkit.__version__, "gateway")
    selector = _selector(project, name)
    command = ["meshkit", "gateway", "-p", options.workdir, "--host", _ANY_ADDRESS]
    env = [
        _from_secret(TOKEN, _token_secret(project), TOKEN_KEY),
        _value(ENV["registry"], _registry_url(project)),
        _value("PYTHONUNBUFFERED", "1"),
        *(
            _from_secret(needed.variable, needed.secret, needed.key, required=needed.required)
            for needed in needed_secrets(project)
            if needed.secret == name
        ),
    ]
    probes = _probes(_http_probe(GATEWAY_READY, "http"), {"tcpSocket": {"port": "http"}})
    container = _container(
        "gateway", options, command, {"http": gateway.port}, env, probes, _SERVICE_RESOURCES
    )
    container["volumeMounts"] = [
        {
            "name": "config",
            "mountPath": f"{options.workdir.rstrip('/')}/meshkit.toml",
            "subPath": "meshkit.toml",
            "readOnly": True,
        }
    ]
    digest = hashlib.sha256(config_text.encode()).hexdigest()
    template = {
        # A file mounted by subPath does not change in a running pod: a new
        # hash here makes `kubectl apply` replace the pod instead.
        "metadata": {"labels": labels, "annotations": {"checksum/config": digest}},
        "spec": {
            "enableServiceLinks": False,
            "containers": [container],
            "volumes": [{"name": "config", "configMap": {"name": config_map}}],
        },
    }
    return [
        _object("ConfigMap", config_map, labels, {"data": {"meshkit.toml": config_text}}),
        _kube_service(name, labels, selector, gateway.port),
        _object("Deployment", name, labels, {"spec": _workload_spec(selector, 1, template)}),
    ]

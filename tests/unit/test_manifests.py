"""`meshkit manifests`: the shop as Kubernetes objects that Kubernetes accepts, and a
canary or blue-green service as an Argo Rollout whose analysis means what meshkit's does."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer
import yaml
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from meshkit.cli import app
from meshkit.deploy import Project, load_project
from meshkit.deploy._manifests import (
    APP_PORT,
    KubernetesOptions,
    kubernetes_manifests,
    needed_secrets,
)
from meshkit.deploy._yaml import dump_all
from meshkit.errors import ConfigError
from meshkit.observe import parse_duration, parse_size
from meshkit.policy import AnalysisConfig
from meshkit.proxy import ProxyMetrics
from meshkit.service._asgi import MeshASGI
from meshkit.service._metrics import ServiceMetrics
from meshkit.testing import FakeClock
from meshkit.testing.servers import backend_missing

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop"
KUBERNETES = "1.30"  # the schemas the core objects are checked against
CORE = {"Deployment", "Service", "StatefulSet", "ConfigMap"}
ANY = "0.0.0.0"  # noqa: S104 (what a process in a pod listens on, compared)

Manifest = dict[str, Any]


def manifests(project: Project, options: KubernetesOptions | None = None) -> list[Manifest]:
    return kubernetes_manifests(project, config_text=project.path.read_text(), options=options)


@pytest.fixture(scope="module")
def shop() -> list[Manifest]:
    return manifests(load_project(SHOP, check_ports=False))


def one(objects: list[Manifest], kind: str, name: str) -> Manifest:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


def containers(workload: Manifest) -> dict[str, Manifest]:
    return {c["name"]: c for c in workload["spec"]["template"]["spec"]["containers"]}


def env(container: Manifest) -> dict[str, Manifest]:
    return {entry["name"]: entry for entry in container["env"]}


def values(container: Manifest) -> dict[str, str]:
    return {name: entry["value"] for name, entry in env(container).items() if "value" in entry}


def write(tmp_path: Path, text: str) -> Project:
    (tmp_path / "meshkit.toml").write_text(text)
    return load_project(tmp_path, check_ports=False)


# -- the shop ---------------------------------------------------------------------------


def test_the_shop_has_an_object_of_each_kind_per_part(shop: list[Manifest]) -> None:
    """Six services (a Deployment and a Service each; payments, a canary, a Rollout and its
    AnalysisTemplate), the gateway, the control plane."""
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in shop)
    services = ["inventory", "notifications", "orders", "payments", "products", "users"]
    rolling = [name for name in services if name != "payments"]
    assert kinds == sorted(
        [("ConfigMap", "shop-config"), ("StatefulSet", "shop-control-plane")]
        + [("Rollout", "payments"), ("AnalysisTemplate", "payments-canary")]
        + [("Deployment", name) for name in [*rolling, "shop-gateway"]]
        + [("Service", name) for name in [*services, "shop-gateway", "shop-control-plane"]]
    )


def test_every_object_is_valid_kubernetes(shop: list[Manifest]) -> None:
    """Each object passes Kubernetes' own schema, unknown fields refused, through YAML."""
    written = list(yaml.safe_load_all(dump_all(shop)))
    assert written == shop
    core = [manifest for manifest in written if manifest["kind"] in CORE]
    assert len(core) == len(written) - 2  # payments' Rollout and AnalysisTemplate: Argo's
    for manifest in core:
        kubernetes_validate.validate(manifest, KUBERNETES, strict=True)


def test_a_service_runs_its_app_with_the_variables_meshkit_up_gives(
    shop: list[Manifest],
) -> None:
    """An app runs `meshkit serve`, told where the registry is, with the token from a Secret."""
    users = containers(one(shop, "Deployment", "users"))["users"]
    assert users["command"] == ["meshkit", "serve", "shop.users:service"]
    assert users["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert values(users) == {
        "MESHKIT_REGISTRY": "http://shop-control-plane:7700",
        "MESHKIT_SERVICE": "users",
        "MESHKIT_PORT": "8080",
        "MESHKIT_TTL": "5",
        "MESHKIT_VERSION": "1.0.0",
        "MESHKIT_DATA_DIR": "/data",
        "PYTHONPATH": "/app",
        "PYTHONUNBUFFERED": "1",
    }
    variables = env(users)
    assert variables["MESHKIT_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "shop-token", "key": "token"}
    }
    assert variables["MESHKIT_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.name"
    )
    assert variables["MESHKIT_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert users["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    assert users["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "http"}
    assert users["livenessProbe"]["httpGet"] == {"path": "/-/live", "port": "http"}
    assert set(users["resources"]) == {"requests", "limits"}


def test_replicas_ports_env_and_labels_follow_the_file(shop: list[Manifest]) -> None:
    """replicas, a fixed port and env come from meshkit.toml; labels name service and project."""
    assert one(shop, "Deployment", "products")["spec"]["replicas"] == 2
    orders = one(shop, "Deployment", "orders")
    assert orders["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert values(containers(orders)["orders"])["MESHKIT_PORT"] == "8104"
    assert one(shop, "Service", "orders")["spec"]["ports"][0]["port"] == 8104
    payments = containers(one(shop, "Rollout", "payments"))["payments"]
    assert values(payments)["PAYMENT_FAILURE_RATE"] == "0"
    labels = one(shop, "Deployment", "notifications")["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "notifications"
    assert labels["app.kubernetes.io/part-of"] == "shop"
    assert labels["app.kubernetes.io/version"] == "1.0.0"


def test_notifications_runs_beside_its_sidecar(shop: list[Manifest]) -> None:
    """The sidecar takes the service's port and subscriptions; the app a port of its own."""
    pod = containers(one(shop, "Deployment", "notifications"))
    app, sidecar = pod["notifications"], pod["meshkit-sidecar"]
    assert app["command"][:3] == ["python", "-m", "granian"]
    assert app["command"][app["command"].index("--port") + 1] == str(APP_PORT)
    assert app["readinessProbe"]["httpGet"] == {"path": "/health", "port": "app"}
    assert app["livenessProbe"]["httpGet"] == {"path": "/health", "port": "app"}
    command = sidecar["command"]
    assert command[:4] == ["meshkit", "sidecar", "--service", "notifications"]
    option = {command[i]: command[i + 1] for i in range(4, len(command) - 1, 2)}
    assert option["--port"] == "8106"
    assert option["--host"] == ANY
    assert option["--app"] == f"127.0.0.1:{APP_PORT}"
    assert option["--advertise"] == "$(MESHKIT_HOST)"
    assert option["--id"] == "$(MESHKIT_INSTANCE_ID)"
    assert "--subscribe=order.created:notifications:/events/order-created" in command
    assert command[-2:] == ["--max-deliveries", "3"]
    outbound = next(p["containerPort"] for p in sidecar["ports"] if p["name"] == "outbound")
    assert values(app)["MESHKIT_OUTBOUND"] == f"http://127.0.0.1:{outbound}"
    assert option["--outbound-port"] == str(outbound)
    ready = {"path": "/.meshkit/sidecar/ready", "port": "http"}
    assert sidecar["readinessProbe"]["httpGet"] == ready
    assert {"name": "http", "containerPort": 8106, "protocol": "TCP"} in sidecar["ports"]
    # The app's own OpenTelemetry SDK sends as this pod, with the token from the Secret.
    telemetry = values(app)
    assert telemetry["OTEL_EXPORTER_OTLP_HEADERS"] == "authorization=Bearer%20$(MESHKIT_TOKEN)"
    assert "service.instance.id=$(MESHKIT_INSTANCE_ID)" in telemetry["OTEL_RESOURCE_ATTRIBUTES"]


def test_every_reference_names_a_variable_set_before_it(shop: list[Manifest]) -> None:
    """Kubernetes expands $(NAME) only for a variable earlier in the container's list."""
    for manifest in shop:
        if manifest["kind"] != "Deployment":
            continue
        for container in containers(manifest).values():
            seen: set[str] = set()
            for entry in container["env"]:
                for name in re.findall(r"(?<!\$)\$\(([A-Z_]+)\)", entry.get("value", "")):
                    assert name in seen, (container["name"], entry["name"], name)
                seen.add(entry["name"])
            for part in container["command"]:
                for name in re.findall(r"(?<!\$)\$\(([A-Z_]+)\)", part):
                    assert name in seen, (container["name"], part)


def test_the_token_is_only_ever_named(shop: list[Manifest]) -> None:
    """No Secret and no token value: every process reads MESHKIT_TOKEN from `shop-token`."""
    tokens = [
        entry
        for manifest in shop
        if manifest["kind"] in ("Deployment", "Rollout", "StatefulSet")
        for container in containers(manifest).values()
        for entry in container["env"]
        if entry["name"] == "MESHKIT_TOKEN"
    ]
    assert len(tokens) == 9  # six services, the sidecar, the gateway, the control plane
    for entry in tokens:
        assert entry["valueFrom"] == {"secretKeyRef": {"name": "shop-token", "key": "token"}}


def test_the_control_plane_keeps_its_data_on_a_claimed_volume(shop: list[Manifest]) -> None:
    """A StatefulSet of one, its data dir on a PersistentVolumeClaim, behind its Service."""
    plane = one(shop, "StatefulSet", "shop-control-plane")
    assert plane["spec"]["replicas"] == 1
    assert plane["spec"]["serviceName"] == "shop-control-plane"
    container = containers(plane)["shop-control-plane"]
    command = container["command"]
    assert command[:8] == [
        *("meshkit", "control-plane", "--data-dir", "/data"),
        *("--host", ANY, "--port", "7700"),
    ]
    assert container["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    claim = plane["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"  # 2 x 512MiB
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert one(shop, "Service", "shop-control-plane")["spec"]["ports"][0]["port"] == 7700


def test_the_gateway_runs_the_file_of_its_config_map(shop: list[Manifest]) -> None:
    """The gateway listens for the pod on the file it is given, with its keys from a Secret."""
    config_map = one(shop, "ConfigMap", "shop-config")
    assert config_map["data"] == {"meshkit.toml": (SHOP / "meshkit.toml").read_text()}
    gateway = one(shop, "Deployment", "shop-gateway")
    container = containers(gateway)["gateway"]
    assert container["command"] == ["meshkit", "gateway", "-p", "/app", "--host", ANY]
    assert container["volumeMounts"] == [
        {
            "name": "config",
            "mountPath": "/app/meshkit.toml",
            "subPath": "meshkit.toml",
            "readOnly": True,
        }
    ]
    assert env(container)["SHOP_ADMIN_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "shop-gateway",
        "key": "SHOP_ADMIN_KEY",
        "optional": True,
    }
    assert container["readinessProbe"]["httpGet"]["path"] == "/.meshkit/gateway/ready"
    assert one(shop, "Service", "shop-gateway")["spec"]["ports"][0]["port"] == 8000


def test_a_changed_file_changes_the_gateways_pod() -> None:
    """The file's hash is in the pod's annotations, so a new file replaces the pod."""
    project = load_project(SHOP, check_ports=False)

    def checksum(text: str) -> str:
        objects = kubernetes_manifests(project, config_text=text)
        template = one(objects, "Deployment", "shop-gateway")["spec"]["template"]
        return str(template["metadata"]["annotations"]["checksum/config"])

    assert checksum("a") != checksum("b")


def test_the_secrets_to_create() -> None:
    """The token is required; the gateway's API key variables are optional."""
    needed = needed_secrets(load_project(SHOP, check_ports=False))
    assert [(n.secret, n.key, n.variable, n.required) for n in needed] == [
        ("shop-token", "token", "MESHKIT_TOKEN", True),
        ("shop-gateway", "SHOP_ADMIN_KEY", "SHOP_ADMIN_KEY", False),
    ]


def test_the_image_and_the_project_directory_are_options() -> None:
    """Every container runs the image given, in the directory the project is in there."""
    options = KubernetesOptions(image="registry.example/shop:1.2", workdir="/srv/shop")
    objects = manifests(load_project(SHOP, check_ports=False), options)
    for manifest in objects:
        if manifest["kind"] in ("Deployment", "StatefulSet"):
            for container in containers(manifest).values():
                assert container["image"] == "registry.example/shop:1.2"
                assert container["workingDir"] == "/srv/shop"


# -- what the manifests count on --------------------------------------------------------


def test_every_meshkit_command_is_one_the_cli_takes(shop: list[Manifest], tmp_path: Path) -> None:
    """Each `meshkit ...` a container runs parses as the command line defines it."""
    root = typer.main.get_command(app)
    objects = shop + manifests(write(tmp_path, CANARY))
    commands = [
        container["command"]
        for manifest in objects
        if manifest["kind"] in ("Deployment", "StatefulSet", "Rollout")
        for container in containers(manifest).values()
        if container["command"][0] == "meshkit"
    ]
    assert {command[1] for command in commands} == {"serve", "sidecar", "gateway", "control-plane"}
    for command in commands:
        parsed = root.get_command(None, command[1]).make_context(command[1], command[2:])
        if command[1] == "control-plane":
            parse_duration("--retention", parsed.params["retention"])
            parse_size("--max-size", parsed.params["max_size"])


async def test_the_probed_paths_are_the_sdks() -> None:
    """A meshkit Service answers the liveness path the pods are probed on."""
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the health path reached the application")

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "path": "/-/live", "method": "GET", "headers": []}
    await MeshASGI(app, clock=FakeClock())(scope, None, send)
    assert sent[0]["status"] == 200


def test_the_analysed_series_are_the_ones_meshkit_exports(tmp_path: Path) -> None:
    """Every series a canary analysis queries is one a Service or a sidecar exposes."""

    def series(registry: Any) -> set[str]:
        suffix = {"counter": "_total", "histogram": "_bucket"}
        return {m.name + suffix[m.type] for m in registry.collect() if m.type in suffix}

    exposed = series(ServiceMetrics().registry) | series(
        ProxyMetrics(None, prefix="meshkit_sidecar_inbound").registry
    )
    objects = manifests(write(tmp_path, CANARY))
    queried = {
        name
        for template in (one(objects, "AnalysisTemplate", n) for n in ("api-canary", "web-canary"))
        for metric in template["spec"]["metrics"]
        for name in re.findall(r"meshkit_\w+", metric["provider"]["prometheus"]["query"])
    }
    assert len(queried) == 4  # requests and durations, of a Service and of a sidecar
    assert queried <= exposed


# -- canary and blue-green: Argo Rollouts ---------------------------------------------

CANARY = """
[project]
name = "demo"

[services.api]
app = "api:service"
replicas = 4
version = "2.0.0"

[services.api.deploy]
strategy = "canary"
steps = [10, 50, 100]
interval = 30
failure_limit = 3
analysis = { min_requests = 50, min_success = 0.995, max_p99 = 0.25 }

[services.web]
command = ["{python}", "-m", "http.server", "{port}"]
sidecar = true
health = "/"
port = 9000
deploy = { strategy = "canary" }

[services.store]
app = "store:service"
port = 8200
deploy = { strategy = "blue-green", smoke = ["/-/ready", "/products"], keep = 120 }
"""


def test_a_canary_service_is_a_rollout_through_its_steps(tmp_path: Path) -> None:
    """Each step sets the weight, holds it for the interval, then analyses the new pods."""
    objects = manifests(write(tmp_path, CANARY))
    assert not [o for o in objects if o["kind"] == "Deployment"]
    rollout = one(objects, "Rollout", "api")
    assert rollout["apiVersion"] == "argoproj.io/v1alpha1"
    spec = rollout["spec"]
    assert spec["replicas"] == 4
    template_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= template_labels.items()
    assert spec["progressDeadlineSeconds"] == 60
    assert spec["progressDeadlineAbort"] is True
    canary = spec["strategy"]["canary"]
    assert canary["maxUnavailable"] == 0
    analysis = {
        "templates": [{"templateName": "api-canary"}],
        "args": [{"name": "canary-hash", "valueFrom": {"podTemplateHashValue": "Latest"}}],
    }
    assert canary["steps"] == [
        step
        for weight in (10, 50, 100)
        for step in ({"setWeight": weight}, {"pause": {"duration": 30}}, {"analysis": analysis})
    ]
    assert one(objects, "Service", "api")["spec"]["selector"] == spec["selector"]["matchLabels"]


def test_the_rollouts_pods_are_valid_kubernetes_pods(tmp_path: Path) -> None:
    """Argo's schema is not Kubernetes': its pod template is, checked as a Deployment's."""
    for manifest in manifests(write(tmp_path, CANARY)):
        if manifest["kind"] == "Rollout":
            spec = manifest["spec"]
            as_deployment = {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": manifest["metadata"],
                "spec": {k: spec[k] for k in ("replicas", "selector", "template")},
            }
            kubernetes_validate.validate(as_deployment, KUBERNETES, strict=True)
        elif manifest["kind"] in CORE:
            kubernetes_validate.validate(manifest, KUBERNETES, strict=True)


def test_the_canary_analysis_has_meshkits_thresholds(tmp_path: Path) -> None:
    """requests, success rate and p99 against AnalysisConfig's bounds; failure_limit
    failures fail it, one pass ends it, every interval."""
    template = one(manifests(write(tmp_path, CANARY)), "AnalysisTemplate", "api-canary")
    assert template["apiVersion"] == "argoproj.io/v1alpha1"
    args = {arg["name"]: arg.get("value") for arg in template["spec"]["args"]}
    assert args == {
        "service-name": "api",
        "canary-hash": None,  # given by the Rollout: the new pods' hash
        "prometheus-address": "http://prometheus-server.monitoring.svc",
        "window": "120s",
    }
    metrics = {m["name"]: m for m in template["spec"]["metrics"]}
    assert list(metrics) == ["requests", "success-rate", "p99-latency"]
    for metric in metrics.values():
        assert metric["interval"] == "30s"
        assert metric["failureLimit"] == 2  # Argo fails a metric past failureLimit failures
        assert metric["consecutiveSuccessLimit"] == 1
        prometheus = metric["provider"]["prometheus"]
        assert prometheus["address"] == "{{args.prometheus-address}}"
        assert 'rollouts_pod_template_hash="{{args.canary-hash}}"' in prometheus["query"]
    assert metrics["requests"]["successCondition"] == "result[0] >= 50"
    assert metrics["success-rate"]["successCondition"].endswith("result[0] >= 0.995")
    assert metrics["p99-latency"]["successCondition"].endswith("result[0] <= 0.25)")


def test_the_defaults_are_analysis_configs(tmp_path: Path) -> None:
    """A canary without an analysis table uses AnalysisConfig's defaults."""
    defaults = AnalysisConfig()
    template = one(manifests(write(tmp_path, CANARY)), "AnalysisTemplate", "web-canary")
    conditions = [m["successCondition"] for m in template["spec"]["metrics"]]
    assert conditions[0] == f"result[0] >= {defaults.min_requests}"
    assert conditions[1].endswith(f">= {defaults.min_success}")
    assert conditions[2].endswith(f"<= {defaults.max_p99})")
    # A sidecar's inbound series, without the probes it answers itself.
    assert 'route!~"(/-/.*)?"' in template["spec"]["metrics"][0]["provider"]["prometheus"]["query"]


def test_a_blue_green_service_switches_after_its_smoke_requests(tmp_path: Path) -> None:
    """The preview Service takes the smoke requests; any answer but 2xx aborts the switch."""
    objects = manifests(write(tmp_path, CANARY))
    blue_green = one(objects, "Rollout", "store")["spec"]["strategy"]["blueGreen"]
    assert blue_green == {
        "activeService": "store",
        "previewService": "store-preview",
        "scaleDownDelaySeconds": 120,
        "prePromotionAnalysis": {"templates": [{"templateName": "store-smoke"}]},
    }
    preview = one(objects, "Service", "store-preview")
    assert preview["spec"] == one(objects, "Service", "store")["spec"]
    smoke = one(objects, "AnalysisTemplate", "store-smoke")["spec"]["metrics"]
    assert [m["provider"]["web"]["url"] for m in smoke] == [
        "http://store-preview:8200/-/ready",
        "http://store-preview:8200/products",
    ]
    assert all(m["count"] == 1 and m["consecutiveErrorLimit"] == 0 for m in smoke)


# The queries, evaluated by Prometheus's own engine (promtool) over made-up series:
# over two minutes, the new pods answered 80 requests well and 1 with a 500, all
# within 250 ms; the old pods (another hash) failed all theirs, and do not count.
SERIES = [
    ('meshkit_service_requests_total{{{pods},code="200"}}', "0+10x8"),
    ('meshkit_service_requests_total{{{pods},code="500"}}', "0 0 0 0 1 1 1 1 1"),
    ('meshkit_service_requests_total{{{old},code="500"}}', "0+100x8"),
    *(
        (f'meshkit_service_request_duration_seconds_bucket{{{{{{pods}},le="{le}"}}}}', step)
        for le, step in (("0.1", "0+5x8"), ("0.25", "0+10x8"), ("+Inf", "0+10x8"))
    ),
]


def test_the_queries_measure_the_new_pods(tmp_path: Path) -> None:
    """Prometheus computes the requests, the success rate and the p99 of the new pods only;
    below min_requests the success rate and the p99 are empty, which passes; no failure
    at all is a success rate of 1."""
    promtool = shutil.which("promtool")
    if promtool is None:
        backend_missing("promtool", "install Debian's package: apt-get install prometheus")
    template = one(manifests(write(tmp_path, CANARY)), "AnalysisTemplate", "api-canary")
    args = {"service-name": "api", "canary-hash": "new", "window": "120s"}
    queries = {}
    for metric in template["spec"]["metrics"]:
        query = metric["provider"]["prometheus"]["query"]
        for name, value in args.items():
            query = query.replace(f"{{{{args.{name}}}}}", value)
        queries[metric["name"]] = query
    labels = 'app_kubernetes_io_name="api",route="/x",method="GET",rollouts_pod_template_hash='
    series = [
        {"series": s.format(pods=labels + '"new"', old=labels + '"old"'), "values": v}
        for s, v in SERIES
    ]

    def expect(query: str, at: str, value: float | None) -> dict[str, Any]:
        samples = [] if value is None else [{"labels": "{}", "value": value}]
        return {"expr": query, "eval_time": at, "exp_samples": samples}

    tests = [
        expect(queries["requests"], "2m", 81),
        expect(queries["success-rate"], "2m", 1 - 1 / 81),
        expect(f"({queries['p99-latency']}) <= bool 0.25", "2m", 1),
        expect(f"({queries['p99-latency']}) <= bool 0.1", "2m", 0),
        # 45 seconds in: 30 requests, fewer than min_requests (50).
        expect(queries["requests"], "45s", 30),
        expect(queries["success-rate"], "45s", None),
        expect(queries["p99-latency"], "45s", None),
    ]
    # New pods that never failed have no 5xx series at all: all of them succeeded.
    flawless = [entry for entry in series if 'code="500"' not in entry["series"]]
    rules = tmp_path / "queries.yaml"
    rules.write_text(
        yaml.safe_dump(
            {
                "rule_files": [],
                "tests": [
                    {"interval": "15s", "input_series": series, "promql_expr_test": tests},
                    {
                        "interval": "15s",
                        "input_series": flawless,
                        "promql_expr_test": [expect(queries["success-rate"], "2m", 1)],
                    },
                ],
            }
        )
    )
    result = subprocess.run(
        [promtool, "test", "rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- what Kubernetes would refuse -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[project]\nname = "Shop"\n', "project.name"),
        ('[services.3d]\napp = "a:b"\n', "services.3d"),
        ('[project]\nname = "x"\n[services.x-gateway]\napp = "a:b"\n', "services.x-gateway"),
        (
            '[services.a]\napp = "a:b"\ndeploy = { strategy = "blue-green" }\n'
            '[services.a-preview]\napp = "a:b"\n',
            "services.a-preview",
        ),
        ('[services.a]\napp = "a:b"\nversion = "1.0+build"\n', "services.a.version"),
    ],
)
def test_a_name_kubernetes_refuses_is_a_config_error(tmp_path: Path, text: str, key: str) -> None:
    """Names and versions Kubernetes would refuse are refused first, naming the key."""
    with pytest.raises(ConfigError) as caught:
        manifests(write(tmp_path, text))
    assert caught.value.key == key


def test_dollars_in_the_file_reach_the_process_as_they_are(tmp_path: Path) -> None:
    """Kubernetes expands $(NAME) and $$: a value or an argument of the file is escaped."""
    project = write(
        tmp_path,
        '[services.a]\ncommand = ["echo", "$(HOME) $$ {port}"]\nenv = { A = "$(MESHKIT_TOKEN)" }\n',
    )
    container = containers(one(manifests(project), "Deployment", "a"))["a"]
    assert container["command"] == ["echo", "$$(HOME) $$$$ 8080"]
    assert values(container)["A"] == "$$(MESHKIT_TOKEN)"
    # Without a health path, the probes connect to its port.
    assert container["readinessProbe"]["tcpSocket"] == {"port": "http"}


# -- YAML -----------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | st.sampled_from(["on", "No", "null", "~", "1.0", "0x1f", "/data", "a: b", "x\n  y\n"])
    | st.from_regex(r"[A-Za-z_/][A-Za-z0-9_./-]{0,5}(\n[ a-z]{0,3}){0,3}\n{0,2}", fullmatch=True)
)
trees = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=25,
)


@given(st.lists(st.dictionaries(st.text(), trees, max_size=5), min_size=1, max_size=3))
def test_yaml_reads_back_as_written(documents: list[dict[str, Any]]) -> None:
    """Whatever the documents hold, a YAML reader gets exactly them back."""
    assert list(yaml.safe_load_all(dump_all(documents))) == documents


def test_a_file_is_a_literal_block() -> None:
    """The ConfigMap's file is written line for line, readable as it is."""
    text = '[project]\nname = "shop"\n\n# a comment: with "quotes"\n'
    written = dump_all([{"data": {"meshkit.toml": text}}])
    assert written == (
        "---\ndata:\n  meshkit.toml: |\n"
        '    [project]\n    name = "shop"\n\n    # a comment: with "quotes"\n'
    )


# -- the command --------------------------------------------------------------------------

runner = CliRunner()


def test_the_command_writes_a_file_per_kind(tmp_path: Path) -> None:
    """-o DIR: one file per kind, the Secret to create and how to apply them; the file of a
    kind no longer written (payments made a rolling service again) goes."""
    project = tmp_path / "shop"
    project.mkdir()
    text = (SHOP / "meshkit.toml").read_text()
    (project / "meshkit.toml").write_text(
        re.sub(r"\[services\.payments\.deploy\]\n(?:[^\[\n].*\n)*", "", text)
    )
    out = tmp_path / "k8s"
    out.mkdir()
    (out / "rollout.yaml").write_text("left from an earlier run")
    result = runner.invoke(app, ["manifests", "-p", str(project), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "configmap.yaml",
        "deployment.yaml",
        "service.yaml",
        "statefulset.yaml",
    ]
    deployments = list(yaml.safe_load_all((out / "deployment.yaml").read_text()))
    assert len(deployments) == 7
    assert {d["kind"] for d in deployments} == {"Deployment"}
    assert "removed rollout.yaml" in result.stdout
    assert (
        'kubectl create secret generic shop-token --from-literal=token="$(openssl rand -hex 32)"'
        in result.stdout
    )
    assert '--from-literal=SHOP_ADMIN_KEY="$SHOP_ADMIN_KEY"' in result.stdout
    assert f"kubectl apply -f {out}" in result.stdout


def test_the_command_writes_yaml_to_standard_output() -> None:
    """Without -o the YAML alone is on standard output; what to do next on standard error."""
    result = runner.invoke(app, ["manifests", "-p", str(SHOP)])
    assert result.exit_code == 0, result.output
    assert len(list(yaml.safe_load_all(result.stdout))) == 18  # payments: Rollout and template
    assert "kubectl create secret generic shop-token" in result.stderr


def test_the_command_names_a_missing_project(tmp_path: Path) -> None:
    """A directory without meshkit.toml is one line saying so, exit status 2."""
    result = runner.invoke(app, ["manifests", "-p", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "no meshkit.toml here" in result.stderr
    assert "Traceback" not in result.output


def test_the_help_says_what_the_image_must_hold() -> None:
    """--help documents the image the user builds and the options."""
    result = runner.invoke(app, ["manifests", "--help"])
    assert result.exit_code == 0
    help_text = " ".join(result.stdout.split())
    assert "--image IMAGE" in help_text
    assert "which you build: your project directory at --workdir, and meshkit installed" in (
        help_text
    )
    assert "--output OUT" in help_text

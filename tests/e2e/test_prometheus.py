"""The shop under a real Prometheus: every /metrics passes promtool, and service discovery
through the control plane finds and scrapes every instance."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.e2e.conftest import Prometheus, Shop, http, wait_until

from meshkit.testing.servers import backend_missing, free_port

INSTALL = "install Debian's package: apt-get install prometheus (it brings promtool)"
RATE = (
    "sum by (service) (rate(meshkit_service_requests_total[5s])"
    " or rate(meshkit_sidecar_inbound_requests_total[5s]))"
)


@pytest.fixture(scope="module")
def tools() -> tuple[str, str]:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus is None or promtool is None:
        backend_missing("prometheus", INSTALL)
    return prometheus, promtool


class AdminShop(Shop):
    """The shop, its gateway with an admin listener (where the gateway's /metrics are)."""

    def __init__(self, directory: Path) -> None:
        self.admin_port = free_port()
        super().__init__(
            directory, configure=lambda text: f"{text}\n[gateway.admin]\nport = {self.admin_port}\n"
        )


@pytest.fixture(scope="module")
def shop(tools: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminShop]:
    running = AdminShop(tmp_path_factory.mktemp("shop") / "shop")
    try:
        running.up.wait_for("services are up", timeout=120)
        yield running
    finally:
        running.up.stop()


def targets(shop: Shop) -> list[dict[str, object]]:
    status, body = http(
        "GET",
        f"http://127.0.0.1:{shop.control_port}/v1/prometheus/targets",
        headers={"authorization": f"Bearer {shop.token}"},
    )
    assert status == 200, body
    assert isinstance(body, list)
    return body


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 (loopback)
        return answer.read().decode()  # type: ignore[no-any-return]


def status_of(url: str) -> int:
    """The status of ``GET url``, its body ignored; 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 (loopback)
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def test_every_process_passes_promtool(shop: AdminShop, tools: tuple[str, str]) -> None:
    """A service, the sidecar, the control plane and the gateway expose lint-free metrics."""
    order = {"user_id": 1, "items": [{"product_id": 1, "quantity": 1}]}
    status, _ = http("POST", shop.gateway("/api/orders"), order, {"x-api-key": "shop-demo"})
    assert status in (200, 201, 202), status
    found = targets(shop)
    assert {group["labels"]["service"] for group in found} >= {  # type: ignore[index]
        "meshkit-control-plane",
        "orders",
        "notifications",
    }
    urls = [f"http://127.0.0.1:{shop.admin_port}/metrics"]
    for group in found:
        labels = group["labels"]
        assert isinstance(labels, dict)
        urls.append(f"http://{group['targets'][0]}{labels['__metrics_path__']}")  # type: ignore[index]
    for url in urls:
        text = scrape(url)
        assert "# HELP" in text, url
        checked = subprocess.run(
            [tools[1], "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
        )
        assert checked.returncode == 0, f"{url}: {checked.stdout}{checked.stderr}"


@pytest.fixture
def prometheus(shop: AdminShop, tools: tuple[str, str], tmp_path: Path) -> Iterator[Prometheus]:
    server = Prometheus(tools[0], tmp_path, control_port=shop.control_port, token=shop.token)
    try:
        wait_until(server.ready, 30, "Prometheus ready")
        yield server
    finally:
        server.stop()


def test_prometheus_scrapes_every_instance_found_by_discovery(
    shop: AdminShop, prometheus: Prometheus
) -> None:
    """up == 1 for each instance the registry lists, and a request rate for each service."""
    expected = {
        (group["labels"]["service"], group["labels"]["instance"])  # type: ignore[index]
        for group in targets(shop)
    }
    assert len(expected) >= 9  # the plane, and the shop's eight instances

    def all_up() -> bool:
        up = {
            (r["metric"]["service"], r["metric"]["instance"])  # type: ignore[index]
            for r in prometheus.query('up{job="meshkit"} == 1')
        }
        return up >= expected

    wait_until(all_up, 30, f"up == 1 for each of {sorted(expected)}")
    services = {service for service, _ in expected} - {"meshkit-control-plane"}
    addresses = [
        f"http://{group['targets'][0]}/"  # type: ignore[index]
        for group in targets(shop)
        if group["labels"]["service"] != "meshkit-control-plane"  # type: ignore[index]
    ]
    deadline = time.monotonic() + 30  # noqa: TID251 (a real Prometheus, real time)
    while True:
        for address in addresses:  # answered 404 or by the app; counted either way
            status_of(address)
        rates = {
            r["metric"]["service"]: float(r["value"][1])  # type: ignore[index]
            for r in prometheus.query(RATE)
        }
        if all(rates.get(service, 0) > 0 for service in services):
            break
        assert time.monotonic() < deadline, f"rates per service: {rates}"  # noqa: TID251
        time.sleep(0.2)  # noqa: TID251 (waiting for scrapes, bounded)

"""Running ``meshkit up`` for real: a subprocess whose output tests can wait on."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshkit.testing.servers import free_port, spawn_control_plane

ROOT = Path(__file__).resolve().parents[2]


class Up:
    """``meshkit up -p DIRECTORY`` in a process of its own; its output is kept line by line."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
        env.pop("FORCE_COLOR", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "meshkit", "up", "-p", str(directory)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def mark(self) -> int:
        """A place in the output, for ``wait_for(since=...)``."""
        with self._changed:
            return len(self.lines)

    def wait_for(self, text: str, timeout: float, *, since: int = 0) -> str:
        """The first line from ``since`` on containing ``text``; fails after ``timeout`` s."""
        deadline = time.monotonic() + timeout  # noqa: TID251 (a real process, real time)
        with self._changed:
            while True:
                for line in self.lines[since:]:
                    if text in line:
                        return line
                remaining = deadline - time.monotonic()  # noqa: TID251
                if remaining <= 0 or self.process.poll() is not None:
                    tail = "\n".join(self.lines[-30:])
                    pytest.fail(f"no line with {text!r} within {timeout}s; output:\n{tail}")
                # At most a second: the output may end before the exit is seen.
                self._changed.wait(min(remaining, 1.0))

    def stop(self, timeout: float = 30) -> int:
        """SIGINT, as Ctrl-C sends it; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise
        finally:
            self._reader.join(10)
            if self.process.stdout is not None:
                self.process.stdout.close()

    def status(self) -> dict[str, object]:
        """``meshkit status -p DIRECTORY --json``, parsed."""
        result = subprocess.run(
            [sys.executable, "-m", "meshkit", "status", "-p", str(self.directory), "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return json.loads(result.stdout)  # type: ignore[no-any-return]


def http(
    method: str, url: str, body: object = None, headers: dict[str, str] | None = None
) -> tuple[int, object]:
    """One plain HTTP call; ``(status, parsed JSON body or None)``."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})  # noqa: S310 (http on loopback)
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=15) as answer:  # noqa: S310 (loopback)
            raw = answer.read()
            return answer.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        raw = error.read()
        return error.code, json.loads(raw) if raw else None


class Shop:
    """A copy of examples/shop on free ports, run by ``meshkit up``.

    ``configure``, if given, rewrites the copy's meshkit.toml (after the
    ports are chosen) before the shop starts.
    """

    def __init__(self, directory: Path, *, configure: Callable[[str], str] | None = None) -> None:
        self.directory = directory
        shutil.copytree(
            ROOT / "examples" / "shop",
            directory,
            ignore=shutil.ignore_patterns(".meshkit", "__pycache__", ".data"),
        )
        config = directory / "meshkit.toml"
        text = config.read_text()
        self.control_port, self.orders_port, self.notifications_port, self.gateway_port = (
            free_port() for _ in range(4)
        )
        for old, new in (
            (7700, self.control_port),
            (8104, self.orders_port),
            (8106, self.notifications_port),
            (8000, self.gateway_port),
        ):
            text = re.sub(rf"\bport = {old}\b", f"port = {new}", text)
        config.write_text(configure(text) if configure else text)
        self.up = Up(directory)

    @property
    def token(self) -> str:
        return (self.directory / ".meshkit" / "token").read_text().strip()

    def orders(self, path: str = "/orders") -> str:
        return f"http://127.0.0.1:{self.orders_port}{path}"

    def gateway(self, path: str) -> str:
        return f"http://127.0.0.1:{self.gateway_port}{path}"

    def registry(self, path: str) -> str:
        return f"http://127.0.0.1:{self.control_port}/v1/registry{path}"

    def service_url(self, service: str, path: str) -> str:
        """``path`` on the first instance of ``service`` the registry lists."""
        _, body = http(
            "GET",
            self.registry(f"/services/{service}"),
            headers={"authorization": f"Bearer {self.token}"},
        )
        instance = body["instances"][0]  # type: ignore[index]
        return f"http://{instance['host']}:{instance['port']}{path}"


def instance_pids(shop: Shop, service: str) -> dict[str, int]:
    """Instance id -> pid, as the registry lists them (from each registration's metadata)."""
    status, body = http(
        "GET",
        shop.registry(f"/services/{service}"),
        headers={"authorization": f"Bearer {shop.token}"},
    )
    assert status == 200, body
    assert isinstance(body, dict)
    return {i["id"]: int(i["metadata"]["pid"]) for i in body["instances"]}


def restock(shop: Shop, *, product_id: int, quantity: int) -> None:
    """Set stock through an inventory instance found in the registry."""
    url = shop.service_url("inventory", f"/stock/{product_id}")
    assert http("PUT", url, {"quantity": quantity})[0] == 200


def stock(shop: Shop, product_id: int) -> int:
    status, answer = http("GET", shop.service_url("inventory", f"/stock/{product_id}"))
    assert status == 200
    return int(answer["quantity"])  # type: ignore[index]


def order_status(shop: Shop, order_id: int, wanted: str, *, timeout: float) -> dict[str, object]:
    """The order once its status is ``wanted``; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout  # noqa: TID251 (a real process, real time)
    while True:
        status, order = http("GET", shop.orders(f"/orders/{order_id}"))
        assert status == 200, order
        assert isinstance(order, dict)
        if order["status"] == wanted:
            return order
        assert time.monotonic() < deadline, f"order {order_id} is still {order['status']}: {order}"  # noqa: TID251
        time.sleep(0.1)  # noqa: TID251 (polling a saga, bounded)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    running = Shop(tmp_path_factory.mktemp("shop") / "shop")
    try:
        running.up.wait_for("services are up", timeout=120)
        yield running
    finally:
        running.up.stop()


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``condition`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout  # noqa: TID251
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"  # noqa: TID251
        time.sleep(0.05)  # noqa: TID251 (polling real processes, bounded)


def plane_answers(port: int) -> bool:
    try:
        return http("GET", f"http://127.0.0.1:{port}/healthz")[0] == 200
    except OSError:
        return False


def start_control_plane(data_dir: Path, port: int, *, token: str) -> subprocess.Popen[bytes]:
    """A control plane on ``port``, answering when this returns; the caller ends it."""
    plane = spawn_control_plane(data_dir, token=token, port=port)
    wait_until(lambda: plane_answers(port), 20, "the control plane answering")
    return plane


def meshkit_env(registry_port: int, token: str) -> dict[str, str]:
    """This environment without any MESHKIT_ setting, then the registry's and the token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    env.update(MESHKIT_REGISTRY=f"http://127.0.0.1:{registry_port}", MESHKIT_TOKEN=token)
    return env


class Processes:
    """Child processes, ended however the test ends."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, command: list[str], env: dict[str, str], cwd: Path) -> None:
        log = (cwd / "output.log").open("wb")
        self.started.append(
            subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        )
        log.close()

    def stop(self) -> None:
        for process in self.started:
            process.terminate()
        for process in self.started:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def processes() -> Iterator[Processes]:
    running = Processes()
    yield running
    running.stop()


class Prometheus:
    """A Prometheus server on a free port, scraping what the control plane's discovery lists."""

    def __init__(self, binary: str, directory: Path, *, control_port: int, token: str) -> None:
        self.port = free_port()
        token_file = directory / "token"
        token_file.write_text(token)
        config = directory / "prometheus.yml"
        config.write_text(
            json.dumps(  # YAML reads JSON
                {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                    "scrape_configs": [
                        {
                            "job_name": "meshkit",
                            "http_sd_configs": [
                                {
                                    "url": f"http://127.0.0.1:{control_port}/v1/prometheus/targets",
                                    "refresh_interval": "1s",
                                    "authorization": {
                                        "type": "Bearer",
                                        "credentials_file": str(token_file),
                                    },
                                }
                            ],
                        }
                    ],
                }
            )
        )
        log = (directory / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def query(self, promql: str) -> list[dict[str, object]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": promql}
        )
        status, body = http("GET", url)
        assert status == 200, body
        return body["data"]["result"]  # type: ignore[index,no-any-return]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=5):
                return True
        except OSError:  # refused, or an HTTP error: not ready yet
            return False

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

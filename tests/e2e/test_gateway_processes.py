"""`meshkit gateway` processes: a global limit shared through Redis, and reloads."""

from __future__ import annotations

import signal
import sys
import urllib.request
from collections import Counter
from pathlib import Path

from tests.e2e.conftest import (
    Processes,
    http,
    meshkit_env,
    start_control_plane,
    wait_until,
)

from meshkit.gateway import READY_PATH
from meshkit.testing.servers import RedisServer, free_port

TOKEN = "global-limits-token-0123456789"
KEY = "key-for-tests"
BURST = 30

APP = """
from fastapi import FastAPI
app = FastAPI()

@app.get("/hello")
async def hello() -> dict:
    return {"hello": "world"}
"""

PROJECT = """
[project]
name = "limits"

[services.hello]
command = ["true"]  # started by the test, not by this file
health = ""

[gateway]
port = {port}

[[gateway.api_keys]]
name = "tests"
key = "{key}"
rate = 1000
burst = 1000

[[gateway.routes]]
path = "/hello"
service = "hello"

[[gateway.global_limits]]
name = "shared"
rate = 0.01
burst = {burst}
per = "total"

[gateway.redis]
url = "{redis}"
on_unreachable = "{mode}"
"""


def start_backend(tmp_path: Path, processes: Processes) -> int:
    """A control plane and the hello service registered in it; the control plane's port."""
    registry_port = free_port()
    processes.started.append(start_control_plane(tmp_path / "cp", registry_port, token=TOKEN))
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "helloapp.py").write_text(APP)
    backend_env = meshkit_env(registry_port, TOKEN)
    backend_env.update(
        MESHKIT_SERVICE="hello", MESHKIT_INSTANCE_ID="hello-1", MESHKIT_PORT=str(free_port())
    )
    processes.start(
        [sys.executable, "-m", "meshkit", "serve", "helloapp:app"], backend_env, tmp_path / "app"
    )
    wait_until(lambda: _listed(registry_port), 30, "the backend registered")
    return registry_port


def _listed(registry_port: int) -> bool:
    status, body = http(
        "GET",
        f"http://127.0.0.1:{registry_port}/v1/registry/services/hello",
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    return status == 200 and len(body["instances"]) == 1  # type: ignore[index]


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{READY_PATH}", timeout=5) as answer:
            return answer.status == 200
    except OSError:
        return False


def _hello(port: int) -> tuple[int, object]:
    return http("GET", f"http://127.0.0.1:{port}/hello", headers={"x-api-key": KEY})


def test_two_gateways_share_one_limit_and_fail_as_configured(
    tmp_path: Path, processes: Processes
) -> None:
    """Together the gateways admit the burst exactly; with Redis down one admits, one refuses."""
    registry_port = start_backend(tmp_path, processes)

    with RedisServer() as redis:
        ports = {}
        for mode in ("open", "closed"):
            ports[mode] = port = free_port()
            directory = tmp_path / f"gateway-{mode}"
            directory.mkdir()
            (directory / "meshkit.toml").write_text(
                PROJECT.format(port=port, key=KEY, burst=BURST, redis=redis.url, mode=mode)
            )
            processes.start(
                [sys.executable, "-m", "meshkit", "gateway", "-p", str(directory)],
                meshkit_env(registry_port, TOKEN),
                directory,
            )
        for port in ports.values():
            wait_until(lambda port=port: _ready(port), 30, "a gateway ready")  # type: ignore[misc]

        answers = [_hello(ports["open" if i % 2 else "closed"]) for i in range(BURST + 10)]
        statuses = Counter(status for status, _ in answers)
        assert statuses == {200: BURST, 429: 10}
        refused = next(body for status, body in answers if status == 429)
        assert "global rate limit 'shared'" in refused["detail"]  # type: ignore[index]
        # Both gateways took part in spending the one shared burst.
        assert {status for status, _ in answers[0::2]} == {200, 429}
        assert 200 in {status for status, _ in answers[1::2]}

        redis.stop()
        for _ in range(3):  # the first finds Redis gone, the others are within the hold-off
            assert _hello(ports["open"])[0] == 200
            status, body = _hello(ports["closed"])
            assert status == 503
            assert "unreachable" in body["detail"]  # type: ignore[index]

        redis.start()  # empty again: a full bucket once the gateways try it
        wait_until(lambda: _hello(ports["closed"])[0] == 200, 10, "Redis used again")


RELOADABLE = """
[project]
name = "reloads"

[services.hello]
command = ["true"]  # started by the test, not by this file
health = ""

[gateway]
port = {port}

[gateway.admin]
port = {admin}

[[gateway.routes]]
path = "{path}"
service = "hello"
auth = "none"
"""


def test_sighup_and_the_admin_api_reload_the_file(tmp_path: Path, processes: Processes) -> None:
    """A new route after SIGHUP; a broken file is refused and the running routes stay."""
    registry_port = start_backend(tmp_path, processes)
    port, admin = free_port(), free_port()
    directory = tmp_path / "gateway"
    directory.mkdir()
    config = directory / "meshkit.toml"
    config.write_text(RELOADABLE.format(port=port, admin=admin, path="/old"))
    processes.start(
        [sys.executable, "-m", "meshkit", "gateway", "-p", str(directory)],
        meshkit_env(registry_port, TOKEN),
        directory,
    )
    gateway = processes.started[-1]
    wait_until(lambda: _ready(port), 30, "the gateway ready")
    hello = f"http://127.0.0.1:{port}/hello"

    config.write_text(RELOADABLE.format(port=port, admin=admin, path="/hello"))
    gateway.send_signal(signal.SIGHUP)
    wait_until(lambda: http("GET", hello)[0] == 200, 10, "the new route in force")

    config.write_text(RELOADABLE.format(port=port, admin=admin, path="no-slash"))
    token = {"authorization": f"Bearer {TOKEN}"}
    status, body = http("POST", f"http://127.0.0.1:{admin}/admin/reload", headers=token)
    assert status == 400
    assert "gateway.routes[0].path" in body["detail"]  # type: ignore[index]
    assert http("GET", hello)[0] == 200
    unauthorized = http("POST", f"http://127.0.0.1:{admin}/admin/reload")
    assert unauthorized[0] == 401


PLAIN = """
[project]
name = "quiet"

[services.hello]
command = ["true"]  # started by the test, not by this file
health = ""

[gateway]
port = {port}

[[gateway.api_keys]]
name = "tests"
key = "{key}"

[[gateway.routes]]
path = "/hello"
service = "hello"
"""


def test_the_access_log_is_printed_only_when_asked(tmp_path: Path, processes: Processes) -> None:
    """As `meshkit up` starts it, the gateway prints no line per request; --access-log does."""
    registry_port = start_backend(tmp_path, processes)
    ports = {}
    for flags in ((), ("--access-log",)):
        ports[flags] = port = free_port()
        directory = tmp_path / f"gateway{len(flags)}"
        directory.mkdir()
        (directory / "meshkit.toml").write_text(PLAIN.format(port=port, key=KEY))
        processes.start(
            [sys.executable, "-m", "meshkit", "gateway", "-p", str(directory), *flags],
            meshkit_env(registry_port, TOKEN),
            directory,
        )
        wait_until(lambda port=port: _ready(port), 30, "a gateway ready")  # type: ignore[misc]
        for _ in range(5):
            assert _hello(port)[0] == 200
    wait_until(
        lambda: (tmp_path / "gateway1" / "output.log").read_text().count('"path":"/hello"') == 5,
        10,
        "the access log printed",
    )
    quiet = (tmp_path / "gateway0" / "output.log").read_text()
    assert '"request_id"' not in quiet, quiet

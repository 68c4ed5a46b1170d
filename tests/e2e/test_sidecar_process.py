"""`meshkit sidecar` in front of a plain FastAPI app (no meshkit in it), as real processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import Processes, http, meshkit_env, start_control_plane, wait_until

from meshkit.testing.servers import free_port

TOKEN = "sidecar-process-token-0123456789"

PLAIN_APP = """
from fastapi import FastAPI
app = FastAPI()

@app.get("/health")
def health() -> dict:
    return {"ok": True}

@app.get("/hello")
def hello() -> dict:
    return {"hello": "from a plain app"}
"""


def _instances(registry_port: int) -> list[dict[str, object]]:
    status, body = http(
        "GET",
        f"http://127.0.0.1:{registry_port}/v1/registry/services/plain",
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    return body["instances"] if status == 200 else []  # type: ignore[index,return-value]


def _start_app(directory: Path, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "granian", "--interface", "asgi", "--no-ws"]
    command += ["--host", "127.0.0.1", "--port", str(port), "plainapp:app"]
    # A session of its own: granian's workers are children, killed with it.
    return subprocess.Popen(
        command,
        env=meshkit_env(0, TOKEN),
        cwd=directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _kill(app: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(app.pid, signal.SIGKILL)
    app.wait(10)


def test_the_sidecar_registers_a_plain_app_by_its_health_and_proxies_to_it(
    tmp_path: Path, processes: Processes
) -> None:
    """Listed while healthy and reached through the inbound port; killed it leaves, and returns."""
    registry_port = free_port()
    processes.started.append(start_control_plane(tmp_path / "cp", registry_port, token=TOKEN))
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "plainapp.py").write_text(PLAIN_APP)
    app_port, inbound = free_port(), free_port()
    apps = [_start_app(app_dir, app_port)]
    try:
        processes.start(
            [
                *(sys.executable, "-m", "meshkit", "sidecar", "--service", "plain"),
                *("--app", f"127.0.0.1:{app_port}", "--health", "/health", "--port", str(inbound)),
                *("--interval", "0.2", "--fall", "2", "--rise", "2", "--version", "3.1"),
            ],
            meshkit_env(registry_port, TOKEN),
            tmp_path,
        )
        wait_until(lambda: len(_instances(registry_port)) == 1, 30, "the app registered")
        [instance] = _instances(registry_port)
        assert (instance["port"], instance["version"]) == (inbound, "3.1")
        hello = f"http://127.0.0.1:{inbound}/hello"
        assert http("GET", hello) == (200, {"hello": "from a plain app"})

        _kill(apps[0])
        wait_until(lambda: not _instances(registry_port), 5, "the dead app deregistered")
        assert http("GET", hello)[0] == 502

        apps.append(_start_app(app_dir, app_port))
        wait_until(lambda: len(_instances(registry_port)) == 1, 30, "the app registered again")
        assert http("GET", hello)[0] == 200
    finally:
        for app in apps:
            _kill(app)

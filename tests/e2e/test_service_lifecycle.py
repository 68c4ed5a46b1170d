"""A meshkit.Service process: registration, readiness and draining, for real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.e2e.conftest import http, start_control_plane, wait_until

from meshkit.errors import ServiceUnavailableError
from meshkit.registry import RemoteRegistry
from meshkit.service import Directory, ServiceClient
from meshkit.testing.servers import free_port

TOKEN = "lifecycle-token-0123456789"

APP = """
import asyncio
import pathlib
from fastapi import FastAPI
app = FastAPI()

@app.get("/slow")
async def slow() -> dict:
    pathlib.Path(__file__).with_name("slow-started").touch()  # the test waits for this
    await asyncio.sleep(3)
    return {"finished": True}
"""


def start_service(directory: Path, registry_port: int, port: int) -> subprocess.Popen[str]:
    (directory / "slowapp.py").write_text(APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    env.update(
        MESHKIT_REGISTRY=f"http://127.0.0.1:{registry_port}",
        MESHKIT_TOKEN=TOKEN,
        MESHKIT_SERVICE="slow",
        MESHKIT_INSTANCE_ID="slow-1",
        MESHKIT_PORT=str(port),
        MESHKIT_TTL="5",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "meshkit", "serve", "slowapp:app"],
        cwd=directory,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def listed(registry_port: int) -> list[str]:
    status, body = http(
        "GET",
        f"http://127.0.0.1:{registry_port}/v1/registry/services/slow",
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    assert status == 200
    return [i["id"] for i in body["instances"]]  # type: ignore[index]


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    process = start_control_plane(tmp_path / "cp", port, token=TOKEN)
    yield port
    process.terminate()
    process.wait(10)


def test_sigterm_deregisters_first_and_finishes_requests_in_flight(
    plane: int, tmp_path: Path
) -> None:
    """On SIGTERM the instance leaves the registry at once, yet a request in flight completes."""
    port = free_port()
    service = start_service(tmp_path, plane, port)
    try:
        wait_until(lambda: listed(plane) == ["slow-1"], 30, "registered")
        assert http("GET", f"http://127.0.0.1:{port}/-/ready")[0] == 200
        answer: list[tuple[int, object]] = []
        caller = threading.Thread(
            target=lambda: answer.append(http("GET", f"http://127.0.0.1:{port}/slow"))
        )
        caller.start()
        wait_until((tmp_path / "slow-started").exists, 10, "the slow request being handled")
        service.send_signal(signal.SIGTERM)
        wait_until(lambda: listed(plane) == [], 2, "deregistered before the request ends")
        assert not answer  # still in flight while already out of discovery
        caller.join(10)
        assert answer == [(200, {"finished": True})]
        assert service.wait(10) == 0
    finally:
        if service.poll() is None:
            service.kill()
        service.communicate()


def test_a_service_started_before_its_registry_registers_when_it_appears(tmp_path: Path) -> None:
    """Not ready while the control plane is missing; registered and ready once it is up."""
    registry_port, port = free_port(), free_port()
    service = start_service(tmp_path, registry_port, port)
    plane = None
    try:
        wait_until(lambda: _answers(port), 30, "serving")
        assert http("GET", f"http://127.0.0.1:{port}/-/ready")[0] == 503
        plane = start_control_plane(tmp_path / "cp", registry_port, token=TOKEN)
        wait_until(lambda: listed(registry_port) == ["slow-1"], 10, "registered late")
        assert http("GET", f"http://127.0.0.1:{port}/-/ready")[0] == 200
    finally:
        service.terminate()
        service.wait(15)
        service.communicate()
        if plane is not None:
            plane.terminate()
            plane.wait(10)


def _answers(port: int) -> bool:
    try:
        return http("GET", f"http://127.0.0.1:{port}/-/live")[0] == 200
    except OSError:
        return False


async def test_calling_while_the_registry_is_unreachable_says_so() -> None:
    """A call by name with no reachable registry is a ServiceUnavailableError naming the cause."""
    registry = RemoteRegistry(f"http://127.0.0.1:{free_port()}", token=TOKEN)
    client = ServiceClient(Directory(registry))
    with pytest.raises(ServiceUnavailableError, match="registry cannot be reached") as caught:
        await client.get("users", "/users/1")
    assert caught.value.service == "users"
    await client.aclose()
    await registry.aclose()

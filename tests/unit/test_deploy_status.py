"""``meshkit status`` puts the supervisor's table and the registry side by side."""

import json
import os
from pathlib import Path

import pytest

from meshkit._net import free_port
from meshkit.control import ControlPlane, load_token
from meshkit.deploy import load_project
from meshkit.deploy._state import ProcessState, ProcessTable, write_table
from meshkit.deploy._status import collect_status, report_json
from meshkit.registry import Instance, RemoteRegistry


@pytest.fixture(autouse=True)
def no_token_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHKIT_TOKEN", raising=False)


async def test_a_service_removed_from_meshkit_toml_is_still_reported(tmp_path: Path) -> None:
    """A table row for a service no longer configured is shown, not a KeyError."""
    port = free_port()
    (tmp_path / "meshkit.toml").write_text(
        f'[control_plane]\nport = {port}\n\n[services.users]\napp = "users:app"\nversion = "2.0"\n'
    )
    project = load_project(tmp_path)
    project.data_dir.mkdir()
    token = load_token(project.data_dir, create=True)
    plane = ControlPlane(data_dir=project.data_dir, token=token, port=port)
    await plane.start()
    try:
        async with RemoteRegistry(f"http://127.0.0.1:{port}", token=token) as registry:
            elsewhere = Instance(service="legacy", id="legacy-9", host="127.0.0.1", port=9)
            await registry.register(elsewhere, ttl=30)
            write_table(
                project.data_dir,
                ProcessTable(
                    supervisor_pid=os.getpid(),
                    control_plane=f"http://127.0.0.1:{port}",
                    processes=[
                        ProcessState(
                            service=service,
                            id=f"{service}-1",
                            port=1,
                            pid=None,
                            restarts=2,
                            started_at=None,
                            status="restarting",
                        )
                        for service in ("legacy", "users")
                    ],
                ),
            )
            report = json.loads(report_json(await collect_status(project)))
    finally:
        await plane.aclose()
    assert report == {
        "control_plane": {
            "id": "control-plane",
            "host": "127.0.0.1",
            "port": port,
            "pid": None,
            "version": "",
            "healthy": True,
            "restarts": 0,
            "uptime": None,
        },
        "gateway": None,
        "services": [
            {
                "name": "legacy",
                "instances": [
                    {
                        "id": "legacy-1",
                        "host": "127.0.0.1",
                        "port": 1,
                        "pid": None,
                        "version": "",
                        "healthy": False,
                        "restarts": 2,
                        "uptime": None,
                    },
                    {
                        "id": "legacy-9",
                        "host": "127.0.0.1",
                        "port": 9,
                        "pid": None,
                        "version": "",
                        "healthy": True,
                        "restarts": 0,
                        "uptime": None,
                    },
                ],
            },
            {
                "name": "users",
                "instances": [
                    {
                        "id": "users-1",
                        "host": "127.0.0.1",
                        "port": 1,
                        "pid": None,
                        "version": "2.0",
                        "healthy": False,
                        "restarts": 2,
                        "uptime": None,
                    }
                ],
            },
        ],
    }

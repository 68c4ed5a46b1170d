"""How commands find their project, and `meshkit down`, `reset` and `bus groups`, run for real."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from meshkit.bus import RemoteBus, SqliteOutbox, outgoing
from meshkit.deploy._state import alive
from meshkit.policy import Redelivery
from meshkit.testing.servers import free_port

from .conftest import Up, start_control_plane

TOKEN = "project-cli-token-0123456789abcdef"


def meshkit(
    *args: str, cwd: Path, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """``meshkit ARGS`` run in ``cwd``, with no MESHKIT_ variable but those in ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    return subprocess.run(
        [sys.executable, "-m", "meshkit", *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def project(directory: Path, text: str = "") -> Path:
    """A project in ``directory`` whose control plane would listen on a free port."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "meshkit.toml").write_text(f"[control_plane]\nport = {free_port()}\n{text}")
    return directory


def found(result: subprocess.CompletedProcess[str]) -> str:
    """The project `meshkit down` looked at, from its answer for a project not running."""
    assert result.returncode == 1, result.stderr
    prefix, _, rest = result.stderr.partition(" is not running")
    assert rest, result.stderr
    return prefix.removeprefix("meshkit: ")


def test_the_flag_then_the_variable_then_the_nearest_meshkit_toml(tmp_path: Path) -> None:
    """-p wins over MESHKIT_PROJECT, which wins over the nearest meshkit.toml up from here."""
    outer = project(tmp_path / "outer")
    inner = project(outer / "services" / "inner")
    other = project(tmp_path / "other")
    deep = inner / "src" / "deeper"
    deep.mkdir(parents=True)
    variable = {"MESHKIT_PROJECT": str(other)}

    assert found(meshkit("down", "-p", str(outer), cwd=deep, env=variable)) == str(outer)
    assert found(meshkit("down", cwd=deep, env=variable)) == str(other)
    assert found(meshkit("down", cwd=deep)) == str(inner)
    assert found(meshkit("down", cwd=inner)) == str(inner)  # the working directory's own first
    assert found(meshkit("down", cwd=outer / "services")) == str(outer)
    relative = meshkit("down", "--project", "other", cwd=tmp_path)
    assert found(relative) == str(other)


def test_no_project_found_says_how_to_name_one(tmp_path: Path) -> None:
    """Outside any project the message names -p (with the shop's path) and MESHKIT_PROJECT."""
    nowhere = tmp_path / "nowhere"
    nowhere.mkdir()
    for command in (("status",), ("dlq", "list"), ("bus", "groups"), ("down",), ("reset",)):
        result = meshkit(*command, cwd=nowhere)
        assert result.returncode == 2, (command, result.stderr)
        assert f"no meshkit.toml in {nowhere.resolve()} or any directory above it" in result.stderr
        assert "-p examples/shop" in result.stderr
        assert "MESHKIT_PROJECT" in result.stderr
        assert "Traceback" not in result.stderr
    missing = meshkit("status", "-p", str(nowhere), cwd=tmp_path)
    assert missing.returncode == 2
    assert "no meshkit.toml here (named by -p)" in missing.stderr
    variable = meshkit("status", cwd=tmp_path, env={"MESHKIT_PROJECT": str(nowhere)})
    assert variable.returncode == 2
    assert "no meshkit.toml here (named by MESHKIT_PROJECT)" in variable.stderr


def test_down_stops_what_up_runs_elsewhere_and_reset_then_deletes_its_data(tmp_path: Path) -> None:
    """`down` ends the supervisor and its children; `reset` is refused until then, asks, deletes."""
    web = (
        "[services.web]\n"
        'command = ["{python}", "-m", "http.server", "{port}", "--bind", "127.0.0.1"]\n'
        'health = "/"\n'
    )
    directory = project(tmp_path / "site", web)
    up = Up(directory)
    try:
        up.wait_for("services are up", timeout=60)
        status = json.loads(meshkit("status", "--json", cwd=directory).stdout)
        plane = status["control_plane"]
        assert plane["healthy"] is True
        assert isinstance(plane["uptime"], float)
        assert status["gateway"] is None
        [web_instance] = status["services"][0]["instances"]
        assert isinstance(web_instance["uptime"], float)
        pids = [plane["pid"], web_instance["pid"]]
        assert all(alive(pid) for pid in pids)

        refused = meshkit("reset", "--yes", cwd=directory)
        assert refused.returncode == 1
        assert "is running" in refused.stderr
        assert "meshkit down" in refused.stderr
        again = meshkit("up", cwd=directory)
        assert again.returncode == 1
        assert "already running" in again.stderr

        stopped = meshkit("down", cwd=directory)
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.startswith(f"stopped {directory}: web-1, control-plane")
        assert up.process.wait(5) == 0  # it was gone when `down` returned
        assert not any(alive(pid) for pid in pids)
    finally:
        up.stop()

    not_running = meshkit("down", cwd=directory)
    assert not_running.returncode == 1
    assert f"{directory} is not running: nothing to stop" in not_running.stderr

    data_dir = directory / ".meshkit"
    unconfirmed = meshkit("reset", cwd=directory)  # no terminal to ask on
    assert unconfirmed.returncode == 2
    assert "confirm with --yes" in unconfirmed.stderr
    assert data_dir.is_dir()
    deleted = meshkit("reset", "--yes", cwd=directory)
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.strip() == f"deleted {data_dir}"
    assert not data_dir.exists()
    assert directory.joinpath("meshkit.toml").is_file()
    nothing = meshkit("reset", "--yes", cwd=directory)
    assert nothing.stdout.strip() == f"nothing to reset: {data_dir} does not exist"


def test_reset_is_refused_while_a_control_plane_answers_on_the_projects_port(
    tmp_path: Path,
) -> None:
    """A control plane started by hand holds the data open: reset leaves it alone."""
    port = free_port()
    directory = tmp_path / "by-hand"
    directory.mkdir()
    (directory / "meshkit.toml").write_text(f"[control_plane]\nport = {port}\n")
    data_dir = directory / ".meshkit"
    plane = start_control_plane(data_dir, port, token=TOKEN)
    try:
        refused = meshkit("reset", "--yes", cwd=directory)
    finally:
        plane.kill()
        plane.wait()
    assert refused.returncode == 1
    assert f"something listens on 127.0.0.1:{port}" in refused.stderr
    assert data_dir.is_dir()


async def test_bus_groups_lists_lag_and_deletes_a_group(tmp_path: Path) -> None:
    """From a subdirectory of the project: the group's lag and held count, then it is gone."""
    port = free_port()
    (tmp_path / "meshkit.toml").write_text(f"[control_plane]\nport = {port}\n")
    data_dir = tmp_path / ".meshkit"
    data_dir.mkdir()
    (data_dir / "token").write_text(TOKEN + "\n")
    (data_dir / "token").chmod(0o600)
    inside = tmp_path / "src"
    inside.mkdir()
    plane = start_control_plane(data_dir, port, token=TOKEN)
    try:
        async with RemoteBus(f"http://127.0.0.1:{port}", token=TOKEN) as bus:
            await bus.publish_batch([outgoing("order.created", n) for n in range(3)])
            member = await bus.consumer("order.created", "billing", redelivery=Redelivery())
            held = await member.fetch(1, wait=5)
            assert len(held) == 1
            listed = meshkit("bus", "groups", "--json", cwd=inside)
            assert listed.returncode == 0, listed.stderr
            assert json.loads(listed.stdout) == [
                {"topic": "order.created", "group": "billing", "lag": 2, "pending": 1}
            ]
            table = meshkit("bus", "groups", cwd=inside)
            assert "billing" in table.stdout
            # -p given to `groups` holds for `delete` too; here, from outside the project.
            deleted = meshkit(
                *("bus", "groups", "-p", str(tmp_path)),
                *("delete", "order.created", "billing"),
                cwd=tmp_path.parent,
            )
            assert deleted.stdout.strip() == "deleted group billing on order.created"
            assert await bus.groups() == []
            assert meshkit("bus", "groups", cwd=inside).stdout.strip() == "no consumer groups"
            gone = meshkit("bus", "groups", "delete", "order.created", "billing", cwd=inside)
            assert gone.returncode == 2
            assert "billing" in gone.stderr
            assert "Traceback" not in gone.stderr
    finally:
        plane.kill()
        plane.wait()


def test_the_old_positional_directory_still_works_with_a_note(tmp_path: Path) -> None:
    """`meshkit status DIR` finds DIR and says to use -p; giving both is refused."""
    directory = project(tmp_path / "old")
    result = meshkit("status", str(directory), cwd=tmp_path)
    assert "`meshkit status DIR` is deprecated; use `meshkit status -p" in result.stderr
    assert "has `meshkit up -p old` run yet?" in result.stderr
    both = meshkit("status", str(directory), "-p", str(directory), cwd=tmp_path)
    assert both.returncode == 2
    assert "give the project once" in both.stderr


def test_gateway_help_shows_the_section_and_flags_take_no_value(tmp_path: Path) -> None:
    """Help text keeps "[gateway]", and boolean flags are not shown as taking a <bool>."""
    gateway = meshkit("gateway", "--help", cwd=tmp_path).stdout
    assert "[gateway] section" in gateway
    for command in (("status",), ("dlq", "list"), ("reset",), ("dlq", "purge")):
        text = meshkit(*command, "--help", cwd=tmp_path).stdout
        assert "<bool>" not in text, command
        assert "Usage: meshkit" in text


async def test_outbox_service_finds_the_one_database_with_an_outbox(tmp_path: Path) -> None:
    """--service NAME reads the service's SQLite file with an outbox, passing over other files."""
    directory = project(tmp_path / "shop", '[services.orders]\napp = "orders:app"\n')
    files = directory / ".meshkit" / "services" / "orders"
    files.mkdir(parents=True)
    (files / "notes.txt").write_text("not a database")
    plain = sqlite3.connect(files / "cache.sqlite3")
    plain.execute("CREATE TABLE cache (k TEXT)")
    plain.close()
    path = files / "data" / "orders.sqlite3"
    path.parent.mkdir()
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(SqliteOutbox.SCHEMA)
    db.execute("BEGIN IMMEDIATE")
    SqliteOutbox.record(db, "order.created", {"n": 1}, message_id="m1")
    db.execute("COMMIT")
    db.close()
    store = SqliteOutbox(path)
    try:
        [entry] = await store.claim(10, hold=30)
        await store.park(entry, "refused for good")
        await store.release()
    finally:
        await store.aclose()

    listed = meshkit("outbox", "parked", "--service", "orders", "--json", cwd=directory)
    assert listed.returncode == 0, listed.stderr
    assert [(e["id"], e["error"]) for e in json.loads(listed.stdout)] == [
        ("m1", "refused for good")
    ]
    unknown = meshkit("outbox", "parked", "--service", "users", cwd=directory)
    assert unknown.returncode == 2
    assert "has no service 'users' (it has: orders)" in unknown.stderr
    both = meshkit("outbox", "parked", "--service", "orders", "--sqlite", str(path), cwd=directory)
    assert both.returncode == 2
    assert "--service NAME, --sqlite PATH or --postgres DSN" in both.stderr
    (files / "second.sqlite3").write_bytes(path.read_bytes())
    several = meshkit("outbox", "parked", "--service", "orders", cwd=directory)
    assert several.returncode == 2
    assert "several outboxes, choose with --sqlite" in several.stderr

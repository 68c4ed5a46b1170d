"""`meshkit bus` and `meshkit dlq` against a running control plane, as an operator uses them."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from meshkit._clock import SystemClock
from meshkit.bus import Message, RemoteBus, subscribe
from meshkit.errors import NotFoundError
from meshkit.policy import Backoff, Redelivery
from meshkit.testing.servers import free_port

from .conftest import start_control_plane

TOKEN = "bus-cli-token-0123456789abcdef"
POLICY = Redelivery(max_deliveries=2, backoff=Backoff(initial=0.1, maximum=0.2), ack_wait=5.0)


async def dead_letter_appears(bus: RemoteBus) -> None:
    clock = SystemClock()
    async with asyncio.timeout(20):
        # Polled: the interface has no way to wait for a dead letter.
        while not await bus.dead_letters():
            await clock.sleep(0.05)


def meshkit(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshkit", *args, "--project", str(project)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def project_with_a_plane(directory: Path) -> tuple[int, subprocess.Popen[bytes]]:
    """A project of no services in ``directory``, its control plane running: (port, process)."""
    port = free_port()
    (directory / "meshkit.toml").write_text(f"[control_plane]\nport = {port}\n")
    data_dir = directory / ".meshkit"
    data_dir.mkdir()
    (data_dir / "token").write_text(TOKEN + "\n")
    (data_dir / "token").chmod(0o600)
    return port, start_control_plane(data_dir, port, token=TOKEN)


async def test_a_poison_message_is_listed_shown_replayed_once_fixed_and_purged(
    tmp_path: Path,
) -> None:
    """The dead-letter path as an operator walks it, with the CLI."""
    port, plane = project_with_a_plane(tmp_path)
    known_users = {1}
    handled: list[Message] = []
    done = asyncio.Event()

    async def notify(message: Message) -> None:
        user = message.json()["user_id"]  # type: ignore[index]
        if user not in known_users:
            raise LookupError(f"no user {user}")
        handled.append(message)
        done.set()

    try:
        async with (
            RemoteBus(f"http://127.0.0.1:{port}", token=TOKEN) as bus,
            subscribe(bus, "order.created", "notifications", notify, redelivery=POLICY),
        ):
            published = await asyncio.to_thread(
                meshkit,
                tmp_path,
                "bus",
                "publish",
                "order.created",
                '{"user_id": 7}',
                "--id",
                "o-7",
            )
            assert published.returncode == 0, published.stderr
            assert published.stdout.strip() == "o-7"
            await dead_letter_appears(bus)

            listed = await asyncio.to_thread(meshkit, tmp_path, "dlq", "list", "--json")
            [letter] = json.loads(listed.stdout)
            assert {k: letter[k] for k in ("topic", "group", "deliveries", "message_id")} == {
                "topic": "order.created",
                "group": "notifications",
                "deliveries": 2,
                "message_id": "o-7",
            }
            assert letter["error"] == "LookupError: no user 7"
            table = await asyncio.to_thread(meshkit, tmp_path, "dlq", "list")
            assert "notifications" in table.stdout
            assert "no user 7" in table.stdout
            shown = await asyncio.to_thread(meshkit, tmp_path, "dlq", "show", letter["id"])
            assert json.loads(shown.stdout)["payload"] == {"user_id": 7}

            known_users.add(7)  # the cause is fixed
            replayed = await asyncio.to_thread(meshkit, tmp_path, "dlq", "replay", letter["id"])
            assert replayed.stdout.strip() == "replayed 1 dead letter"
            await asyncio.wait_for(done.wait(), 20)
            assert [(m.id, m.deliveries) for m in handled] == [("o-7", 1)]
            emptied = await asyncio.to_thread(meshkit, tmp_path, "dlq", "list", "--json")
            assert json.loads(emptied.stdout) == []

            known_users.discard(7)
            await bus.publish("order.created", {"user_id": 7})
            await dead_letter_appears(bus)
            refused = await asyncio.to_thread(meshkit, tmp_path, "dlq", "purge")
            assert refused.returncode == 2
            assert "give the dead letters' IDs, or --all" in refused.stderr
            assert len(await bus.dead_letters()) == 1  # nothing purged without ids or --all
            purged = await asyncio.to_thread(meshkit, tmp_path, "dlq", "purge", "--all")
            assert purged.stdout.strip() == "purged 1 dead letter"
    finally:
        plane.kill()
        plane.wait()


def test_bad_input_is_one_line_naming_the_problem(tmp_path: Path) -> None:
    """Invalid JSON, a bad topic, an unknown dead letter, no running plane: exit codes 2 or 1."""
    port = free_port()
    (tmp_path / "meshkit.toml").write_text(f"[control_plane]\nport = {port}\n")
    data_dir = tmp_path / ".meshkit"
    data_dir.mkdir()
    (data_dir / "token").write_text(TOKEN + "\n")
    (data_dir / "token").chmod(0o600)
    down = meshkit(tmp_path, "dlq", "list")
    assert down.returncode == 1
    assert "is `meshkit up" in down.stderr
    plane = start_control_plane(data_dir, port, token=TOKEN)
    try:
        for args, expected in [
            (("bus", "publish", "order.created", "{not json"), "payload: is not valid JSON"),
            (("bus", "publish", "Bad Topic", "{}"), "topic: must be dot-separated"),
            (("dlq", "show", "12345"), "no dead letter has id '12345'"),
            (("dlq", "replay"), "give one dead letter's ID or --all"),
        ]:
            result = meshkit(tmp_path, *args)
            assert result.returncode == 2, (args, result.stderr)
            assert expected in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
            assert "Traceback" not in result.stderr
    finally:
        plane.kill()
        plane.wait()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
async def test_tail_prints_each_message_and_deletes_its_own_group_when_stopped(
    tmp_path: Path, stop: signal.Signals
) -> None:
    """`bus tail` shows the topic's messages as JSON lines; Ctrl-C or SIGTERM leaves no group."""
    port, plane = project_with_a_plane(tmp_path)
    try:
        async with RemoteBus(f"http://127.0.0.1:{port}", token=TOKEN) as bus:
            await bus.publish("order.created", {"n": 1}, key="k1", message_id="m-1")
            tail = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "meshkit", "bus", "tail", "order.created"),
                *("--project", str(tmp_path)),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                assert tail.stdout is not None
                first = await asyncio.wait_for(tail.stdout.readline(), 30)
                await bus.publish("order.created", {"n": 2})
                second = await asyncio.wait_for(tail.stdout.readline(), 30)
                tail.send_signal(stop)
                _, raw_errors = await asyncio.wait_for(tail.communicate(), 30)
                errors = raw_errors.decode()
            finally:
                if tail.returncode is None:
                    tail.kill()
                    await tail.wait()
            line = json.loads(first)
            assert (line["id"], line["payload"], line["key"]) == ("m-1", {"n": 1}, "k1")
            assert json.loads(second)["payload"] == {"n": 2}
            assert tail.returncode == 0, errors
            [group] = re.findall(r"in group (tail-[0-9a-f]+) \(deleted on exit\)", errors)
            with pytest.raises(NotFoundError):
                await bus.delete_group("order.created", group)
    finally:
        plane.kill()
        plane.wait()

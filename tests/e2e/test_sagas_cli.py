"""`meshkit sagas` against a project run by `meshkit up`: list, show and retry a stuck run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshkit.testing.servers import free_port

from .conftest import Up, http, wait_until

# Two services: `bank` runs a two-step saga, its two replicas sharing one log;
# `plain` runs none. POST /transfers begins a run with the JSON body as its
# input and answers the run once it ended or is stuck: "refuse" fails the
# second step for good, "undo_failures" fails that many attempts of the first
# step's compensation (which has one attempt: one failure leaves it stuck).
SERVICES = """
import json
import os
from pathlib import Path

import meshkit
from meshkit.saga import Saga, SqliteSagaStore, StepFailed

transfer = Saga("transfer")


@transfer.step(attempts=1)
async def debit(ctx):
    return {"debited": ctx.input["amount"]}


@debit.compensate(attempts=1)
async def credit(ctx):
    if ctx.attempt <= ctx.input.get("undo_failures", 0):
        raise RuntimeError("the bank is down")


@transfer.step(attempts=1)
async def deliver(ctx):
    if ctx.input.get("refuse"):
        raise StepFailed("out of stock", status=409)
    return {"delivered": True}


async def answer(send, status, body):
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] != "/transfers":
        await answer(send, 404, {"detail": "no such path"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    run = await runner.begin(transfer, json.loads(body))
    ended = await runner.wait(run.id, timeout=10)
    await answer(send, 200, {"id": ended.id, "status": ended.status})


service = meshkit.Service(app, name="bank")
runner = service.add_sagas(
    SqliteSagaStore(Path(os.environ["MESHKIT_DATA_DIR"]) / "sagas.sqlite3"), transfer
)
plain = meshkit.Service(app, name="plain")
"""


def meshkit(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    clean.pop("FORCE_COLOR", None)
    clean["COLUMNS"] = "200"  # tables on one line each
    return subprocess.run(
        [sys.executable, "-m", "meshkit", "sagas", *args, "-p", str(project)],
        capture_output=True,
        text=True,
        env=clean,
        timeout=60,
        check=False,
    )


class Bank:
    """The project, running; ``transfer`` begins a run on the first instance of ``bank``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.plane = free_port()
        directory.mkdir()
        (directory / "bank.py").write_text(SERVICES)
        (directory / "meshkit.toml").write_text(
            textwrap.dedent(f"""
                [control_plane]
                port = {self.plane}

                [services.bank]
                app = "bank:service"
                replicas = 2

                [services.plain]
                app = "bank:plain"
            """)
        )
        self.up = Up(directory)

    def instances(self, service: str) -> list[dict[str, Any]]:
        token = (self.directory / ".meshkit" / "token").read_text().strip()
        _, listed = http(
            "GET",
            f"http://127.0.0.1:{self.plane}/v1/registry/services/{service}",
            headers={"authorization": f"Bearer {token}"},
        )
        return listed["instances"]  # type: ignore[index,no-any-return]

    def transfer(self, **given: object) -> dict[str, Any]:
        instance = self.instances("bank")[0]
        url = f"http://{instance['host']}:{instance['port']}/transfers"
        status, run = http("POST", url, given)
        assert status == 200, run
        return run  # type: ignore[return-value]


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bank]:
    running = Bank(tmp_path_factory.mktemp("sagas") / "bank")
    try:
        running.up.wait_for("services are up", timeout=60)
        yield running
    finally:
        running.up.stop()


def test_a_stuck_run_is_listed_shown_and_retried(bank: Bank) -> None:
    """The operator's walk: find the stuck run, see which compensation failed, retry it."""
    completed = bank.transfer(amount=5)
    compensated = bank.transfer(amount=6, refuse=True)
    stuck = bank.transfer(amount=7, refuse=True, undo_failures=1)
    assert [completed["status"], compensated["status"], stuck["status"]] == [
        "completed",
        "compensated",
        "stuck",
    ]

    # Both replicas list the shared log's runs; each run is shown once.
    listed = meshkit(bank.directory, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    runs = json.loads(listed.stdout)
    assert [(run["id"], run["service"], run["status"]) for run in runs] == [
        (stuck["id"], "bank", "stuck"),
        (compensated["id"], "bank", "compensated"),
        (completed["id"], "bank", "completed"),
    ]
    table = meshkit(bank.directory, "list", "--status", "stuck")
    assert table.returncode == 0, table.stderr
    assert stuck["id"] in table.stdout
    assert completed["id"] not in table.stdout
    assert "compensation failed 1 times: the bank is down" in table.stdout
    assert re.search(r"just now|\d+[smhd] ago", table.stdout)  # when, relative to now
    assert meshkit(bank.directory, "list", "--status", "running").stdout.strip() == (
        "no running saga runs"
    )

    shown = meshkit(bank.directory, "show", stuck["id"])
    assert shown.returncode == 0, shown.stderr
    for text in ("stuck at step debit", "deliver: out of stock (409)", "compensation", "ms"):
        assert text in shown.stdout, (text, shown.stdout)
    detail = json.loads(meshkit(bank.directory, "show", stuck["id"], "--json").stdout)
    debit, deliver = detail["steps"]
    assert (debit["phase"], debit["undo_attempts"], debit["undo_error"]) == (
        "undoing",
        1,
        "the bank is down",
    )
    assert (deliver["phase"], deliver["error"]) == ("failed", "out of stock")

    retried = meshkit(bank.directory, "retry", stuck["id"])
    assert retried.returncode == 0, retried.stderr
    assert f"retried saga run {stuck['id']} (transfer) on bank-" in retried.stdout
    assert "now compensating" in retried.stdout

    def compensated_now() -> bool:
        shown = json.loads(meshkit(bank.directory, "show", stuck["id"], "--json").stdout)
        return shown["status"] == "compensated"  # type: ignore[no-any-return]

    wait_until(compensated_now, 20, "the retried run compensated")
    again = meshkit(bank.directory, "retry", stuck["id"])
    assert again.returncode == 2
    assert "is compensated, not stuck" in again.stderr


def test_unknown_runs_and_services_without_sagas_are_one_line(bank: Bank) -> None:
    unknown = meshkit(bank.directory, "show", "no-such-run")
    assert unknown.returncode == 2
    assert "no saga run 'no-such-run' in bank" in unknown.stderr
    plain = meshkit(bank.directory, "list", "--service", "plain")
    assert plain.returncode == 2
    assert "service 'plain' runs no sagas" in plain.stderr
    gone = meshkit(bank.directory, "list", "--service", "nothing")
    assert gone.returncode == 2
    assert "no instance of service 'nothing' is registered" in gone.stderr
    for result in (unknown, plain, gone):
        assert "Traceback" not in result.stderr


def test_a_listing_without_an_instance_s_answer_says_so_and_fails(bank: Bank) -> None:
    """A stopped instance is named; the others' runs are listed; the exit status is 1."""
    bank.transfer(amount=3)
    pid = int(bank.instances("plain")[0]["metadata"]["pid"])
    os.kill(pid, signal.SIGSTOP)
    try:
        listed = meshkit(bank.directory, "list")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert listed.returncode == 1
    assert "plain-1" in listed.stderr
    assert "did not answer" in listed.stderr
    assert "completed" in listed.stdout


def test_a_project_not_running_says_how_to_run_it(tmp_path: Path) -> None:
    directory = tmp_path / "idle"
    directory.mkdir()
    (directory / "meshkit.toml").write_text(f"[control_plane]\nport = {free_port()}\n")
    (directory / ".meshkit").mkdir()
    (directory / ".meshkit" / "token").write_text("idle-token-0123456789abcdef\n")
    result = meshkit(directory, "list")
    assert result.returncode == 1
    assert "running?)" in result.stderr
    assert "meshkit up" in result.stderr
    assert "Traceback" not in result.stderr

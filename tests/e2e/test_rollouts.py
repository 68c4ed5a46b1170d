"""``meshkit deploy`` on a running project: a rolling update, a bad canary rolled back by its
analysis, a good one promoted, a blue-green switch; under load through the gateway."""

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
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.testing.servers import backend_missing, free_port

from .conftest import Prometheus, Up, http, wait_until

APP = """
import os
import random

from fastapi import FastAPI, HTTPException

import meshkit

app = FastAPI()
service = meshkit.Service(app, name="echo")
FAILURE_RATE = float(os.environ.get("ECHO_FAILURE_RATE", "0"))


@app.get("/hello")
async def hello() -> dict[str, str]:
    if random.random() < FAILURE_RATE:
        raise HTTPException(500, "failing on purpose")
    return {"version": service.version}
"""

PROJECT = """
[project]
name = "rollouts"

[control_plane]
port = {control}

[services.echo]
app = "echo:service"
version = "1"
replicas = 2
ttl = 3
{deploy}

[gateway]
port = {gateway}
anonymous_rate = 10000
anonymous_burst = 10000

[[gateway.routes]]
path = "/api/echo"
service = "echo"
strip = "/api/echo"
auth = "none"
"""


class Project:
    """A project of one service behind the gateway, run by ``meshkit up``."""

    def __init__(self, directory: Path, deploy: str = "") -> None:
        self.directory = directory
        (directory / "echo.py").write_text(APP)
        self.gateway_port, self.control_port = free_port(), free_port()
        self.text = PROJECT.format(
            control=self.control_port, gateway=self.gateway_port, deploy=deploy
        )
        self.config = directory / "meshkit.toml"
        self.config.write_text(self.text)
        self.up = Up(directory)
        self.up.wait_for("services are up", 90)

    def change(self, version: str, env: str = "") -> None:
        """The service's table as a person edits it: a new version (and environment)."""
        text = self.text.replace('version = "1"', f'version = "{version}"\n{env}')
        self.config.write_text(text)

    def meshkit(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [sys.executable, "-m", "meshkit", *args, "-p", str(self.directory)],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as expired:
            output = expired.stdout.decode() if isinstance(expired.stdout, bytes) else ""
            meshkit_up = "\n".join(self.up.lines[-60:])
            pytest.fail(f"meshkit {' '.join(args)} took over {timeout} s:\n{output}\n{meshkit_up}")

    def status(self) -> dict[str, object]:
        result = self.meshkit("rollout", "status", "echo", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]


class Load:
    """Requests through the gateway, one every 10 ms, until stopped: their statuses and the
    versions that answered."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/api/echo/hello"
        self.statuses: Counter[int] = Counter()
        self.versions: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, body = http("GET", self.url)
            except OSError:
                status, body = 0, None
            self.statuses[status] += 1
            if status == 200 and isinstance(body, dict):
                self.versions.append(str(body["version"]))
            self._stop.wait(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.fixture
def project(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Project]:
    running = Project(tmp_path, getattr(request, "param", ""))
    try:
        yield running
    finally:
        running.up.stop()


def test_a_rolling_update_under_load_loses_no_request(project: Project) -> None:
    load = Load(project.gateway_port)
    time.sleep(1)  # noqa: TID251 (a real project: traffic before the rollout)
    project.change("2", 'env = { GREETING = "hi" }')
    deployed = project.meshkit("deploy", "echo")
    time.sleep(1)  # noqa: TID251 (traffic after it)
    load.stop()
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "rolling rollout of echo began: 1 -> 2" in deployed.stdout
    assert "completed" in deployed.stdout
    assert set(load.statuses) == {200}, load.statuses
    assert sum(load.statuses.values()) > 100
    assert set(load.versions[-20:]) == {"2"}
    record = project.status()
    assert record["rollout"]["phase"] == "completed"  # type: ignore[index]
    (echo,) = [s for s in project.up.status()["services"] if s["name"] == "echo"]  # type: ignore[union-attr]
    assert [(i["version"], i["healthy"]) for i in echo["instances"]] == [("2", True)] * 2
    again = project.meshkit("deploy", "echo")
    assert again.returncode == 1
    assert "nothing to roll out" in again.stderr

    # Every transition is a log record of the control plane, with the others' logs.
    def logged() -> str:
        found = project.meshkit("logs", "meshkit-control-plane", "--grep", "rollout 1 of echo")
        return found.stdout if "completed" in found.stdout else ""

    wait_until(logged, 10, "the rollout's transitions in meshkit logs")
    assert "rolling rollout of echo began: 1 -> 2" in logged()
    # ... and the rollout is a trace, its id in the status.
    shown = project.meshkit("rollout", "status", "echo")
    found = re.search(r"trace  ([0-9a-f]{32})", shown.stdout)
    assert found is not None, shown.stdout

    def drawn() -> str:
        trace = project.meshkit("traces", "show", found.group(1))
        return trace.stdout if trace.returncode == 0 else ""

    wait_until(drawn, 10, "the rollout's trace")
    assert "rolling rollout of echo" in drawn()


CANARY = """
[services.echo.deploy]
strategy = "canary"
steps = [50]
interval = 4
failure_limit = 1
analysis = { min_requests = 10 }
"""


@pytest.mark.parametrize("project", [CANARY], indirect=True)
def test_a_bad_canary_is_rolled_back_by_its_analysis_and_a_good_one_promoted(
    project: Project,
) -> None:
    load = Load(project.gateway_port)
    project.change("2", 'env = { ECHO_FAILURE_RATE = "0.5" }')
    bad = project.meshkit("deploy", "echo")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "traffic: 50% to the candidate" in bad.stdout
    assert re.search(r"analysis failed: success: \d+\.\d+% succeeded", bad.stdout), bad.stdout
    assert "rolled-back" in bad.stdout
    time.sleep(1)  # noqa: TID251 (traffic after the rollback)
    mark = len(load.versions)
    time.sleep(1)  # noqa: TID251
    assert set(load.versions[mark:]) == {"1"}
    # Only the canary's share failed, and only while it ran.
    failed = load.statuses[500] + load.statuses[502]
    assert 0 < failed < sum(load.statuses.values()) / 2
    project.change("3")
    good = project.meshkit("deploy", "echo")
    load.stop()
    assert good.returncode == 0, good.stdout + good.stderr
    assert "analysis passed" in good.stdout
    assert set(load.versions[-20:]) == {"3"}


@pytest.mark.parametrize(
    "project", ['[services.echo.deploy]\nstrategy = "blue-green"\nkeep = 2\n'], indirect=True
)
def test_blue_green_switches_at_once_and_loses_no_request(project: Project) -> None:
    load = Load(project.gateway_port)
    project.change("2")
    deployed = project.meshkit("deploy", "echo")
    load.stop()
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "traffic: 100% to the candidate" in deployed.stdout
    assert set(load.statuses) == {200}, load.statuses
    # One switch: once version 2 answered, version 1 never did again.
    first = load.versions.index("2")
    assert set(load.versions[first:]) == {"2"}


def test_a_rollout_is_refused_when_it_cannot_be_made(project: Project) -> None:
    """An invalid definition, a canary without a new version, a second rollout at once:
    each a clear message, nothing changed."""
    project.config.write_text(project.text.replace('app = "echo:service"', 'app = "echo"'))
    invalid = project.meshkit("deploy", "echo")
    assert invalid.returncode == 2
    assert "services.echo.app" in invalid.stderr
    # A canary of a changed definition that keeps its version.
    project.config.write_text(project.text.replace("ttl = 3", "ttl = 4") + CANARY)
    same_version = project.meshkit("deploy", "echo")
    assert same_version.returncode == 2
    assert "needs a new version" in same_version.stderr
    project.change("2")
    started = project.meshkit("deploy", "echo", "--detach")
    assert started.returncode == 0, started.stderr
    second = project.meshkit("deploy", "echo")
    assert second.returncode == 2
    assert "a rollout of echo is under way" in second.stderr


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


@pytest.mark.parametrize(
    "project",
    [CANARY.replace("steps = [50]", "steps = [50, 100]").replace("interval = 4", "interval = 3")],
    indirect=True,
)
def test_a_rollout_goes_on_after_the_driver_is_killed(project: Project) -> None:
    """kill -9 of meshkit up mid-canary: every instance it ran goes with it, and the next
    meshkit up runs the version from before the rollout and takes the rollout to its end."""
    load = Load(project.gateway_port)
    project.change("2")
    assert project.meshkit("deploy", "echo", "--detach").returncode == 0
    wait_until(
        lambda: project.status()["rollout"]["weight"] == 50,  # type: ignore[index]
        60,
        "the canary to take half the traffic",
    )
    table = json.loads((project.directory / ".meshkit" / "processes.json").read_text())
    pids = [p["pid"] for p in table["processes"] if p["pid"]]
    os.kill(project.up.process.pid, signal.SIGKILL)
    project.up.stop()  # gone already: this only reaps it
    wait_until(lambda: not any(_alive(pid) for pid in pids), 15, "every child to be gone")
    project.up = Up(project.directory)
    project.up.wait_for("services are up", 90)
    watched = project.meshkit("rollout", "status", "echo", "--watch")
    time.sleep(1)  # noqa: TID251 (traffic after the rollout)
    load.stop()
    assert watched.returncode == 0, watched.stderr
    record = project.status()
    assert record["rollout"]["phase"] == "completed", watched.stdout  # type: ignore[index]
    assert set(load.versions[-20:]) == {"2"}


def test_a_bad_canary_is_rolled_back_from_prometheus_s_figures(
    project: Project, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The same analysis as PromQL against a real Prometheus scraping the instances through
    the control plane's discovery."""
    binary = shutil.which("prometheus")
    if binary is None:
        backend_missing("prometheus", "install Debian's package: apt-get install prometheus")
    token = (project.directory / ".meshkit" / "token").read_text().strip()
    prometheus = Prometheus(
        binary,
        tmp_path_factory.mktemp("prometheus"),
        control_port=project.control_port,
        token=token,
    )
    try:
        wait_until(prometheus.ready, 30, "Prometheus ready")
        load = Load(project.gateway_port)
        wait_until(
            lambda: prometheus.query('up{service="echo"} == 1'), 30, "echo scraped by Prometheus"
        )
        url = f"http://127.0.0.1:{prometheus.port}"
        canary = CANARY.replace("interval = 4", "interval = 5").replace(
            "analysis = { min_requests = 10 }",
            f'analysis = {{ min_requests = 10, prometheus = "{url}" }}',
        )
        project.change("2", 'env = { ECHO_FAILURE_RATE = "0.5" }')
        project.config.write_text(project.config.read_text() + canary)
        bad = project.meshkit("deploy", "echo")
        load.stop()
    finally:
        prometheus.stop()
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert re.search(r"analysis failed: success: \d+\.\d+% succeeded", bad.stdout), bad.stdout

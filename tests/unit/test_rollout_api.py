"""The control plane's rollouts: kept across restarts, one under way per service, fenced writes,
commands, and clear refusals."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from meshkit.control import ControlPlane, RolloutRecord, rollout_trace_id
from meshkit.http import HTTPClient
from meshkit.policy import AnalysisConfig, CanaryConfig, Phase, Rollout, Window, judge

TOKEN = "unit-test-token-0123456789"


def rollout(service: str = "payments") -> dict[str, Any]:
    made = Rollout(
        service=service,
        config=CanaryConfig(steps=(10, 100)),
        stable_version="1.0.0",
        candidate_version="1.1.0",
        stable_replicas=1,
        replicas=1,
        started_at=1000.0,
    )
    return msgspec.to_builtins(made)  # type: ignore[no-any-return]


def create_body(service: str = "payments") -> bytes:
    return msgspec.json.encode(
        {"rollout": rollout(service), "stable": {"version": "1.0.0"}, "candidate": {"x": 1}}
    )


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    async with ControlPlane(data_dir=tmp_path, token=TOKEN, port=0) as control:
        yield control


async def call(
    plane: ControlPlane, method: str, target: str, body: bytes = b""
) -> tuple[int, dict[str, Any]]:
    assert plane.address is not None
    host, port = plane.address
    headers = [(b"authorization", f"Bearer {TOKEN}".encode())]
    async with HTTPClient() as client:
        response = await client.request(method, host, port, target, headers=headers, body=body)
    return response.status, response.json() if response.body else {}


async def test_a_rollout_is_created_listed_and_kept_across_a_restart(tmp_path: Path) -> None:
    plane = ControlPlane(data_dir=tmp_path, token=TOKEN, port=0)
    await plane.start()
    try:
        status, created = await call(plane, "POST", "/v1/rollouts", create_body())
        assert status == 201
        assert (created["version"], created["rollout"]["phase"]) == (1, "progressing")
        assert created["candidate"] == {"x": 1}
        assert [line["text"] for line in created["history"]] == [
            "canary rollout of payments began: 1.0.0 -> 1.1.0"
        ]
        await call(plane, "POST", "/v1/rollouts", create_body("users"))
        status, listed = await call(plane, "GET", "/v1/rollouts?service=payments")
        assert [r["rollout"]["service"] for r in listed["rollouts"]] == ["payments"]
    finally:
        await plane.aclose()
    again = ControlPlane(data_dir=tmp_path, token=TOKEN, port=0)
    await again.start()
    try:
        status, listed = await call(again, "GET", "/v1/rollouts?active=true")
        assert [r["rollout"]["service"] for r in listed["rollouts"]] == ["users", "payments"]
        assert (await call(again, "GET", f"/v1/rollouts/{created['id']}"))[1] == created
    finally:
        await again.aclose()


async def test_one_rollout_of_a_service_at_a_time(plane: ControlPlane) -> None:
    assert (await call(plane, "POST", "/v1/rollouts", create_body()))[0] == 201
    status, answer = await call(plane, "POST", "/v1/rollouts", create_body())
    assert status == 409
    assert "a rollout of payments is under way" in answer["detail"]
    assert "meshkit rollout abort payments" in answer["detail"]
    # Once it has ended, the next one may begin.
    assert (await call(plane, "POST", "/v1/rollouts/payments/abort"))[0] == 200
    _, record = await call(plane, "GET", "/v1/rollouts/1")
    done = msgspec.convert(record["rollout"], Rollout)
    finished = msgspec.to_builtins(
        msgspec.structs.replace(done, phase=Phase.ROLLED_BACK, finished_at=2000.0)
    )
    step = msgspec.json.encode({"version": record["version"], "rollout": finished})
    assert (await call(plane, "PUT", "/v1/rollouts/1", step))[0] == 200
    assert (await call(plane, "POST", "/v1/rollouts", create_body()))[0] == 201


async def test_a_write_from_a_stale_version_is_refused(plane: ControlPlane) -> None:
    """The driver and a person's command both write: neither undoes the other."""
    _, created = await call(plane, "POST", "/v1/rollouts", create_body())
    assert (await call(plane, "POST", "/v1/rollouts/payments/pause"))[1]["rollout"]["paused"]
    stale = msgspec.json.encode({"version": created["version"], "rollout": created["rollout"]})
    status, answer = await call(plane, "PUT", f"/v1/rollouts/{created['id']}", stale)
    assert status == 409
    assert "changed meanwhile" in answer["detail"]
    _, now = await call(plane, "GET", f"/v1/rollouts/{created['id']}")
    assert now["rollout"]["paused"] is True
    assert [line["text"] for line in now["history"]][-1] == "paused"


async def test_commands_apply_or_say_why_not(plane: ControlPlane) -> None:
    await call(plane, "POST", "/v1/rollouts", create_body())
    status, resumed = await call(plane, "POST", "/v1/rollouts/payments/resume")
    assert status == 409
    assert "is not paused" in resumed["detail"]
    status, aborted = await call(plane, "POST", "/v1/rollouts/payments/abort")
    assert (status, aborted["rollout"]["phase"]) == (200, "rolling-back")
    assert aborted["history"][-1]["text"] == "rolling-back (aborted)"
    status, again = await call(plane, "POST", "/v1/rollouts/payments/abort")
    assert status == 409
    assert "it is rolling-back" in again["detail"]
    status, unknown = await call(plane, "POST", "/v1/rollouts/payments/explode")
    assert status == 400
    assert unknown["errors"][0]["field"] == "command"
    status, nobody = await call(plane, "POST", "/v1/rollouts/users/pause")
    assert status == 404
    assert "users has never been rolled out" in nobody["detail"]


@pytest.mark.parametrize(
    ("method", "target", "body", "status", "field"),
    [
        ("POST", "/v1/rollouts", b"{", 400, "body"),
        ("POST", "/v1/rollouts", b'{"rollout": {}, "stable": {}}', 400, "rollout.service"),
        ("GET", "/v1/rollouts?limit=0", b"", 400, "limit"),
        ("GET", "/v1/rollouts?colour=red", b"", 400, "colour"),
        ("GET", "/v1/rollouts/abc", b"", 400, "id"),
        ("GET", "/v1/rollouts/99", b"", 404, None),
        ("DELETE", "/v1/rollouts", b"", 405, None),
        ("GET", "/v1/rollouts/payments/pause", b"", 405, None),
    ],
)
async def test_bad_requests_are_refused_clearly(
    plane: ControlPlane, method: str, target: str, body: bytes, status: int, field: str | None
) -> None:
    got, answer = await call(plane, method, target, body)
    assert got == status, answer
    assert answer["status"] == status
    if field is not None:
        assert [error["field"] for error in answer["errors"]] == [field]


async def test_an_analysis_of_nothing_is_kept_and_read_back(plane: ControlPlane) -> None:
    """A window without requests has no p99 (None, not NaN: JSON has no NaN), and the record
    holding it reads back whole."""
    _, created = await call(plane, "POST", "/v1/rollouts", create_body())
    empty = Window(requests=0, failures=0, p99=None)
    analysis = judge(empty, empty, AnalysisConfig(), 1010.0)
    stepped = msgspec.structs.replace(
        msgspec.convert(created["rollout"], Rollout), step=0, analyses=(analysis,)
    )
    body = msgspec.json.encode({"version": created["version"], "rollout": stepped})
    status, saved = await call(plane, "PUT", f"/v1/rollouts/{created['id']}", body)
    assert status == 200, saved
    _, read = await call(plane, "GET", f"/v1/rollouts/{created['id']}")
    assert msgspec.convert(read["rollout"], Rollout).analyses == (analysis,)
    assert read["history"][-1]["text"].startswith("analysis failed: only 0 requests")


async def test_a_rollout_is_a_trace_in_the_plane_s_store(plane: ControlPlane) -> None:
    """A span per transition as it happens, and the root, from start to end, once it ends:
    meshkit traces show draws it."""
    _, created = await call(plane, "POST", "/v1/rollouts", create_body())
    await call(plane, "POST", "/v1/rollouts/payments/abort")
    _, record = await call(plane, "GET", f"/v1/rollouts/{created['id']}")
    ended = msgspec.structs.replace(
        msgspec.convert(record["rollout"], Rollout), phase=Phase.ROLLED_BACK, finished_at=1010.0
    )
    body = msgspec.json.encode({"version": record["version"], "rollout": ended})
    _, finished = await call(plane, "PUT", f"/v1/rollouts/{created['id']}", body)
    assert plane.telemetry is not None
    plane.telemetry.flush()
    trace = plane.telemetry.trace(rollout_trace_id(msgspec.convert(finished, RolloutRecord)))
    assert trace is not None
    (root,) = [span for span in trace.spans if not span.parent_span_id]
    assert (root.name, root.service, root.status) == (
        "canary rollout of payments",
        "meshkit-control-plane",
        "error",
    )
    assert root.status_message == "aborted"
    lines = [line["text"] for line in finished["history"]]
    children = [span.name for span in trace.spans if span.parent_span_id == root.span_id]
    assert sorted(children) == sorted(lines)

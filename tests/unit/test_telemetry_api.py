"""The control plane's OTLP receiver and telemetry queries over HTTP, in process."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.rpc import status_pb2  # type: ignore[import-untyped]
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from meshkit.control import ControlPlane

from .test_observe_otlp import SPAN, TRACE, sdk_spans, traces_json

TOKEN = "telemetry-api-token-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}
PROTOBUF = {**AUTH, "content-type": "application/x-protobuf"}
JSON = {**AUTH, "content-type": "application/json"}


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[tuple[ControlPlane, httpx.AsyncClient]]:
    control = ControlPlane(data_dir=tmp_path, token=TOKEN, port=0)
    _, port = await control.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            yield control, client
    finally:
        await control.aclose()


def flushed(control: ControlPlane) -> None:
    assert control.telemetry is not None
    control.telemetry.flush()


async def test_spans_sent_as_protobuf_come_back_from_the_queries(
    plane: tuple[ControlPlane, httpx.AsyncClient],
) -> None:
    """An SDK's export is answered with an empty response and is then listed and shown."""
    control, client = plane
    spans = sdk_spans()
    answer = await client.post(
        "/v1/traces", content=encode_spans(spans).SerializeToString(), headers=PROTOBUF
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/x-protobuf"
    assert answer.content == b""
    flushed(control)
    listing = (await client.get("/v1/query/traces", headers=AUTH)).json()
    (summary,) = listing["traces"]
    assert (summary["service"], summary["name"], summary["spans"]) == ("orders", "POST /orders", 2)
    assert summary["error"] is True
    trace = (await client.get(f"/v1/query/traces/{summary['trace_id']}", headers=AUTH)).json()
    assert [s["name"] for s in trace["spans"]] == ["POST /orders", "charge"]
    child = trace["spans"][1]
    assert (child["status"], child["status_message"], child["kind"]) == (
        "error",
        "card declined",
        "internal",
    )
    assert child["events"][0]["attributes"] == {"amount": 12.5, "attempt": 2}


async def test_gzipped_json_with_a_bad_span_is_a_partial_success(
    plane: tuple[ControlPlane, httpx.AsyncClient],
) -> None:
    """gzip is inflated; the malformed span is counted in partialSuccess, the good one kept."""
    control, client = plane
    body = traces_json(
        {"traceId": TRACE, "spanId": SPAN, "name": "kept"},
        {"traceId": TRACE, "spanId": "short", "name": "bad"},
    )
    answer = await client.post(
        "/v1/traces",
        content=gzip.compress(body),
        headers={**JSON, "content-encoding": "gzip"},
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["partialSuccess"]["rejectedSpans"] == "1"
    flushed(control)
    trace = (await client.get(f"/v1/query/traces/{TRACE.lower()}", headers=AUTH)).json()
    assert [s["name"] for s in trace["spans"]] == ["kept"]


async def test_logs_are_taken_and_queried(plane: tuple[ControlPlane, httpx.AsyncClient]) -> None:
    """Log records sent as JSON come back filtered by level and trace, with a cursor."""
    control, client = plane
    records = [
        {"timeUnixNano": "1", "severityNumber": 9, "body": {"stringValue": "placed"}},
        {
            "timeUnixNano": "2",
            "severityNumber": 17,
            "body": {"stringValue": "declined"},
            "traceId": TRACE,
        },
    ]
    body = {"resourceLogs": [{"scopeLogs": [{"logRecords": records}]}]}
    answer = await client.post("/v1/logs", content=json.dumps(body), headers=JSON)
    assert (answer.status_code, answer.json()) == (200, {})
    flushed(control)
    page = (await client.get("/v1/query/logs?level=error", headers=AUTH)).json()
    assert [r["body"] for r in page["logs"]] == ["declined"]
    assert page["logs"][0]["severity"] == "ERROR"
    page = (await client.get(f"/v1/query/logs?trace_id={TRACE}", headers=AUTH)).json()
    assert [r["body"] for r in page["logs"]] == ["declined"]
    after = (await client.get(f"/v1/query/logs?after={page['cursor']}", headers=AUTH)).json()
    assert after == {"logs": [], "cursor": page["cursor"]}


async def test_the_token_is_required(plane: tuple[ControlPlane, httpx.AsyncClient]) -> None:
    """Exports and queries without the project's token are refused with 401."""
    _, client = plane
    export = await client.post(
        "/v1/traces", content=b"", headers={"content-type": "application/x-protobuf"}
    )
    assert export.status_code == 401
    query = await client.get("/v1/query/logs", headers={"authorization": "Bearer wrong"})
    assert query.status_code == 401


async def test_bad_exports_are_answered_with_a_status(
    plane: tuple[ControlPlane, httpx.AsyncClient],
) -> None:
    """400 for what does not decode, 415 for another media type, in the request's encoding."""
    _, client = plane
    answer = await client.post("/v1/traces", content=b"\xff\xff", headers=PROTOBUF)
    assert answer.status_code == 400
    status = status_pb2.Status.FromString(answer.content)
    assert status.code == 3
    assert "ExportTraceServiceRequest" in status.message
    answer = await client.post("/v1/logs", content=b"{oops", headers=JSON)
    assert answer.status_code == 400
    assert answer.json()["code"] == 3
    answer = await client.post(
        "/v1/traces", content=b"x", headers={**AUTH, "content-type": "text/plain"}
    )
    assert answer.status_code == 415
    answer = await client.post(
        "/v1/traces", content=b"not gzip", headers={**PROTOBUF, "content-encoding": "gzip"}
    )
    assert answer.status_code == 400


async def test_a_full_store_answers_503_with_retry_after(
    plane: tuple[ControlPlane, httpx.AsyncClient],
) -> None:
    """When the writer's queue is full the export is refused as retryable, and counted."""
    control, client = plane
    store = control.telemetry
    assert store is not None
    with store._changed:
        store._pending = store._max_pending  # as if a burst were still being written
    try:
        body = encode_spans(sdk_spans()).SerializeToString()
        answer = await client.post("/v1/traces", content=body, headers=PROTOBUF)
    finally:
        with store._changed:
            store._pending = 0
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"
    assert status_pb2.Status.FromString(answer.content).code == 14
    assert store.statistics().spans_refused == 2


@pytest.mark.parametrize(
    ("target", "field"),
    [
        ("/v1/query/traces?since=10x", "since"),
        ("/v1/query/traces?min_duration=fast", "min_duration"),
        ("/v1/query/traces?limit=0", "limit"),
        ("/v1/query/traces?errors=maybe", "errors"),
        ("/v1/query/traces?colour=red", "colour"),
        ("/v1/query/traces/not-a-trace", "trace_id"),
        ("/v1/query/logs?level=loud", "level"),
        ("/v1/query/logs?trace_id=123", "trace_id"),
        ("/v1/query/logs?after=-1", "after"),
        ("/v1/query/logs?limit=100000", "limit"),
        ("/v1/query/logs?limit=%C2%B2", "limit"),
        ("/v1/query/logs?after=%C2%B2", "after"),
        ("/v1/query/logs?after=99999999999999999999", "after"),
    ],
)
async def test_bad_query_parameters_are_problems_naming_them(
    plane: tuple[ControlPlane, httpx.AsyncClient], target: str, field: str
) -> None:
    """Each bad parameter is a 400 problem whose errors name it."""
    _, client = plane
    answer = await client.get(target, headers=AUTH)
    assert answer.status_code == 400
    assert answer.headers["content-type"].startswith("application/problem+json")
    problem: dict[str, Any] = answer.json()
    assert problem["errors"][0]["field"] == field


@pytest.mark.parametrize(
    "target",
    [
        "/v1/query/traces?since=99999999d",
        "/v1/query/traces?min_duration=99999999d",
        "/v1/query/logs?since=99999999d",
    ],
)
async def test_durations_beyond_the_stored_times_are_answered(
    plane: tuple[ControlPlane, httpx.AsyncClient], target: str
) -> None:
    """A duration longer than any nanosecond time SQLite holds is a query like another."""
    _, client = plane
    answer = await client.get(target, headers=AUTH)
    assert answer.status_code == 200


async def test_an_unknown_trace_is_a_404(plane: tuple[ControlPlane, httpx.AsyncClient]) -> None:
    """A well-formed id that is not kept is not found."""
    _, client = plane
    answer = await client.get(f"/v1/query/traces/{'ab' * 16}", headers=AUTH)
    assert answer.status_code == 404
    assert "no trace" in answer.json()["detail"]

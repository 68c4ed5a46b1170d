"""OpenTelemetry's own OTLP/HTTP exporters send to a real control plane; the API and the CLI
give the spans and logs back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from .conftest import start_control_plane, wait_until

TOKEN = "telemetry-e2e-token-0123456789ab"


class Exporting:
    """A service's tracer and logger, exporting to the plane with the official exporters."""

    def __init__(self, port: int, service: str) -> None:
        resource = Resource.create({"service.name": service, "service.instance.id": f"{service}-1"})
        headers = {"authorization": f"Bearer {TOKEN}"}
        base = f"http://127.0.0.1:{port}"
        self.tracing = TracerProvider(resource=resource)
        self.tracing.add_span_processor(
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{base}/v1/traces", headers=headers))
        )
        self.logging = LoggerProvider(resource=resource)
        self.logging.add_log_record_processor(
            SimpleLogRecordProcessor(OTLPLogExporter(endpoint=f"{base}/v1/logs", headers=headers))
        )
        self.tracer = self.tracing.get_tracer("test")
        self.logger = self.logging.get_logger("test")

    def log(self, body: str, severity: SeverityNumber = SeverityNumber.INFO) -> None:
        self.logger.emit(body=body, severity_number=severity, severity_text=severity.name)

    def close(self) -> None:
        self.tracing.shutdown()
        self.logging.shutdown()


@pytest.fixture
def project(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A project of no services, its control plane running: (directory, port)."""
    from meshkit.testing.servers import free_port

    port = free_port()
    (tmp_path / "meshkit.toml").write_text(f"[control_plane]\nport = {port}\n")
    data_dir = tmp_path / ".meshkit"
    data_dir.mkdir()
    (data_dir / "token").write_text(TOKEN + "\n")
    (data_dir / "token").chmod(0o600)
    plane = start_control_plane(data_dir, port, token=TOKEN)
    try:
        yield tmp_path, port
    finally:
        plane.terminate()
        plane.wait(timeout=20)


def meshkit(directory: Path, *args: str, columns: int = 200) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshkit", *args, "-p", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": str(columns)},
    )


def query(port: int, target: str) -> Any:
    answer = httpx.get(
        f"http://127.0.0.1:{port}{target}", headers={"authorization": f"Bearer {TOKEN}"}
    )
    answer.raise_for_status()
    return answer.json()


def place_an_order(gateway: Exporting, payments: Exporting) -> str:
    """A trace across two services whose payment fails, with a log line in each; its id."""
    with gateway.tracer.start_as_current_span("POST /orders", kind=SpanKind.SERVER) as root:
        gateway.log("order received")
        with payments.tracer.start_as_current_span("charge", kind=SpanKind.SERVER) as charge:
            payments.log("card declined", SeverityNumber.ERROR)
            charge.set_status(Status(StatusCode.ERROR, "declined"))
    return f"{root.get_span_context().trace_id:032x}"


def test_the_official_exporters_spans_and_logs_come_back(project: tuple[Path, int]) -> None:
    """Spans and logs sent by OpenTelemetry's exporters are listed, shown and queried."""
    directory, port = project
    gateway, payments = Exporting(port, "gateway"), Exporting(port, "payments")
    try:
        trace_id = place_an_order(gateway, payments)
    finally:
        gateway.close()
        payments.close()

    def stored() -> bool:
        traces = query(port, "/v1/query/traces")["traces"]
        logs = query(port, f"/v1/query/logs?trace_id={trace_id}")["logs"]
        return bool(traces) and traces[0]["spans"] == 2 and len(logs) == 2

    wait_until(stored, 20, "the spans and logs stored")
    (summary,) = query(port, "/v1/query/traces?service=payments&errors=true")["traces"]
    assert summary["trace_id"] == trace_id
    assert (summary["service"], summary["name"]) == ("gateway", "POST /orders")
    assert summary["services"] == ["gateway", "payments"]

    listed = meshkit(directory, "traces", "--json", "--service", "payments")
    assert listed.returncode == 0, listed.stderr
    assert [t["trace_id"] for t in json.loads(listed.stdout)] == [trace_id]

    table = meshkit(directory, "traces", columns=80)  # a small terminal
    assert table.returncode == 0, table.stderr
    assert trace_id in table.stdout  # whole, to copy into the commands below

    shown = meshkit(directory, "traces", "show", trace_id)
    assert shown.returncode == 0, shown.stderr
    assert "2 spans across 2 services" in shown.stdout
    lines = shown.stdout.splitlines()
    charge = next(line for line in lines if "charge" in line)
    assert "payments" in charge
    assert "error" in charge
    assert "  charge" in charge  # indented under its parent
    assert "█" in charge
    assert lines[lines.index(charge) + 1].strip() == "declined"  # its message, below it

    logs = meshkit(directory, "logs", "--trace", trace_id, "--json")
    assert logs.returncode == 0, logs.stderr
    records = [json.loads(line) for line in logs.stdout.splitlines()]
    assert [(r["service"], r["body"]) for r in records] == [
        ("gateway", "order received"),
        ("payments", "card declined"),
    ]
    errors = meshkit(directory, "logs", "payments", "--level", "error", "--since", "10m")
    assert errors.returncode == 0, errors.stderr
    assert "ERROR payments[payments-1]: card declined" in errors.stdout
    assert f"trace={trace_id}" in errors.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("logs", "--level", "loud"), "--level: must be one of trace, debug"),
        (("logs", "--since", "ten minutes"), "--since: must be a duration"),
        (("logs", "--trace", "xyz"), "--trace: must be a trace id of 32 hex digits"),
        (("logs", "--trace", "0" * 32), "--trace: all zeros is not a trace id"),
        (("traces", "--min-duration", "slow"), "--min-duration: must be a duration"),
        (("traces", "show", "ab" * 16), f"no trace {'ab' * 16} is kept"),
    ],
)
def test_bad_options_and_an_unknown_trace_are_one_line(
    project: tuple[Path, int], args: tuple[str, ...], message: str
) -> None:
    """A typo or an unknown trace ends the command with exit 2 and one line naming it."""
    directory, _ = project
    done = meshkit(directory, *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_follow_prints_new_lines_until_ctrl_c(project: tuple[Path, int]) -> None:
    """--follow prints the lines there, then each new one, and ends cleanly on SIGINT."""
    directory, port = project
    service = Exporting(port, "orders")
    try:
        service.log("before")
        wait_until(lambda: query(port, "/v1/query/logs")["logs"], 20, "the first line stored")
        command = [sys.executable, "-m", "meshkit", "logs", "--follow", "--json"]
        with subprocess.Popen(
            [*command, "-p", str(directory)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as follower:
            try:
                follow_until_stopped(follower, service)
            finally:
                if follower.poll() is None:
                    follower.kill()
    finally:
        service.close()


def follow_until_stopped(follower: subprocess.Popen[str], service: Exporting) -> None:
    lines: list[str] = []
    seen = threading.Condition()

    def read() -> None:
        assert follower.stdout is not None
        for line in follower.stdout:
            with seen:
                lines.append(json.loads(line)["body"])
                seen.notify_all()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    with seen:
        assert seen.wait_for(lambda: lines == ["before"], 20), lines
    service.log("after")
    with seen:
        assert seen.wait_for(lambda: lines == ["before", "after"], 20), lines
    follower.send_signal(signal.SIGINT)
    assert follower.wait(timeout=20) == 0
    reader.join(timeout=20)
    assert follower.stderr is not None
    assert "Traceback" not in follower.stderr.read()

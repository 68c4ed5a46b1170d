import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from meshkit.testing.servers import backend_missing

ROOT = Path(__file__).resolve().parent.parent


def run_quick(name: str, tmp_path: Path) -> list[dict[str, object]]:
    """Run ``python -m benchmarks.NAME --quick --json F``; its rows, checked for shape."""
    out = tmp_path / "rows.json"
    # A session of its own, so that on a timeout the benchmark and every
    # process it started (servers, load generators) are killed together.
    with subprocess.Popen(
        [sys.executable, "-m", f"benchmarks.{name}", "--quick", "--json", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as benchmark:
        try:
            _, stderr = benchmark.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(benchmark.pid, signal.SIGKILL)
            _, stderr = benchmark.communicate()
            raise AssertionError(f"benchmarks.{name} took over 300 s:\n{stderr}") from None
    assert benchmark.returncode == 0, stderr
    rows: list[dict[str, object]] = json.loads(out.read_text())
    for row in rows:
        assert isinstance(row["name"], str)
        assert isinstance(row["value"], float | int)
        assert isinstance(row["unit"], str)
        if "reference" in row:
            assert row["reference"] > 0  # type: ignore[operator]
            assert abs(row["ratio"] - row["value"] / row["reference"]) < 1e-9  # type: ignore[operator]
    return rows


def test_policy_benchmark_writes_its_rows_as_json(tmp_path: Path) -> None:
    """benchmarks.policies: a row per decision, in ns, beside limits, pybreaker and tenacity."""
    rows = run_quick("policies", tmp_path)
    assert len(rows) >= 10
    assert all(row["unit"] == "ns" and row["value"] > 0 for row in rows)  # type: ignore[operator]
    peers = {row.get("reference_name") for row in rows}
    assert {"limits moving window", "pybreaker", "tenacity"} <= peers


def test_client_benchmark_names_its_overhead_row(tmp_path: Path) -> None:
    """benchmarks.client compares with direct, httpx and aiohttp and has an overhead p50 row."""
    rows = run_quick("client", tmp_path)
    names = [str(row["name"]) for row in rows]
    assert any("overhead" in name and "p50" in name for name in names)
    peers = {row.get("reference_name") for row in rows}
    assert {"meshkit HTTPClient, direct", "httpx", "aiohttp"} <= peers


def test_registry_benchmark_names_its_cpu_row(tmp_path: Path) -> None:
    """benchmarks.registry reports the control plane's CPU share and kill-to-removal times."""
    rows = run_quick("registry", tmp_path)
    cpu = [row for row in rows if "cpu" in str(row["name"])]
    assert len(cpu) == 1
    assert cpu[0]["unit"] == "%"
    assert 0 < cpu[0]["value"] < 100  # type: ignore[operator]
    removal = [row for row in rows if "removal" in str(row["name"])]
    assert removal
    assert all(row["value"] > 0 for row in removal)  # type: ignore[operator]


def test_asgi_benchmark_compares_with_uvicorn_and_granian(tmp_path: Path) -> None:
    """benchmarks.asgi serves one route three ways and writes the comparison."""
    if shutil.which("wrk") is None:
        backend_missing("wrk", "install it with: apt-get install wrk")
    rows = run_quick("asgi", tmp_path)
    peers = {row.get("reference_name") for row in rows}
    assert peers == {"uvicorn (httptools, uvloop)", "granian standalone"}
    assert all(row["value"] > 0 for row in rows)  # type: ignore[operator]


def test_gateway_benchmark_puts_the_engine_beside_nginx_and_haproxy(tmp_path: Path) -> None:
    """benchmarks.gateway measures the engine, nginx and HAProxy in front of one backend."""
    for tool in ("wrk", "nginx", "haproxy"):
        if shutil.which(tool) is None:
            backend_missing(tool, f"install it with: apt-get install {tool}")
    rows = run_quick("gateway", tmp_path)
    by_name = {str(row["name"]): row for row in rows}
    for label in ("meshkit proxy engine (one routing filter)", "meshkit gateway (all filters)"):
        versus_nginx = by_name[f"{label} requests/s vs nginx"]
        assert versus_nginx["reference_name"] == "nginx (1 worker)"
        assert versus_nginx["value"] > 0  # type: ignore[operator]
        assert by_name[f"{label} peak RSS under load"]["unit"] == "MB"
        assert f"{label} at 1,000 req/s, p99 added" in by_name


def test_bus_benchmark_puts_each_backend_beside_its_raw_client(tmp_path: Path) -> None:
    """benchmarks.bus rates and times each backend end to end beside its engine's raw client."""
    for server in ("nats-server", "redis-server"):
        if shutil.which(server) is None:
            backend_missing(server, f"install it with: apt-get install {server}")
    rows = run_quick("bus", tmp_path)
    by_name = {str(row["name"]): row for row in rows}
    peers = {
        "embedded": "nats-py on JetStream (raw)",
        "jetstream": "nats-py on JetStream (raw)",
        "redis": "redis-py on Streams (raw)",
    }
    for backend, peer in peers.items():
        rate = by_name[f"{backend} end-to-end"]
        assert rate["unit"] == "msg/s"
        assert rate["value"] > 0  # type: ignore[operator]
        assert rate["reference_name"] == peer
        assert "ratio" in rate
        latencies = [by_name[f"{backend} at 1,000 msg/s, latency {m}"] for m in ("p50", "p99")]
        for latency in latencies:
            assert latency["unit"] == "ms"
            assert latency["reference_name"] == peer
        p50, p99 = (float(latency["value"]) for latency in latencies)  # type: ignore[arg-type]
        assert 0 < p50 <= p99 < 100
    # Both NATS backends are set beside the same raw run.
    assert (
        by_name["embedded end-to-end"]["reference"] == by_name["jetstream end-to-end"]["reference"]
    )
    both = by_name["sqlite raw write+read"]
    write = by_name["sqlite raw write"]
    for sqlite in (both, write):
        assert sqlite["unit"] == "msg/s"
        assert "reference" not in sqlite
    assert write["value"] >= both["value"] > 0  # type: ignore[operator]
    assert by_name["embedded end-to-end vs raw SQLite"]["reference"] == both["value"]


def test_saga_benchmark_puts_sagas_beside_dbos_and_the_shop_s_order(tmp_path: Path) -> None:
    """benchmarks.saga measures meshkit's sagas beside DBOS on SQLite and PostgreSQL,
    and the shop's order."""
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=2).close()
    except OSError:
        backend_missing(
            "PostgreSQL at 127.0.0.1:5432", "install it with: apt-get install postgresql"
        )
    rows = run_quick("saga", tmp_path)
    by_name = {str(row["name"]): row for row in rows}

    def value(name: str) -> float:
        return float(by_name[name]["value"])  # type: ignore[arg-type]

    for kind in ("sqlite", "postgres"):
        assert by_name[f"dbos {kind}"]["unit"] == "workflows/s"
        assert value(f"dbos {kind}") > 0
        assert by_name[f"dbos {kind} CPU per workflow"]["unit"] == "ms"
        assert by_name[f"saga {kind}"]["unit"] == "sagas/s"
        assert by_name[f"saga {kind}"]["reference"] == value(f"dbos {kind}")
        assert value(f"saga {kind}") > 0
    assert 0 < value("dbos sqlite p50 at 100/s") <= value("dbos sqlite p99 at 100/s")
    assert 0 < value("saga sqlite p50 at 100/s") <= value("saga sqlite p99 at 100/s")
    assert by_name["saga sqlite p99 at 100/s"]["reference"] == value("dbos sqlite p99 at 100/s")
    assert by_name["shop order through the gateway, 16 in flight"]["unit"] == "orders/s"
    assert 0 < value("shop order p50 at 20/s") <= value("shop order p99 at 20/s")


def test_observe_benchmark_names_the_gateway_tracing_rows(tmp_path: Path) -> None:
    """benchmarks.observe puts the gateway at 1% and 100% beside tracing off, spans exported."""
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            backend_missing(tool, f"install it with: apt-get install {tool}")
    rows = run_quick("observe", tmp_path)
    by_name = {str(row["name"]): row for row in rows}
    for share in ("1%", "100%"):
        row = by_name[f"gateway tracing {share}"]
        assert (row["unit"], row["reference_name"]) == ("req/s", "tracing off")
        assert row["reference"] == by_name["gateway tracing off: requests/s"]["value"]
    assert by_name["gateway tracing 100%: spans exported"]["value"] > 0  # type: ignore[operator]
    for name in ("sdk call unsampled", "sdk call traced"):
        row = by_name[name]
        assert (row["unit"], row["reference_name"]) == ("calls/s", "tracing off")
    assert by_name["otlp ingest"]["unit"] == "spans/s"
    assert by_name["otlp ingest"]["value"] > 0  # type: ignore[operator]
    assert by_name["otlp ingest at the shop's load"]["value"] > 0  # type: ignore[operator]
    assert by_name["control plane CPU at the shop's load"]["unit"] == "% of a core"

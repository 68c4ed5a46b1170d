"""What observability costs: the gateway and the SDK with tracing off and on; OTLP ingest.

    python -m benchmarks.observe [--json FILE] [--quick]

The gateway benchmark's set-up (``benchmarks.gateway``): one nginx backend
and the proxies on core 1, wrk (one thread, 50 connections) on core 0.
Three gateway processes, all filters on, differ only in tracing: off (no
telemetry at all), and sampling 1% and 100% of new traces, each sending
its spans as OTLP/HTTP JSON to a sink process (``benchmarks._otlp_sink``,
on core 0 beside wrk: it stands in for the control plane, which on one
machine would take CPU from whatever shares its core) that counts what it
receives, so the spans are really exported during the measurement. The
access log records are off in all three, so the figures are the
tracing's. nginx as a reverse proxy runs in the same rounds, as the
reference the gateway benchmark uses. Rounds take each target in turn,
each round starting one target further on, each gateway a fresh process
alone on its core; the median of five rounds of each is reported, with
the CPU time each gateway process used per request. Wall-clock figures on
this machine move by several percent between identical runs, more than
the 1% gateway's cost, so each gateway is also run under callgrind
(``benchmarks._callgrind``, where valgrind is installed): the user-space
instructions per request, which repeat within a fraction of a percent.

The SDK client's rows (``benchmarks._observe_sdk``): calls/s and CPU per
call with no tracer provider, with the SDK set up and the calls under an
unsampled parent, and with every call traced and exported as OTLP/HTTP
protobuf by OpenTelemetry's own exporter. Each runs in a process of its
own, since a process sets its provider once. The ingest rows
(``benchmarks._observe_ingest``): spans/s a control plane on one core
stores from OTLP/HTTP protobuf exports, and its CPU per span. Then the
shop under load (``benchmarks._saga_shop``: orders through the gateway, 16
at a time, every request traced): the spans a second its control plane
stores, and the CPU the control plane uses meanwhile (its registry and
broker's work included), as a share of one core.

Needs wrk and nginx, and valgrind for the instruction counts (Debian:
apt-get install wrk nginx valgrind).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import uvloop

from benchmarks._callgrind import instructions_per_request
from benchmarks._gateway_process import API_KEY
from benchmarks._load import median_run, wrk
from benchmarks._observe_ingest import measure_ingest
from benchmarks._observe_sdk import Measured
from benchmarks._report import Row, arguments, report
from benchmarks._saga_db import run_child
from benchmarks._saga_shop import orders, shop
from benchmarks.gateway import NGINX_BACKEND, NGINX_PROXY, config, cpu_seconds, running, worker
from meshkit._net import free_port

# The gateways measured: their name in the rows, and the sampling ratio (None: tracing off).
GATEWAYS = {"off": None, "1%": 0.01, "100%": 1.0}


def _sink_counts(port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=5) as answer:
        counts: dict[str, int] = json.loads(answer.read())
    return counts


def _measure(
    port: int, pid: int, sink: int, seconds: int, headers: dict[str, str]
) -> dict[str, float]:
    """wrk's figures for ``seconds`` on ``port``, the CPU ``pid`` used per request (us),
    and the spans the sink received meanwhile, per second."""
    before, spans_before = cpu_seconds(pid), _sink_counts(sink)["spans"]
    run = wrk(f"http://127.0.0.1:{port}/", seconds, headers=headers)
    run["cpu"] = (cpu_seconds(pid) - before) / (run["rps"] * seconds) * 1e6
    # Exported while the load ran (the last second's batch may land after).
    run["spans"] = (_sink_counts(sink)["spans"] - spans_before) / seconds
    return run


def _gateway_command(port: int, backend: int, sink: int, ratio: float | None) -> list[str]:
    """The gateway benchmark's gateway on ``port``: tracing off (``ratio`` None), or sampling."""
    return [
        sys.executable,
        "-m",
        "benchmarks._gateway_process",
        str(port),
        str(backend),
        *(() if ratio is None else (str(ratio), str(sink))),
    ]


def gateway_tracing_rows(*, seconds: int, rounds: int) -> list[Row]:
    """The gateway's requests/s and CPU per request, tracing off, at 1% and at 100%."""
    headers = {"x-api-key": API_KEY}
    with tempfile.TemporaryDirectory(prefix="meshkit-observe-bench-") as tmp, ExitStack() as stack:
        directory = Path(tmp)
        backend, nginx_port, sink = free_port(), free_port(), free_port()
        backend_conf = config(
            directory, "backend.conf", NGINX_BACKEND.format(dir=tmp, port=backend)
        )
        proxy_conf = config(
            directory, "proxy.conf", NGINX_PROXY.format(dir=tmp, port=nginx_port, upstream=backend)
        )
        stack.enter_context(running(["nginx", "-c", backend_conf], backend, 1))
        nginx = stack.enter_context(running(["nginx", "-c", proxy_conf], nginx_port, 1))
        stack.enter_context(
            running(
                [sys.executable, "-m", "benchmarks._otlp_sink", str(sink)], sink, 0, path="/count"
            )
        )
        wrk(f"http://127.0.0.1:{nginx_port}/", 1, headers=headers)  # warm up
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in ("nginx", *GATEWAYS)}
        order = ["nginx", *GATEWAYS]
        for number in range(rounds):
            # Each round starts one place further on, and runs each gateway in a
            # process of its own, started for it and alone on its core: with all
            # three alive at once, where a gateway stood was worth several
            # percent (two identical ones measured 4% apart in one run).
            shift = number % len(order)
            for name in order[shift:] + order[:shift]:
                if name == "nginx":
                    runs[name].append(_measure(nginx_port, worker(nginx), sink, seconds, headers))
                    continue
                port = free_port()
                command = _gateway_command(port, backend, sink, GATEWAYS[name])
                with running(command, port, 1, headers=headers) as gateway:
                    wrk(f"http://127.0.0.1:{port}/", 1, headers=headers)  # warm up
                    runs[name].append(_measure(port, gateway.pid, sink, seconds, headers))
        results = {name: median_run(found) for name, found in runs.items()}
        instructions: dict[str, float] = {}
        if shutil.which("valgrind") is not None:
            for name, ratio in GATEWAYS.items():
                port = free_port()
                command = _gateway_command(port, backend, sink, ratio)
                instructions[name] = instructions_per_request(
                    command, port, headers=headers, seconds=max(2, seconds * 2)
                )
        else:
            print("no valgrind: no instruction counts (apt-get install valgrind)", file=sys.stderr)
    off = results["off"]
    rows = [
        Row("nginx (1 worker): requests/s", results["nginx"]["rps"], "req/s"),
        Row("gateway tracing off: requests/s", off["rps"], "req/s"),
        Row("gateway tracing off: CPU per request", off["cpu"], "us"),
    ]
    if instructions:
        rows.append(
            Row("gateway tracing off: instructions per request", instructions["off"], "instr")
        )
    for name in ("1%", "100%"):
        found = results[name]
        rows.append(
            Row(f"gateway tracing {name}", found["rps"], "req/s", off["rps"], "tracing off")
        )
        rows.append(
            Row(
                f"gateway tracing {name}: CPU per request",
                found["cpu"],
                "us",
                off["cpu"],
                "tracing off",
            )
        )
        rows.append(Row(f"gateway tracing {name}: spans exported", found["spans"], "spans/s"))
        if instructions:
            rows.append(
                Row(
                    f"gateway tracing {name}: instructions per request",
                    instructions[name],
                    "instr",
                    instructions["off"],
                    "tracing off",
                )
            )
    return rows


def sdk_call_rows(*, seconds: float) -> list[Row]:
    """The SDK client's calls/s and CPU per call: tracing off, unsampled, and traced."""
    found = {
        mode: run_child("benchmarks._observe_sdk", [mode, str(seconds)], Measured, within=120)
        for mode in ("off", "unsampled", "on")
    }
    off = found["off"]
    rows = [
        Row("sdk call tracing off", off.calls_per_second, "calls/s"),
        Row("sdk call tracing off: CPU per call", off.cpu_us_per_call, "us"),
    ]
    for mode, name in (("unsampled", "unsampled"), ("on", "traced")):
        measured = found[mode]
        rows += [
            Row(
                f"sdk call {name}",
                measured.calls_per_second,
                "calls/s",
                off.calls_per_second,
                "tracing off",
            ),
            Row(
                f"sdk call {name}: CPU per call",
                measured.cpu_us_per_call,
                "us",
                off.cpu_us_per_call,
                "tracing off",
            ),
        ]
    traced = found["on"]
    rows.append(Row("sdk call traced: spans dropped", traced.spans_dropped, "spans"))
    return rows


def _stored_spans(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith('meshkit_telemetry_stored_records_total{signal="spans"}'):
                return float(line.split()[-1])
    raise RuntimeError("the control plane's /metrics has no stored spans count")


def shop_telemetry_rows(*, seconds: float) -> list[Row]:
    """The shop's orders/s under load, the spans/s its control plane stores, and its CPU."""
    with shop() as running:
        status = subprocess.run(
            [sys.executable, "-m", "meshkit", "status", "-p", str(running.directory), "--json"],
            capture_output=True,
            check=True,
            timeout=30,
        )
        plane = int(json.loads(status.stdout)["control_plane"]["pid"])
        spans, cpu = _stored_spans(running.control_port), cpu_seconds(plane)
        start = time.perf_counter()
        placed = orders(running, seconds)
        time.sleep(2)  # the last exports: queues send at least every second
        spans = _stored_spans(running.control_port) - spans
        cpu = cpu_seconds(plane) - cpu
        elapsed = time.perf_counter() - start
    return [
        Row("shop orders under load, traced", placed["rate"], "orders/s"),
        Row("otlp ingest at the shop's load", spans / elapsed, "spans/s"),
        Row("control plane CPU at the shop's load", cpu / elapsed * 100, "% of a core"),
    ]


def main() -> None:
    parser = arguments(__doc__.splitlines()[0] if __doc__ else "observability benchmark")
    parser.add_argument("--quick", action="store_true", help="one second each, to check it runs")
    args = parser.parse_args()
    missing = [tool for tool in ("wrk", "nginx") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(
            f"benchmarks.observe needs {', '.join(missing)}: apt-get install {' '.join(missing)}"
        )
    seconds, rounds = (1, 1) if args.quick else (5, 5)
    rows = gateway_tracing_rows(seconds=seconds, rounds=rounds)
    rows += sdk_call_rows(seconds=seconds)
    rows += uvloop.run(measure_ingest(quick=args.quick))
    rows += shop_telemetry_rows(seconds=seconds * 2)
    report("What observability costs", rows, args.json)


if __name__ == "__main__":
    main()

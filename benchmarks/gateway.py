"""The gateway and its engine beside nginx and HAProxy as reverse proxies.

    python -m benchmarks.gateway [--json FILE] [--quick] [--baseline REV]

One backend (nginx, one worker, a 12-byte answer) is reached (a) directly,
(b) through nginx as a one-worker reverse proxy with upstream keep-alive,
(c) through HAProxy with one thread, (d) through meshkit's proxy engine, one
process, with one routing filter, and (e) through the meshkit gateway, one
process, with every filter it has on: routes, API-key authentication, a
per-client rate limit that never trips, a circuit breaker per service,
per-instance ejection, retries and Prometheus metrics.
wrk (one thread, 50 connections) has core 0 to itself; the backend and the
proxy share core 1, so every proxy is measured with the same backend beside
it. Three rounds take each target in turn; the median round of each is
reported, with the CPU time each proxy process used per request (steadier
than requests/s on a shared machine). Then a paced client sends 1,000
requests a second, directly and through (b), (d) and (e), and the added
latency is the difference, nginx's being the reference (they take turns
within one run, so the machine's own stalls land on all alike); a sidecar
pair (the caller's outbound sidecar, then the callee's inbound one, each a
process of its own on core 1) takes its turn too, its added latency being
what a call between two services pays for the mesh.
Last, the peak resident memory of (d), (e) and the larger sidecar.
With ``--baseline REV`` the gateway as it was at git revision REV (its
``src`` and ``benchmarks`` taken with ``git archive``) is one more target in
the same rounds, so a change's cost per request is read beside the current
code's, under the same load and noise.

Needs wrk, nginx and haproxy (Debian: apt-get install wrk nginx haproxy).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from benchmarks._gateway_process import API_KEY
from benchmarks._load import median_run, paced, pinned, stop, wait_answering, wrk
from benchmarks._report import Row, arguments, report
from meshkit._net import free_port

NGINX_BACKEND = """
worker_processes 1; daemon off; pid {dir}/backend.pid; error_log {dir}/backend.err;
events {{ worker_connections 4096; }}
http {{
  access_log off; client_body_temp_path {dir}/b1;
  server {{ listen 127.0.0.1:{port}; keepalive_requests 1000000;
    location / {{ return 200 "hello world\\n"; }} }}
}}
"""
NGINX_PROXY = """
worker_processes 1; daemon off; pid {dir}/proxy.pid; error_log {dir}/proxy.err;
events {{ worker_connections 4096; }}
http {{
  access_log off; client_body_temp_path {dir}/b2; proxy_temp_path {dir}/p2;
  upstream backend {{ server 127.0.0.1:{upstream}; keepalive 256; }}
  server {{ listen 127.0.0.1:{port}; keepalive_requests 1000000;
    location / {{ proxy_pass http://backend; proxy_http_version 1.1;
                 proxy_set_header Connection ""; }} }}
}}
"""
HAPROXY = """
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend front
  bind 127.0.0.1:{port}
  default_backend back
backend back
  http-reuse always
  server one 127.0.0.1:{upstream}
"""


@contextmanager
def running(
    command: list[str],
    port: int,
    core: int,
    *,
    headers: dict[str, str] | None = None,
    path: str = "/",
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        pinned(command, core), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    try:
        wait_answering(f"http://127.0.0.1:{port}{path}", headers=headers)
        yield process
    finally:
        stop(process, signal.SIGTERM if command[0] != "nginx" else signal.SIGQUIT)


def config(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.write_text(text)
    return str(path)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time the process has used (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker(process: subprocess.Popen[bytes]) -> int:
    """The pid that serves: nginx's one worker, else the process itself."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    return int(children[0]) if children else process.pid


# The meshkit processes measured: the bare engine, and the gateway with its filters.
MESHKIT = {
    "engine": ("meshkit proxy engine (one routing filter)", "benchmarks._proxy_engine"),
    "gateway": ("meshkit gateway (all filters)", "benchmarks._gateway_process"),
}


def baseline_tree(revision: str, directory: Path) -> dict[str, str]:
    """The code of ``revision`` unpacked under ``directory``; the environment to run it with."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", revision, "src", "benchmarks"],  # noqa: S607
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise SystemExit(f"--baseline {revision}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive.stdout, check=True)  # noqa: S607
    return {**os.environ, "PYTHONPATH": f"{directory}:{directory / 'src'}"}


def main() -> None:
    parser = arguments(__doc__.splitlines()[0] if __doc__ else "gateway benchmark")
    parser.add_argument("--quick", action="store_true", help="one second each, to check it runs")
    parser.add_argument(
        "--baseline", metavar="REV", help="also run the gateway as it was at this git revision"
    )
    args = parser.parse_args()
    missing = [tool for tool in ("wrk", "nginx", "haproxy") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(
            f"benchmarks.gateway needs {', '.join(missing)}: apt-get install {' '.join(missing)}"
        )
    seconds, rounds, paced_seconds = (1, 1, 1) if args.quick else (5, 3, 10)
    # The gateway checks the key; the others ignore the header.
    headers = {"x-api-key": API_KEY}
    with tempfile.TemporaryDirectory(prefix="meshkit-gateway-bench-") as tmp:
        directory = Path(tmp)
        backend = free_port()
        nginx_backend = config(
            directory, "backend.conf", NGINX_BACKEND.format(dir=tmp, port=backend)
        )
        ports = {name: free_port() for name in ("nginx", "haproxy", *MESHKIT)}
        nginx = NGINX_PROXY.format(dir=tmp, port=ports["nginx"], upstream=backend)
        haproxy = HAPROXY.format(port=ports["haproxy"], upstream=backend)
        with ExitStack() as stack:
            stack.enter_context(running(["nginx", "-c", nginx_backend], backend, 1))
            peers = {
                "nginx": stack.enter_context(
                    running(
                        ["nginx", "-c", config(directory, "proxy.conf", nginx)], ports["nginx"], 1
                    )
                ),
                "haproxy": stack.enter_context(
                    running(
                        ["haproxy", "-f", config(directory, "h.cfg", haproxy)], ports["haproxy"], 1
                    )
                ),
            }
            processes = {
                name: stack.enter_context(
                    running(
                        [sys.executable, "-m", module, str(ports[name]), str(backend)],
                        ports[name],
                        1,
                        headers=headers,
                    )
                )
                for name, (_, module) in MESHKIT.items()
            }
            if args.baseline:
                old = directory / "baseline"
                old.mkdir()
                ports["baseline"] = free_port()
                processes["baseline"] = stack.enter_context(
                    running(
                        [
                            sys.executable,
                            "-m",
                            MESHKIT["gateway"][1],
                            str(ports["baseline"]),
                            str(backend),
                        ],
                        ports["baseline"],
                        1,
                        headers=headers,
                        env=baseline_tree(args.baseline, old),
                    )
                )
            # The sidecar pair: the caller's sidecar (outbound) to the callee's (inbound).
            inbound, outbound = free_port(), free_port()
            pair = [
                stack.enter_context(
                    running(
                        [sys.executable, "-m", "benchmarks._sidecar_process", *arguments],
                        port,
                        1,
                        path=path,
                    )
                )
                for arguments, port, path in (
                    (("inbound", str(inbound), str(backend)), inbound, "/"),
                    (("outbound", str(outbound), str(inbound)), outbound, "/backend/"),
                )
            ]
            targets = {"direct": backend, **ports}
            for port in targets.values():
                wrk(f"http://127.0.0.1:{port}/", 1, headers=headers)  # warm up
            # Rounds, each target in turn: a neighbour's burst on this shared
            # machine then spoils one round of one target, not the comparison.
            # CPU time per request of each proxy: steadier than requests/s on a
            # shared machine, since time stolen by neighbours is not counted.
            serving = {name: worker(process) for name, process in {**peers, **processes}.items()}
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
            for _ in range(rounds):
                for name, port in targets.items():
                    pid = serving.get(name)
                    before = 0.0 if pid is None else cpu_seconds(pid)
                    run = wrk(f"http://127.0.0.1:{port}/", seconds, headers=headers)
                    if pid is not None:
                        run["cpu"] = (cpu_seconds(pid) - before) / (run["rps"] * seconds) * 1e6
                    runs[name].append(run)
            results = {name: median_run(found) for name, found in runs.items()}
            paced_targets = {
                "nginx": (targets["nginx"], "/"),
                **{name: (targets[name], "/") for name in MESHKIT},
                "sidecar pair": (outbound, "/backend/"),
                "direct": (backend, "/"),
            }
            for name, found in zip(
                paced_targets,
                paced(
                    list(paced_targets.values()),
                    rate=1000,
                    seconds=paced_seconds,
                    headers=headers,
                ),
                strict=True,
            ):
                results[f"{name} paced"] = found
            rss = {name: peak_rss_mb(process.pid) for name, process in processes.items()}
            baseline = results.get("baseline")
            rss["sidecar pair"] = max(peak_rss_mb(process.pid) for process in pair)
    rows = [Row("direct to the backend: requests/s", results["direct"]["rps"], "req/s")]
    peer_labels = (("nginx", "nginx (1 worker)"), ("haproxy", "HAProxy (1 thread)"))
    for peer, label in peer_labels:
        rows.append(Row(f"{label}: requests/s", results[peer]["rps"], "req/s"))
    for metric in ("p50", "p99"):
        added = results["nginx paced"][metric] - results["direct paced"][metric]
        rows.append(Row(f"nginx (1 worker) at 1,000 req/s, {metric} added", added, "ms"))
    for name, (label, _) in MESHKIT.items():
        metrics = (
            ("rps", "req/s", "requests/s"),
            ("p99", "ms", "latency p99"),
            ("cpu", "us", "CPU per request"),
        )
        for metric, unit, what in metrics:
            for peer, peer_label in peer_labels:
                rows.append(
                    Row(
                        f"{label} {what} vs {peer_label.split(' ')[0]}",
                        results[name][metric],
                        unit,
                        results[peer][metric],
                        peer_label,
                    )
                )
        for metric in ("p50", "p99"):
            added = results[f"{name} paced"][metric] - results["direct paced"][metric]
            rows.append(
                Row(
                    f"{label} at 1,000 req/s, {metric} vs direct",
                    results[f"{name} paced"][metric],
                    "ms",
                    results["direct paced"][metric],
                    "direct",
                )
            )
            # Beside nginx's own "added" row, not as its ratio: an added
            # latency near zero (or below it, in a noisy quick run) makes
            # no meaningful reference.
            rows.append(Row(f"{label} at 1,000 req/s, {metric} added", added, "ms"))
        rows.append(Row(f"{label} peak RSS under load", rss[name], "MB"))
    pair_label = "meshkit sidecar pair (outbound, then inbound)"
    for metric in ("p50", "p99"):
        paced_pair, paced_direct = results["sidecar pair paced"], results["direct paced"]
        rows.append(
            Row(
                f"{pair_label} at 1,000 req/s, {metric} vs direct",
                paced_pair[metric],
                "ms",
                paced_direct[metric],
                "direct",
            )
        )
        rows.append(
            Row(
                f"{pair_label} at 1,000 req/s, {metric} added",
                paced_pair[metric] - paced_direct[metric],
                "ms",
            )
        )
    rows.append(Row(f"{pair_label}: peak RSS of the larger", rss["sidecar pair"], "MB"))
    if baseline is not None:
        label, then = MESHKIT["gateway"][0], f"the gateway at {args.baseline}"
        for metric, unit, what in (
            ("cpu", "us", "CPU per request"),
            ("rps", "req/s", "requests/s"),
        ):
            rows.append(Row(f"{then}: {what}", baseline[metric], unit))
            rows.append(
                Row(
                    f"{label} {what} vs {then}",
                    results["gateway"][metric],
                    unit,
                    baseline[metric],
                    then,
                )
            )
    report("Reverse proxies in front of one nginx backend", rows, args.json)


if __name__ == "__main__":
    main()

"""The proxy engine beside nginx and HAProxy as reverse proxies: req/s, latency, memory.

    python -m benchmarks.gateway [--json FILE] [--quick]

One backend (nginx, one worker, a 12-byte answer) is reached (a) directly,
(b) through nginx as a one-worker reverse proxy with upstream keep-alive,
(c) through HAProxy with one thread, and (d) through meshkit's proxy engine,
one process, with one routing filter (the gateway's filters join it as they
are built). wrk (one thread, 50 connections) has core 0 to itself; the
backend and the proxy share core 1, so every proxy is measured with the same
backend beside it. Then a paced client sends 1,000 requests a second,
directly and through the engine, and the engine's added latency is the
difference. Last, the engine's peak resident memory.

Needs wrk, nginx and haproxy (Debian: apt-get install wrk nginx haproxy).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks._load import paced, pinned, wait_answering, wrk
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
def running(command: list[str], port: int, core: int) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        pinned(command, core), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_answering(f"http://127.0.0.1:{port}/")
        yield process
    finally:
        process.send_signal(signal.SIGTERM if command[0] != "nginx" else signal.SIGQUIT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def config(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.write_text(text)
    return str(path)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc")


def main() -> None:
    parser = arguments(__doc__.splitlines()[0] if __doc__ else "gateway benchmark")
    parser.add_argument("--quick", action="store_true", help="one second each, to check it runs")
    args = parser.parse_args()
    missing = [tool for tool in ("wrk", "nginx", "haproxy") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(
            f"benchmarks.gateway needs {', '.join(missing)}: apt-get install {' '.join(missing)}"
        )
    seconds = 1 if args.quick else 8
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="meshkit-gateway-bench-") as tmp:
        directory = Path(tmp)
        backend = free_port()
        nginx_backend = config(
            directory, "backend.conf", NGINX_BACKEND.format(dir=tmp, port=backend)
        )
        with running(["nginx", "-c", nginx_backend], backend, 1):
            url = f"http://127.0.0.1:{backend}/"
            wrk(url, 1)
            results["direct"] = wrk(url, seconds)
            port = free_port()
            text = NGINX_PROXY.format(dir=tmp, port=port, upstream=backend)
            with running(["nginx", "-c", config(directory, "proxy.conf", text)], port, 1):
                wrk(f"http://127.0.0.1:{port}/", 1)
                results["nginx"] = wrk(f"http://127.0.0.1:{port}/", seconds)
            port = free_port()
            text = HAPROXY.format(port=port, upstream=backend)
            with running(["haproxy", "-f", config(directory, "haproxy.cfg", text)], port, 1):
                wrk(f"http://127.0.0.1:{port}/", 1)
                results["haproxy"] = wrk(f"http://127.0.0.1:{port}/", seconds)
            port = free_port()
            engine = [sys.executable, "-m", "benchmarks._proxy_engine", str(port), str(backend)]
            with running(engine, port, 1) as process:
                wrk(f"http://127.0.0.1:{port}/", 1)
                results["meshkit"] = wrk(f"http://127.0.0.1:{port}/", seconds)
                results["meshkit paced"] = paced(port, rate=1000, seconds=seconds)
                results["direct paced"] = paced(backend, rate=1000, seconds=seconds)
                rss = peak_rss_mb(process.pid)
    rows = [Row("direct to the backend: requests/s", results["direct"]["rps"], "req/s")]
    peers = (("nginx", "nginx (1 worker)"), ("haproxy", "HAProxy (1 thread)"))
    for peer, label in peers:
        rows.append(Row(f"{label}: requests/s", results[peer]["rps"], "req/s"))
    for metric, unit, label in (("rps", "req/s", "requests/s"), ("p99", "ms", "latency p99")):
        for peer, name in peers:
            rows.append(
                Row(
                    f"meshkit proxy engine {label} vs {name.split(' ')[0]}",
                    results["meshkit"][metric],
                    unit,
                    results[peer][metric],
                    name,
                )
            )
    for metric in ("p50", "p99"):
        rows.append(
            Row(
                f"at 1,000 req/s, {metric}: through the engine vs direct",
                results["meshkit paced"][metric],
                "ms",
                results["direct paced"][metric],
                "direct",
            )
        )
        added = results["meshkit paced"][metric] - results["direct paced"][metric]
        rows.append(Row(f"at 1,000 req/s, {metric} added by the engine", added, "ms"))
    rows.append(Row("meshkit proxy engine peak RSS under load", rss, "MB"))
    report("Reverse proxies in front of one nginx backend", rows, args.json)


if __name__ == "__main__":
    main()

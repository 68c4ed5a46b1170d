"""Which ASGI server a meshkit.Service runs on, measured: requests/s for one FastAPI route.

    python -m benchmarks.asgi [--json FILE] [--quick]

The same application is served (a) by ``meshkit serve``, which is granian
embedded in meshkit's own event loop with meshkit's ASGI layer around the
app, (b) by uvicorn with httptools and uvloop, and (c) by granian on its own.
Each server is pinned to one core and wrk (50 connections) to the other.
Needs ``wrk`` (Debian: apt-get install wrk) and uvicorn.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile

from benchmarks._load import pinned, wait_answering, wrk
from benchmarks._report import Row, arguments, report
from meshkit._net import free_port

APP = "benchmarks._fastapi_app:app"


def serve_and_measure(
    command: list[str], port: int, seconds: int, env: dict[str, str]
) -> dict[str, float]:
    server = subprocess.Popen(
        pinned(command, 1), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        url = f"http://127.0.0.1:{port}/products/7"
        wait_answering(url)
        wrk(url, 1)  # warm up
        return wrk(url, seconds)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main() -> None:
    parser = arguments(__doc__.splitlines()[0] if __doc__ else "asgi benchmark")
    parser.add_argument("--quick", action="store_true", help="one second each, to check it runs")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("benchmarks.asgi needs wrk: apt-get install wrk")
    seconds = 1 if args.quick else 8
    token = secrets.token_urlsafe(24)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="meshkit-bench-") as data:
        control = free_port()
        plane = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "meshkit",
                "control-plane",
                "--data-dir",
                data,
                "--port",
                str(control),
            ],
            env={**os.environ, "MESHKIT_TOKEN": token},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            port = free_port()
            mesh_env = {
                **os.environ,
                "MESHKIT_REGISTRY": f"http://127.0.0.1:{control}",
                "MESHKIT_TOKEN": token,
                "MESHKIT_PORT": str(port),
            }
            results["meshkit"] = serve_and_measure(
                [sys.executable, "-m", "meshkit", "serve", APP, "--name", "bench"],
                port,
                seconds,
                mesh_env,
            )
        finally:
            plane.send_signal(signal.SIGTERM)
            plane.wait(15)
    port = free_port()
    results["uvicorn"] = serve_and_measure(
        [
            sys.executable,
            "-m",
            "uvicorn",
            APP,
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        port,
        seconds,
        dict(os.environ),
    )
    port = free_port()
    results["granian"] = serve_and_measure(
        [
            sys.executable,
            "-m",
            "granian",
            "--interface",
            "asgi",
            "--port",
            str(port),
            "--workers",
            "1",
            "--log-level",
            "warning",
            APP,
        ],
        port,
        seconds,
        dict(os.environ),
    )
    rows = []
    names = {"uvicorn": "uvicorn (httptools, uvloop)", "granian": "granian standalone"}
    for metric, unit, label in (
        ("rps", "req/s", "requests/s"),
        ("p50", "ms", "latency p50"),
        ("p99", "ms", "latency p99"),
    ):
        for peer, peer_name in names.items():
            rows.append(
                Row(
                    f"meshkit serve (granian embedded) {label} vs {peer_name}",
                    results["meshkit"][metric],
                    unit,
                    results[peer][metric],
                    peer_name,
                )
            )
    report("One FastAPI route: meshkit serve beside uvicorn and granian", rows, args.json)


if __name__ == "__main__":
    main()

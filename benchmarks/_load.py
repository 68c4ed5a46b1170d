"""Load generation shared by the HTTP benchmarks: wrk for throughput, a paced client for latency."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import uvloop

from meshkit.http import HTTPClient, Limits
from meshkit.testing.servers import spawn_control_plane

__all__ = [
    "median_run",
    "paced",
    "percentile",
    "pinned",
    "start_control_plane",
    "stop",
    "tied",
    "wait_answering",
    "wrk",
]


def pinned(command: list[str], core: int) -> list[str]:
    """``command`` run on one core (with taskset), when the machine has two or more."""
    return ["taskset", "-c", str(core), *command] if (os.cpu_count() or 1) >= 2 else command


def tied(command: list[str]) -> list[str]:
    """``command`` sent SIGTERM should its parent die, where util-linux's setpriv is at hand.

    For servers a benchmark starts: killed with ``kill -9``, the benchmark
    can stop nothing itself. (The setting survives ``taskset``'s exec.)
    """
    return (
        ["setpriv", "--pdeathsig", "TERM", "--", *command] if shutil.which("setpriv") else command
    )


def start_control_plane(data_dir: Path, token: str, port: int) -> subprocess.Popen[bytes]:
    """``meshkit control-plane`` on core 1, in ``data_dir``; the caller awaits it and stops it."""
    return spawn_control_plane(data_dir, token=token, port=port, prefix=tied(pinned([], 1)))


def stop(process: subprocess.Popen[bytes], how: signal.Signals = signal.SIGTERM) -> None:
    """Ask ``process`` to end with ``how``; killed if it has not within 10 s."""
    process.send_signal(how)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def median_run(runs: list[dict[str, float]], by: str = "rps") -> dict[str, float]:
    """Of several runs of one thing, the one with the median ``by`` (its other figures with it)."""
    return sorted(runs, key=lambda run: run[by])[len(runs) // 2]


def wait_answering(url: str, *, timeout: float = 60, headers: dict[str, str] | None = None) -> None:
    """Until ``url`` answers at all (any status)."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 (loopback)
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=1):  # noqa: S310 (our own loopback URL)
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answered at {url}")


def wrk(
    url: str,
    seconds: int,
    *,
    connections: int = 50,
    core: int = 0,
    headers: dict[str, str] | None = None,
) -> dict[str, float]:
    """wrk with one thread on ``core``: requests/s, requests in all, latency p50 and p99 in ms.

    Raises if any answer was not 2xx or 3xx: a benchmark of refusals
    measures nothing.
    """
    extra = [part for name, value in (headers or {}).items() for part in ("-H", f"{name}: {value}")]
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", *extra, url]
    output = subprocess.run(
        pinned(command, core), capture_output=True, text=True, check=True
    ).stdout
    if "Non-2xx or 3xx responses" in output:
        raise RuntimeError(f"wrk got error answers from {url}:\n{output}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    total = float(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]

    def latency(label: str) -> float:
        value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", output).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return {"rps": rate, "requests": total, "p50": latency("50%"), "p99": latency("99%")}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def _paced(
    targets: list[tuple[int, str]], rate: int, seconds: float, headers: list[tuple[bytes, bytes]]
) -> dict[tuple[int, str], list[float]]:
    loop = asyncio.get_running_loop()
    latencies: dict[tuple[int, str], list[float]] = {target: [] for target in targets}
    pending: set[asyncio.Task[None]] = set()
    async with HTTPClient(limits=Limits(max_connections=64, max_idle=64)) as client:

        async def one(target: tuple[int, str]) -> None:
            port, path = target
            sent = time.perf_counter()  # uvloop's loop.time() has millisecond steps
            answer = await client.send(
                "GET", "127.0.0.1", port, path, headers=headers, connect=5, read=5
            )
            if answer.status != 200:
                raise RuntimeError(f"port {port} answered {answer.status}")
            latencies[target].append(time.perf_counter() - sent)

        # Timed from the send, not from when it was due: the loop's timers
        # wake up to a millisecond late, which is the client's own noise. Each
        # request is its own task, so a slow answer delays no other send (no
        # coordinated omission). Tasks are made as they fall due, not all at
        # once, and the collector is off: both were the client's own p99.
        # The targets take turns, so a stall of the machine (this one is a
        # shared VM) lands on all of them alike.
        start = loop.time()
        gc.disable()
        try:
            for i in range(int(rate * seconds)):
                await asyncio.sleep(start + i / rate - loop.time())
                task = loop.create_task(one(targets[i % len(targets)]))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending)
        finally:
            gc.enable()
    return latencies


def paced(
    targets: list[tuple[int, str]],
    *,
    rate: int,
    seconds: float,
    core: int = 0,
    headers: dict[str, str] | None = None,
) -> list[dict[str, float]]:
    """``rate`` GETs a second in all, the ``(port, path)`` targets taking turns, from ``core``.

    For each target, in order: p50 and p99 in ms.
    """
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core} if (os.cpu_count() or 1) >= 2 else before)
    try:
        sent = [(name.encode(), value.encode()) for name, value in (headers or {}).items()]
        uvloop.run(_paced(targets, rate, min(1.0, seconds), sent))  # warm up connections, caches
        found = uvloop.run(_paced(targets, rate, seconds, sent))
    finally:
        os.sched_setaffinity(0, before)
    return [
        {"p50": percentile(found[t], 0.5) * 1000, "p99": percentile(found[t], 0.99) * 1000}
        for t in targets
    ]

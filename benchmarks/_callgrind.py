"""Instructions per request under callgrind: a measure this noisy machine repeats.

Wall-clock figures on two shared cores move by several percent from one
run to the next (two identical gateways measured up to 20% apart), which
hides a cost of a few percent. Callgrind counts the user-space
instructions a process executes; the same work counts the same within a
fraction of a percent, so a difference of 2% between two builds is real.
What it leaves out is the kernel's share (system calls, the network
stack), which tracing does not change.

The server starts under callgrind with instrumentation off (Python's
start-up is not the request path), takes a warm-up load, then counts the
instructions of a fixed load from wrk from zero, dumped with
``callgrind_control``. Requests in flight at either edge move the figure by
a few requests in several thousand.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

from benchmarks._load import pinned, stop, wait_answering, wrk

__all__ = ["instructions_per_request"]


def _control(*arguments: str) -> None:
    subprocess.run(["callgrind_control", *arguments], capture_output=True, check=True, timeout=60)  # noqa: S607


def _totals(directory: Path) -> int:
    """The instruction count of the dump ``callgrind_control -d`` wrote."""
    dumps = [path for path in directory.glob("callgrind.out.*") if re.search(r"\.\d+$", path.name)]
    if len(dumps) != 1:
        raise RuntimeError(f"expected one callgrind dump in {directory}, found {dumps}")
    for line in dumps[0].read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dumps[0]}")


def instructions_per_request(
    command: list[str],
    port: int,
    *,
    core: int = 1,
    headers: dict[str, str] | None = None,
    seconds: int = 10,
) -> float:
    """User-space instructions ``command`` (a server on ``port``) executes per request."""
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory(prefix="meshkit-callgrind-") as tmp:
        directory = Path(tmp)
        valgrind = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={directory}/callgrind.out",
            *command,
        ]
        process = subprocess.Popen(
            pinned(valgrind, core), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_answering(url, headers=headers, timeout=180)
            wrk(url, 3, connections=4, headers=headers)  # warm up, uncounted
            pid = str(process.pid)
            _control("-i", "on", pid)
            _control("-z", pid)
            run = wrk(url, seconds, connections=4, headers=headers)
            _control("-d", pid)
            _control("-i", "off", pid)
            return _totals(directory) / run["requests"]
        finally:
            stop(process)

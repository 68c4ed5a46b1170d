"""A supervised child: its whole process group stops with it, and nothing it prints stalls us.

These run real processes (``sh``, ``sleep``, this Python) on the real clock;
each test takes at most a few seconds.
"""

import asyncio
import io
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from meshkit._clock import SystemClock
from meshkit.deploy._output import Output
from meshkit.deploy._process import Child, _Lines


def make_child(argv: list[str], tmp_path: Path) -> tuple[Child, io.StringIO]:
    stream = io.StringIO()
    child = Child(
        "worker",
        argv,
        env=dict(os.environ),
        cwd=str(tmp_path),
        output=Output(stream),
        clock=SystemClock(),
        on_change=lambda: None,
    )
    return child, stream


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): only a process not yet reaped-and-exited counts.
    return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"


async def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll: the conditions are about other processes, which cannot set an Event."""
    clock = SystemClock()
    async with asyncio.timeout(seconds):
        while not condition():
            await clock.sleep(0.02)


def printed(stream: io.StringIO) -> list[str]:
    return [line.split(" | ", 1)[1] for line in stream.getvalue().splitlines()]


async def test_stop_reaches_what_the_child_started(tmp_path: Path) -> None:
    """A grandchild (sleep, started by sh) is gone once stop() returns."""
    child, stream = make_child(["sh", "-c", "sleep 300 & echo $!; wait"], tmp_path)
    child.start()
    await wait_for(lambda: bool(stream.getvalue()))
    grandchild = int(printed(stream)[0])
    assert alive(grandchild)
    await child.stop(grace=5)
    assert child.status == "stopped"
    await wait_for(lambda: not alive(grandchild), seconds=2)


async def test_a_crash_is_cleaned_up_and_restarted_with_backoff(tmp_path: Path) -> None:
    """After the child exits, what it left running is killed; restarts back off 0.5 s, 1 s, ..."""
    child, stream = make_child(["sh", "-c", "sleep 300 & echo $!; exit 3"], tmp_path)
    child.start()
    await wait_for(lambda: child.restarts >= 2)
    lines = printed(stream)
    orphans = [int(line) for line in lines if line.isdigit()]
    assert orphans
    await wait_for(lambda: not any(alive(pid) for pid in orphans[:1]), seconds=2)
    said = [line for line in lines if "exited with" in line]
    assert said[:2] == [
        "worker exited with 3; restarting in 0.5s",
        "worker exited with 3; restarting in 1.0s",
    ]
    await child.stop(grace=5)
    for pid in [int(line) for line in printed(stream) if line.isdigit()]:
        await wait_for(lambda pid=pid: not alive(pid), seconds=2)


async def test_a_huge_line_is_cut_once_and_the_output_goes_on(tmp_path: Path) -> None:
    """A megabyte without a newline arrives as one 16 KiB line marked [cut]; later lines follow."""
    script = "import sys; sys.stdout.write('x' * 1_000_000 + '\\nafter\\n'); sys.stdout.flush()"
    child, stream = make_child([sys.executable, "-c", script], tmp_path)
    child.start()
    await wait_for(lambda: "after" in printed(stream))
    await child.stop(grace=5)
    assert printed(stream)[:2] == ["x" * 16384 + " [cut]", "after"]


def test_lines_split_across_chunks_and_cut_lines_are_skipped_to_their_end() -> None:
    emitted: list[bytes] = []
    lines = _Lines(emitted.append)
    for chunk in [b"he", b"llo\nwor", b"ld\n", b"y" * 20000, b"y" * 5, b"\nlast"]:
        lines.feed(chunk)
    lines.end()
    assert emitted == [b"hello", b"world", b"y" * 16384 + b" [cut]", b"last"]


async def test_a_program_that_cannot_start_is_retried_not_fatal(tmp_path: Path) -> None:
    """A missing program is reported and retried with backoff, and stop() still works."""
    child, stream = make_child([str(tmp_path / "gone")], tmp_path)
    child.start()
    await wait_for(lambda: child.restarts >= 1)
    assert "worker exited with an error starting it: [Errno 2] no such executable program" in (
        stream.getvalue()
    )
    assert "restarting in 0.5s" in stream.getvalue()
    await child.stop(grace=1)
    assert child.status == "stopped"


async def test_stop_stops_listening_to_a_process_that_left_the_group(tmp_path: Path) -> None:
    """A grandchild in a session of its own keeps the pipe open: stop() still closes it."""
    loop = "while :; do echo tick; sleep 0.05; done"
    script = f"setsid sh -c '{loop}' & echo $!; exec sleep 300"
    child, stream = make_child(["sh", "-c", script], tmp_path)
    child.start()
    await wait_for(lambda: "tick" in printed(stream))
    escaped = int(printed(stream)[0])
    try:
        await child.stop(grace=5)
        assert child.status == "stopped"
        assert alive(escaped)  # out of our reach, as designed
        seen = len(printed(stream))
        # An absence has no event to wait for: six of its 50 ms ticks would have come.
        await SystemClock().sleep(0.3)
        assert len(printed(stream)) == seen  # its ticks no longer reach us
    finally:
        os.kill(escaped, signal.SIGKILL)

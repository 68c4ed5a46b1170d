"""One supervised child process: started, watched, restarted with backoff, stopped.

Each child runs in a process group of its own, and the group, not just the
process, is what gets signalled: stopping a child, or cleaning up after one
that crashed, reaches everything it started, even once the child itself
has exited. On Linux the child is started through ``setpriv --pdeathsig``
(util-linux) so that it receives SIGTERM if the supervisor dies, even by
``kill -9``: a ``meshkit serve`` child then drains and exits. The signal
reaches the child only, not what it started, and a supervisor that dies in
the instant between the fork and setpriv's ``prctl`` sends none; both are
left to whoever runs the machine. (Python's own ``preexec_fn`` could set
the signal too, but it is unsafe in a process with threads, and asyncio's
child watchers are threads.)

The child runs under a ``SubprocessProtocol`` of our own rather than
``asyncio.create_subprocess_exec``: ``Process.wait()`` returns only once the
child's pipes are closed as well (CPython 3.11 to 3.13 alike), so a
grandchild that keeps stdout open would hide the child's exit for ever. The
protocol hears ``process_exited`` at once, and its output arrives as chunks
that ``_Lines`` turns into lines, cutting any line longer than 16 KiB so no
amount of output can stall the supervision.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from meshkit._clock import Clock
from meshkit._tasks import ended
from meshkit.deploy._config import runnable
from meshkit.deploy._output import Output
from meshkit.policy import Backoff

__all__ = ["Child"]

# A crash loop backs off up to 30 s; a child that ran for a minute has
# recovered, and its next crash starts the backoff again.
_BACKOFF = Backoff(initial=0.5, maximum=30.0)
_HEALTHY_RUN = 60.0
_LONGEST_LINE = 16 * 1024
_CUT = b" [cut]"
# Once the group is killed its pipe closes at once; only a process that
# left the group (setsid) can hold it longer, and we stop listening to it.
_PIPE_GRACE = 1.0


@functools.cache
def _death_signal_prefix() -> tuple[str, ...]:
    """``setpriv --pdeathsig TERM --`` where it works (Linux with util-linux 2.33+).

    Tried once: a setpriv without ``--pdeathsig`` (busybox, older util-linux)
    would otherwise fail every start, and the child would crash-loop.
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if setpriv is None:
        return ()
    prefix = (setpriv, "--pdeathsig", "TERM", "--")
    try:
        works = subprocess.run(  # noqa: S603 (fixed arguments)
            [*prefix, "true"], capture_output=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return prefix if works.returncode == 0 else ()


class _Lines:
    """Splits a byte stream into lines; a line over the limit is cut once, the rest skipped."""

    def __init__(self, emit: Callable[[bytes], None]) -> None:
        self._emit = emit
        self._pending = bytearray()
        self._skipping = False  # inside a line already emitted as cut

    def feed(self, data: bytes) -> None:
        *complete, rest = data.split(b"\n")
        for piece in complete:
            if not self._skipping:
                self._pending += piece
                self._emit_cut(bytes(self._pending))
            self._pending.clear()
            self._skipping = False
        if not self._skipping:
            self._pending += rest
            if len(self._pending) > _LONGEST_LINE:
                self._emit_cut(bytes(self._pending))
                self._pending.clear()
                self._skipping = True

    def end(self) -> None:
        if self._pending and not self._skipping:
            self._emit_cut(bytes(self._pending))
        self._pending.clear()
        self._skipping = False

    def _emit_cut(self, line: bytes) -> None:
        self._emit(line[:_LONGEST_LINE] + _CUT if len(line) > _LONGEST_LINE else line)


class _ChildProtocol(asyncio.SubprocessProtocol):
    """Relays the child's output as lines, and tells when it exited and when all is closed.

    (The callbacks' signatures are asyncio's, hence the unused arguments.)
    """

    def __init__(self, emit: Callable[[bytes], None], loop: asyncio.AbstractEventLoop) -> None:
        self.lines = _Lines(emit)
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:  # noqa: ARG002
        self.lines.feed(data.encode() if isinstance(data, str) else data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:  # noqa: ARG002
        self.lines.end()

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002
        if not self.closed.done():
            self.closed.set_result(None)


class Child:
    """A command kept running until ``stop()``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str,
        output: Output,
        clock: Clock,
        on_change: Callable[[], None],
        give_up_after: int | None = None,
    ) -> None:
        self.name = name
        # Exits before it is first healthy after which starting is hopeless
        # (the supervisor decides health); None: keep trying.
        self.give_up_after = give_up_after
        self.argv = list(argv)
        self.env = dict(env)
        self.cwd = cwd
        self.restarts = 0
        self.started_at: float | None = None
        self.status = "starting"
        self._output = output
        self._clock = clock
        self._on_change = on_change
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._started_monotonic = 0.0
        self._pid: int | None = None  # also the id of its process group
        self._protocol: _ChildProtocol | None = None  # of the current run, while it runs

    @property
    def pid(self) -> int | None:
        """The pid of the current run while the process is alive, else None."""
        return self._pid if self.running else None

    @property
    def running(self) -> bool:
        return self._protocol is not None and not self._protocol.exited.done()

    def start(self) -> None:
        """Run the command, restarting it whenever it exits, until ``stop()``."""
        self._task = asyncio.get_running_loop().create_task(self._keep_running())

    async def stop(self, *, grace: float) -> None:
        """SIGTERM the process group; SIGKILL whatever is left of it after ``grace`` s."""
        self._stopping = True
        protocol = self._protocol
        # Decided before signalling: a run that exits on our SIGTERM is left
        # to finish its clean-up; only a task between runs is cancelled.
        between_runs = protocol is None or protocol.exited.done()
        if not between_runs:
            assert protocol is not None
            self._signal_group(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace):
                    await asyncio.shield(protocol.exited)
            except TimeoutError:
                self._output.say(f"{self.name} did not stop within {grace:g}s; killing it")
                self._signal_group(signal.SIGKILL)
        if self._task is not None:
            if between_runs:  # backing off, or starting: nothing to wait for
                self._task.cancel()
            await ended(self._task)  # it cleans up after the run it was watching
        self.status = "stopped"
        self._on_change()

    def _signal_group(self, signum: int) -> None:
        if self._pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._pid, signum)

    async def _keep_running(self) -> None:
        failures = 0
        while True:
            try:
                code: int | str = await self._run_once()
            except OSError as error:  # the program is gone, or not executable
                code = f"an error starting it: {error}"
            if self._stopping:
                return
            ran = self._clock.monotonic() - self._started_monotonic
            failures = 1 if ran >= _HEALTHY_RUN else failures + 1
            delay = _BACKOFF.ceiling(failures)  # no jitter: one machine, few children
            self.status = "restarting"
            self.restarts += 1
            self._on_change()
            self._output.say(f"{self.name} exited with {code}; restarting in {delay:.1f}s")
            await self._clock.sleep(delay)

    async def _run_once(self) -> int:
        loop = asyncio.get_running_loop()
        self._started_monotonic = self._clock.monotonic()
        env = {**self.env, "MESHKIT_RESTARTS": str(self.restarts)}
        protocol = _ChildProtocol(self._line, loop)
        # Checked here because through setpriv a missing program would show
        # as setpriv's exit status 127, not as the error that says what is wrong.
        program = self.argv[0]
        if not runnable(program, Path(self.cwd), env.get("PATH", os.defpath)):
            raise FileNotFoundError(errno.ENOENT, "no such executable program", program)
        transport, _ = await loop.subprocess_exec(
            lambda: protocol,
            *_death_signal_prefix(),
            program,
            *self.argv[1:],
            cwd=self.cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() reaches all of it
        )
        self._pid = transport.get_pid()  # a session leader's group id is its pid
        self._protocol = protocol
        self.started_at = self._clock.time()
        self.status = "running"
        self._on_change()
        try:
            await asyncio.shield(protocol.exited)
        finally:
            try:
                # Whether it crashed or was stopped: kill what it left running,
                # so the pipe closes and the last lines it wrote are read.
                self._signal_group(signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_PIPE_GRACE):
                        await asyncio.shield(protocol.closed)
            finally:
                transport.close()  # even if cancelled while waiting for the pipe
        code = transport.get_returncode()
        assert code is not None  # process_exited has been called
        return code

    def _line(self, raw: bytes) -> None:
        self._output.line(self.name, raw.decode(errors="replace").rstrip("\r"))

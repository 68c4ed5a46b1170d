"""One supervised child process: started, watched, restarted with backoff, stopped.

Each child runs in a process group of its own, so stopping it reaches every
process it started; on Linux it is also asked to receive SIGTERM if the
supervisor dies (``PR_SET_PDEATHSIG``), so even a supervisor killed with
``kill -9`` leaves nothing behind. Its output is read line by line and handed
to ``Output`` with its name.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import random
import signal
import sys
from collections.abc import Callable, Mapping, Sequence

from meshkit._clock import Clock
from meshkit.deploy._output import Output
from meshkit.policy import Backoff

__all__ = ["Child"]

# A crash loop backs off up to 30 s; a child that ran for a minute has
# recovered, and its next crash starts the backoff again.
_BACKOFF = Backoff(initial=0.5, maximum=30.0)
_HEALTHY_RUN = 60.0


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


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
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.cwd = cwd
        self.restarts = 0
        self.process: asyncio.subprocess.Process | None = None
        self.started_at: float | None = None
        self.status = "starting"
        self._output = output
        self._clock = clock
        self._on_change = on_change
        self._stopping = False
        self._rng = random.Random()
        self._task: asyncio.Task[None] | None = None
        self._started_monotonic = 0.0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        """Run the command, restarting it whenever it exits, until ``stop()``."""
        self._task = asyncio.get_running_loop().create_task(self._keep_running())

    async def stop(self, *, grace: float) -> None:
        """SIGTERM the process group; SIGKILL it if it has not exited after ``grace`` s."""
        self._stopping = True
        process = self.process
        if process is not None and process.returncode is None:
            self._signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace):
                    await process.wait()
            except TimeoutError:
                self._output.say(f"{self.name} did not stop within {grace:g}s; killing it")
                self._signal(signal.SIGKILL)
                await process.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.status = "stopped"
        self._on_change()

    def kill(self) -> None:
        """SIGKILL the process group at once (used when the supervisor itself fails)."""
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    async def _keep_running(self) -> None:
        failures = 0
        while True:
            code = await self._run_once()
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
        self._started_monotonic = self._clock.monotonic()
        env = {**self.env, "MESHKIT_RESTARTS": str(self.restarts)}
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            cwd=self.cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() reaches all of it
            # preexec_fn is unsafe with threads; the supervisor runs none.
            preexec_fn=_die_with_parent,
        )
        self.started_at = self._clock.time()
        self.status = "running"
        self._on_change()
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            self._output.line(self.name, raw.decode(errors="replace").rstrip())
        return await self.process.wait()

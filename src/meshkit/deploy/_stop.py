"""``meshkit down``: stop a project that ``meshkit up`` runs, from another terminal.

The supervisor is sent SIGTERM, as Ctrl-C would stop it: it stops the
gateway, the sidecars, the services and the control plane in that order,
each within its grace period, and kills what does not stop. This waits, up
to a bound, until the supervisor and every process of its table are gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from meshkit._clock import Clock, SystemClock
from meshkit.deploy._state import ProcessState, alive, running_table

__all__ = ["StopReport", "stop_project"]

# The supervisor gives each of its four stages (gateway, sidecars, services,
# control plane) up to 10 s before it kills; a bound above their sum.
DEFAULT_TIMEOUT = 60.0
_POLL = 0.1


@dataclass(frozen=True, slots=True)
class StopReport:
    """What was asked to stop, and which of its pids were still alive when the wait ended."""

    supervisor_pid: int
    processes: tuple[ProcessState, ...]  # those that had a pid
    left: tuple[int, ...]


async def stop_project(
    data_dir: Path, *, within: float = DEFAULT_TIMEOUT, clock: Clock | None = None
) -> StopReport | None:
    """SIGTERM the supervisor of the project whose data is in ``data_dir``, and wait.

    ``None`` if no supervisor runs it. ``left`` is empty when everything
    stopped within ``within`` seconds.
    """
    clock = clock or SystemClock()
    table = running_table(data_dir)
    if table is None:
        return None
    processes = tuple(p for p in table.processes if p.pid is not None)
    pids = (table.supervisor_pid, *(p.pid for p in processes if p.pid is not None))
    # It may have ended on its own meanwhile; its children are still waited for.
    with contextlib.suppress(ProcessLookupError):
        os.kill(table.supervisor_pid, signal.SIGTERM)
    deadline = clock.monotonic() + within
    while True:
        left = tuple(pid for pid in pids if alive(pid))
        if not left or clock.monotonic() >= deadline:
            return StopReport(supervisor_pid=table.supervisor_pid, processes=processes, left=left)
        # Polled: there is no way to wait for a process that is not our child.
        await clock.sleep(_POLL)

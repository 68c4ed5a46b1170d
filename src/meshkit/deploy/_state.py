"""The supervisor's process table on disk, which ``meshkit status`` and ``meshkit down`` read.

Written to a temporary file and renamed into place, so a reader never sees
half a table.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec

__all__ = [
    "ProcessState",
    "ProcessTable",
    "alive",
    "read_table",
    "running_table",
    "service_data_dir",
    "write_table",
]


class ProcessState(msgspec.Struct, kw_only=True):
    """One supervised process, as the supervisor last saw it."""

    service: str
    id: str
    port: int
    pid: int | None
    restarts: int
    started_at: float | None  # wall-clock seconds of the current run
    status: str  # starting, running, restarting, exited, stopped
    candidate: bool = False  # runs the definition a rollout under way brings


class ProcessTable(msgspec.Struct, kw_only=True):
    supervisor_pid: int
    control_plane: str
    processes: list[ProcessState]
    # False once the supervisor has stopped everything; a table from before
    # this field (or one left by a supervisor killed with -9) says True, and
    # the supervisor's pid tells the rest.
    running: bool = True
    # What each service runs (its meshkit.toml table, as checked), for `meshkit deploy`.
    definitions: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)


def service_data_dir(data_dir: Path, service: str) -> Path:
    """Where ``meshkit up`` keeps one service's files (its ``MESHKIT_DATA_DIR``)."""
    return data_dir / "services" / service


def table_path(data_dir: Path) -> Path:
    return data_dir / "processes.json"


def write_table(data_dir: Path, table: ProcessTable) -> None:
    path = table_path(data_dir)
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(msgspec.json.encode(table))
    temporary.replace(path)


def read_table(data_dir: Path) -> ProcessTable | None:
    """The last table written, or ``None`` if there is none or it is unreadable."""
    try:
        return msgspec.json.decode(table_path(data_dir).read_bytes(), type=ProcessTable)
    except (OSError, msgspec.DecodeError):
        return None


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited (a zombie, exited but not yet
    reaped by its parent, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's: it exists
    try:
        # /proc/PID/stat: "pid (comm) state ..."; comm may hold spaces and parentheses.
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): the signal check is all there is
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _is_meshkit(pid: int) -> bool:
    """Whether ``pid`` runs meshkit, where /proc tells: a pid the table names may have been
    reused by an unrelated process since a supervisor died without cleaning up."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return b"meshkit" in command


def running_table(data_dir: Path) -> ProcessTable | None:
    """The table of a supervisor that is running now, or ``None`` if none is."""
    table = read_table(data_dir)
    if table is None or not table.running:
        return None
    pid = table.supervisor_pid
    return table if alive(pid) and _is_meshkit(pid) else None

"""The supervisor's process table on disk, which ``meshkit status`` reads.

Written to a temporary file and renamed into place, so a reader never sees
half a table.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

__all__ = ["ProcessState", "ProcessTable", "read_table", "write_table"]


class ProcessState(msgspec.Struct, kw_only=True):
    """One supervised process, as the supervisor last saw it."""

    service: str
    id: str
    port: int
    pid: int | None
    restarts: int
    started_at: float | None  # wall-clock seconds of the current run
    status: str  # starting, running, restarting, exited, stopped


class ProcessTable(msgspec.Struct, kw_only=True):
    supervisor_pid: int
    control_plane: str
    processes: list[ProcessState]


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

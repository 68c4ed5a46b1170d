"""Rows, the printed table and the ``--json FILE`` output every benchmark shares.

A row is one figure. When there is a reference (the peer library or server
doing the same work, measured in the same run), ``ratio`` is
``value / reference``: below 1 means meshkit is faster for a time, slower for
a rate, and the unit says which (a unit per second is a rate).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    value: float
    unit: str
    reference: float | None = None
    reference_name: str | None = None

    @property
    def lower_is_better(self) -> bool:
        """A rate (anything per second) is better higher; a time, share or size, lower."""
        return not self.unit.endswith("/s")

    @property
    def ratio(self) -> float | None:
        return None if self.reference is None else self.value / self.reference

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {"name": self.name, "value": self.value, "unit": self.unit}
        if self.reference is not None:
            data["reference"] = self.reference
            data["ratio"] = self.ratio
            data["reference_name"] = self.reference_name
        return data


def arguments(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes; add more to the returned parser."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the rows as JSON")
    return parser


def _number(value: float) -> str:
    """Whole numbers from 100 up, three significant digits below."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def machine() -> str:
    return (
        f"Python {platform.python_version()} ({platform.python_implementation()}),"
        f" {os.cpu_count()} CPUs, {platform.machine()}"
    )


def report(title: str, rows: list[Row], json_path: Path | None) -> None:
    """Print the rows as a table and, if asked, write them as JSON."""
    table = Table(title=title, caption=machine())
    table.add_column("measurement")
    table.add_column("meshkit", justify="right")
    table.add_column("reference", justify="right")
    table.add_column("reference is", style="dim")
    table.add_column("ratio", justify="right")
    for row in rows:
        ratio = row.ratio
        good = ratio is not None and (ratio <= 1 if row.lower_is_better else ratio >= 1)
        table.add_row(
            row.name,
            f"{_number(row.value)} {row.unit}",
            "" if row.reference is None else f"{_number(row.reference)} {row.unit}",
            row.reference_name or "",
            "" if ratio is None else f"[{'green' if good else 'red'}]{ratio:.2f}",
        )
    Console(width=max(120, Console().width)).print(table)
    if json_path is not None:
        json_path.write_text(json.dumps([row.to_json() for row in rows], indent=2) + "\n")
        print(f"wrote {len(rows)} rows to {json_path}", file=sys.stderr)

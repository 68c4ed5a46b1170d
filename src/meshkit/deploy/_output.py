"""The supervisor's output: every child's lines, prefixed with its name, in its own colour.

Colour only when writing to a terminal (or when ``FORCE_COLOR`` is set), and
plain ANSI codes rather than rich markup: a child's own output may contain
brackets that markup would try to interpret.
"""

from __future__ import annotations

import sys
from typing import TextIO

from meshkit import _env

__all__ = ["Output"]

# Six colours that read well on dark and light backgrounds.
_PALETTE = ("36", "33", "35", "32", "34", "31")
_RESET = "\033[0m"


class Output:
    """Writes ``name | line`` for each child, and the supervisor's own messages."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.colour = _env.force_colour() or self.stream.isatty()
        self._colours: dict[str, str] = {}
        self.width = 12

    def line(self, name: str, text: str) -> None:
        prefix = name.ljust(self.width)
        if self.colour:
            code = self._colours.setdefault(name, _PALETTE[len(self._colours) % len(_PALETTE)])
            prefix = f"\033[{code}m{prefix}{_RESET}"
        self.stream.write(f"{prefix} | {text}\n")
        self.stream.flush()

    def say(self, text: str) -> None:
        """A message from the supervisor itself."""
        self.line("meshkit", text)

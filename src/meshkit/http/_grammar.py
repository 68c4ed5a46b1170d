"""Pieces of HTTP's grammar that several parts of meshkit check against."""

from __future__ import annotations

import re

__all__ = ["TOKEN", "TOKEN_BYTES"]

# RFC 9110, 5.6.2: methods, header names and the like are tokens.
_TCHAR = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
TOKEN = re.compile(_TCHAR + "+")
TOKEN_BYTES = re.compile(_TCHAR.encode("ascii") + b"+")

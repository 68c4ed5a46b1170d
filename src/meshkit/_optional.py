"""Optional dependencies, imported when first used, with the extra that brings them."""

from __future__ import annotations

import importlib
from typing import Any

from meshkit.errors import UsageError

__all__ = ["require"]


def require(module: str, *, extra: str, what: str) -> Any:
    """``module``, imported; or a ``UsageError``: ``what`` needs ``pip install meshkit[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise UsageError(
            f"{what} needs the {extra} extra: pip install 'meshkit[{extra}]'"
        ) from error

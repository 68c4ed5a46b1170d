"""The PostgreSQL outbox without asyncpg: importable, and a clear error when used."""

import subprocess
import sys

import pytest

from meshkit.bus.postgres import PostgresInbox, PostgresOutbox
from meshkit.errors import UsageError


def test_the_module_imports_without_asyncpg() -> None:
    """asyncpg is imported on first use, never at import time."""
    code = "import sys; sys.modules['asyncpg'] = None; import meshkit.bus.postgres"
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_using_it_without_asyncpg_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    with pytest.raises(UsageError, match=r"pip install 'meshkit\[postgres\]'"):
        PostgresOutbox("postgresql://postgres@127.0.0.1:5432/x")

    class InTransaction:
        def is_in_transaction(self) -> bool:
            return True

        async def execute(self, query: str, *args: object) -> str:
            raise AssertionError("never reached")

        async def fetchval(self, query: str, *args: object) -> object:
            raise AssertionError("never reached")

    with pytest.raises(UsageError, match=r"pip install 'meshkit\[postgres\]'"):
        await PostgresOutbox.record(InTransaction(), "order.created", {})
    with pytest.raises(UsageError, match=r"pip install 'meshkit\[postgres\]'"):
        await PostgresInbox("billing", retention=60).record(InTransaction(), "m-1")

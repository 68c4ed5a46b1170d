"""The PostgreSQL outbox without a server: importable without asyncpg, and its options checked."""

import subprocess
import sys

import pytest

from meshkit.bus.postgres import PostgresInbox, PostgresOutbox
from meshkit.errors import ConfigError, UsageError


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


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app:secret@127.0.0.1:abc/orders",
        "postgresql://app:secret@127.0.0.1:99999/orders",
        "postgresql://app:secret@[::1/orders",
        "mysql://app:secret@127.0.0.1/orders",
        "127.0.0.1:5432",
        42,
    ],
)
def test_a_malformed_dsn_is_a_config_error_that_keeps_the_password_out(dsn: object) -> None:
    with pytest.raises(ConfigError) as caught:
        PostgresOutbox(dsn)  # type: ignore[arg-type]
    assert caught.value.key == "dsn"
    assert "postgresql://" in str(caught.value)
    assert "secret" not in str(caught.value)
    assert caught.value.__cause__ is None


@pytest.mark.parametrize("timeout", [0, 3601, float("inf")])
def test_a_bad_timeout_is_a_config_error(timeout: float) -> None:
    with pytest.raises(ConfigError) as caught:
        PostgresOutbox("postgresql://postgres@127.0.0.1:5432/x", timeout=timeout)
    assert caught.value.key == "timeout"


async def test_a_hold_past_what_postgresql_takes_is_a_config_error() -> None:
    """idle_in_transaction_session_timeout is 32-bit milliseconds: at most 24.8 days."""
    pytest.importorskip("asyncpg", reason="install it with: pip install 'meshkit[postgres]'")
    store = PostgresOutbox("postgresql://postgres@127.0.0.1:5432/x")
    try:
        with pytest.raises(ConfigError) as caught:
            await store.claim(10, hold=2**31 / 1000)
        assert caught.value.key == "hold"
    finally:
        await store.aclose()

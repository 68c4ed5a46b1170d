"""The PostgreSQL saga store without a server: importable without asyncpg, its options checked."""

import subprocess
import sys

import pytest

from meshkit.errors import ConfigError, UsageError


def test_the_module_imports_without_asyncpg() -> None:
    """asyncpg is imported on first use, never at import time."""
    code = "import sys; sys.modules['asyncpg'] = None; import meshkit.saga.postgres"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_using_it_without_asyncpg_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from meshkit.saga.postgres import PostgresSagaStore

    monkeypatch.setitem(sys.modules, "asyncpg", None)
    with pytest.raises(UsageError, match=r"pip install 'meshkit\[postgres\]'"):
        PostgresSagaStore("postgresql://postgres@127.0.0.1:5432/x")


@pytest.mark.parametrize(
    ("option", "value"),
    [("timeout", 0), ("timeout", float("inf")), ("batch", 0), ("readers", 0)],
)
def test_a_bad_option_is_a_config_error_naming_it(option: str, value: float) -> None:
    pytest.importorskip("asyncpg", reason="install it with: pip install 'meshkit[postgres]'")
    from meshkit.saga.postgres import PostgresSagaStore

    with pytest.raises(ConfigError) as caught:
        PostgresSagaStore("postgresql://postgres@127.0.0.1:5432/x", **{option: value})  # type: ignore[arg-type]
    assert caught.value.key == option

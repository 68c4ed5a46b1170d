"""The registration token: long enough, and readable by its owner only."""

import stat
from pathlib import Path

import pytest

from meshkit.control import load_token
from meshkit.errors import ConfigError


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_token_is_random_and_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Created on first use with mode 0600; read back the same afterwards."""
    monkeypatch.delenv("MESHKIT_TOKEN", raising=False)
    token = load_token(tmp_path, create=True)
    assert len(token) >= 32
    assert mode(tmp_path / "token") == 0o600
    assert load_token(tmp_path, create=False) == token
    assert load_token(tmp_path / "other", create=True) != token


def test_a_readable_token_file_is_made_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token file others could read is narrowed to 0600 when loaded."""
    monkeypatch.delenv("MESHKIT_TOKEN", raising=False)
    (tmp_path / "token").write_text("0123456789abcdefXYZ\n")
    (tmp_path / "token").chmod(0o644)
    assert load_token(tmp_path, create=False) == "0123456789abcdefXYZ"
    assert mode(tmp_path / "token") == 0o600


def test_a_short_token_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under 16 characters, from the environment or a file, is a ConfigError naming where."""
    monkeypatch.setenv("MESHKIT_TOKEN", "secret")
    with pytest.raises(ConfigError, match="MESHKIT_TOKEN is shorter than 16"):
        load_token(tmp_path, create=True)
    monkeypatch.delenv("MESHKIT_TOKEN")
    (tmp_path / "token").write_text("short\n")
    with pytest.raises(ConfigError, match="token is shorter than 16"):
        load_token(tmp_path, create=True)


def test_no_token_without_create_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MESHKIT_TOKEN", raising=False)
    with pytest.raises(ConfigError, match=f"no token file at {tmp_path / 'token'}"):
        load_token(tmp_path, create=False)

"""The shared secret that lets a process register with the control plane."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from meshkit import _env
from meshkit.errors import ConfigError, EnvironmentFaultError

__all__ = ["TOKEN_ENV", "load_token", "token_path"]

TOKEN_ENV = _env.TOKEN


def _checked(token: str, source: str) -> str:
    if len(token) < 16:
        raise ConfigError("token", f"the token from {source} is shorter than 16 characters")
    return token


def token_path(data_dir: Path) -> Path:
    return data_dir / "token"


def load_token(data_dir: Path, *, create: bool) -> str:
    """The token from ``$MESHKIT_TOKEN``, else from ``data_dir/token``.

    With ``create``, a missing file is made with a new random token, readable
    by its owner only. Raises ``ConfigError`` if there is no token to be had.
    """
    token = _env.token()
    if token:
        return _checked(token, TOKEN_ENV)
    path = token_path(data_dir)
    try:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)  # it grants registration: nobody else may read it
        return _checked(path.read_text().strip(), str(path))
    except FileNotFoundError:
        if not create:
            raise ConfigError(
                "token", f"no {TOKEN_ENV} in the environment and no token file at {path}"
            ) from None
    except OSError as error:
        raise EnvironmentFaultError(f"cannot read the token at {path}: {error}") from error
    token = secrets.token_urlsafe(32)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(token + "\n")
    except FileExistsError:
        return _checked(path.read_text().strip(), str(path))  # another process was first
    except OSError as error:
        raise EnvironmentFaultError(f"cannot write the token at {path}: {error}") from error
    return token

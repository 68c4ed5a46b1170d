"""Fixtures the conformance modules share."""

import importlib
import secrets
from collections.abc import AsyncIterator

import pytest

from meshkit.testing.servers import backend_missing

POSTGRES = "postgresql://postgres@127.0.0.1:5432"


@pytest.fixture
async def empty_database() -> AsyncIterator[str]:
    """The DSN of a new, empty PostgreSQL database, dropped after the test (whatever is
    connected)."""
    try:
        asyncpg = importlib.import_module("asyncpg")
    except ImportError:
        backend_missing("asyncpg", "install it with: pip install 'meshkit[postgres]'")
    try:
        admin = await asyncpg.connect(f"{POSTGRES}/postgres", timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError):
        backend_missing(
            "PostgreSQL at 127.0.0.1:5432", "install it with: apt-get install postgresql"
        )
    name = f"meshkit_test_{secrets.token_hex(6)}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"{POSTGRES}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

"""What meshkit's PostgreSQL stores share: asyncpg on demand, a checked DSN, the schema lock.

The outbox (``meshkit.bus.postgres``) and the saga log
(``meshkit.saga.postgres``) both keep their tables in a service's own
database through asyncpg; the rules below are theirs alike.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from meshkit._optional import require
from meshkit.errors import ConfigError

__all__ = ["SCHEMA_LOCK", "asyncpg", "faults", "where"]

# Serialises the creation of meshkit's tables ("mksc" in the high half of the
# key): two replicas running CREATE TABLE IF NOT EXISTS at once can collide
# on the catalog's unique index, whatever the IF NOT EXISTS.
SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(7884522441681141760)"


def asyncpg(what: str) -> Any:
    """The asyncpg module, or a ``UsageError``: ``what`` needs ``pip install meshkit[postgres]``."""
    return require("asyncpg", extra="postgres", what=what)


def faults(module: Any) -> tuple[type[BaseException], ...]:
    """What asyncpg and the network raise when the database fails a store's own statement."""
    return (
        module.PostgresError,
        module.InterfaceError,
        module.InternalClientError,
        OSError,
        TimeoutError,
    )


def where(dsn: object) -> str:
    """Where ``dsn`` points, to name in errors without its password; else ``ConfigError``."""
    expected = "must look like postgresql://user@127.0.0.1:5432/db"
    if not isinstance(dsn, str):
        raise ConfigError("dsn", f"{expected}, got {type(dsn).__name__}")
    try:
        parts = urlsplit(dsn)
        host, port = parts.hostname, parts.port
    except ValueError as error:  # a bad port, an unclosed [IPv6 address
        # Not chained: some of urllib's messages quote the netloc, password and all.
        raise ConfigError("dsn", f"{expected}: {_without_password(str(error), dsn)}") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError("dsn", f"{expected}, got a {parts.scheme or 'scheme-less'} URL")
    return f"PostgreSQL at {host or 'localhost'}:{port or 5432}"


def _without_password(text: str, dsn: str) -> str:
    userinfo = dsn.partition("://")[2].split("/", 1)[0].rpartition("@")[0]
    return text.replace(userinfo, "***") if userinfo else text

"""The embedded registry's state on disk: registrations, the epoch and the index.

Only membership changes are written (a registration, a removal, an expiry),
never renewals: thousands of renewals a second would otherwise each cost a
write, and they need not survive a restart, because a restarted control
plane gives every saved instance one fresh TTL in which to renew.

SQLite in WAL mode with ``synchronous=NORMAL``: a committed transaction
survives the process being killed (it is in the WAL, which the OS holds), and
only an OS crash or power loss can lose the last ones. For a registry that
is enough: an instance whose registration was lost gets a "lease not found"
on its next renewal and registers again.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec

from meshkit._sqlite import open_store, transaction
from meshkit.errors import EnvironmentFaultError
from meshkit.registry._model import Instance

__all__ = ["RegistryStore", "SavedLease"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS weights (service TEXT PRIMARY KEY, weights BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
    key TEXT PRIMARY KEY,
    lease_id INTEGER NOT NULL UNIQUE,
    instance BLOB NOT NULL,
    ttl REAL NOT NULL
);
"""

SavedLease = tuple[int, str, Instance, float]  # lease id, key, instance, ttl

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Instance).decode
_decode_weights = msgspec.json.Decoder(dict[str, int]).decode


class RegistryStore:
    """One SQLite file. Every method either completes or raises ``EnvironmentFaultError``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = open_store(path, _SCHEMA, what="the registry", synchronous="NORMAL")

    def load(self) -> tuple[int | None, int, list[SavedLease]]:
        """``(epoch, index, leases)``; the epoch is ``None`` for a new store."""
        try:
            meta = dict(self._db.execute("SELECT name, value FROM meta").fetchall())
            rows = self._db.execute("SELECT lease_id, key, instance, ttl FROM leases").fetchall()
        except sqlite3.Error as error:
            raise EnvironmentFaultError(
                f"cannot read the registry at {self.path}: {error}"
            ) from error
        leases = [(lease_id, key, _decode(blob), ttl) for lease_id, key, blob, ttl in rows]
        return meta.get("epoch"), int(meta.get("index", 0)), leases

    def weights(self) -> dict[str, dict[str, int]]:
        """Every service's traffic weights, as last set."""
        try:
            rows = self._db.execute("SELECT service, weights FROM weights").fetchall()
        except sqlite3.Error as error:
            raise EnvironmentFaultError(
                f"cannot read the registry at {self.path}: {error}"
            ) from error
        return {service: _decode_weights(blob) for service, blob in rows}

    def set_weights(self, service: str, weights: dict[str, int] | None, index: int) -> None:
        """Record ``service``'s weights (``None``: none) at ``index``."""
        change = (
            ("DELETE FROM weights WHERE service = ?", (service,))
            if weights is None
            else ("INSERT OR REPLACE INTO weights VALUES (?, ?)", (service, _encode(weights)))
        )
        self._write([change, ("INSERT OR REPLACE INTO meta VALUES ('index', ?)", (index,))])

    def set_epoch(self, epoch: int, index: int) -> None:
        self._write(
            [
                ("INSERT OR REPLACE INTO meta VALUES ('epoch', ?)", (epoch,)),
                ("INSERT OR REPLACE INTO meta VALUES ('index', ?)", (index,)),
            ]
        )

    def save(self, lease_id: int, key: str, instance: Instance, ttl: float, index: int) -> None:
        """Record a registration (replacing the key's earlier one) at ``index``."""
        self._write(
            [
                (
                    "INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?)",
                    (key, lease_id, _encode(instance), ttl),
                ),
                ("INSERT OR REPLACE INTO meta VALUES ('index', ?)", (index,)),
            ]
        )

    def delete(self, lease_id: int, index: int) -> None:
        """Forget a removed or expired lease at ``index``."""
        self._write(
            [
                ("DELETE FROM leases WHERE lease_id = ?", (lease_id,)),
                ("INSERT OR REPLACE INTO meta VALUES ('index', ?)", (index,)),
            ]
        )

    def close(self) -> None:
        self._db.close()

    def _write(self, statements: list[tuple[str, tuple[object, ...]]]) -> None:
        def run(db: sqlite3.Connection) -> None:
            for sql, parameters in statements:
                db.execute(sql, parameters)

        transaction(self._db, run, what=f"the registry at {self.path}")

"""The app's database behind one small interface (:class:`Database`): SQLite and PostgreSQL.

:func:`of` gives the engine the app's settings name; :mod:`.migrations` runs yoyo-migrations on
any of them. A third engine is one module implementing :class:`Database` and one line here.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from nesop_deb.runtime.database.base import (
    Database,
    DatabaseError,
    Held,
    MigrationError,
    Owner,
    as_owner,
)
from nesop_deb.runtime.database.migrations import Migrations, applied_ids, apply, read, rollback
from nesop_deb.runtime.database.sqlite import SIDECARS

# what a failed read of any engine raises
ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, DatabaseError)

SCHEMES = ("sqlite", "postgresql")


def of(
    url: str, *, owner: Owner, host_path: Path, app_root: Path, credentials: Path | None, lock_timeout: float
) -> Database:
    """The engine for ``url``. ``host_path``: where a SQLite URL's path is on this host (under
    $DPKG_ROOT); ``owner``: the app's account."""
    if url.startswith("sqlite:///"):
        from nesop_deb.runtime.database.sqlite import SqliteDatabase

        return SqliteDatabase(host_path, owner, app_root)
    if url.startswith("postgresql://"):
        from nesop_deb.runtime.database.postgresql import PostgresDatabase

        return PostgresDatabase(url, owner, credentials, lock_timeout)
    raise DatabaseError(
        f"database {url!r}: not an engine the runtime knows", hint="use a sqlite:/// or postgresql:// URL"
    )


__all__ = [
    "ERRORS",
    "SCHEMES",
    "SIDECARS",
    "Database",
    "DatabaseError",
    "Held",
    "MigrationError",
    "Migrations",
    "Owner",
    "applied_ids",
    "apply",
    "as_owner",
    "of",
    "read",
    "rollback",
]

"""The app's database: consistent snapshots and migrations through yoyo-migrations.

yoyo applies each migration in its own transaction (SQLite has transactional DDL) and records it
in its ``_yoyo_migration`` table; we only choose which migrations and in which direction.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nesop_deb.errors import NesopError
from nesop_deb.runtime.fsutil import fsync_dir, sha256_file


class MigrationError(NesopError):
    """A migration failed (its own transaction was rolled back by the database)."""


def snapshot(db: Path, dest: Path) -> str:
    """Copy a live SQLite database consistently (the online backup API); return its sha256."""
    tmp = _part(dest)
    src = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        _backup(src, tmp)
        return _finish(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not also keep half a copy
        raise
    finally:
        src.close()


def _part(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    return tmp


def _backup(src: sqlite3.Connection, tmp: Path) -> None:
    out = sqlite3.connect(tmp)
    try:
        src.backup(out)
    finally:
        out.close()


def _finish(tmp: Path, dest: Path) -> str:
    """Make the copy durable and root-only under its final name; return its sha256."""
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    tmp.chmod(0o600)
    tmp.replace(dest)
    fsync_dir(dest.parent)
    return sha256_file(dest)


@dataclass
class HeldSnapshot:
    """A snapshot taken while the app runs, and the open connection that can tell if it still holds.

    ``PRAGMA data_version`` on one connection changes whenever another connection (of any process)
    has committed to the database since the last time this connection read it; it never changes
    for the connection's own writes, and this one writes nothing.
    """

    db: Path
    path: Path
    sha256: str
    size: int
    data_version: int
    file_id: tuple[int, int]  # (st_dev, st_ino) of the database before the copy
    conn: sqlite3.Connection | None

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
            self.conn = None

    def unchanged(self) -> bool:
        """Whether the database is still exactly what the snapshot holds (closes the connection).

        False whenever that cannot be shown: the connection is gone, the database file was
        replaced or removed, or SQLite could not answer.
        """
        conn, self.conn = self.conn, None
        if conn is None:
            return False
        try:
            if _file_id(self.db) != self.file_id:
                return False
            return int(conn.execute("PRAGMA data_version").fetchone()[0]) == self.data_version
        except (OSError, sqlite3.Error):
            return False
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.close()


def _file_id(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def snapshot_held(db: Path, dest: Path) -> HeldSnapshot:
    """:func:`snapshot`, keeping the connection open to check later whether anything was committed.

    The version number is read inside the same read transaction as the copy, so it belongs to
    exactly the copied state: a commit that lands right after the copy, before the number could
    be read in a transaction of its own, still changes it. In WAL mode the read transaction does
    not hold up the app's writers; with a rollback journal they wait for the copy, as they do for
    any reader.
    """
    file_id = _file_id(db)  # before the connection opens: a later replacement shows as a change
    tmp = _part(dest)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
    try:
        conn.execute("BEGIN")
        version = int(conn.execute("PRAGMA data_version").fetchone()[0])
        _backup(conn, tmp)
        conn.execute("COMMIT")
        digest = _finish(tmp, dest)
    except BaseException:
        conn.close()
        tmp.unlink(missing_ok=True)
        raise
    return HeldSnapshot(db, dest, digest, dest.stat().st_size, version, file_id, conn)


def restore(snapshot_file: Path, db: Path, keep_current_as: Path | None) -> None:
    """Put a snapshot back in place of ``db`` (the app is stopped), keeping the current one aside."""
    st = db.stat() if db.exists() else None
    if keep_current_as is not None and db.exists():
        keep_current_as.parent.mkdir(parents=True, exist_ok=True)
        snapshot(db, keep_current_as)
    tmp = db.with_name(db.name + ".nesop-tmp")
    shutil.copyfile(snapshot_file, tmp)
    if st is not None:
        os.chown(tmp, st.st_uid, st.st_gid)
        tmp.chmod(st.st_mode & 0o7777)
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    # the old WAL and shared-memory files belong to the database being replaced
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            db.with_name(db.name + suffix).unlink()
    tmp.replace(db)
    fsync_dir(db.parent)


@contextlib.contextmanager
def _backend(url: str) -> Iterator[Any]:
    from yoyo import get_backend

    backend = get_backend(url)
    try:
        yield backend
    finally:
        with contextlib.suppress(Exception):
            backend.connection.close()


Migrations = Any  # yoyo's MigrationList, every migration in it loaded


def read(directory: Path, ids: Sequence[str]) -> Migrations:
    """The migrations ``ids`` of ``directory``, read and parsed (rollbacks included).

    Importing yoyo and parsing take tens of milliseconds: an update does both before the stop
    and hands the result to :func:`apply` (a rollback to :func:`rollback`), so that the outage
    pays only for running them, and a migration that cannot be parsed fails the update while
    the old app still serves.
    """
    from yoyo import read_migrations

    wanted = set(ids)
    migrations = read_migrations(str(directory)).filter(lambda m: m.id in wanted)
    missing = sorted(wanted - {m.id for m in migrations})
    if missing:
        raise MigrationError(f"{directory}: migration(s) {', '.join(missing)} not found")
    for m in migrations:
        try:
            m.load()  # yoyo reads a migration's files only when first asked for its steps
        except Exception as exc:  # yoyo's own BadMigration, or whatever a malformed file raises
            raise MigrationError(f"cannot read migration {m.id}: {exc!r}") from exc
    return migrations


def applied_ids(url: str) -> list[str]:
    """Ids of the migrations recorded in the tracking table, in the order applied.

    Read-only for a database yoyo never touched (a hand-deployed app): opening it through yoyo
    would create yoyo's tables, and validate or an undo must not change the app's schema.
    """
    if url.startswith("sqlite:///") and not _has_table(Path(url[len("sqlite:///") :]), "_yoyo_migration"):
        return []
    with _backend(url) as backend:
        backend.ensure_internal_schema_updated()
        rows = backend.execute("SELECT migration_id FROM _yoyo_migration ORDER BY applied_at_utc").fetchall()
        return [str(r[0]) for r in rows]


def _has_table(db: Path, name: str) -> bool:
    if not db.exists():
        return False
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        return found.fetchone() is not None
    finally:
        conn.close()


def apply(url: str, directory: Path, ids: Sequence[str], migrations: Migrations = None) -> list[str]:
    """Apply those of ``ids`` not yet applied, in name order; return the ids applied now.

    ``migrations``: what :func:`read` returned for the same ``directory`` and ``ids``, if the
    caller read them already."""
    from yoyo.exceptions import LockTimeout

    with _backend(url) as backend:
        try:
            with backend.lock():
                todo = backend.to_apply(read(directory, ids) if migrations is None else migrations)
                done: list[str] = []
                for m in sorted(todo, key=lambda m: m.id):
                    try:
                        backend.apply_one(m)
                    except Exception as exc:
                        raise MigrationError(f"migration {m.id} failed: {exc}") from exc
                    done.append(m.id)
                return done
        except LockTimeout as exc:
            raise MigrationError(f"the database migration lock is held: {exc}") from exc


def rollback(url: str, directory: Path, ids: Sequence[str], migrations: Migrations = None) -> list[str]:
    """Roll back those of ``ids`` that are applied, newest first; return the ids rolled back.

    ``migrations``: as for :func:`apply`."""
    with _backend(url) as backend, backend.lock():
        todo = backend.to_rollback(read(directory, ids) if migrations is None else migrations)
        done: list[str] = []
        for m in sorted(todo, key=lambda m: m.id, reverse=True):
            try:
                backend.rollback_one(m)
            except Exception as exc:
                raise MigrationError(f"rollback of migration {m.id} failed: {exc}") from exc
            done.append(m.id)
        return done


def quick_check(db: Path) -> str:
    """SQLite's own consistency check; 'ok' when the file is sound."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return str(conn.execute("PRAGMA quick_check").fetchone()[0])
    finally:
        conn.close()

"""The app's database: consistent snapshots and migrations through yoyo-migrations.

yoyo applies each migration in its own transaction (SQLite has transactional DDL) and records it
in its ``_yoyo_migration`` table; we only choose which migrations and in which direction.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nesop_deb.errors import NesopError
from nesop_deb.runtime import owner as owner_
from nesop_deb.runtime.safefs import TMP_SUFFIX, LinkRefused, Tree

SIDECARS = ("-wal", "-shm", "-journal")  # the files SQLite keeps beside a database


class MigrationError(NesopError):
    """A migration failed (its own transaction was rolled back by the database)."""


Owner = tuple[int, int] | None  # (uid, gid) to read and migrate as; None: this process's own


def snapshot(db: Path, dest: Tree, name: str, owner: Owner = None) -> str:
    """Copy a live SQLite database consistently (the online backup API) to ``dest/name``; return
    its sha256. ``owner``: read it as that account (see :func:`_as_owner`)."""
    copy = _reader(owner)(db, hold=False)
    try:
        return _store(copy.data, dest, name)
    finally:
        copy.close()


def _connect_ro(db: Path, **kwargs: Any) -> sqlite3.Connection:
    """A read-only connection to the live database, which must be a file, not a link."""
    st = db.lstat()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        raise LinkRefused(db, "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file")
    conn: sqlite3.Connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, **kwargs)
    return conn


def _serialize(src: sqlite3.Connection) -> bytes:
    """The database as one byte string (through memory: SQLite writes files only by path)."""
    mem = sqlite3.connect(":memory:")
    try:
        src.backup(mem)
        return mem.serialize()
    finally:
        mem.close()


def _store(data: bytes, dest: Tree, name: str) -> str:
    """Write a copy into root's backup through its descriptor; return its sha256."""
    part = name + ".part"
    dest.write_new(part, data, 0o600)  # a full disk leaves no half copy (write_new removes it)
    dest.replace(part, name)
    return hashlib.sha256(data).hexdigest()


@dataclass
class Copy:
    """A consistent copy of the database, the ``PRAGMA data_version`` it was taken at, and (when
    held) a way to read that number again on the same connection."""

    data: bytes
    data_version: int
    probe: Callable[[], int] | None
    close: Callable[[], None]


def _copy_here(db: Path, *, hold: bool) -> Copy:
    """Copy in this process. The version is read inside the same read transaction as the copy,
    so it belongs to exactly the copied state."""
    conn = _connect_ro(db, isolation_level=None)
    try:
        conn.execute("BEGIN")
        version = int(conn.execute("PRAGMA data_version").fetchone()[0])
        data = _serialize(conn)
        conn.execute("COMMIT")
    except BaseException:
        conn.close()
        raise
    if not hold:
        conn.close()
        return Copy(data, version, None, lambda: None)
    return Copy(data, version, lambda: int(conn.execute("PRAGMA data_version").fetchone()[0]), conn.close)


def _reader(owner: Owner) -> Callable[..., Copy]:
    if owner is None or owner == (os.geteuid(), os.getegid()):
        return _copy_here
    return lambda db, *, hold: _copy_as(owner, db, hold=hold)


def _copy_as(owner: tuple[int, int], db: Path, *, hold: bool) -> Copy:
    """:func:`_copy_here` in a child running as the database's owner: root never opens the
    database by path, so a link planted in its place can show root nothing the owner cannot
    read. A held copy keeps the child, and its connection, until :meth:`Copy.close`."""

    def work(channel: owner_.Channel) -> None:  # pragma: no cover - runs in the child
        try:
            copy = _copy_here(db, hold=hold)
        except Exception as exc:
            channel.send(json.dumps({"error": str(exc)}).encode())
            return
        channel.send(json.dumps({"version": copy.data_version}).encode())
        channel.send(copy.data)
        while channel.recv() == b"probe" and copy.probe is not None:
            try:
                answer: dict[str, Any] = {"version": copy.probe()}
            except sqlite3.Error as exc:
                answer = {"error": str(exc)}
            channel.send(json.dumps(answer).encode())

    child = owner_.Child(owner, work, f"reading {db}")
    try:
        head = json.loads(child.recv())
        if "version" not in head:
            raise sqlite3.OperationalError(f"{db}: {head.get('error', 'no copy')}")
        data = child.recv()
    except owner_.OwnerError as exc:
        child.close()
        raise sqlite3.OperationalError(str(exc)) from None
    except BaseException:
        child.close()
        raise

    def probe() -> int:
        try:
            child.send(b"probe")
            answer = json.loads(child.recv())
        except owner_.OwnerError as exc:
            raise sqlite3.OperationalError(str(exc)) from None
        if "version" not in answer:
            raise sqlite3.OperationalError(str(answer.get("error", "the reader is gone")))
        return int(answer["version"])

    if not hold:
        child.close()
        return Copy(data, int(head["version"]), None, lambda: None)
    return Copy(data, int(head["version"]), probe, lambda: child.close(wait=False))


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
    copy: Copy | None

    def close(self) -> None:
        copy, self.copy = self.copy, None
        if copy is not None:
            with contextlib.suppress(sqlite3.Error):
                copy.close()

    def unchanged(self) -> bool:
        """Whether the database is still exactly what the snapshot holds (closes the connection).

        False whenever that cannot be shown: the connection is gone, the database file was
        replaced or removed, or SQLite could not answer.
        """
        copy = self.copy
        if copy is None or copy.probe is None:
            return False
        try:
            if _file_id(self.db) != self.file_id:
                return False
            return copy.probe() == self.data_version
        except (OSError, ValueError, sqlite3.Error):
            return False
        finally:
            self.close()


def _file_id(path: Path) -> tuple[int, int]:
    st = path.lstat()
    return st.st_dev, st.st_ino


def snapshot_held(db: Path, dest: Tree, name: str, owner: Owner = None) -> HeldSnapshot:
    """:func:`snapshot`, keeping the connection open to check later whether anything was committed.

    In WAL mode the copy's read transaction does not hold up the app's writers; with a rollback
    journal they wait for the copy, as they do for any reader.
    """
    file_id = _file_id(db)  # before the connection opens: a later replacement shows as a change
    copy = _reader(owner)(db, hold=True)
    try:
        digest = _store(copy.data, dest, name)
    except BaseException:
        copy.close()
        raise
    size, copy.data = len(copy.data), b""  # on disk now: not held in memory through the stop
    return HeldSnapshot(db, dest.path / name, digest, size, copy.data_version, file_id, copy)


def restore(
    backup: Tree, name: str, db: Path, app_root: Path, keep_current_as: str | None, owner: Owner = None
) -> None:
    """Put ``backup/name`` back in place of ``db`` (the app is stopped), keeping the current one
    aside as ``backup/keep_current_as``. Owner and mode stay those of the database replaced."""
    with _directory_of(db, app_root) as directory:
        for suffix in SIDECARS:
            side = directory.lstat(db.name + suffix)
            if side is not None and stat.S_ISLNK(side.st_mode):
                directory.unlink(db.name + suffix)  # planted: SQLite could open nothing with it there
        st = directory.lstat(db.name)
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise LinkRefused(db, "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file")
        if keep_current_as is not None and st is not None:
            snapshot(db, backup, keep_current_as, owner)
        tmp = db.name + TMP_SUFFIX
        if st is None:
            directory.copy_from(backup, name, tmp, 0o640)
        else:
            directory.copy_from(backup, name, tmp, stat.S_IMODE(st.st_mode) & 0o777, st.st_uid, st.st_gid)
        # the old WAL and shared-memory files belong to the database being replaced
        for suffix in ("-wal", "-shm"):
            directory.unlink(db.name + suffix, durable=False)
        directory.replace(tmp, db.name)


def _directory_of(db: Path, app_root: Path) -> Tree:
    """The database's directory, walked from the app root when it is inside it, else from ``/``
    (no component on the way may be a link: one the app's account swapped in would lead root's
    restore into a directory of its choosing)."""
    top = app_root if app_root in db.parents else Path(db.anchor)
    with Tree.open(top) as root:
        rel = db.parent.relative_to(top)
        return root.subdir(str(rel)) if str(rel) != "." else Tree(os.dup(root.fd), root.path)


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


def _as_owner(owner: Owner, fn: Callable[[], list[str]]) -> list[str]:
    """Run ``fn`` as the database's owner (the app's account) in a forked child.

    SQLite creates and opens the database's journal, WAL and shared-memory files by path, in a
    directory the app's account can write to: as root it would follow any link planted there.
    As the owner it can reach only what that account already can, and every file it creates is
    the owner's without a chown. The migrations were parsed in this process before: the child
    need not read root's state directory. See :mod:`nesop_deb.runtime.owner` for the deadline.
    """
    if owner is None or owner == (os.geteuid(), os.getegid()):
        return fn()

    def work(channel: owner_.Channel) -> None:  # pragma: no cover - runs in the child
        try:
            result: dict[str, Any] = {"ok": fn()}
        except BaseException as exc:  # everything goes back to root
            result = {"error": str(exc)}
        channel.send(json.dumps(result).encode())

    child = owner_.Child(owner, work, "the database work")
    try:
        result = json.loads(child.recv())
    except owner_.OwnerError as exc:
        raise MigrationError(str(exc)) from None
    except ValueError:
        raise MigrationError(f"the process running as uid {owner[0]} ended without a result") from None
    finally:
        child.close()
    if "error" in result:
        raise MigrationError(str(result["error"]))
    return [str(i) for i in result["ok"]]


def applied_ids(url: str, owner: Owner = None) -> list[str]:
    """Ids of the migrations recorded in the tracking table, in the order applied.

    Read-only for a database yoyo never touched (a hand-deployed app): opening it through yoyo
    would create yoyo's tables, and validate or an undo must not change the app's schema.
    """

    def read_ids() -> list[str]:
        if url.startswith("sqlite:///") and not _has_table(Path(url[len("sqlite:///") :]), "_yoyo_migration"):
            return []
        with _backend(url) as backend:
            backend.ensure_internal_schema_updated()
            rows = backend.execute(
                "SELECT migration_id FROM _yoyo_migration ORDER BY applied_at_utc"
            ).fetchall()
            return [str(r[0]) for r in rows]

    return _as_owner(owner, read_ids)


def _has_table(db: Path, name: str) -> bool:
    if not db.exists():
        return False
    conn = _connect_ro(db)
    try:
        found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        return found.fetchone() is not None
    finally:
        conn.close()


def apply(
    url: str, directory: Path, ids: Sequence[str], migrations: Migrations = None, owner: Owner = None
) -> list[str]:
    """Apply those of ``ids`` not yet applied, in name order; return the ids applied now.

    ``migrations``: what :func:`read` returned for the same ``directory`` and ``ids``, if the
    caller read them already. ``owner``: see :func:`_as_owner`."""
    from yoyo.exceptions import LockTimeout

    parsed = read(directory, ids) if migrations is None else migrations

    def run() -> list[str]:
        with _backend(url) as backend:
            try:
                with backend.lock():
                    todo = backend.to_apply(parsed)
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

    return _as_owner(owner, run)


def rollback(
    url: str, directory: Path, ids: Sequence[str], migrations: Migrations = None, owner: Owner = None
) -> list[str]:
    """Roll back those of ``ids`` that are applied, newest first; return the ids rolled back.

    ``migrations``, ``owner``: as for :func:`apply`."""
    parsed = read(directory, ids) if migrations is None else migrations

    def run() -> list[str]:
        with _backend(url) as backend, backend.lock():
            todo = backend.to_rollback(parsed)
            done: list[str] = []
            for m in sorted(todo, key=lambda m: m.id, reverse=True):
                try:
                    backend.rollback_one(m)
                except Exception as exc:
                    raise MigrationError(f"rollback of migration {m.id} failed: {exc}") from exc
                done.append(m.id)
            return done

    return _as_owner(owner, run)


def quick_check(db: Path, owner: Owner = None) -> str:
    """SQLite's own consistency check, as ``owner``; 'ok' when the file is sound."""

    def check() -> list[str]:
        conn = _connect_ro(db)
        try:
            return [str(conn.execute("PRAGMA quick_check").fetchone()[0])]
        finally:
            conn.close()

    try:
        return _as_owner(owner, check)[0]
    except MigrationError as exc:  # what the child could not open, as the caller expects it
        raise sqlite3.OperationalError(str(exc)) from None

"""SQLite: consistent snapshots through the online backup API, restore by rename, and the
cheap check after the stop (``PRAGMA data_version``). Every read of the live database runs as
its owner (see :func:`.base.as_owner`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from nesop_deb.runtime import owner as owner_
from nesop_deb.runtime.database.base import Database, MigrationError, Owner, as_owner
from nesop_deb.runtime.safefs import TMP_SUFFIX, LinkRefused, Tree

SIDECARS = ("-wal", "-shm", "-journal")  # the files SQLite keeps beside a database


def snapshot(db: Path, dest: Tree, name: str, owner: Owner = None) -> str:
    """Copy a live SQLite database consistently (the online backup API) to ``dest/name``; return
    its sha256. ``owner``: read it as that account (see :func:`.base.as_owner`)."""
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


def _has_table(db: Path, name: str) -> bool:
    conn = _connect_ro(db)
    try:
        found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        return found.fetchone() is not None
    finally:
        conn.close()


def quick_check(db: Path, owner: Owner = None) -> str:
    """SQLite's own consistency check, as ``owner``; 'ok' when the file is sound."""

    def check() -> list[str]:
        conn = _connect_ro(db)
        try:
            return [str(conn.execute("PRAGMA quick_check").fetchone()[0])]
        finally:
            conn.close()

    try:
        return as_owner(owner, check)[0]
    except MigrationError as exc:  # what the child could not open, as the caller expects it
        raise sqlite3.OperationalError(str(exc)) from None


class SqliteDatabase(Database):
    """A SQLite file (``sqlite:////absolute/path``), in the app's tree or outside it."""

    kind = "sqlite"
    snapshot_file = "database.sqlite3"
    errors: ClassVar[tuple[type[BaseException], ...]] = (sqlite3.Error,)

    def __init__(self, path: Path, owner: Owner, app_root: Path) -> None:
        super().__init__(f"sqlite:///{path}", owner)
        self.path = path
        self.app_root = app_root

    @property
    def migration_url(self) -> str:
        return self.url

    def exists(self) -> bool:
        return self.path.exists()

    def has_table(self, name: str) -> bool:
        return self.exists() and _has_table(self.path, name)

    def snapshot(self, dest: Tree, name: str) -> str:
        return snapshot(self.path, dest, name, self.owner)

    def snapshot_held(self, dest: Tree, name: str) -> HeldSnapshot:
        return snapshot_held(self.path, dest, name, self.owner)

    def restore(self, backup: Tree, name: str, keep_current_as: str | None) -> None:
        restore(backup, name, self.path, self.app_root, keep_current_as, self.owner)

    def check(self) -> str:
        return quick_check(self.path, self.owner)

"""The database is read and migrated as its owner (the app's account), never by root by path."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nesop_deb.runtime import database, owner
from nesop_deb.runtime.database import sqlite
from tests.unit.runtime_fixtures import M1, M2, write_migrations

NOBODY = (65534, 65534)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="changing to another account needs root")


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory the other account can reach (pytest's own tmp_path is root-only)."""
    top = Path(tempfile.mkdtemp(prefix="nesop-owner-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    top.chmod(0o755)
    data = top / "data"
    data.mkdir()
    os.chown(data, *NOBODY)
    yield top
    shutil.rmtree(top)


def make_db(path: Path, owner: tuple[int, int], rows: int = 2) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x INTEGER)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(rows)])
    conn.commit()
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        p = path.with_name(path.name + suffix)
        if p.exists():
            os.chown(p, *owner)


def rows(data: bytes) -> int:
    with tempfile.NamedTemporaryFile(suffix=".db") as fh:
        fh.write(data)
        fh.flush()
        return _count(fh.name)


def _count(path: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])
    finally:
        conn.close()


def test_a_held_copy_as_the_owner_sees_later_commits(shared: Path) -> None:
    db = shared / "data/app.db"
    make_db(db, NOBODY)
    copy = sqlite._copy_as(NOBODY, db, hold=True)
    try:
        assert rows(copy.data) == 2
        assert copy.probe is not None
        assert copy.probe() == copy.data_version
        conn = sqlite3.connect(db)
        conn.execute("INSERT INTO t VALUES (9)")
        conn.commit()
        conn.close()
        assert copy.probe() != copy.data_version
    finally:
        copy.close()


def test_a_database_swapped_for_a_link_to_root_s_file_is_not_read(shared: Path) -> None:
    secret = shared / "root-only.db"
    make_db(secret, (0, 0), rows=5)
    secret.chmod(0o600)
    db = shared / "data/app.db"
    os.symlink(secret, db)  # what the app's account can do in its own directory

    with pytest.raises(sqlite3.Error):
        sqlite._copy_as(NOBODY, db, hold=False)


def test_migrations_as_the_owner_create_the_owner_s_files_and_follow_no_link_to_root_s(
    shared: Path, tmp_path: Path
) -> None:
    db = shared / "data/app.db"
    make_db(db, NOBODY)
    migrations = tmp_path / "migrations"
    write_migrations(migrations, [M1, M2])
    parsed = database.read(migrations, [M1.id, M2.id])

    done = database.apply(sqlite.SqliteDatabase(db, NOBODY, db.parent), migrations, [M1.id, M2.id], parsed)

    assert done == [M1.id, M2.id]
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in (shared / "data").iterdir()}
    assert owners == {NOBODY}
    assert database.applied_ids(sqlite.SqliteDatabase(db, NOBODY, db.parent)) == [M1.id, M2.id]

    # a planted -shm link to a file only root may write: as the owner, SQLite cannot use it
    target = shared / "root-file"
    target.write_bytes(b"root's\n")
    target.chmod(0o600)
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    os.symlink(target, db.with_name(db.name + "-shm"))
    with pytest.raises(database.MigrationError):
        database.applied_ids(sqlite.SqliteDatabase(db, NOBODY, db.parent))
    assert target.read_bytes() == b"root's\n"
    assert (target.stat().st_uid, target.stat().st_mode & 0o777) == (0, 0o600)


def test_the_child_keeps_none_of_root_s_descriptors(shared: Path, tmp_path: Path) -> None:
    """A fork inherits every open descriptor; the child running as the app's account must not
    keep root's (a backup directory, the lock, a file opened for writing)."""
    secret = tmp_path / "root-only"
    secret.write_bytes(b"root's\n")
    fd = os.open(secret, os.O_RDWR)
    try:
        seen = database.as_owner(NOBODY, lambda: sorted(os.listdir("/proc/self/fd")))
    finally:
        os.close(fd)
    assert str(fd) not in seen
    assert len(seen) <= 6, seen  # stdio, the two pipes, and the listing's own descriptor


def stop_myself() -> list[str]:
    os.kill(os.getpid(), signal.SIGSTOP)
    return []


def hang() -> list[str]:
    time.sleep(60)
    return []


def test_a_child_the_account_stops_is_noticed_and_killed() -> None:
    """The child is the account's process: it can SIGSTOP it; root must not wait forever."""
    started = time.monotonic()
    with pytest.raises(database.MigrationError, match="was stopped by a signal"):
        database.as_owner(NOBODY, stop_myself)
    assert time.monotonic() - started < 10


def test_a_child_that_never_answers_is_killed_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a database swapped for a FIFO does: SQLite's open blocks."""
    monkeypatch.setattr(owner, "TIMEOUT", 1.0)
    started = time.monotonic()
    with pytest.raises(database.MigrationError, match=r"no answer within 1 s; the process was killed"):
        database.as_owner(NOBODY, hang)
    assert time.monotonic() - started < 10

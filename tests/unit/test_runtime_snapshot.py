"""The database snapshot: copied before the stop, kept only when provably exact at the stop.

Real SQLite throughout: the "app" is another connection (or another process) writing to the
database. Every test looks at the rows the snapshot holds.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from nesop_deb.runtime import database


def items(db: Path) -> list[tuple[int, str]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [(int(i), str(n)) for i, n in conn.execute("SELECT id, name FROM items ORDER BY id")]
    finally:
        conn.close()


def write_in_another_process(db: Path, name: str) -> None:
    code = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1])\n"
        "c.execute('INSERT INTO items (name) VALUES (?)', (sys.argv[2],))\n"
        "c.commit()\n"
        "c.close()\n"
    )
    subprocess.run([sys.executable, "-c", code, str(db), name], check=True)


# --- the signal the check relies on -----------------------------------------------------------------


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_data_version_moves_only_with_commits_of_other_connections(tmp_path: Path, journal_mode: str) -> None:
    db = tmp_path / "app.db"
    own = sqlite3.connect(db, isolation_level=None)
    own.execute(f"PRAGMA journal_mode={journal_mode}")
    own.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")

    def version() -> int:
        return int(own.execute("PRAGMA data_version").fetchone()[0])

    start = version()
    own.execute("INSERT INTO items (name) VALUES ('own write')")
    assert version() == start, "a connection's own commits do not move its data_version"

    other = sqlite3.connect(db)
    other.execute("INSERT INTO items (name) VALUES ('other connection')")
    other.commit()
    other.close()
    after_other = version()
    assert after_other != start

    assert version() == after_other, "reading it again without a commit in between changes nothing"
    write_in_another_process(db, "other process")
    assert version() != after_other
    own.close()


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_a_held_snapshot_tells_whether_the_database_changed(tmp_path: Path, journal_mode: str) -> None:
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA journal_mode={journal_mode}")
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    conn.execute("INSERT INTO items (name) VALUES ('apple')")
    conn.commit()
    conn.close()

    quiet = database.snapshot_held(db, tmp_path / "quiet.sqlite3")
    assert items(quiet.path) == [(1, "apple")]
    assert quiet.unchanged() is True
    assert quiet.unchanged() is False, "the answer is given once: the connection is closed after it"

    busy = database.snapshot_held(db, tmp_path / "busy.sqlite3")
    write_in_another_process(db, "pear")
    assert busy.unchanged() is False
    assert items(busy.path) == [(1, "apple")]

    replaced = database.snapshot_held(db, tmp_path / "replaced.sqlite3")
    shutil.copyfile(db, tmp_path / "other.db")
    (tmp_path / "other.db").replace(db)  # same rows, another file: no version number can vouch for it
    assert replaced.unchanged() is False


def test_a_commit_right_after_the_copy_is_not_missed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The version is read in the copy's own read transaction, not after it: a commit landing
    between the end of the copy and that read would otherwise look like no change at all."""
    db = tmp_path / "app.db"
    app = sqlite3.connect(db)
    app.execute("PRAGMA journal_mode=WAL")  # a writer may commit while the copy's reader is open
    app.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    app.execute("INSERT INTO items (name) VALUES ('apple')")
    app.commit()
    real = database._backup

    def copy_then_commit(src: sqlite3.Connection, tmp: Path) -> None:
        real(src, tmp)
        app.execute("INSERT INTO items (name) VALUES ('pear')")
        app.commit()

    monkeypatch.setattr(database, "_backup", copy_then_commit)
    held = database.snapshot_held(db, tmp_path / "copy.sqlite3")

    assert items(held.path) == [(1, "apple")]
    assert held.unchanged() is False
    app.close()

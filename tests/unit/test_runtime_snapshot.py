"""The database snapshot: copied before the stop, kept only when provably exact at the stop.

Real SQLite throughout: the "app" is another connection (or another process) writing to the
database, and the fake systemd lets it commit while it is being stopped. Every test looks at the
rows the snapshot holds, and where it matters at the rows an undo puts back.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nesop_deb.runtime import apply, backup, database, operations, safefs, state, transaction
from nesop_deb.runtime.database import sqlite
from nesop_deb.runtime.fsutil import sha256_file
from tests.unit.runtime_fixtures import (
    UNIT,
    Server,
    db_dump,
    fake_server,
    install_base,
    leftovers,
    release_101,
)
from tests.unit.test_runtime_recover import crash

BASE_ITEMS = [(1, "apple"), (2, "pear")]


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    yield from fake_server(tmp_path, monkeypatch)


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


def snapshot_in_backup(server: Server) -> Path:
    backups = [d for d in server.ctx.backups_dir.iterdir() if d.name.startswith("pre_update_")]
    assert len(backups) == 1
    data = backup.read_manifest(server.ctx, backups[0])
    assert data["database"]["file"] == backup.DB_FILE
    snap = backups[0] / backup.DB_FILE
    assert sha256_file(snap) == data["database"]["sha256"]
    return snap


def apply_failing_at_start(server: Server) -> None:
    """1.0.1 (whose 0003 migration has no rollback) fails to start: the undo restores the snapshot."""
    ctx = server.ctx
    manifest = release_101(server)
    server.systemd.fail_starts = 1
    with pytest.raises(transaction.TransactionFailed) as failed:
        operations.run_apply(ctx, manifest, ctx.share, state.load(ctx))
    assert failed.value.step == "start"
    assert failed.value.undo_errors == []


def wal_app(server: Server) -> sqlite3.Connection:
    """The app's own connection to a WAL database that it never checkpoints by itself."""
    conn = sqlite3.connect(server.db)
    assert conn.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    return conn


def main_file_items(db: Path, scratch: Path) -> list[tuple[int, str]]:
    """What the database file alone holds, without its WAL."""
    alone = scratch / "main-file-only.db"
    shutil.copyfile(db, alone)
    return items(alone)


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

    here = safefs.Tree.open(tmp_path)
    quiet = sqlite.snapshot_held(db, here, "quiet.sqlite3")
    assert items(quiet.path) == [(1, "apple")]
    assert quiet.unchanged() is True
    assert quiet.unchanged() is False, "the answer is given once: the connection is closed after it"

    busy = sqlite.snapshot_held(db, here, "busy.sqlite3")
    write_in_another_process(db, "pear")
    assert busy.unchanged() is False
    assert items(busy.path) == [(1, "apple")]

    replaced = sqlite.snapshot_held(db, here, "replaced.sqlite3")
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
    real = sqlite._serialize

    def copy_then_commit(src: sqlite3.Connection) -> bytes:
        data = real(src)
        app.execute("INSERT INTO items (name) VALUES ('pear')")
        app.commit()
        return data

    monkeypatch.setattr(sqlite, "_serialize", copy_then_commit)
    here = safefs.Tree.open(tmp_path)
    held = sqlite.snapshot_held(db, here, "copy.sqlite3")

    assert items(held.path) == [(1, "apple")]
    assert held.unchanged() is False
    app.close()


# --- the transaction --------------------------------------------------------------------------------


def test_no_write_before_the_stop_keeps_the_early_copy(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    install_base(server)
    before = db_dump(server.db)
    caplog.set_level(logging.INFO, logger="nesop_deb")

    apply_failing_at_start(server)

    assert "database copied before the stop" in caplog.text
    assert "database unchanged since the copy taken before the stop (0.0 MiB): kept" in caplog.text
    assert "copied again" not in caplog.text
    assert db_dump(snapshot_in_backup(server)) == before
    assert db_dump(server.db) == before  # the undo put the snapshot back: 0003 has no rollback
    assert leftovers(server.root) == []


def test_a_write_while_the_app_stops_is_in_the_snapshot(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    install_base(server)
    caplog.set_level(logging.INFO, logger="nesop_deb")
    server.systemd.on_stop = lambda _unit: write_in_another_process(server.db, "plum")

    apply_failing_at_start(server)

    assert "database changed after the copy taken before the stop: copied again" in caplog.text
    assert items(snapshot_in_backup(server)) == [*BASE_ITEMS, (3, "plum")]
    assert items(server.db) == [*BASE_ITEMS, (3, "plum")], "the row committed while stopping survives"
    assert leftovers(server.root) == []


def test_a_successful_update_records_the_database_as_it_was_at_the_stop(server: Server) -> None:
    install_base(server)
    server.systemd.on_stop = lambda _unit: server.sql("INSERT INTO items (name) VALUES ('plum')")
    ctx = server.ctx

    operations.run_apply(ctx, release_101(server), ctx.share, state.load(ctx))

    assert items(snapshot_in_backup(server)) == [*BASE_ITEMS, (3, "plum")]
    assert items(server.db) == [(1, "APPLE"), (2, "PEAR"), (3, "PLUM")]
    assert server.systemd.verbs() == ["stop", "start"]
    assert leftovers(server.root) == []


@pytest.mark.parametrize("write_while_stopping", [False, True], ids=["quiet", "write-while-stopping"])
def test_a_wal_database_with_rows_only_in_its_wal(
    server: Server, caplog: pytest.LogCaptureFixture, tmp_path: Path, write_while_stopping: bool
) -> None:
    install_base(server)
    app = wal_app(server)
    app.execute("INSERT INTO items (name) VALUES ('fig')")
    app.commit()
    assert (3, "fig") not in main_file_items(server.db, tmp_path), "the row must sit in the WAL only"

    def stopping(_unit: str) -> None:
        if write_while_stopping:
            app.execute("INSERT INTO items (name) VALUES ('plum')")
            app.commit()
            assert (4, "plum") not in main_file_items(server.db, tmp_path)
        app.close()

    server.systemd.on_stop = stopping
    caplog.set_level(logging.INFO, logger="nesop_deb")

    apply_failing_at_start(server)

    expected = [*BASE_ITEMS, (3, "fig"), *([(4, "plum")] if write_while_stopping else [])]
    assert items(snapshot_in_backup(server)) == expected
    assert items(server.db) == expected
    said = "copied again" if write_while_stopping else "kept"
    assert said in caplog.text
    assert leftovers(server.root) == []


def test_a_job_rebuilt_after_a_crash_copies_again(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal cannot carry the open connection: without it the early copy is never trusted."""
    install_base(server)
    server.systemd.on_stop = lambda _unit: server.sql("INSERT INTO items (name) VALUES ('plum')")
    crash(server, monkeypatch, "stop", journaled_only=False)
    journal = state.read_journal(server.ctx)
    assert journal is not None
    bdir = server.ctx.backups_dir / str(journal["backup"])
    early = bdir / (backup.DB_FILE + backup.EARLY)
    assert items(early) == BASE_ITEMS, "the crash left the copy taken before the stop"
    assert not (bdir / backup.DB_FILE).exists(), "an early copy is not the backup's snapshot"

    ctx = server.ctx  # rebuilt as operations.recover rebuilds it: from the journal alone
    manifest = operations._journal_manifest(ctx, journal)
    job = apply.Job(ctx, manifest, ctx.share, journal.get("from"), str(journal["backup"]))
    apply.SnapshotDatabase(job).apply()

    assert not early.exists()
    assert items(bdir / backup.DB_FILE) == [*BASE_ITEMS, (3, "plum")]
    assert backup.read_manifest(server.ctx, bdir)["database"]["sha256"] == sha256_file(bdir / backup.DB_FILE)


@pytest.mark.parametrize("at", ["backup", "stop"])
def test_recovery_removes_an_early_copy_that_never_became_the_snapshot(
    server: Server, monkeypatch: pytest.MonkeyPatch, at: str
) -> None:
    install_base(server)
    before = db_dump(server.db)
    crash(server, monkeypatch, at, journaled_only=False)
    assert [p.name for p in server.ctx.backups_dir.rglob(backup.DB_FILE + backup.EARLY)] == [
        (backup.DB_FILE + backup.EARLY)
    ]

    assert operations.recover(server.ctx) == "undid the interrupted update to 1.0.1"

    assert leftovers(server.root) == []
    assert db_dump(server.db) == before
    assert server.systemd.is_active(UNIT)


def test_the_early_copy_failing_falls_back_to_a_copy_after_the_stop(
    server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    install_base(server)
    caplog.set_level(logging.INFO, logger="nesop_deb")

    def locked(_db: Path, _dest: safefs.Tree, _name: str, _owner: database.Owner) -> sqlite.HeldSnapshot:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(sqlite, "snapshot_held", locked)
    server.systemd.on_stop = lambda _unit: server.sql("INSERT INTO items (name) VALUES ('plum')")

    apply_failing_at_start(server)

    assert "could not copy the database before the stop (database is locked)" in caplog.text
    assert "database copied after the stop" in caplog.text
    assert items(server.db) == [*BASE_ITEMS, (3, "plum")]


def test_an_update_failing_before_the_stop_leaves_a_backup_without_a_snapshot(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The early copy is recorded under its final name before the stop; an update that never got
    to check it leaves a backup that says it holds no database (rather than naming a missing one)."""
    install_base(server)
    ctx = server.ctx
    manifest = release_101(server)

    def refuse(_self: apply.Stop) -> None:
        raise RuntimeError("the stop failed")

    monkeypatch.setattr(apply.Stop, "apply", refuse)
    with pytest.raises(transaction.TransactionFailed):
        operations.run_apply(ctx, manifest, ctx.share, state.load(ctx))
    [bdir] = [d for d in ctx.backups_dir.iterdir() if d.name.startswith("pre_update_")]
    assert backup.read_manifest(ctx, bdir)["database"] is None
    assert not (bdir / backup.DB_FILE).exists() and not (bdir / (backup.DB_FILE + backup.EARLY)).exists()


def test_a_read_only_backups_dir_at_snapshot_db_fails_the_step_and_the_undo_still_completes(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing can be renamed or rewritten in the backup any more: the step fails, and the undo
    (which would record that the backup holds no database) carries on past that record."""
    install_base(server)
    ctx = server.ctx
    manifest = release_101(server)
    before = db_dump(server.db)

    def read_only(*_args: object, **_kw: object) -> None:
        raise OSError(30, "Read-only file system")

    real_stop = apply.Stop.apply

    def stop_then_freeze(self: apply.Stop) -> None:
        real_stop(self)
        monkeypatch.setattr(backup, "keep_early_database", read_only)
        monkeypatch.setattr(backup, "_write_manifest", read_only)

    monkeypatch.setattr(apply.Stop, "apply", stop_then_freeze)
    with pytest.raises(transaction.TransactionFailed) as failed:
        operations.run_apply(ctx, manifest, ctx.share, state.load(ctx))
    assert failed.value.step == "snapshot-db"
    assert failed.value.undo_errors == []
    assert db_dump(server.db) == before
    assert server.systemd.is_active(UNIT)

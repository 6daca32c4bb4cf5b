"""Backups (round trip, idempotent restore), restoring one through the transaction, and the lock."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from nesop_deb.errors import RefusedError
from nesop_deb.runtime import backup, history, lock, manual, state, transaction
from tests.unit.runtime_fixtures import (
    UNIT,
    Server,
    db_dump,
    fake_server,
    install_base,
    leftovers,
    tree,
)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    yield from fake_server(tmp_path, monkeypatch)


def other_owner() -> tuple[int, int]:
    """An owner that differs from the test's own where the test may chown (as root)."""
    return (4242, 4343) if os.getuid() == 0 else (os.getuid(), os.getgid())


def test_create_and_restore_round_trip(server: Server) -> None:
    server.write_tree(
        {
            "app.py": b"print('v1')\n",
            "bin/run": b"#!/bin/sh\n",
            "secret.env": b"KEY=1\n",
            "lib/a.py": b"A = 1\n",
            "current": "lib/a.py",
        },
        modes={"bin/run": 0o755, "secret.env": 0o600},
    )
    uid, gid = other_owner()
    os.chown(server.app_root / "secret.env", uid, gid)
    paths = ["app.py", "bin/run", "secret.env", "lib/a.py", "current", "new/thing.txt", "gone.txt"]
    before = tree(server.app_root)

    bdir = backup.create_files(server.ctx, "b1", paths, {"kind": "test"})

    assert bdir.stat().st_mode & 0o7777 == 0o700
    assert server.ctx.backups_dir.stat().st_mode & 0o7777 == 0o700
    data = backup.read_manifest(server.ctx, bdir)
    assert sorted(data["absent"]) == ["gone.txt", "new/thing.txt"]
    by_path = {f["path"]: f for f in data["files"]}
    assert by_path["current"]["link_target"] == "lib/a.py"
    assert (by_path["secret.env"]["mode"], by_path["secret.env"]["uid"]) == (0o600, uid)
    assert (bdir / "files/current").is_symlink()

    app = server.app_root
    (app / "app.py").write_bytes(b"print('v2')\n")
    (app / "bin/run").chmod(0o644)
    os.chown(app / "secret.env", os.getuid(), os.getgid())
    (app / "secret.env").chmod(0o644)
    (app / "lib/a.py").unlink()
    (app / "current").unlink()
    (app / "current").write_bytes(b"a file where a link was\n")
    (app / "new").mkdir()
    (app / "new/thing.txt").write_bytes(b"added\n")
    (app / "gone.txt").symlink_to("app.py")
    assert tree(app) != before

    backup.restore_files(server.ctx, bdir)

    assert tree(app) == before
    assert leftovers(server.root) == []


def test_restore_is_idempotent(server: Server) -> None:
    server.write_tree({"a.txt": b"a\n", "b/c.txt": b"c\n"}, modes={"a.txt": 0o640})
    bdir = backup.create_files(server.ctx, "b1", ["a.txt", "b/c.txt", "b/new.txt"], {})
    before = tree(server.app_root)
    (server.app_root / "a.txt").write_bytes(b"changed\n")
    (server.app_root / "b/new.txt").write_bytes(b"new\n")

    backup.restore_files(server.ctx, bdir)
    inode = (server.app_root / "a.txt").stat().st_ino
    backup.restore_files(server.ctx, bdir)

    assert tree(server.app_root) == before
    assert (server.app_root / "a.txt").stat().st_ino == inode  # already right: not rewritten


def test_an_existing_backup_is_never_overwritten(server: Server) -> None:
    server.write_tree({"a.txt": b"a\n"})
    backup.create_files(server.ctx, "b1", ["a.txt"], {})
    with pytest.raises(backup.BackupError, match="already exists"):
        backup.create_files(server.ctx, "b1", ["a.txt"], {})


def test_manual_backup_holds_the_app_and_a_database_snapshot(server: Server) -> None:
    install_base(server)
    bdir = manual.manual_backup(server.ctx, "by-hand")
    data = backup.read_manifest(server.ctx, bdir)
    paths = sorted(f["path"] for f in data["files"])
    assert "app.py" in paths
    assert not any(p.startswith(("backups/", "logs/", "data/app.db")) for p in paths)
    assert data["database"]["file"] == backup.DB_FILE
    assert db_dump(bdir / backup.DB_FILE) == db_dump(server.db)
    assert [b.name for b in backup.list_backups(server.ctx)] == ["by-hand"]


def test_a_restore_whose_start_fails_is_undone_from_the_safety_backup(server: Server) -> None:
    install_base(server)
    good_tree, good_db = tree(server.app_root), db_dump(server.db)
    manual.manual_backup(server.ctx, "known-good")
    (server.app_root / "app.py").write_bytes(b"print('later')\n")
    (server.app_root / "lib/keep.py").unlink()
    (server.app_root / "run.sh").chmod(0o700)
    server.sql("INSERT INTO items (name) VALUES ('plum')")
    now_tree, now_db = tree(server.app_root), db_dump(server.db)
    server.systemd.fail_starts = 1

    with pytest.raises(transaction.TransactionFailed) as failed:
        manual.restore_backup(server.ctx, "known-good")

    assert failed.value.step == "start"
    assert failed.value.undo_errors == []
    assert tree(server.app_root) == now_tree
    assert db_dump(server.db) == now_db
    assert server.systemd.is_active(UNIT)
    last = history.read(server.ctx.history_file)[-1]
    assert (last["action"], last["status"], last["failed_step"]) == ("rollback", "failed", "start")
    assert (server.ctx.backups_dir / last["safety_backup"] / backup.MANIFEST).is_file()
    assert state.read_journal(server.ctx) is None
    assert leftovers(server.root) == []

    manual.restore_backup(server.ctx, "known-good")  # and again, now that the app starts

    assert tree(server.app_root) == good_tree
    assert db_dump(server.db) == good_db
    assert history.read(server.ctx.history_file)[-1]["status"] == "success"
    assert server.systemd.is_active(UNIT)


def test_restoring_an_unknown_backup_is_a_usage_error(server: Server) -> None:
    install_base(server)
    with pytest.raises(Exception, match="no backup named 'nope'") as err:
        manual.restore_backup(server.ctx, "nope")
    assert type(err.value).__name__ == "UsageError"


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    path = tmp_path / "state/lock"
    with lock.held(path, "configure demo-update 1.0.1"):
        with pytest.raises(RefusedError) as refused, lock.held(path, "rollback", wait=0.2):
            pass
        message = str(refused.value)
        assert f"pid {os.getpid()}: configure demo-update 1.0.1" in message
        assert message.startswith("rollback: another operation holds")
    with lock.held(path, "after the first let go", wait=0.2):
        assert f"pid {os.getpid()}: after the first let go" in path.read_text()
    assert path.read_text() == ""

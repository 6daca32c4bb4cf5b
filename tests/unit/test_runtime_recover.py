"""Crash safety: the process dies after step N; ``recover`` (or the next postinst) finishes the undo.

The crash is simulated at the transaction runner: it journals and applies the steps exactly as
``transaction.run`` does, then stops dead after step N (or right after journaling it) without
undoing anything, as a SIGKILL or a power cut would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from nesop_deb.runtime import backup, history, manual, operations, state, transaction
from tests.unit.runtime_fixtures import (
    PACKAGE,
    UNIT,
    Server,
    db_dump,
    expected_after_101,
    fake_server,
    install_base,
    leftovers,
    release_101,
    tree,
)

STEPS = [
    "record", "stage", "backup", "stop", "snapshot-db", "apply-files", "migrate", "start", "health", "commit"
]  # fmt: skip


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    yield from fake_server(tmp_path, monkeypatch)


class Crash(BaseException):
    """The process is gone: nothing after this point runs."""


def crashing_run(at: str, *, journaled_only: bool) -> Callable[..., None]:
    def run(ctx: Any, journal: dict[str, Any], steps: Sequence[transaction.Step], *_: Any) -> None:
        journal.setdefault("steps", [])
        journal["phase"] = "applying"
        for s in steps:
            journal["steps"].append(s.name)
            state.write_journal(ctx, journal)
            if s.name == at and journaled_only:
                raise Crash
            s.apply()
            if s.name == at:
                raise Crash

    return run


def crash(server: Server, monkeypatch: pytest.MonkeyPatch, at: str, *, journaled_only: bool) -> None:
    with monkeypatch.context() as m:
        m.setattr(transaction, "run", crashing_run(at, journaled_only=journaled_only))
        ctx = server.ctx
        with pytest.raises(Crash):
            operations.run_apply(ctx, release_101(server), ctx.share, state.load(ctx))


# a crash after the commit's work is a committed update (the next test)
CRASHES = [(at, only) for at in STEPS for only in (False, True) if (at, only) != ("commit", False)]


@pytest.mark.parametrize(
    ("at", "journaled_only"),
    [pytest.param(at, only, id=f"{at}-{'before' if only else 'after'}-step") for at, only in CRASHES],
)
def test_recover_after_a_crash_restores_the_snapshot(
    server: Server, monkeypatch: pytest.MonkeyPatch, at: str, journaled_only: bool
) -> None:
    install_base(server)
    tree_before, db_before = tree(server.app_root), db_dump(server.db)
    crash(server, monkeypatch, at, journaled_only=journaled_only)
    journal = state.read_journal(server.ctx)
    assert journal is not None
    assert journal["steps"][-1] == at

    done = operations.recover(server.ctx)

    assert done == "undid the interrupted update to 1.0.1"
    assert tree(server.app_root) == tree_before
    assert db_dump(server.db) == db_before
    assert leftovers(server.root) == []
    assert server.systemd.is_active(UNIT)
    assert state.read_journal(server.ctx) is None
    assert server.applied() == []
    last = history.read(server.ctx.history_file)[-1]
    assert (last["action"], last["status"], last["failed_step"]) == ("recover", "interrupted", at)
    assert last["undo_errors"] == []
    assert last["old_app_healthy"] is True


def test_a_crash_after_the_commit_keeps_the_update(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    install_base(server)
    before = tree(server.app_root)
    crash(server, monkeypatch, "commit", journaled_only=False)
    journal = state.read_journal(server.ctx)
    assert journal is not None and journal["steps"][-1] == "commit"

    assert operations.recover(server.ctx) == "1.0.1 had been applied; nothing to undo"

    assert tree(server.app_root) == expected_after_101(before)
    assert server.applied() == ["1.0.1"]
    assert state.read_journal(server.ctx) is None
    assert leftovers(server.root) == []
    assert not list(server.ctx.backups_dir.glob(".reserve-*"))
    assert history.read(server.ctx.history_file)[-1]["status"] == "success"


@pytest.mark.parametrize("at", ["stage", "apply-files", "migrate", "health"])
def test_the_next_configure_recovers_then_applies(
    server: Server, monkeypatch: pytest.MonkeyPatch, at: str
) -> None:
    """``dpkg --configure -a`` after a crash: undo the interrupted attempt, then apply afresh."""
    install_base(server)
    before = tree(server.app_root)
    crash(server, monkeypatch, at, journaled_only=False)

    operations.configure(PACKAGE, "1.0.1")

    assert tree(server.app_root) == expected_after_101(before)
    assert db_dump(server.db)["rows"]["items"] == [(1, "APPLE"), (2, "PEAR")]
    assert server.applied() == ["1.0.1"]
    assert [e["status"] for e in history.read(server.ctx.history_file)] == ["interrupted", "success"]
    assert state.read_journal(server.ctx) is None
    assert leftovers(server.root) == []


def test_a_commit_whose_journal_survived_is_left_alone(server: Server) -> None:
    install_base(server)
    ctx = server.ctx
    operations.run_apply(ctx, release_101(server), ctx.share, state.load(ctx))
    after, db_after, entries = tree(server.app_root), db_dump(server.db), history.read(ctx.history_file)
    state.write_journal(
        ctx, {"kind": "apply", "version": "1.0.1", "steps": ["record", "stage"], "backup": "x", "from": None}
    )
    calls = len(server.systemd.calls)

    assert operations.recover(ctx) == "1.0.1 had been applied; nothing to undo"

    assert state.read_journal(ctx) is None
    assert tree(server.app_root) == after
    assert db_dump(server.db) == db_after
    assert history.read(ctx.history_file) == entries
    assert server.applied() == ["1.0.1"]
    assert len(server.systemd.calls) == calls


def test_nothing_to_recover(server: Server) -> None:
    install_base(server)
    assert operations.recover(server.ctx) is None
    assert manual.recover(server.ctx) == "nothing to recover"


@pytest.mark.parametrize("entry", ["nesop-update recover", "postinst configure"])
def test_recover_of_an_interrupted_restore_uses_the_safety_backup(server: Server, entry: str) -> None:
    install_base(server)
    ctx = server.ctx
    target = manual.manual_backup(ctx, "before-edit")
    (server.app_root / "app.py").write_bytes(b"print('edited')\n")
    server.sql("INSERT INTO items (name) VALUES ('plum')")
    tree_before, db_before = tree(server.app_root), db_dump(server.db)
    # the restore got as far as putting the old files back, then the process died
    safety = "pre_rollback_crash"
    data = backup.read_manifest(ctx, target)
    backup.create_files(ctx, safety, [f["path"] for f in data["files"]], {"kind": "pre_rollback"})
    backup.add_database(ctx, ctx.backups_dir / safety)
    state.write_journal(ctx, {"kind": "restore", "backup": target.name, "safety": safety, "steps": []})
    server.systemd.units[UNIT].active = "inactive"
    backup.restore_files(ctx, target)
    backup.restore_database(ctx, target, keep_current=False)
    assert tree(server.app_root) != tree_before

    recover = manual.recover if entry == "nesop-update recover" else operations.recover
    assert recover(ctx) == f"undid the interrupted restore of {target.name}"

    assert tree(server.app_root) == tree_before
    assert db_dump(server.db) == db_before
    assert state.read_journal(ctx) is None
    assert server.systemd.is_active(UNIT)


@pytest.mark.parametrize("at", ["stage", "backup", "apply-files"])
def test_recover_removes_the_new_version_of_a_kept_config_file(
    server: Server, monkeypatch: pytest.MonkeyPatch, at: str
) -> None:
    install_base(server)
    (server.app_root / "config.py").write_bytes(b"DEBUG = True  # edited on the server\n")
    before = tree(server.app_root)
    crash(server, monkeypatch, at, journaled_only=False)

    operations.recover(server.ctx)

    assert tree(server.app_root) == before
    assert leftovers(server.root) == []


@pytest.mark.parametrize("entry", ["operations", "manual"])
def test_an_interrupted_rollback_is_finished_not_reversed(server: Server, entry: str) -> None:
    """The next postinst (or `nesop-update recover`) finishes a half-done ``prerm upgrade OLDER``:
    the operator asked for the older version, so the undo runs on; it never passes for an apply."""
    install_base(server)
    server.unit.active, server.unit.sub = "inactive", "dead"  # the crash came after the stop
    journal = {"kind": "undo", "version": "1.0.2", "target": "1.0.1", "started": 0.0}
    state.write_journal(server.ctx, journal)

    recover = operations.recover if entry == "operations" else manual.recover
    assert "finished the interrupted rollback to 1.0.1" in str(recover(server.ctx))

    assert state.read_journal(server.ctx) is None
    assert server.systemd.is_active(UNIT)
    last = history.read(server.ctx.history_file)[-1]
    assert (last["action"], last["from"], last["version"], last["status"]) == (
        "rollback",
        "1.0.2",
        "1.0.1",
        "success",
    )

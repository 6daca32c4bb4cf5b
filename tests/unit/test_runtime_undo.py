"""prerm upgrade OLDER: undoing applied versions from recorded data, newest first."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from nesop_deb.errors import RefusedError
from nesop_deb.manifest import Manifest
from nesop_deb.runtime import database, history, operations, state, undo
from tests.unit.runtime_fixtures import (
    APP_V2,
    M2,
    M3,
    README,
    UNIT,
    Migration,
    Server,
    add,
    changes_101,
    db_dump,
    delete,
    fake_server,
    install_base,
    leftovers,
    modify,
    tree,
    watch_migration_reads,
)

APP_V3 = b"print('v3')\n"
APP_V4 = b"print('v4')\n"


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    yield from fake_server(tmp_path, monkeypatch)


def apply_now(server: Server, manifest: Manifest) -> None:
    ctx = server.ctx
    operations.run_apply(ctx, manifest, ctx.share, state.load(ctx))


def release_102(server: Server, migrations: list[Migration]) -> Manifest:
    changes = [
        modify("app.py", APP_V2, APP_V3),
        delete("README.md", README),
        add("plugins/extra/a.py", b"A = 1\n"),
    ]
    return server.package("1.0.2", changes, [m for m in (M2, M3) if m in migrations], bases=("1.0.1",))


def rows(db: Path, table: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return sorted(conn.execute(f"SELECT * FROM {table}").fetchall())


def test_undo_above_rolls_back_a_reversible_migration_and_keeps_new_rows(server: Server) -> None:
    install_base(server)
    apply_now(server, server.package("1.0.1", changes_101()))
    tree_101, db_101 = tree(server.app_root), db_dump(server.db)
    apply_now(server, release_102(server, [M2]))
    server.sql("INSERT INTO items (name) VALUES ('plum')", "INSERT INTO orders (item) VALUES (3)")

    undo.undo_above(server.ctx, "1.0.1")

    assert tree(server.app_root) == tree_101
    after = db_dump(server.db)
    assert after["schema"] == db_101["schema"]
    assert rows(server.db, "items") == [(1, "apple"), (2, "pear"), (3, "plum")]
    assert after["rows"]["_yoyo_migration"] == db_101["rows"]["_yoyo_migration"]
    assert server.applied() == ["1.0.1"]
    assert server.systemd.is_active(UNIT)
    assert server.systemd.verbs()[-3:] == ["stop", "reset-failed", "start"]
    last = history.read(server.ctx.history_file)[-1]
    assert (last["action"], last["status"], last["undone"]) == ("rollback", "success", ["1.0.2"])
    assert "migrations rolled back: 0002_orders" in last["notes"][0]
    assert state.read_journal(server.ctx) is None
    assert leftovers(server.root) == []


def test_undo_above_parses_the_rollbacks_before_the_stop(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Importing yoyo and parsing cost no outage: the rollbacks are read once, before the stop."""
    install_base(server)
    apply_now(server, server.package("1.0.1", changes_101()))
    db_101 = db_dump(server.db)
    apply_now(server, release_102(server, [M2]))
    reads = watch_migration_reads(server, monkeypatch)
    before = len(server.systemd.verbs())
    undo.undo_above(server.ctx, "1.0.1")

    assert [r[before:] for r in reads] == [[]]
    assert db_dump(server.db)["schema"] == db_101["schema"]
    assert server.applied() == ["1.0.1"]


def test_undo_above_a_rollback_that_cannot_be_parsed_fails_before_the_stop(server: Server) -> None:
    install_base(server)
    apply_now(server, server.package("1.0.1", changes_101()))
    apply_now(server, release_102(server, [M2]))
    rollback = state.recorded_migrations(server.ctx, "1.0.2") / f"{M2.id}.rollback.sql"
    rollback.write_bytes(b"\xff\xfe not text")
    before = len(server.systemd.verbs())

    with pytest.raises(database.MigrationError, match=f"cannot read migration {M2.id}"):
        undo.undo_above(server.ctx, "1.0.1")

    assert "stop" not in server.systemd.verbs()[before:]
    assert server.systemd.is_active(UNIT)
    assert server.applied() == ["1.0.1", "1.0.2"]
    last = history.read(server.ctx.history_file)[-1]
    assert (last["action"], last["status"]) == ("rollback", "failed"), last


def test_undo_above_restores_the_snapshot_for_an_irreversible_migration(server: Server) -> None:
    install_base(server)
    apply_now(server, server.package("1.0.1", changes_101()))
    tree_101, db_101 = tree(server.app_root), db_dump(server.db)
    apply_now(server, release_102(server, [M2, M3]))
    server.sql("INSERT INTO items (name) VALUES ('plum')")
    backup_name = state.load(server.ctx).applied[-1].backup
    assert backup_name is not None

    undo.undo_above(server.ctx, "1.0.1")

    assert tree(server.app_root) == tree_101
    assert db_dump(server.db) == db_101
    kept = list((server.ctx.backups_dir / backup_name).glob("replaced_*.sqlite3"))
    assert len(kept) == 1
    assert rows(kept[0], "items") == [(1, "APPLE"), (2, "PEAR"), (3, "plum")]  # no row is ever lost
    assert server.applied() == ["1.0.1"]
    assert "database snapshot restored" in history.read(server.ctx.history_file)[-1]["notes"][0]


def test_undo_above_undoes_several_versions_newest_first(server: Server) -> None:
    install_base(server)
    apply_now(server, server.package("1.0.1", changes_101()))
    tree_101, db_101 = tree(server.app_root), db_dump(server.db)
    apply_now(server, release_102(server, [M2]))
    apply_now(server, server.package("1.0.3", [modify("app.py", APP_V3, APP_V4)], bases=("1.0.2",)))
    assert server.applied() == ["1.0.1", "1.0.2", "1.0.3"]

    undo.undo_above(server.ctx, "1.0.1")

    assert tree(server.app_root) == tree_101
    assert db_dump(server.db)["schema"] == db_101["schema"]
    assert server.applied() == ["1.0.1"]
    assert history.read(server.ctx.history_file)[-1]["undone"] == ["1.0.3", "1.0.2"]


def test_undo_above_a_version_never_applied_is_refused(server: Server) -> None:
    install_base(server)
    apply_now(server, server.package("1.0.1", changes_101()))
    before = tree(server.app_root)

    with pytest.raises(RefusedError, match="this server never ran it"):
        undo.undo_above(server.ctx, "0.5")

    assert tree(server.app_root) == before
    assert server.applied() == ["1.0.1"]


def test_undo_above_the_live_version_does_nothing(server: Server) -> None:
    install_base(server)
    apply_now(server, server.package("1.0.1", changes_101()))
    calls = list(server.systemd.calls)

    undo.undo_above(server.ctx, "1.0.1")

    assert server.systemd.calls == calls
    assert server.applied() == ["1.0.1"]

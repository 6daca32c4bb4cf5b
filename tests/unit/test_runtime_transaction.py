"""The apply transaction: a fault in any step leaves the server exactly as it was (STYLE.md 11).

Each step of ``apply.build_steps`` fails in turn, before or after doing its work; afterwards the
app tree (paths, bytes, modes, owners), the database (schema and rows), the service, the state and
the journal must equal the snapshot taken before, and the history must say what failed.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nesop_deb import __version__
from nesop_deb.errors import RefusedError
from nesop_deb.manifest import Manifest
from nesop_deb.runtime import apply, backup, history, operations, state, transaction
from nesop_deb.runtime.context import AppSettings, Context
from tests.unit.runtime_fixtures import (
    APP_V1,
    M2,
    M3,
    PACKAGE,
    UNIT,
    Migration,
    Server,
    changes_101,
    db_dump,
    default_settings,
    expected_after_101,
    fake_server,
    install_base,
    leftovers,
    release_101,
    tree,
    watch_migration_reads,
)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    yield from fake_server(tmp_path, monkeypatch)


def _step_classes() -> dict[str, type[Any]]:
    """Every step an update with files and migrations runs, by name, in order."""
    ctx = Context(PACKAGE, AppSettings.from_manifest_config(default_settings()), Path("/nonexistent"))
    manifest = Manifest(
        PACKAGE, "1.0.1", ("1.0.0",), False, "0" * 40, None, None, __version__, 0, default_settings(),
        migrations=(M2.entry(), M3.entry()),
    )  # fmt: skip
    job = apply.Job(ctx, manifest, Path("/nonexistent"), None, "backup")
    return {s.name: type(s) for s in apply.build_steps(job)}


STEP_CLASSES = _step_classes()
STEPS = list(STEP_CLASSES)


class InjectedFault(Exception):
    """The fault a test puts into a step."""


def run_apply(server: Server, manifest: Manifest | None = None) -> None:
    ctx = server.ctx
    if manifest is None:
        manifest = apply.load_installed_manifest(PACKAGE, server.root)
    operations.run_apply(ctx, manifest, ctx.share, state.load(ctx))


def inject(monkeypatch: pytest.MonkeyPatch, step: str, when: str) -> None:
    cls = STEP_CLASSES[step]
    real: Callable[[Any], None] = cls.apply

    def failing(self: Any) -> None:
        if when == "after":
            real(self)
        raise InjectedFault(f"injected fault in {step} ({when} its work)")

    monkeypatch.setattr(cls, "apply", failing)


def test_the_steps_are_the_documented_sequence() -> None:
    assert STEPS == [
        "record",
        "stage",
        "backup",
        "stop",
        "snapshot-db",
        "apply-files",
        "migrate",
        "start",
        "health",
        "commit",
    ]


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("step", STEPS)
def test_a_fault_in_any_step_restores_the_snapshot(
    server: Server, monkeypatch: pytest.MonkeyPatch, step: str, when: str
) -> None:
    install_base(server)
    manifest = release_101(server)
    tree_before, db_before, applied_before = tree(server.app_root), db_dump(server.db), server.applied()
    inject(monkeypatch, step, when)

    with pytest.raises(transaction.TransactionFailed) as failed:
        run_apply(server, manifest)

    assert failed.value.step == step
    assert isinstance(failed.value.cause, InjectedFault)
    assert failed.value.undo_errors == []
    assert tree(server.app_root) == tree_before
    assert db_dump(server.db) == db_before
    assert leftovers(server.root) == []
    assert server.systemd.is_active(UNIT)
    last = history.read(server.ctx.history_file)[-1]
    assert (last["status"], last["failed_step"], last["version"]) == ("failed", step, "1.0.1")
    assert f"injected fault in {step}" in last["reason"]
    assert last["old_app_healthy"] is True
    assert state.read_journal(server.ctx) is None
    assert server.applied() == applied_before
    assert not state.version_dir(server.ctx, "1.0.1").exists()


def test_success_applies_every_kind_of_change(server: Server) -> None:
    install_base(server)
    manifest = release_101(server)
    before = tree(server.app_root)

    run_apply(server, manifest)

    assert tree(server.app_root) == expected_after_101(before)
    dump = db_dump(server.db)
    assert dump["rows"]["items"] == [(1, "APPLE"), (2, "PEAR")]
    assert "orders" in dump["rows"]
    assert sorted(r[1] for r in dump["rows"]["_yoyo_migration"]) == [
        "0001_items",
        "0002_orders",
        "0003_upper_names",
    ]
    assert server.applied() == ["1.0.1"]
    entry = state.load(server.ctx).applied[-1]
    assert entry.migrations == ["0002_orders", "0003_upper_names"]
    assert entry.previous is None
    assert entry.kept_config == []
    last = history.read(server.ctx.history_file)[-1]
    assert last["status"] == "success"
    assert last["files"]["delete"] == ["lib/util.py"]
    assert last["files"]["rename"] == ["lib/new_name.py"]
    assert last["backup"] == entry.backup
    assert entry.backup is not None
    bdir = server.ctx.backups_dir / entry.backup
    assert (bdir / backup.MANIFEST).is_file()
    assert bdir.stat().st_mode & 0o7777 == 0o700
    data = backup.read_manifest(server.ctx, bdir)
    assert data["database"]["file"] == backup.DB_FILE
    assert sorted(data["absent"]) == [
        "README.md",
        "lib/new_name.py",
        "static/js/main.js",
        "static/js/new.js",
        "uploads/README.txt",
    ]
    assert data["created_dirs"] == ["static/js"]
    assert state.read_journal(server.ctx) is None
    assert leftovers(server.root) == []
    # between stop and start nothing but the update's own work: each call there is outage
    assert server.systemd.verbs() == ["stop", "start"]
    assert server.systemd.is_active(UNIT)


def test_configure_of_an_applied_version_only_checks_it(server: Server) -> None:
    install_base(server)
    release_101(server)
    operations.configure(PACKAGE, "1.0.1")
    after, calls = tree(server.app_root), len(server.systemd.calls)
    server.systemd.units[UNIT].active = "inactive"  # e.g. stopped by hand since

    operations.configure(PACKAGE, "1.0.1")

    assert tree(server.app_root) == after
    assert server.applied() == ["1.0.1"]
    assert server.systemd.verbs()[-2:] == ["reset-failed", "start"]
    assert len(server.systemd.calls) > calls
    assert [e["status"] for e in history.read(server.ctx.history_file)] == ["success"]


def test_an_unhealthy_new_version_is_undone_and_the_old_one_answers(server: Server) -> None:
    install_base(server)
    app_py = server.app_root / "app.py"
    server.serve_health(lambda: 200 if app_py.read_bytes() == APP_V1 else 503)
    server.configure(timeout=0.3)
    manifest = release_101(server)
    tree_before, db_before = tree(server.app_root), db_dump(server.db)

    with pytest.raises(transaction.TransactionFailed) as failed:
        run_apply(server, manifest)

    assert failed.value.step == "health"
    assert "HTTP 503" in str(failed.value)
    assert tree(server.app_root) == tree_before
    assert db_dump(server.db) == db_before
    last = history.read(server.ctx.history_file)[-1]
    assert (last["failed_step"], last["old_app_healthy"]) == ("health", True)
    # 0003 has no rollback: the snapshot taken at the stop went back, and the history says so
    assert last["database_undo"].startswith("snapshot restored (the replaced database is kept as ")
    assert server.systemd.is_active(UNIT)


def test_the_history_says_the_rollback_migrations_undid_the_database(server: Server) -> None:
    install_base(server)
    server.systemd.fail_starts = 1
    manifest = server.package("1.0.1", changes_101(), [M2])
    db_before = db_dump(server.db)

    with pytest.raises(transaction.TransactionFailed):
        run_apply(server, manifest)

    assert db_dump(server.db) == db_before
    last = history.read(server.ctx.history_file)[-1]
    assert (last["failed_step"], last["database_undo"]) == ("start", "migrations rolled back: 0002_orders")


def test_a_new_version_that_fails_to_start_is_undone(server: Server) -> None:
    install_base(server)
    manifest = release_101(server)
    tree_before, db_before = tree(server.app_root), db_dump(server.db)
    server.systemd.fail_starts = 1

    with pytest.raises(transaction.TransactionFailed) as failed:
        run_apply(server, manifest)

    assert failed.value.step == "start"
    assert "systemctl start" in str(failed.value)
    assert tree(server.app_root) == tree_before
    assert db_dump(server.db) == db_before
    assert server.systemd.is_active(UNIT)


def test_a_restart_loop_fails_the_gate(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    install_base(server)
    manifest = release_101(server)
    tree_before = tree(server.app_root)

    def crash_loop(name: str) -> None:
        if (server.app_root / "app.py").read_bytes() != APP_V1:
            server.systemd.units[name].restarts += 1

    server.systemd.on_start = crash_loop

    with pytest.raises(transaction.TransactionFailed) as failed:
        run_apply(server, manifest)

    assert failed.value.step == "health"
    assert "failed to start" in str(failed.value)
    assert "boom" in str(failed.value)  # the unit's journal tail
    assert tree(server.app_root) == tree_before


@pytest.mark.parametrize(
    ("sql", "step", "says"),
    [
        # fails when it runs: the migration before it is rolled back, the files restored
        ("INSERT INTO no_such_table VALUES (1)", "migrate", "migration 0003_bad failed"),
        # cannot even be parsed: found while staging, before the stop
        ("-- transactional: maybe\nCREATE TABLE t (x INT);", "stage", "cannot read migration 0003_bad"),
    ],
    ids=["fails", "unparseable"],
)
def test_a_bad_migration_leaves_the_app_and_database_as_they_were(
    server: Server, sql: str, step: str, says: str
) -> None:
    install_base(server)
    manifest = server.package("1.0.1", changes_101(), [M2, Migration("0003_bad", sql)])
    tree_before, db_before = tree(server.app_root), db_dump(server.db)

    with pytest.raises(transaction.TransactionFailed) as failed:
        run_apply(server, manifest)

    assert failed.value.step == step
    assert says in str(failed.value)
    assert ("stop" in server.systemd.verbs()) == (step == "migrate")
    assert tree(server.app_root) == tree_before
    assert db_dump(server.db) == db_before


def test_a_tampered_payload_is_refused_before_any_change(server: Server) -> None:
    install_base(server)
    manifest = release_101(server)
    (server.ctx.share / "payload/app.py").write_bytes(b"evil\n")
    before = tree(server.app_root)

    with pytest.raises(RefusedError, match=r"payload app\.py: sha256 does not match"):
        run_apply(server, manifest)

    assert tree(server.app_root) == before
    assert server.systemd.verbs() == []
    assert history.read(server.ctx.history_file)[-1]["status"] == "refused"
    assert state.read_journal(server.ctx) is None


def test_the_migrations_are_read_once_and_before_the_stop(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Importing yoyo and parsing the migrations cost no outage: only running them does."""
    install_base(server)
    manifest = release_101(server)
    reads = watch_migration_reads(server, monkeypatch)
    run_apply(server, manifest)

    assert reads == [[]]  # one read, before the stop
    assert "stop" in server.systemd.verbs()
    assert state.load(server.ctx).current == "1.0.1"
    with sqlite3.connect(server.db) as conn:
        applied = {r[0] for r in conn.execute("SELECT migration_id FROM _yoyo_migration")}
    assert {m.id for m in manifest.migrations} <= applied


def test_database_files_keep_their_owner_after_migrating(server: Server) -> None:
    install_base(server)
    run_apply(server, release_101(server))
    st = server.db.stat()
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    with sqlite3.connect(server.db) as conn:
        assert conn.execute("PRAGMA quick_check").fetchone() == ("ok",)


# --- the runner itself ----------------------------------------------------------------------------


class Recorder:
    def __init__(self, name: str, log: list[str], action: Callable[[], None] | None = None) -> None:
        self.name, self.log, self.action = name, log, action
        self.undo_fails = False

    def apply(self) -> None:
        self.log.append(f"apply {self.name}")
        if self.action is not None:
            self.action()

    def undo(self) -> None:
        self.log.append(f"undo {self.name}")
        if self.undo_fails:
            raise RuntimeError(f"cannot undo {self.name}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_becomes_an_exception_and_the_undo_runs(server: Server, signum: signal.Signals) -> None:
    log: list[str] = []
    previous = signal.getsignal(signum)
    steps = [
        Recorder("one", log),
        Recorder("two", log, lambda: os.kill(os.getpid(), signum)),
        Recorder("three", log),
    ]

    with pytest.raises(transaction.TransactionFailed) as failed:
        transaction.run(server.ctx, {"kind": "test"}, steps)

    assert failed.value.step == "two"
    assert isinstance(failed.value.cause, transaction.Interrupted)
    assert signum.name in str(failed.value)
    assert log == ["apply one", "apply two", "undo two", "undo one"]
    journal = state.read_journal(server.ctx)
    assert journal is not None
    assert (journal["phase"], journal["failed_step"], journal["steps"]) == ("undoing", "two", ["one", "two"])
    assert signal.getsignal(signum) == previous


def test_undo_runs_in_reverse_and_carries_on_past_errors(server: Server) -> None:
    log: list[str] = []

    def boom() -> None:
        raise ValueError("step four broke")

    steps = [Recorder(n, log) for n in ("a", "b", "c")] + [Recorder("d", log, boom)]
    steps[1].undo_fails = True

    with pytest.raises(transaction.TransactionFailed) as failed:
        transaction.run(server.ctx, {"kind": "test"}, steps)

    assert log == ["apply a", "apply b", "apply c", "apply d", "undo d", "undo c", "undo b", "undo a"]
    assert failed.value.undo_errors == ["undo b: cannot undo b"]
    assert "undo incomplete" in str(failed.value)


def test_the_journal_is_durable_before_each_step(server: Server) -> None:
    seen: list[list[str]] = []

    def look() -> None:
        journal = state.read_journal(server.ctx)
        assert journal is not None
        seen.append(list(journal["steps"]))

    steps = [Recorder(n, [], look) for n in ("a", "b", "c")]
    transaction.run(server.ctx, {"kind": "test"}, steps)
    assert seen == [["a"], ["a", "b"], ["a", "b", "c"]]


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("step", ["snapshot-db", "migrate", "health"])
def test_a_database_yoyo_never_managed_comes_back_without_its_tables(
    server: Server, monkeypatch: pytest.MonkeyPatch, step: str, when: str
) -> None:
    """A hand-deployed app: yoyo's tracking tables must not stay behind after a failed update."""
    install_base(server, yoyo=False)
    manifest = release_101(server)
    db_before = db_dump(server.db)
    assert not any(name.startswith("_yoyo") for name in db_before["rows"])
    inject(monkeypatch, step, when)

    with pytest.raises(transaction.TransactionFailed):
        run_apply(server, manifest)

    assert db_dump(server.db) == db_before


def test_the_space_an_undo_needs_is_set_aside_until_the_end(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_base(server)
    manifest = release_101(server)
    seen: list[int] = []
    real = STEP_CLASSES["backup"].apply

    def watching(self: Any) -> None:
        seen.extend(p.stat().st_blocks * 512 for p in server.ctx.backups_dir.glob(".reserve-*"))
        real(self)

    monkeypatch.setattr(STEP_CLASSES["backup"], "apply", watching)
    run_apply(server, manifest)

    touched = sum(len(b) for b in (APP_V1, b"DEBUG = False\n")) + server.db.stat().st_size
    assert len(seen) == 1 and seen[0] >= touched + server.db.stat().st_size
    assert leftovers(server.root) == []


@pytest.mark.parametrize("step", ["stage", "apply-files", "commit"])
def test_a_journal_that_cannot_be_written_fails_the_step_and_undoes(
    server: Server, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    install_base(server)
    manifest = release_101(server)
    tree_before, db_before = tree(server.app_root), db_dump(server.db)
    real = state.write_journal

    def full_disk(ctx: Context, data: dict[str, Any]) -> None:
        if data.get("steps", [None])[-1] == step:
            raise OSError(28, "No space left on device")
        real(ctx, data)

    monkeypatch.setattr(state, "write_journal", full_disk)
    with pytest.raises(transaction.TransactionFailed) as failed:
        run_apply(server, manifest)

    assert failed.value.step == step
    assert failed.value.undo_errors == []
    assert tree(server.app_root) == tree_before
    assert db_dump(server.db) == db_before
    assert server.systemd.is_active(UNIT)
    assert server.applied() == []


def test_a_failure_the_full_app_disk_cannot_record_waits_in_the_state_dir(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_base(server)
    manifest = release_101(server)
    ctx = server.ctx

    def full(path: Path, text: str, mode: int) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        inject(m, "migrate", "after")
        m.setattr(history, "_write", full)
        with pytest.raises(transaction.TransactionFailed):
            run_apply(server, manifest)
    assert history.read(ctx.history_file) == []
    assert [(e["status"], e["failed_step"]) for e in history.entries(ctx)] == [("failed", "migrate")]

    run_apply(server, manifest)

    assert [e["status"] for e in history.read(ctx.history_file)] == ["failed", "success"]
    assert history.entries(ctx) == history.read(ctx.history_file)

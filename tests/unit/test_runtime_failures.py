"""A version that failed after the stop is not tried again on its own; transient failures are."""

from __future__ import annotations

import errno
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nesop_deb import proc
from nesop_deb.errors import ExitCode, NesopError, RefusedError
from nesop_deb.runtime import apply, failures, history, operations, state, transaction
from tests.unit.runtime_fixtures import (
    APP_V2,
    PACKAGE,
    UNIT,
    Server,
    db_dump,
    fake_server,
    install_base,
    modify,
    release_101,
    tree,
)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    yield from fake_server(tmp_path, monkeypatch)


STEP_CLASSES: dict[str, Any] = {
    "backup": apply.Backup,
    "apply-files": apply.ApplyFiles,
    "migrate": apply.Migrate,
    "start": apply.Start,
}


def break_step(monkeypatch: pytest.MonkeyPatch, step: str, exc: BaseException) -> Callable[[], None]:
    """Make ``step`` raise ``exc``; returns the fix."""
    cls = STEP_CLASSES[step]
    real = cls.apply

    def failing(self: Any) -> None:
        raise exc

    monkeypatch.setattr(cls, "apply", failing)
    return lambda: monkeypatch.setattr(cls, "apply", real)


def sqlite_error(kind: str) -> sqlite3.Error:
    """A real error from SQLite: a full database (SQLITE_FULL) or a locked one (SQLITE_BUSY)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.db"
        first = sqlite3.connect(path, timeout=0)
        try:
            first.execute("CREATE TABLE t (x)")
            first.commit()
            if kind == "full":
                first.execute("PRAGMA max_page_count = 2")
                try:
                    first.execute("INSERT INTO t VALUES (zeroblob(100000))")
                except sqlite3.Error as exc:
                    return exc
            else:
                first.execute("BEGIN EXCLUSIVE")
                second = sqlite3.connect(path, timeout=0)
                try:
                    second.execute("SELECT * FROM t")
                except sqlite3.Error as exc:
                    return exc
                finally:
                    second.close()
        finally:
            first.close()
    raise AssertionError(f"SQLite did not fail ({kind})")


def statuses(server: Server) -> list[tuple[str, str]]:
    return [(e["status"], e.get("failed_step", "")) for e in history.read(server.ctx.history_file)]


def failed_update(
    server: Server, monkeypatch: pytest.MonkeyPatch, step: str, exc: BaseException
) -> Callable[[], None]:
    install_base(server)
    release_101(server)
    fix = break_step(monkeypatch, step, exc)
    with pytest.raises(transaction.TransactionFailed):
        operations.configure(PACKAGE, "1.0.1")
    return fix


def test_a_version_that_failed_after_the_stop_is_refused_before_the_stop(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    fix = failed_update(server, monkeypatch, "migrate", RuntimeError("no such column: price"))
    before, db_before = tree(server.app_root), db_dump(server.db)
    verbs = len(server.systemd.verbs())

    with pytest.raises(RefusedError) as refused:
        operations.configure(PACKAGE, "1.0.1")  # apt configuring pending packages again

    message = str(refused.value)
    assert "1.0.1 failed at migrate" in message and "no such column: price" in message
    assert f"apt remove {PACKAGE}" in message and "nesop-update retry" in message  # nothing managed before
    assert refused.value.exit_code == ExitCode.REFUSED
    assert server.systemd.verbs()[verbs:] == []  # the app was never stopped
    assert server.systemd.is_active(UNIT)
    assert tree(server.app_root) == before and db_dump(server.db) == db_before
    assert statuses(server)[-2:] == [("failed", "migrate"), ("refused", "retry")]

    fix()
    failures.clear(server.ctx)  # what `nesop-update retry` does before it runs dpkg --configure
    operations.configure(PACKAGE, "1.0.1")
    assert server.applied()[-1] == "1.0.1"
    assert failures.read(server.ctx) is None
    assert statuses(server)[-1] == ("success", "")


@pytest.mark.parametrize(
    ("step", "exc"),
    [
        ("backup", RuntimeError("cannot read a file to back up")),  # before the stop: no outage
        ("apply-files", OSError(errno.ENOSPC, "No space left on device")),  # transient
        ("migrate", sqlite_error("full")),  # transient: SQLITE_FULL
        ("start", transaction.Interrupted("interrupted by signal SIGTERM")),  # a signal
    ],
)
def test_failures_before_the_stop_or_transient_are_tried_again(
    server: Server, monkeypatch: pytest.MonkeyPatch, step: str, exc: BaseException
) -> None:
    fix = failed_update(server, monkeypatch, step, exc)
    fix()

    operations.configure(PACKAGE, "1.0.1")

    assert (server.app_root / "app.py").read_bytes() == APP_V2
    assert server.applied()[-1] == "1.0.1"


def test_a_rebuilt_package_of_the_same_version_is_tried(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    fix = failed_update(server, monkeypatch, "start", RuntimeError("the app will not start"))
    fix()
    release_101(server, bases=("1.0.0", "0.9.9"))  # another manifest, same version

    operations.configure(PACKAGE, "1.0.1")

    assert server.applied()[-1] == "1.0.1"
    assert failures.read(server.ctx) is None


def test_configuring_the_live_version_again_forgets_the_failure(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`apt install <package>=<live version>` after a failed 1.0.2: dpkg is honest again, and the
    failed version's record goes with it."""
    install_base(server)
    release_101(server)
    operations.configure(PACKAGE, "1.0.1")
    server.package("1.0.2", [modify("app.py", APP_V2, b"print('v3')\n")], bases=("1.0.1",))
    break_step(monkeypatch, "start", RuntimeError("the app will not start"))
    with pytest.raises(transaction.TransactionFailed):
        operations.configure(PACKAGE, "1.0.2")
    assert failures.read(server.ctx) is not None

    release_101(server)  # dpkg unpacks 1.0.1 again and runs its postinst
    operations.configure(PACKAGE, "1.0.1")

    assert failures.read(server.ctx) is None
    assert server.applied()[-1] == "1.0.1"


def test_an_interrupted_undo_of_a_failed_update_still_counts_as_failed(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed while the undo of a failed start ran: the next configure finishes the undo, then
    refuses the version instead of stopping the app for it again."""

    class Killed(BaseException):
        pass

    install_base(server)
    before = tree(server.app_root)
    release_101(server)
    break_step(monkeypatch, "start", RuntimeError("the app will not start"))
    real_undo = apply.ApplyFiles.undo

    def killed(self: Any) -> None:
        raise Killed

    monkeypatch.setattr(apply.ApplyFiles, "undo", killed)
    with pytest.raises(Killed):
        operations.configure(PACKAGE, "1.0.1")
    assert state.read_journal(server.ctx) is not None
    monkeypatch.setattr(apply.ApplyFiles, "undo", real_undo)

    with pytest.raises(RefusedError, match=r"1\.0\.1 failed at start"):
        operations.configure(PACKAGE, "1.0.1")

    assert state.read_journal(server.ctx) is None
    assert tree(server.app_root) == before
    assert server.systemd.is_active(UNIT)
    assert [s for s, _ in statuses(server)] == ["interrupted", "refused"]


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
        (sqlite_error("full"), True),
        (sqlite_error("locked"), True),
        (transaction.Interrupted("interrupted by signal SIGHUP"), True),
        (OSError(errno.EACCES, "Permission denied"), False),
        (sqlite3.OperationalError("no such column: price"), False),
        (NesopError("health check failed: HTTP 500"), False),
        # words the app controls (its health answer, its log, its migration's error) count for nothing
        (NesopError("nesop-store.service failed to start; its log says: database is locked"), False),
        (sqlite3.OperationalError("database or disk is full"), False),  # RAISE(ABORT, '...')
        (NesopError("migration 0003 failed: No space left on device"), False),
    ],
)
def test_what_counts_as_transient(exc: BaseException, expected: bool) -> None:
    assert failures.transient(exc) is expected


def test_a_full_file_system_makes_any_failure_transient(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app that cannot start on a full disk says so only in its own words: the file system
    the update writes is measured instead."""
    state.ensure_dir(server.ctx)
    server.app_root.mkdir(parents=True)
    cause = NesopError("nesop-store.service failed to start")
    assert failures.transient(cause, server.ctx) is False
    real = os.statvfs

    def nearly_full(path: Any) -> Any:
        st = real(path)
        return os.statvfs_result((st.f_bsize, 4096, st.f_blocks, 0, 10, *tuple(st)[5:]))

    monkeypatch.setattr(os, "statvfs", nearly_full)
    assert failures.transient(cause, server.ctx) is True


def test_a_wrapped_full_disk_is_transient() -> None:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise NesopError("cannot write app.py") from inner
    except NesopError as outer:
        assert failures.transient(outer)


def test_an_unreadable_record_never_blocks(server: Server) -> None:
    state.ensure_dir(server.ctx)
    (server.ctx.state_dir / "failed.json").write_text("{not json")
    assert failures.read(server.ctx) is None


def test_retry_keeps_the_record_when_dpkg_never_ran_the_postinst(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`nesop-update retry` while apt holds dpkg's lock: the version was not tried, so it stays
    one that apt does not try on its own."""
    failed_update(server, monkeypatch, "start", RuntimeError("the app will not start"))
    before = failures.read(server.ctx)
    fake = server.systemd

    def dpkg(argv: list[str], *rest: Any) -> proc.Result:
        if argv[0] == "dpkg-query":
            return proc.Result(argv, 0, b"iFR 1.0.1", b"")
        if argv[0] == "dpkg":
            return proc.Result(
                argv, 2, b"", b"dpkg: error: dpkg frontend lock was locked by another process\n"
            )
        return fake(argv, *rest)

    monkeypatch.setattr(proc, "executor", dpkg)
    with pytest.raises(NesopError, match=r"1\.0\.1 failed again \(dpkg --configure exit code 2\)"):
        operations.retry(server.ctx)
    assert failures.read(server.ctx) == before

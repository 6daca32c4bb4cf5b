"""An update that changes ``[app] unit_file`` installs the new unit in its transaction, and every
way back (a failed step, the recovery after a crash, a rollback, a restored backup) puts the old
unit back before the old app starts.

systemd is the fake server's, with one addition made at the same subprocess seam: a
``daemon-reload`` loads ``/etc/systemd/system/demo.service`` as it is on disk (or finds no unit
there), and a ``start`` notes which unit content the started app runs with.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from nesop_deb import proc
from nesop_deb.errors import RefusedError
from nesop_deb.manifest import Manifest
from nesop_deb.runtime import (
    apply,
    backup,
    checks,
    history,
    manual,
    operations,
    state,
    transaction,
    undo,
    unitfile,
    validate,
)
from tests.unit.runtime_fixtures import (
    APP_V1,
    APP_V2,
    M2,
    UNIT,
    Server,
    UnitState,
    add,
    delete,
    fake_server,
    install_base,
    leftovers,
    modify,
    sha,
    tree,
)
from tests.unit.test_runtime_recover import Crash, crashing_run

UNIT_REL = "deploy/demo.service"
UNIT_V1 = b"[Service]\nExecStart=/usr/bin/python3 /opt/app/app.py\n"
UNIT_V2 = b"[Service]\nExecStart=/usr/bin/python3 /opt/app/app.py\nEnvironment=MARK=2\n"
UNIT_LOCAL = UNIT_V1 + b"Environment=EDITED_HERE=1\n"


class Systemd:
    """The fake server's systemd, loading the unit file from disk at each ``daemon-reload``.

    ``vendor``: the service also has a unit elsewhere (``/usr/lib/systemd/system``), which is the
    one loaded while ``/etc/systemd/system`` holds none."""

    def __init__(self, server: Server, *, vendor: bool = False) -> None:
        self.server = server
        self.vendor = vendor
        self.fake = server.systemd
        self.loaded: bytes | None = self._on_disk()
        self.started_with: list[bytes | None] = []
        self.enabled: set[str] = set()

    def _on_disk(self) -> bytes | None:
        p = unitfile.path(self.server.ctx)
        return p.read_bytes() if p.is_file() else None

    def __call__(
        self,
        argv: list[str],
        cwd: Path | None,
        env: Mapping[str, str] | None,
        stdin: bytes | None,
        timeout: float | None,
    ) -> proc.Result:
        verb = argv[1] if argv[0] == "systemctl" else None
        if verb in ("enable", "disable"):
            self.fake.calls.append(list(argv))
            if self.loaded is None:
                return proc.Result(argv, 5, b"", f"Failed to {verb} unit: {UNIT} does not exist".encode())
            (self.enabled.add if verb == "enable" else self.enabled.discard)(argv[-1])
            return proc.Result(argv, 0, b"", b"")
        result = self.fake(argv, cwd, env, stdin, timeout)
        if verb == "daemon-reload":
            self.loaded = self._on_disk()
            if self.loaded is None and not self.vendor:
                self.fake.units.pop(UNIT, None)
            else:
                self.fake.units.setdefault(UNIT, UnitState(active="inactive", sub="dead", pid=0))
        elif verb == "start" and result.returncode == 0:
            self.started_with.append(self.loaded)
        return result


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    yield from fake_server(tmp_path, monkeypatch)


def install_unit(server: Server, content: bytes) -> None:
    p = unitfile.path(server.ctx)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(content)
    p.chmod(0o644)


def deployed(
    server: Server, monkeypatch: pytest.MonkeyPatch, *, installed: bytes | None = UNIT_V1
) -> Systemd:
    """1.0.0 as deployed by hand, its unit file in the tree and (``installed``) in /etc (else the
    service runs from a unit elsewhere)."""
    server.settings["app"]["unit_file"] = UNIT_REL
    install_base(server)
    server.write_tree({UNIT_REL: UNIT_V1})
    if installed is not None:
        install_unit(server, installed)
    systemd = Systemd(server, vendor=installed is None)
    monkeypatch.setattr(proc, "executor", systemd)
    return systemd


def release(server: Server, version: str = "1.0.1", **kw: Any) -> Manifest:
    """A release that changes the app, its unit and its database."""
    changes = [modify("app.py", APP_V1, APP_V2), modify(UNIT_REL, UNIT_V1, UNIT_V2)]
    return server.package(version, changes, [M2], **kw)


def run_apply(server: Server, manifest: Manifest) -> None:
    ctx = server.ctx
    operations.run_apply(ctx, manifest, ctx.share, state.load(ctx))


def installed(server: Server) -> tuple[bytes, int] | None:
    p = unitfile.path(server.ctx)
    return (p.read_bytes(), p.stat().st_mode & 0o7777) if p.exists() else None


def step_names(server: Server, manifest: Manifest) -> list[str]:
    return [s.name for s in apply.build_steps(apply.Job(server.ctx, manifest, server.root, None, "b"))]


def backup_of(server: Server, version: str) -> Path:
    entry = state.load(server.ctx).entry(version)
    assert entry is not None and entry.backup is not None
    return server.ctx.backups_dir / entry.backup


def test_a_release_that_changes_the_unit_installs_it_before_the_start(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    systemd = deployed(server, monkeypatch)
    manifest = release(server)
    names = step_names(server, manifest)
    assert names[names.index("migrate") : names.index("start")] == ["migrate", "unit"]

    run_apply(server, manifest)

    assert installed(server) == (UNIT_V2, 0o644)
    assert systemd.started_with == [UNIT_V2]
    verbs = server.systemd.verbs()
    assert verbs.index("stop") < verbs.index("daemon-reload") < verbs.index("start")
    assert "enable" not in verbs  # an update does not change whether the unit is enabled
    assert (server.app_root / UNIT_REL).read_bytes() == UNIT_V2  # the tree's copy too
    kept = backup.read_unit(server.ctx, backup_of(server, "1.0.1"))
    assert kept == backup.UnitCopy(UNIT, UNIT_V1, 0o644)
    assert history.read(server.ctx.history_file)[-1]["status"] == "success"
    assert validate.check_service(server.ctx).problems == []


def test_a_release_that_leaves_the_unit_alone_does_not_touch_it(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployed(server, monkeypatch)
    manifest = server.package("1.0.1", [modify("app.py", APP_V1, APP_V2)])
    assert "unit" not in step_names(server, manifest)

    run_apply(server, manifest)

    assert installed(server) == (UNIT_V1, 0o644)
    assert "daemon-reload" not in server.systemd.verbs()
    assert backup.read_unit(server.ctx, backup_of(server, "1.0.1")) is None


class InjectedFault(Exception):
    pass


def inject(monkeypatch: pytest.MonkeyPatch, step: str, when: str) -> None:
    classes: dict[str, type[Any]] = {
        "migrate": apply.Migrate,
        "unit": apply.InstallUnit,
        "start": apply.Start,
    }
    classes |= {"health": apply.HealthGate, "commit": apply.Commit}
    cls = classes[step]
    real: Callable[[Any], None] = cls.apply

    def failing(self: Any) -> None:
        if when == "after":
            real(self)
        raise InjectedFault(f"injected fault in {step}")

    monkeypatch.setattr(cls, "apply", failing)


@pytest.mark.parametrize(
    ("step", "when"),
    [
        ("migrate", "after"),
        ("unit", "before"),
        ("unit", "after"),
        ("start", "after"),
        ("health", "before"),
        ("commit", "before"),
    ],
)
def test_a_failed_update_puts_the_old_unit_back_before_the_old_app_starts(
    server: Server, monkeypatch: pytest.MonkeyPatch, step: str, when: str
) -> None:
    systemd = deployed(server, monkeypatch)
    manifest = release(server)
    tree_before = tree(server.app_root)
    inject(monkeypatch, step, when)

    with pytest.raises(transaction.TransactionFailed) as failed:
        run_apply(server, manifest)

    assert failed.value.step == step and failed.value.undo_errors == []
    assert installed(server) == (UNIT_V1, 0o644)
    assert systemd.loaded == UNIT_V1  # systemd was reloaded after the unit went back
    assert systemd.started_with[-1] == UNIT_V1  # and the old app started on it
    assert server.systemd.is_active(UNIT)
    assert tree(server.app_root) == tree_before
    assert leftovers(server.root) == []
    assert state.read_journal(server.ctx) is None
    last = history.read(server.ctx.history_file)[-1]
    assert (last["status"], last["failed_step"], last["old_app_healthy"]) == ("failed", step, True)
    if step == "migrate":
        assert "daemon-reload" not in server.systemd.verbs()  # the unit was never replaced


@pytest.mark.parametrize(
    ("at", "journaled_only", "boot"),
    [
        ("unit", True, False),
        ("unit", False, False),
        ("start", False, False),
        ("health", False, False),
        ("health", False, True),
    ],
    ids=["unit-journaled", "unit-done", "start-done", "health-done", "health-done-at-boot"],
)
def test_the_recovery_after_a_crash_puts_the_old_unit_back(
    server: Server, monkeypatch: pytest.MonkeyPatch, at: str, journaled_only: bool, boot: bool
) -> None:
    """The crash takes the process's memory with it: the journal names the unit step, and the
    backup holds the unit it replaced."""
    systemd = deployed(server, monkeypatch)
    manifest = release(server)
    with monkeypatch.context() as m:
        m.setattr(transaction, "run", crashing_run(at, journaled_only=journaled_only))
        with pytest.raises(Crash):
            run_apply(server, manifest)
    journal = state.read_journal(server.ctx)
    assert journal is not None and "unit" in journal["steps"]
    if boot:
        server.unit.active, server.unit.sub, server.unit.pid = "inactive", "dead", 0
        server.systemd.calls.clear()

    assert operations.recover(server.ctx, boot=boot) == "undid the interrupted update to 1.0.1"

    assert installed(server) == (UNIT_V1, 0o644)
    assert systemd.loaded == UNIT_V1
    if boot:
        # the app is not started here (systemd starts it after the recovery), on the old unit
        assert [v for v in server.systemd.verbs() if v not in ("daemon-reload",)] == []
    else:
        assert systemd.started_with[-1] == UNIT_V1
        assert server.systemd.is_active(UNIT)
    assert (server.app_root / "app.py").read_bytes() == APP_V1
    assert state.read_journal(server.ctx) is None
    last = history.read(server.ctx.history_file)[-1]
    assert (last["action"], last["status"], last["undo_errors"]) == ("recover", "interrupted", [])


def assert_refused(server: Server, manifest: Manifest, *needles: str) -> None:
    before, unit_before = tree(server.app_root), installed(server)
    with pytest.raises(RefusedError) as preinst:
        operations.preflight(manifest)
    with pytest.raises(RefusedError) as postinst:
        run_apply(server, manifest)
    for err in (preinst.value, postinst.value):
        assert "\n" not in str(err)
        for needle in needles:
            assert needle in str(err), str(err)
    assert server.systemd.verbs() == []  # refused before the stop
    assert tree(server.app_root) == before
    assert installed(server) == unit_before
    assert server.applied() == []
    last = history.read(server.ctx.history_file)[-1]
    assert (last["status"], last["failed_step"]) == ("refused", "preflight")


def test_a_unit_changed_on_the_server_is_refused_before_the_stop(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployed(server, monkeypatch, installed=UNIT_LOCAL)
    path = unitfile.path(server.ctx)
    assert_refused(
        server,
        release(server),
        f"{path} was changed on this server",
        f"neither the unit the live release ships ({UNIT_REL}) nor that of 1.0.1",
        "systemctl edit demo.service",
        f"put back the unit the live release ships ({UNIT_REL} of that release), checking that its"
        f" sha256 is {hashlib.sha256(UNIT_V1).hexdigest()}",
    )
    # never "copy it from the app tree": the app's account could change that file first
    with pytest.raises(RefusedError) as again:
        operations.preflight(release(server))
    assert str(server.app_root / UNIT_REL) not in str(again.value)


def test_a_masked_unit_is_refused(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    deployed(server, monkeypatch, installed=None)
    unitfile.path(server.ctx).parent.mkdir(parents=True)
    unitfile.path(server.ctx).symlink_to("/dev/null")
    assert_refused(server, release(server), f"{unitfile.path(server.ctx)} is a symlink", "unmask it")


def test_a_unit_already_the_new_one_is_left_as_it_is(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    systemd = deployed(server, monkeypatch, installed=UNIT_V2)

    run_apply(server, release(server))

    assert installed(server) == (UNIT_V2, 0o644)
    assert "daemon-reload" not in server.systemd.verbs()
    assert systemd.started_with == [UNIT_V2]


def test_a_missing_unit_is_installed_and_a_failure_takes_it_away_again(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    systemd = deployed(server, monkeypatch, installed=None)
    server.systemd.fail_starts = 1

    with pytest.raises(transaction.TransactionFailed):
        run_apply(server, release(server))

    assert installed(server) is None
    assert systemd.loaded is None
    assert "disable" not in server.systemd.verbs()  # not enabled by this update: not disabled either
    assert server.systemd.is_active(UNIT)  # on the unit it had

    run_apply(server, release(server))

    assert installed(server) == (UNIT_V2, 0o644)
    assert systemd.started_with[-1] == UNIT_V2
    assert systemd.enabled == set()


def test_an_update_deleting_the_unit_file_keeps_the_installed_unit(
    server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    deployed(server, monkeypatch)
    run_apply(server, release(server))
    settings = {k: dict(v) for k, v in server.settings.items()}
    settings["app"]["unit_file"] = None
    manifest = server.package("1.0.2", [delete(UNIT_REL, UNIT_V2)], bases=("1.0.1",), settings=settings)
    server.systemd.calls.clear()

    with caplog.at_level(logging.WARNING, logger="nesop_deb"):
        ctx = apply.context_for(manifest)
        operations.run_apply(ctx, manifest, ctx.share, state.load(ctx))

    assert (
        f"1.0.2 deletes {UNIT_REL}, the unit file: {unitfile.path(server.ctx)} stays installed" in caplog.text
    )
    assert installed(server) == (UNIT_V2, 0o644)
    assert not (server.app_root / UNIT_REL).exists()
    assert "daemon-reload" not in server.systemd.verbs()


def test_an_apt_downgrade_puts_the_old_unit_back(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    systemd = deployed(server, monkeypatch)
    run_apply(server, server.package("1.0.1", [modify("app.py", APP_V1, APP_V2)]))
    run_apply(server, server.package("1.0.2", [modify(UNIT_REL, UNIT_V1, UNIT_V2)], [M2], bases=("1.0.1",)))
    assert installed(server) == (UNIT_V2, 0o644)
    server.systemd.calls.clear()

    undo.undo_above(server.ctx, "1.0.1")

    assert installed(server) == (UNIT_V1, 0o644)
    assert systemd.started_with[-1] == UNIT_V1
    verbs = server.systemd.verbs()
    assert verbs.index("stop") < verbs.index("daemon-reload") < verbs.index("start")
    assert (server.app_root / UNIT_REL).read_bytes() == UNIT_V1
    assert server.applied() == ["1.0.1"]
    last = history.read(server.ctx.history_file)[-1]
    assert (last["action"], last["status"], last["undone"]) == ("rollback", "success", ["1.0.2"])
    assert f"{unitfile.path(server.ctx)} put back" in last["notes"][0]


def test_restoring_the_backup_of_the_update_puts_the_old_unit_back(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    systemd = deployed(server, monkeypatch)
    run_apply(server, release(server))
    name = backup_of(server, "1.0.1").name

    manual.restore_backup(server.ctx, name)

    assert installed(server) == (UNIT_V1, 0o644)
    assert systemd.started_with[-1] == UNIT_V1
    safety = history.read(server.ctx.history_file)[-1]["safety_backup"]
    # the safety backup keeps the unit the restore replaced: undoing the restore puts it back
    assert backup.read_unit(server.ctx, server.ctx.backups_dir / safety) == backup.UnitCopy(UNIT, UNIT_V2)


def test_a_failed_restore_puts_the_unit_back_as_it_was(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    systemd = deployed(server, monkeypatch)
    run_apply(server, release(server))
    name = backup_of(server, "1.0.1").name
    server.systemd.fail_starts = 1

    with pytest.raises(transaction.TransactionFailed):
        manual.restore_backup(server.ctx, name)

    assert installed(server) == (UNIT_V2, 0o644)
    assert systemd.started_with[-1] == UNIT_V2
    assert (server.app_root / "app.py").read_bytes() == APP_V2


def test_validate_reports_an_installed_unit_that_is_not_the_releases(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployed(server, monkeypatch)
    assert validate.check_service(server.ctx).problems == []  # deployed by hand: as the tree has it
    run_apply(server, release(server))
    assert validate.check_service(server.ctx).ok

    install_unit(server, UNIT_LOCAL)
    result = validate.check_service(server.ctx)

    assert not result.ok
    assert len(result.problems) == 1
    assert f"{unitfile.path(server.ctx)} differs from {UNIT_REL} of 1.0.1" in result.problems[0]
    assert "systemctl edit demo.service" in result.problems[0]


def first_install(server: Server, monkeypatch: pytest.MonkeyPatch) -> tuple[Systemd, Manifest]:
    server.settings["app"]["unit_file"] = UNIT_REL
    del server.systemd.units[UNIT]
    systemd = Systemd(server)
    monkeypatch.setattr(proc, "executor", systemd)
    files = [add("app.py", APP_V1), add(UNIT_REL, UNIT_V1)]
    return systemd, server.package("1.0.0", files, bases=(), full=True)


def test_a_first_install_installs_and_enables_its_unit(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    systemd, manifest = first_install(server, monkeypatch)

    run_apply(server, manifest)

    assert installed(server) == (UNIT_V1, 0o644)
    assert systemd.enabled == {UNIT}
    assert systemd.started_with == [UNIT_V1]


@pytest.mark.parametrize("how", ["failed", "crashed"])
def test_a_failed_first_install_disables_and_removes_its_unit(
    server: Server, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    systemd, manifest = first_install(server, monkeypatch)
    if how == "failed":
        inject(monkeypatch, "health", "before")
        with pytest.raises(transaction.TransactionFailed):
            run_apply(server, manifest)
    else:
        with monkeypatch.context() as m:
            m.setattr(transaction, "run", crashing_run("start", journaled_only=False))
            with pytest.raises(Crash):
                run_apply(server, manifest)
        operations.recover(server.ctx)

    assert installed(server) is None
    assert systemd.enabled == set()
    assert systemd.loaded is None
    assert UNIT not in server.systemd.units
    assert os.listdir(unitfile.path(server.ctx).parent) == []


def test_the_preflight_accepts_the_unit_a_partial_update_left_behind(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partial update left the unit file at 1.0.0's content while the server claims 1.0.1:
    the next update's pre-image is 1.0.1's unit, and 1.0.0's installed unit is no local change."""
    deployed(server, monkeypatch)
    unit_101 = UNIT_V1 + b"# 1.0.1\n"
    st = state.load(server.ctx)
    partial = server.package("1.0.1", [modify("app.py", APP_V1, APP_V2)])
    state.record_version(server.ctx, partial, server.ctx.share / "migrations")
    left = state.version_dir(server.ctx, "1.0.1") / state.LEFT_BEHIND
    left.write_text(json.dumps({"files": {UNIT_REL: sha(UNIT_V1)}}))
    st.applied.append(state.Applied("1.0.1", None, None, "2026-01-01T00:00:00Z"))
    state.save(server.ctx, st)
    manifest = server.package("1.0.2", [modify(UNIT_REL, unit_101, UNIT_V2)], bases=("1.0.1",))

    checks.preflight(server.ctx, manifest)  # no refusal

    install_unit(server, UNIT_LOCAL)
    with pytest.raises(RefusedError, match="was changed on this server"):
        checks.preflight(server.ctx, manifest)


def test_putting_the_unit_back_from_a_missing_backup_fails_loudly(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployed(server, monkeypatch, installed=UNIT_V1)
    # e.g. backups/ renamed away by an account that owns the app root: the undo must not pass quietly
    with pytest.raises(backup.BackupError, match="is missing"):
        unitfile.restore(server.ctx, server.app_root / "backups" / "pre-update_1.0.1_20260101T000000Z")
    assert installed(server) == (UNIT_V1, 0o644)

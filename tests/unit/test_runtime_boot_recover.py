"""Recovery at boot (``nesop-update recover --boot``): the transaction a crash or power loss cut off
is finished before systemd starts the app, without touching the app's service; and the generator
that puts that recovery in front of every managed app's service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from nesop_deb.cli.update import cli
from nesop_deb.errors import NesopError, RefusedError
from nesop_deb.runtime import backup, bootrecover, history, lock, manual, operations, state
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
from tests.unit.test_runtime_recover import STEPS, crash

TOP = Path(__file__).resolve().parents[2]
GENERATOR = TOP / "debian/nesop-update-recover-generator"
TEMPLATE = TOP / "debian/nesop-update-recover@.service"


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    yield from fake_server(tmp_path, monkeypatch)


def power_loss(server: Server) -> None:
    """The machine went down: at the next boot the app has not started (it waits for us)."""
    server.unit.active, server.unit.sub, server.unit.pid = "inactive", "dead", 0
    server.systemd.calls.clear()


def service_verbs(server: Server) -> list[str]:
    return [v for v in server.systemd.verbs() if v != "daemon-reload"]


# a crash once the commit's work is done leaves a committed update (the test after this one)
@pytest.mark.parametrize("at", [s for s in STEPS if s != "commit"] + ["commit-journaled"])
def test_an_interrupted_update_is_undone_without_touching_the_service(
    server: Server, monkeypatch: pytest.MonkeyPatch, at: str
) -> None:
    install_base(server)
    tree_before, db_before = tree(server.app_root), db_dump(server.db)
    step = at.removesuffix("-journaled")
    crash(server, monkeypatch, step, journaled_only=at.endswith("-journaled"))
    power_loss(server)

    assert bootrecover.recover(server.ctx) == "undid the interrupted update to 1.0.1"

    assert tree(server.app_root) == tree_before
    assert db_dump(server.db) == db_before
    assert leftovers(server.root) == []
    assert state.read_journal(server.ctx) is None
    assert server.applied() == []
    # systemd starts the app once the recovery is done: a start from here would wait for it
    assert service_verbs(server) == []
    assert not server.systemd.is_active(UNIT)
    last = history.read(server.ctx.history_file)[-1]
    assert (last["action"], last["status"], last["failed_step"]) == ("recover", "interrupted", step)
    assert (last["at_boot"], last["old_app_healthy"], last["undo_errors"]) == (True, None, [])


def test_a_committed_update_is_kept(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    install_base(server)
    before = tree(server.app_root)
    crash(server, monkeypatch, "commit", journaled_only=False)
    power_loss(server)

    assert bootrecover.recover(server.ctx) == "1.0.1 had been applied; nothing to undo"

    assert tree(server.app_root) == expected_after_101(before)
    assert server.applied() == ["1.0.1"]
    assert state.read_journal(server.ctx) is None
    assert service_verbs(server) == []


def test_without_a_journal_nothing_is_asked_of_systemd(server: Server) -> None:
    install_base(server)
    power_loss(server)

    assert bootrecover.recover(server.ctx) == bootrecover.NOTHING

    assert server.systemd.calls == []


def test_a_holder_starting_the_app_is_not_waited_for(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The holder is the runtime starting the app on a whole tree (an update's start step, an
    undo's last step, a recovery's restart): its start pulled the recovery unit in, and waits for
    it, so waiting for the holder would deadlock both."""
    install_base(server)
    crash(server, monkeypatch, "apply-files", journaled_only=False)
    power_loss(server)
    journal = state.read_journal(server.ctx)
    tree_now = tree(server.app_root)
    marker = server.root / "run/nesop-deb/starting" / server.ctx.app.service
    marker.parent.mkdir(parents=True)
    marker.write_text(f"{os.getpid()}\n")  # what service.start says while it starts the unit

    with lock.held(operations.lock_path(server.ctx), "configure demo-update 1.0.1"):
        done = bootrecover.recover(server.ctx)

    assert done == f"pid {os.getpid()} holds the lock and is starting the app"
    assert state.read_journal(server.ctx) == journal
    assert tree(server.app_root) == tree_now
    assert service_verbs(server) == []


def test_another_holder_is_waited_for_then_the_journal_finished(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A holder that does not start the app (a backup, an adoption, a recovery by `dpkg
    --configure -a` at boot still undoing): the app must not start before the tree is whole."""
    install_base(server)
    before = tree(server.app_root)
    crash(server, monkeypatch, "apply-files", journaled_only=False)
    power_loss(server)
    holder = lock.held(operations.lock_path(server.ctx), "manual backup")
    holder.__enter__()
    threading.Timer(0.5, holder.__exit__, (None, None, None)).start()

    done = bootrecover.recover(server.ctx)

    assert "undid the interrupted update" in done
    assert state.read_journal(server.ctx) is None
    assert tree(server.app_root) == before


def test_a_holder_that_never_lets_go_fails_the_unit(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    install_base(server)
    crash(server, monkeypatch, "apply-files", journaled_only=False)
    power_loss(server)
    monkeypatch.setattr(bootrecover, "LOCK_WAIT", 0.3)
    with (
        lock.held(operations.lock_path(server.ctx), "manual backup"),
        pytest.raises(NesopError, match=r"holds .* for 0.3 s; demo.service does not start until it is done"),
    ):
        bootrecover.recover(server.ctx)
    assert state.read_journal(server.ctx) is not None


def test_an_app_that_runs_is_left_to_the_operator(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Started outside the boot (its files would change under it): refused, nothing changes."""
    install_base(server)
    crash(server, monkeypatch, "health", journaled_only=False)
    server.systemd.calls.clear()
    tree_now, journal = tree(server.app_root), state.read_journal(server.ctx)

    with pytest.raises(RefusedError, match=r"demo.service is active.*nesop-update recover --app demo"):
        bootrecover.recover(server.ctx)

    assert tree(server.app_root) == tree_now
    assert state.read_journal(server.ctx) == journal
    assert service_verbs(server) == []


def test_an_interrupted_rollback_keeps_the_app_down(server: Server) -> None:
    """A rollback stops and starts the service itself: not before the app starts. The app stays
    down, and the error says what finishes it."""
    install_base(server)
    journal = {"kind": "undo", "version": "1.0.2", "target": "1.0.1", "started": 0.0}
    state.write_journal(server.ctx, journal)
    power_loss(server)

    with pytest.raises(NesopError) as raised:
        bootrecover.recover(server.ctx)

    message = str(raised.value)
    assert "rollback to 1.0.1" in message and "demo.service does not start until it succeeds" in message
    assert "nesop-update recover --app demo" in message
    assert state.read_journal(server.ctx) == journal
    assert service_verbs(server) == []


def test_an_interrupted_restore_is_undone_without_starting_the_app(server: Server) -> None:
    install_base(server)
    ctx = server.ctx
    target = manual.manual_backup(ctx, "before-edit")
    (server.app_root / "app.py").write_bytes(b"print('edited')\n")
    tree_before = tree(server.app_root)
    safety = "pre_rollback_crash"
    data = backup.read_manifest(ctx, target)
    backup.create_files(ctx, safety, [f["path"] for f in data["files"]], {"kind": "pre_rollback"})
    backup.add_database(ctx, ctx.backups_dir / safety)
    state.write_journal(ctx, {"kind": "restore", "backup": target.name, "safety": safety, "steps": []})
    backup.restore_files(ctx, target)
    power_loss(server)

    assert bootrecover.recover(ctx) == f"undid the interrupted restore of {target.name}"

    assert tree(server.app_root) == tree_before
    assert state.read_journal(ctx) is None
    assert service_verbs(server) == []


def test_the_command(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the boot unit runs: ``nesop-update recover --boot --app <package>``."""
    install_base(server)
    crash(server, monkeypatch, "migrate", journaled_only=False)
    power_loss(server)
    runner = CliRunner()

    result = runner.invoke(cli, ["recover", "--boot", "--app", PACKAGE])

    assert result.exit_code == 0, result.output
    assert "demo: undid the interrupted update to 1.0.1" in result.output
    assert service_verbs(server) == []
    again = runner.invoke(cli, ["recover", "--boot"])  # every managed app
    assert (again.exit_code, again.output.strip()) == (0, f"demo: {bootrecover.NOTHING}")


def test_the_command_fails_when_the_recovery_does(server: Server) -> None:
    """A failure fails the unit, so that systemd does not start the app."""
    install_base(server)
    release_101(server)  # unpacked: the app is managed
    state.journal_path(server.ctx).parent.mkdir(parents=True)
    state.journal_path(server.ctx).write_text("{ torn", encoding="utf-8")
    power_loss(server)

    result = CliRunner().invoke(cli, ["recover", "--boot", "--app", PACKAGE])

    assert result.exit_code == 1
    assert "recovery of demo at boot failed" in result.output
    assert "demo.service does not start until it succeeds" in result.output


# --- the generator and the unit ------------------------------------------------------------------


def generate(root: Path, out: Path) -> dict[str, str]:
    subprocess.run(
        [sys.executable, str(GENERATOR), str(out), str(out) + ".early", str(out) + ".late"],
        check=True,
        env={**os.environ, "DPKG_ROOT": str(root)},
    )
    return {str(p.relative_to(out)): p.read_text() for p in sorted(out.rglob("*")) if p.is_file()}


def manifest(root: Path, package: str, service: object) -> None:
    share = root / "usr/share" / package
    share.mkdir(parents=True)
    data = {"package": package, "config": {"app": {"name": "x", "service": service}}}
    (share / "update_manifest.json").write_text(json.dumps(data))


def test_the_generator_puts_each_app_behind_its_recovery(server: Server, tmp_path: Path) -> None:
    release_101(server)  # a real manifest, unpacked where dpkg puts it
    manifest(server.root, "shop-update", "shop@eu.service")  # an instance: "@" may recur
    manifest(server.root, "broken-update", ["not", "a", "name"])
    (server.root / "usr/share/torn").mkdir()
    (server.root / "usr/share/torn/update_manifest.json").write_text("{")
    manifest(server.root, "other-update", "other.service")
    (server.root / "usr/share/other-update").rename(server.root / "usr/share/renamed")  # not its own

    files = generate(server.root, tmp_path / "out")

    assert sorted(files) == [
        "demo.service.d/50-nesop-update-gate.conf",
        "demo.service.d/50-nesop-update-recover.conf",
        "nesop-update-gate@demo.service.d/50-demo-update.conf",
        "nesop-update-gate@shop@eu.service.d/50-shop-update.conf",
        "nesop-update-recover@demo.service.d/50-demo-update.conf",
        "nesop-update-recover@shop@eu.service.d/50-shop-update.conf",
        "shop@eu.service.d/50-nesop-update-gate.conf",
        "shop@eu.service.d/50-nesop-update-recover.conf",
    ]
    dropin = files["demo.service.d/50-nesop-update-recover.conf"]
    assert (
        "[Unit]\nRequires=nesop-update-recover@demo.service\nAfter=nesop-update-recover@demo.service\n"
        in dropin
    )
    assert files["nesop-update-recover@demo.service.d/50-demo-update.conf"].endswith(
        "[Service]\nEnvironment=NESOP_PACKAGE=demo-update\n"
    )


def test_the_recovery_of_an_app_on_postgresql_waits_for_the_server(tmp_path: Path) -> None:
    root = tmp_path / "root"
    manifest(root, "shop-update", "shop.service")
    data = json.loads((root / "usr/share/shop-update/update_manifest.json").read_text())
    data["config"]["migrations"] = {"database": "postgresql:///shop?host=/var/run/postgresql"}
    (root / "usr/share/shop-update/update_manifest.json").write_text(json.dumps(data))
    manifest(root, "lite-update", "lite.service")

    files = generate(root, tmp_path / "out")

    pg = files["nesop-update-recover@shop.service.d/50-shop-update.conf"]
    assert "[Unit]\nAfter=postgresql.service network-online.target\nWants=postgresql.service" in pg
    assert "[Unit]" not in files["nesop-update-recover@lite.service.d/50-lite-update.conf"]
    assert "postgresql" not in files["nesop-update-gate@shop.service.d/50-shop-update.conf"]


def test_the_generator_writes_nothing_without_apps(tmp_path: Path) -> None:
    (tmp_path / "root/usr/share").mkdir(parents=True)
    assert generate(tmp_path / "root", tmp_path / "out") == {}


def test_the_unit_runs_the_recovery_only_when_a_journal_exists(tmp_path: Path) -> None:
    """The unit's ExecStart, run as systemd would (``$$`` is a literal ``$``; ``${NESOP_PACKAGE}``
    systemd's own expansion): no journal, no Python; a journal, the recovery."""
    exec_start = next(line for line in TEMPLATE.read_text().splitlines() if line.startswith("ExecStart="))
    argv = exec_start.removeprefix("ExecStart=")
    assert argv.startswith("/bin/sh -c '")
    script = argv[len("/bin/sh -c '") : argv.index("' ")].replace("$$", "$")
    assert argv.endswith(' "${NESOP_PACKAGE}"')
    fake_bin = tmp_path / "nesop-update"
    fake_bin.write_text('#!/bin/sh\necho "ran: $*"\n')
    fake_bin.chmod(0o755)
    script = script.replace("/var/lib/", f"{tmp_path}/var/lib/").replace(
        "/usr/bin/nesop-update", str(fake_bin)
    )

    def run(package: str) -> str:
        return subprocess.run(
            ["/bin/sh", "-c", script, "nesop-update-recover", package],
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    (tmp_path / "var/lib/demo-update").mkdir(parents=True)
    assert run("demo-update") == ""
    assert run("") == ""  # an instance the generator did not set up
    (tmp_path / "var/lib/demo-update/journal.json").write_text("{}")
    assert run("demo-update") == "ran: recover --boot --app demo-update\n"

"""The gate: while the runtime has the app stopped, every start of it waits.

The condition systemd runs before each start is the generator's own text, run here by /bin/sh
with the real ``flock(1)`` against a gate the runtime's module holds; the transaction's order
(gate closed before the stop, opened before the start, closed again before an undo stops the
new app) is checked on the fake server, whose systemd sits at the subprocess seam.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from nesop_deb import proc
from nesop_deb.runtime import backup, gating, operations, service, state, unitfile, validate
from nesop_deb.runtime.gating import gatefile
from tests.unit.runtime_fixtures import (
    APP_V1,
    APP_V2,
    UNIT,
    Server,
    UnitState,
    add,
    fake_server,
    install_base,
    modify,
)
from tests.unit.test_runtime_boot_recover import generate
from tests.unit.test_runtime_recover import crash

TOP = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    yield from fake_server(tmp_path, monkeypatch)


GATE_UNIT = TOP / "debian/nesop-update-gate@.service"


def condition(server: Server, tmp_path: Path) -> list[str]:
    """What the app's gate unit runs before each of its starts, as systemd would run it for the
    fake server's app (``$$`` is a literal ``$``, ``%i`` the instance, ``${NESOP_PACKAGE}`` the
    package the generator names), with its paths below the test's root: the argv /bin/sh runs."""
    from tests.unit.runtime_fixtures import release_101

    release_101(server)  # a manifest where dpkg unpacks it
    files = generate(server.root, tmp_path / "out")
    stem = UNIT.removesuffix(".service")
    assert f"Requires=nesop-update-gate@{stem}.service\n" in files[f"{UNIT}.d/{gating.dropin.NAME}"]
    package = server.ctx.package
    dropin = files[f"nesop-update-gate@{stem}.service.d/50-{package}.conf"]
    assert dropin.endswith(f"[Service]\nEnvironment=NESOP_PACKAGE={package}\n")
    text = GATE_UNIT.read_text().replace("\\\n", "")  # continuation lines joined, as systemd does
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    argv = exec_start.removeprefix("ExecStart=")
    assert argv.startswith("/bin/sh -c '") and argv.endswith('\' nesop-update-gate "${NESOP_PACKAGE}"')
    script = argv[len("/bin/sh -c '") : argv.rindex("' nesop-update-gate ")]
    script = script.replace("$$", "$").replace("%i", stem).replace("/var/lib/", f"{server.root}/var/lib/")
    return ["/bin/sh", "-c", script, "nesop-update-gate", package]


def wait(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str] | None:
    """The condition's result, or None when it was still waiting after ``timeout`` s."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None


def test_the_condition_waits_while_the_gate_is_held_and_goes_on_when_opened(
    server: Server, tmp_path: Path
) -> None:
    argv = condition(server, tmp_path)
    done = wait(argv, 5)
    assert done is not None and done.returncode == 0 and done.stdout == ""  # no gate file yet

    gating.hold(server.ctx, "update to 1.0.1")
    assert gatefile.inspect(server.ctx).locked
    assert wait(argv, 0.6) is None  # it waits; systemd's start timeout bounds it
    threading.Timer(0.5, gating.release, [server.ctx]).start()
    done = wait(argv, 5)
    assert done is not None and done.returncode == 0
    assert done.stdout.splitlines() == [
        f"nesop-update gate: an update holds {UNIT}; its start waits",
        "nesop-update gate: open",
    ]
    assert gatefile.inspect(server.ctx) == gatefile.GateState("", False)


def test_a_killed_holder_keeps_the_app_gated_until_its_journal_is_finished(
    server: Server, tmp_path: Path
) -> None:
    argv = condition(server, tmp_path)
    state.write_journal(server.ctx, {"kind": "apply", "version": "1.0.1"})
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from nesop_deb.runtime.context import AppSettings, Context\n"
            "from nesop_deb.runtime.gating import gatefile\n"
            "from tests.unit.runtime_fixtures import default_settings\n"
            "settings = AppSettings.from_manifest_config(default_settings())\n"
            "ctx = Context('demo-update', settings, Path(sys.argv[1]))\n"
            "gatefile.hold(ctx, 'update to 1.0.1'); print('held', flush=True); time.sleep(60)\n",
            str(server.root),
        ],
        cwd=TOP,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    holder.send_signal(signal.SIGKILL)
    holder.wait()

    left = gatefile.inspect(server.ctx)
    assert not left.locked and left.holder == f"pid {holder.pid}: update to 1.0.1"
    assert wait(argv, 0.8) is None  # the lock is gone, the line and the journal are not
    report = gating.report(server.ctx, service.status(UNIT))
    assert any("left closed" in p for p in report.problems)

    state.clear_journal(server.ctx)  # the recovery finished it (a reboot's recovery, too)
    done = wait(argv, 5)
    assert done is not None and done.returncode == 0
    gating.release(server.ctx)
    assert gatefile.inspect(server.ctx).holder == ""


def test_the_held_descriptor_is_not_inherited(server: Server) -> None:
    gating.hold(server.ctx, "update")
    gating.hold(server.ctx, "again")  # held here already: the same descriptor, no self-deadlock
    fd = gatefile._held[gatefile.path(server.ctx)]
    assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    child = subprocess.run(["ls", "/proc/self/fd"], capture_output=True, text=True, check=True)
    assert str(fd) not in child.stdout.split()
    gating.release(server.ctx)
    assert not gating.held_here(server.ctx)


def test_a_gate_that_is_a_link_is_refused_and_nothing_changes(server: Server, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep\n")
    p = gatefile.path(server.ctx)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.symlink_to(target)
    with pytest.raises(Exception, match="cannot open the gate"):
        gating.hold(server.ctx, "update")
    assert target.read_text() == "keep\n"


class Watch:
    """What the gate was when systemd was asked to stop or start the app."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.seen: list[tuple[str, bool]] = []
        self.real = proc.executor

    def __call__(
        self,
        argv: list[str],
        cwd: Path | None,
        env: Mapping[str, str] | None,
        stdin: bytes | None,
        timeout: float | None,
    ) -> proc.Result:
        if argv[0] == "systemctl" and argv[1] in ("stop", "start") and argv[-1] == UNIT:
            self.seen.append((argv[1], gatefile.inspect(self.server.ctx).locked))
        return self.real(argv, cwd, env, stdin, timeout)


def run_update(server: Server) -> None:
    manifest = server.package("1.0.1", [modify("app.py", APP_V1, APP_V2)])
    operations.run_apply(server.ctx, manifest, server.ctx.share, state.load(server.ctx))


def test_an_update_holds_the_gate_from_the_stop_to_the_start(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_base(server)
    watch = Watch(server)
    monkeypatch.setattr(proc, "executor", watch)
    run_update(server)
    assert watch.seen == [("stop", True), ("start", False)]
    assert gatefile.inspect(server.ctx) == gatefile.GateState("", False)


def test_a_failed_update_closes_the_gate_before_it_stops_the_new_app(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_base(server)
    codes = iter([200] * 0)
    server.serve_health(lambda: next(codes, 503))
    server.configure(timeout=0.5)
    watch = Watch(server)
    monkeypatch.setattr(proc, "executor", watch)
    with pytest.raises(Exception, match="not healthy"):
        run_update(server)
    # stop (gated), start the new app (open), stop it (gated again), start the old one (open)
    assert watch.seen == [("stop", True), ("start", False), ("stop", True), ("start", False)]
    assert gatefile.inspect(server.ctx) == gatefile.GateState("", False)


def test_a_gate_drop_in_systemd_has_not_loaded_is_loaded_before_the_stop(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_base(server)
    server.unit.gate_dropin = False  # a toolchain installed without a reload since
    assert validate.check_service(server.ctx).problems == []  # adopted only: no package, no drop-in
    manifest = server.package("1.0.1", [modify("app.py", APP_V1, APP_V2)])  # unpacked by dpkg
    assert any("has not loaded the update gate" in p for p in validate.check_service(server.ctx).problems)
    operations.run_apply(server.ctx, manifest, server.ctx.share, state.load(server.ctx))
    verbs = server.systemd.verbs()
    assert verbs.index("daemon-reload") < verbs.index("stop")
    assert validate.check_service(server.ctx).problems == []


def test_recovery_closes_the_gate_a_killed_update_left_and_opens_it_at_the_end(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_base(server)
    crash(server, monkeypatch, "apply-files", journaled_only=False)
    os.close(gatefile._held.pop(gatefile.path(server.ctx)))  # the kernel's part of a SIGKILL
    left = gatefile.inspect(server.ctx)
    assert left.holder.endswith("update to 1.0.1") and not left.locked
    watch = Watch(server)
    monkeypatch.setattr(proc, "executor", watch)
    assert operations.recover(server.ctx) == "undid the interrupted update to 1.0.1"
    assert watch.seen[-1] == ("start", False)
    assert gatefile.inspect(server.ctx) == gatefile.GateState("", False)
    assert server.unit.active == "active"
    assert (server.app_root / "app.py").read_bytes() == APP_V1


SOCKET = UNIT.removesuffix(".service") + ".socket"
SOCKET_REL = "deploy/demo.socket"
SOCKET_V1 = b"[Socket]\nListenStream=127.0.0.1:8000\n\n[Install]\nWantedBy=sockets.target\n"


class SocketSystemd:
    """The fake server's systemd, which loads the socket unit from /etc at each daemon-reload."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.real = proc.executor
        self.enabled: set[str] = set()

    def __call__(
        self,
        argv: list[str],
        cwd: Path | None,
        env: Mapping[str, str] | None,
        stdin: bytes | None,
        timeout: float | None,
    ) -> proc.Result:
        fake = self.server.systemd
        if argv[:2] == ["systemctl", "daemon-reload"]:
            if unitfile.path(self.server.ctx, SOCKET).exists():
                fake.units.setdefault(SOCKET, UnitState(active="inactive", sub="dead", pid=0))
            else:
                fake.units.pop(SOCKET, None)
        if argv[0] == "systemctl" and argv[1] in ("enable", "disable"):
            fake.calls.append(list(argv))
            (self.enabled.add if argv[1] == "enable" else self.enabled.discard)(argv[-1])
            if "--now" in argv and SOCKET in fake.units:
                fake.units[SOCKET].active, fake.units[SOCKET].sub = "inactive", "dead"
            return proc.Result(argv, 0, b"", b"")
        if argv[0] == "systemctl" and argv[1] in ("start", "restart") and SOCKET in argv:
            fake.calls.append([*argv[:2], "--", SOCKET])
            fake.units[SOCKET].active, fake.units[SOCKET].sub = "active", "listening"
            if argv[-1] == SOCKET:
                return proc.Result(argv, 0, b"", b"")
            argv = [*argv[:2], "--", UNIT]
        return self.real(argv, cwd, env, stdin, timeout)


def with_socket(server: Server, monkeypatch: pytest.MonkeyPatch) -> SocketSystemd:
    server.settings["app"]["unit_file"] = "deploy/demo.service"
    install_base(server)
    unit = b"[Service]\nExecStart=/usr/bin/python3 /opt/app/app.py\n"
    server.write_tree({"deploy/demo.service": unit})
    p = unitfile.path(server.ctx)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(unit)
    server.settings["app"]["socket_file"] = SOCKET_REL
    systemd = SocketSystemd(server)
    monkeypatch.setattr(proc, "executor", systemd)
    return systemd


def test_an_update_that_brings_a_socket_installs_enables_and_starts_it_before_the_app(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    systemd = with_socket(server, monkeypatch)
    manifest = server.package("1.0.1", [modify("app.py", APP_V1, APP_V2), add(SOCKET_REL, SOCKET_V1)])
    operations.run_apply(server.ctx, manifest, server.ctx.share, state.load(server.ctx))

    assert unitfile.path(server.ctx, SOCKET).read_bytes() == SOCKET_V1
    assert SOCKET in systemd.enabled
    calls = [c for c in server.systemd.calls if c[1] != "show"]
    assert calls.index(["systemctl", "stop", "--", UNIT]) < calls.index(["systemctl", "start", "--", SOCKET])
    assert calls[-1] == ["systemctl", "start", "--", UNIT]  # with the socket, in one call
    assert server.systemd.units[SOCKET].sub == "listening"
    taken = state.load(server.ctx).applied[-1].backup
    assert taken is not None
    kept = backup.read_unit(server.ctx, server.ctx.backups_dir / taken, "socket")
    assert kept == backup.UnitCopy(SOCKET, None)  # there was none: an undo removes it
    report = gating.report(server.ctx, service.status(UNIT))
    assert report.socket == SOCKET


def test_a_failed_update_that_brought_a_socket_disables_stops_and_removes_it(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    systemd = with_socket(server, monkeypatch)
    server.serve_health(lambda: 503)
    server.configure(timeout=0.5)
    manifest = server.package("1.0.1", [modify("app.py", APP_V1, APP_V2), add(SOCKET_REL, SOCKET_V1)])
    with pytest.raises(Exception, match="not healthy"):
        operations.run_apply(server.ctx, manifest, server.ctx.share, state.load(server.ctx))

    assert not unitfile.path(server.ctx, SOCKET).exists()
    assert SOCKET not in systemd.enabled and SOCKET not in server.systemd.units
    assert ["systemctl", "disable", "--now", "--", SOCKET] in server.systemd.calls
    assert (server.app_root / "app.py").read_bytes() == APP_V1
    assert server.unit.active == "active"
    assert gatefile.inspect(server.ctx) == gatefile.GateState("", False)


def test_a_socket_whose_listening_settings_did_not_change_is_not_restarted(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart closes the listener and resets what it holds: only a change of [Socket] needs one."""
    with_socket(server, monkeypatch)
    manifest = server.package("1.0.1", [modify("app.py", APP_V1, APP_V2), add(SOCKET_REL, SOCKET_V1)])
    operations.run_apply(server.ctx, manifest, server.ctx.share, state.load(server.ctx))
    commented = b"# the store's address\n" + SOCKET_V1
    manifest = server.package("1.0.2", [modify(SOCKET_REL, SOCKET_V1, commented)], bases=("1.0.1",))
    operations.run_apply(server.ctx, manifest, server.ctx.share, state.load(server.ctx))
    assert unitfile.path(server.ctx, SOCKET).read_bytes() == commented
    assert ["systemctl", "restart", "--", SOCKET] not in server.systemd.calls
    moved = commented.replace(b"8000", b"8001")
    manifest = server.package("1.0.3", [modify(SOCKET_REL, commented, moved)], bases=("1.0.2",))
    operations.run_apply(server.ctx, manifest, server.ctx.share, state.load(server.ctx))
    assert ["systemctl", "restart", "--", SOCKET] in server.systemd.calls


def test_an_undo_that_fails_leaves_the_app_stopped_and_gated(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nesop_deb.runtime import apply, backup

    install_base(server)
    server.serve_health(lambda: 503)
    server.configure(timeout=0.5)

    def broken(*_args: object, **_kw: object) -> None:
        raise OSError("the disk is gone")

    monkeypatch.setattr(backup, "restore_files", broken)
    with pytest.raises(Exception, match="not healthy") as failed:
        run_update(server)
    errors = failed.value.undo_errors  # type: ignore[attr-defined]
    assert any("apply-files" in e for e in errors) and any("the app was not started" in e for e in errors)
    assert server.unit.active != "active"
    assert gatefile.inspect(server.ctx).locked  # held until this process ends; then the line stays
    assert state.journal_path(server.ctx).exists()
    assert apply.Stop.starts_app
    gating.release(server.ctx)

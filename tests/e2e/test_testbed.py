"""The test bed itself: real boots, services, packages, clean stops, power loss."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import ContainerFactory
from .releases import every_release
from .testbed import SUITES, CommandError, Container, TestbedError, free_port


def _process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"  # a zombie runs nothing and holds nothing


def _mounted_under(directory: Path) -> list[str]:
    mount_points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [point for point in mount_points if point.startswith(str(directory))]


@every_release
def test_boots_debian_with_systemd_as_pid1(container: Container, suite: str) -> None:
    state = container.run(["systemctl", "is-system-running"], check=False).stdout.strip()
    assert state in ("running", "degraded"), container.run(["systemctl", "--failed"]).stdout
    assert container.run(["ps", "-o", "comm=", "-p", "1"]).stdout.strip() == "systemd"
    assert container.run(["readlink", "/proc/1/exe"]).stdout.strip() == "/usr/lib/systemd/systemd"
    os_release = container.run(["cat", "/etc/os-release"]).stdout
    assert f'VERSION_ID="{SUITES[suite]}"' in os_release
    assert container.run(["hostname"]).stdout.strip() == "nesop-testbed"
    assert container.boot_seconds is not None and container.boot_seconds < 30


def test_run_reports_failures_with_output(container: Container) -> None:
    with pytest.raises(CommandError) as caught:
        container.sh("echo to-out; echo to-err >&2; exit 3")
    error = caught.value
    assert (error.returncode, error.stdout, error.stderr) == (3, "to-out\n", "to-err\n")
    assert "exit code 3" in str(error) and "to-err" in str(error)
    assert container.run(["false"], check=False).returncode == 1
    assert container.run(["cat"], input="piped").stdout == "piped"
    # Only what the test gives reaches the container, not the host's environment.
    env = container.run(["env"], env={"NESOP_X": "1"}).stdout.splitlines()
    assert "NESOP_X=1" in env and "HOME=/root" in env
    assert not any(line.startswith("PYTEST_") for line in env)
    with pytest.raises(CommandError, match="timed out"):
        container.run(["sleep", "30"], timeout=0.5)
    with pytest.raises(CommandError, match="timed out"):
        container.sh("sleep 30 & sleep 31", timeout=0.5)
    # Nothing of the killed commands lingers to hold up the shutdown.
    started = time.monotonic()
    container.poweroff(timeout=8)
    assert time.monotonic() - started < 5


def test_copied_files_are_visible_inside(container: Container, tmp_path: Path) -> None:
    source = tmp_path / "payload.txt"
    source.write_text("hello from the host\n")
    source.chmod(0o640)
    container.copy_in(source, "/var/tmp/payload.txt")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a").write_text("a")
    container.copy_in(tree, "/opt/nesop-tree")

    assert container.run(["cat", "/var/tmp/payload.txt"]).stdout == "hello from the host\n"
    assert container.run(["stat", "-c", "%a %U", "/var/tmp/payload.txt"]).stdout.strip() == "640 root"
    assert container.run(["cat", "/opt/nesop-tree/sub/a"]).stdout == "a"
    # Written inside, read from the host through the same mapping.
    container.run(["sh", "-c", "echo inside > /root/note"])
    assert container.path("/root/note").read_text() == "inside\n"


def test_paths_that_would_be_hidden_are_refused(container: Container) -> None:
    for hidden in ("/tmp/x.deb", "/run/x", "/var/run/x", "/var/lock/x"):
        with pytest.raises(ValueError, match="virtual file system"):
            container.path(hidden)
    # Absolute links resolve inside the container's root, never on the host.
    container.run(["ln", "-s", "/etc", "/root/etc-link"])
    assert container.path("/root/etc-link/hostname") == container.root / "etc/hostname"
    assert container.path("/bin/sh") == container.root / "usr/bin/dash"
    with pytest.raises(ValueError, match="absolute"):
        container.path("relative/path")


def test_service_inside_answers_http_from_host(container: Container) -> None:
    port = free_port()
    container.write_file("/var/lib/web/hello.txt", "hello over http\n")
    container.write_file(
        "/etc/systemd/system/nesop-web.service",
        "[Service]\n"
        f"ExecStart=/usr/bin/python3 -m http.server --bind 127.0.0.1 {port} --directory /var/lib/web\n",
    )
    container.run(["systemctl", "daemon-reload"])
    container.run(["systemctl", "start", "nesop-web.service"])

    response = container.wait_http(f"http://127.0.0.1:{port}/hello.txt")
    assert (response.status, response.text) == (200, "hello over http\n")
    assert container.http_get(f"http://127.0.0.1:{port}/missing").status == 404
    main_pid = container.service_main_pid("nesop-web.service")
    assert main_pid > 1
    assert container.run(["cat", f"/proc/{main_pid}/comm"]).stdout.strip() == "python3"


def _tiny_deb(directory: Path) -> Path:
    """A package whose postinst records that dpkg ran it under systemd."""
    root = directory / "nesop-probe"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/share/nesop-probe").mkdir(parents=True)
    (root / "usr/share/nesop-probe/README").write_text("probe\n")
    (root / "DEBIAN/control").write_text(
        "Package: nesop-probe\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: nesop-deb tests <tests@invalid>\nDescription: test bed probe\n"
    )
    postinst = root / "DEBIAN/postinst"
    postinst.write_text("#!/bin/sh\nset -e\nps -o comm= -p 1 > /var/lib/nesop-probe-pid1\n")
    postinst.chmod(0o755)
    deb = directory / "nesop-probe_1.0_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)],
        check=True,
        capture_output=True,
    )
    return deb


def test_local_deb_installs_with_apt_and_mirror_is_unreachable(container: Container, tmp_path: Path) -> None:
    container.copy_in(_tiny_deb(tmp_path), "/var/tmp/nesop-probe_1.0_all.deb")
    container.run(["apt-get", "install", "-y", "/var/tmp/nesop-probe_1.0_all.deb"])
    assert container.run(["dpkg-query", "-W", "-f", "${Status}", "nesop-probe"]).stdout == (
        "install ok installed"
    )
    assert container.path("/var/lib/nesop-probe-pid1").read_text() == "systemd\n"

    # No test may depend on downloads: apt must fail fast, not fetch.
    started = time.monotonic()
    update = container.run(["apt-get", "update"], check=False, timeout=60)
    assert update.returncode != 0 or "Err:" in update.stdout, update.stdout
    assert time.monotonic() - started < 30


def test_stop_leaves_nothing_running_or_mounted(new_container: ContainerFactory) -> None:
    box = new_container()
    assert box._proc is not None
    nspawn_pid, systemd_pid = box._proc.pid, box.pid
    box.stop()

    assert _process_gone(nspawn_pid) and _process_gone(systemd_pid)
    assert not box.root.exists()
    assert _mounted_under(box.workdir) == []
    assert not Path(f"/run/systemd/nspawn/propagate/{box.name}").exists()
    box.stop()  # idempotent
    with pytest.raises(TestbedError):
        box.boot()


def _unified_cgroup(pid: int) -> str:
    return next(
        line[3:] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if line.startswith("0::")
    )


def test_each_container_has_a_cgroup_of_its_own(new_container: ContainerFactory) -> None:
    # Two machines that run the same units must not share the cgroups of those units: one's
    # stop would remove what the other's start is about to use.
    first, second = new_container(), new_container()
    paths = {_unified_cgroup(box.pid) for box in (first, second)}
    assert len(paths) == 2, paths
    unit = "systemd-journald.service"
    cgroups = [
        box.run(["systemctl", "show", "-P", "ControlGroup", unit]).stdout.strip() for box in (first, second)
    ]
    assert cgroups == [f"/system.slice/{unit}"] * 2  # the same inside, apart outside
    top = Path("/sys/fs/cgroup")
    top = top if (top / "cgroup.controllers").exists() else top / "unified"
    mine = [top / path.lstrip("/").removesuffix("/payload/init.scope") for path in paths]
    assert all(path.is_dir() for path in mine), mine
    first.stop()
    second.stop()
    assert not any(path.exists() for path in mine), mine


def test_kill_hard_then_boot_keeps_written_files(container: Container) -> None:
    container.sh("echo synced > /var/lib/before-sync && sync")
    container.sh("echo unsynced > /root/before-nosync")
    machine_id = container.path("/etc/machine-id").read_text()
    old_pid1 = container.pid

    container.kill_hard()
    assert not container.is_running()
    assert _process_gone(old_pid1)
    container.kill_hard()  # nothing left to kill: still fine

    container.boot()
    assert container.run(["cat", "/var/lib/before-sync"]).stdout == "synced\n"
    assert container.run(["cat", "/root/before-nosync"]).stdout == "unsynced\n"
    assert container.path("/etc/machine-id").read_text() == machine_id
    state = container.run(["systemctl", "is-system-running"], check=False).stdout.strip()
    assert state in ("running", "degraded")


def test_poweroff_is_clean_and_boot_works_again(container: Container) -> None:
    container.write_file("/etc/systemd/system/nesop-mark.service", _MARK_ON_STOP)
    container.run(["systemctl", "daemon-reload"])
    container.run(["systemctl", "start", "nesop-mark.service"])
    container.poweroff()
    assert not container.is_running()
    # ExecStop ran: the shutdown was a real, orderly one.
    assert container.path("/var/lib/nesop-mark").read_text() == "stopped\n"
    container.boot()
    assert container.run(["cat", "/var/lib/nesop-mark"]).stdout == "stopped\n"


_MARK_ON_STOP = """\
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
ExecStop=/bin/sh -c 'echo stopped > /var/lib/nesop-mark'
"""


def test_failed_boot_raises_with_console_and_cleans_up(testbed_host: None, tmp_path: Path) -> None:
    not_an_os = tmp_path / "empty-root"
    not_an_os.mkdir()
    box = Container(not_an_os, tmp_path / "broken")
    try:
        with pytest.raises(TestbedError, match="systemd-nspawn exited") as caught:
            box.boot(timeout=20)
        assert "--- console" in str(caught.value)
    finally:
        box.stop()
    assert _mounted_under(box.workdir) == []


@pytest.mark.skipif(os.environ.get("NESOP_TESTBED_BACKEND") == "copy", reason="copying anyway")
def test_falls_back_to_a_copy_when_overlayfs_cannot_be_used(base_root: Path, tmp_path: Path) -> None:
    # overlayfs mount options cannot carry a comma, so this path forces the fallback.
    with Container(base_root, tmp_path / "needs,copy") as box:
        box.boot()
        assert box.backend == "copy"
        assert "overlayfs not usable" in box.backend_note
        assert box.run(["cat", "/etc/hostname"]).stdout == "nesop-testbed\n"
    assert not box.root.exists()

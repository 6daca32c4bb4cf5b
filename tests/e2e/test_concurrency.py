"""Two operations at once: one runs, the other waits or is refused naming the holder, and
nothing is left half-done."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

from . import faults, store
from .conftest import ContainerFactory
from .testbed import Container

LOCK = f"/var/lib/{store.PACKAGE}/lock"


def _long_manual_backup(box: Container) -> faults.Background:
    """A real `nesop-update backup`, made long from outside (each of its fsyncs takes 5 s); returns
    once it holds the app's lock."""
    backup = faults.Background(box, "nesop-update backup", "nesop-update", slow_fsync_us=5_000_000)
    deadline = time.monotonic() + 60
    while "manual backup" not in (box.path(LOCK).read_text() if box.path(LOCK).exists() else ""):
        assert time.monotonic() < deadline, f"the backup never took the lock: {backup.output()}"
        time.sleep(0.05)
    return backup


def test_update_during_a_manual_backup_is_refused_naming_the_holder(
    new_container: ContainerFactory, toolchain_deb: Path, example_repo: store.ExampleRepo
) -> None:
    box = new_container()
    store.install_toolchain(box, toolchain_deb)
    store.deploy_by_hand(box, example_repo, "v1.0.3")
    assert store.apt_install(box, example_repo.build("v1.0.4")).returncode == 0
    pid = box.service_main_pid(store.UNIT)
    before = store.snapshot(box)
    holder = _long_manual_backup(box)
    try:
        result = store.apt_install(box, example_repo.build("v1.0.5"))
        output = result.stdout + result.stderr
        assert result.returncode != 0
        assert "another operation holds" in output and "manual backup" in output, output[-2000:]
        assert store.dpkg_status(box) == ("ii", "1.0.4")
        assert box.service_main_pid(store.UNIT) == pid
        assert store.snapshot(box) == before

        second = box.run(["nesop-update", "backup"], check=False, timeout=120)
        assert second.returncode == 3
        assert second.stderr.startswith("nesop-update: error: manual backup: another operation holds")
    finally:
        holder.wait(timeout=120)  # the backup ends and releases the lock
    assert "backup written" in holder.output() or "manual_" in holder.output(), holder.output()
    # once the holder is gone, the same update goes through
    assert store.apt_install(box, example_repo.build("v1.0.5")).returncode == 0
    assert store.dpkg_status(box) == ("ii", "1.0.5")


def test_two_apt_runs_at_once(
    new_container: ContainerFactory, toolchain_deb: Path, example_repo: store.ExampleRepo
) -> None:
    box = new_container()
    store.install_toolchain(box, toolchain_deb)
    store.deploy_by_hand(box, example_repo, "v1.0.4")
    deb = example_repo.build("v1.0.5")
    box.copy_in(deb, f"/var/tmp/{deb.name}")
    box.write_file(
        "/etc/systemd/system/nesop-store.service.d/slow.conf", "[Service]\nExecStartPre=/bin/sleep 3\n"
    )
    box.run(["systemctl", "daemon-reload"])
    results: dict[str, subprocess.CompletedProcess[str]] = {}
    first = threading.Thread(
        target=lambda: results.setdefault(
            "first",
            box.run(["apt-get", "install", "-y", "-q", f"/var/tmp/{deb.name}"], check=False, timeout=300),
        )
    )
    first.start()
    journal = box.path(f"/var/lib/{store.PACKAGE}/journal.json")
    deadline = time.monotonic() + 60
    while not journal.exists():
        assert time.monotonic() < deadline, "the first update never started"
        time.sleep(0.02)

    second = box.run(["apt-get", "install", "-y", "-q", f"/var/tmp/{deb.name}"], check=False, timeout=300)
    first.join(300)

    assert second.returncode != 0
    assert "Could not get lock" in second.stderr and "held by process" in second.stderr, second.stderr
    assert results["first"].returncode == 0, results["first"].stdout
    assert store.dpkg_status(box) == ("ii", "1.0.5")
    store.assert_tree(box, example_repo, "v1.0.5")
    assert [e["status"] for e in store.history(box)] == ["success"]

"""A power loss in the middle of an update, then the boot: the toolchain's boot unit finishes the
transaction before systemd starts the app, so the app never serves a half-updated tree; when that
recovery fails, the app does not start at all until the operator has fixed the cause."""

from __future__ import annotations

from pathlib import Path

from . import store
from .conftest import ContainerFactory
from .releases import every_release
from .test_matrix import RECOVER_UNIT, pause_at, run_update, start_update
from .testbed import Container


def power_loss_at(box: Container, repo: store.ExampleRepo, step: str) -> None:
    """An update from 1.0.4 to 1.0.5 cut off by a power loss while ``step`` runs; not booted again."""
    apt = run_update(box, repo)
    pause_at(box, apt, step)
    box.kill_hard()
    apt.untrace()


def unit_property(box: Container, unit: str, name: str) -> str:
    return box.run(["systemctl", "show", f"--property={name}", "--value", unit]).stdout.strip()


def unit_log(box: Container, unit: str) -> str:
    return box.run(["journalctl", "-b", "--no-pager", "-o", "cat", "-u", unit]).stdout


@every_release
def test_the_update_is_undone_before_the_app_starts(
    new_container: ContainerFactory, toolchain_deb: Path, example_repo: store.ExampleRepo
) -> None:
    box = new_container()
    rows, _pid = start_update(box, example_repo, toolchain_deb)
    power_loss_at(box, example_repo, "apply-files")  # some new files in place, some old
    assert box.path(store.JOURNAL).exists()

    box.boot()

    # the recovery unit ran in this boot and was done before the app's process began
    assert "undid the interrupted update to 1.0.5" in unit_log(box, RECOVER_UNIT)
    done = int(unit_property(box, RECOVER_UNIT, "ActiveEnterTimestampMonotonic"))
    app_started = int(unit_property(box, store.UNIT, "ExecMainStartTimestampMonotonic"))
    assert 0 < done <= app_started, (done, app_started)
    assert unit_property(box, store.UNIT, "NRestarts") == "0"  # one start, on the old tree
    box.wait_http(store.HEALTH, timeout=30)
    assert store.health(box)["version"] == "1.0.4"
    store.assert_tree(box, example_repo, "v1.0.4")
    assert set(rows) <= store.customer_emails(box)
    assert not box.path(store.JOURNAL).exists()
    last = store.history(box)[-1]
    assert (last["action"], last["version"], last["status"], last["at_boot"]) == (
        "recover",
        "1.0.5",
        "interrupted",
        True,
    ), last
    # dpkg's state is fixed as after any interrupted package run: configure -a applies 1.0.5
    assert store.dpkg_status(box)[0] in ("iF", "iU")
    store.assert_configure_a_completes_the_update(box, example_repo, rows, before="any")


def test_a_recovery_that_fails_keeps_the_app_down_until_it_is_fixed(
    new_container: ContainerFactory, toolchain_deb: Path, example_repo: store.ExampleRepo
) -> None:
    box = new_container()
    rows, _pid = start_update(box, example_repo, toolchain_deb)
    power_loss_at(box, example_repo, "migrate")
    journal = box.path(store.JOURNAL)
    kept = journal.read_bytes()
    journal.write_bytes(kept[: len(kept) // 2])  # damaged (a disk error): the recovery cannot read it

    box.boot()

    assert box.run(["systemctl", "is-failed", RECOVER_UNIT], check=False).stdout.strip() == "failed"
    assert "recovery of nesop-store at boot failed" in unit_log(box, RECOVER_UNIT)
    assert unit_property(box, store.UNIT, "ActiveState") == "inactive"
    assert unit_property(box, store.UNIT, "ExecMainStartTimestampMonotonic") == "0"  # never started
    assert (
        "Dependency failed" in box.run(["systemctl", "status", "--no-pager", store.UNIT], check=False).stdout
    )

    journal.write_bytes(kept)  # the cause is fixed
    # the recovery starts the app, which needs its recovery unit: that one finds the lock held by
    # this recovery and leaves the transaction to it instead of waiting (no deadlock)
    result = box.run(["nesop-update", "recover"], timeout=300)

    assert "nesop-store: undid the interrupted update to 1.0.5" in result.stdout
    assert box.run(["systemctl", "is-active", RECOVER_UNIT], check=False).stdout.strip() == "active"
    assert store.health(box)["version"] == "1.0.4"
    store.assert_tree(box, example_repo, "v1.0.4")
    assert set(rows) <= store.customer_emails(box)
    last = store.history(box)[-1]
    assert (last["action"], last["version"], last["status"], last.get("at_boot")) == (
        "recover",
        "1.0.5",
        "interrupted",
        None,
    ), last
    store.assert_configure_a_completes_the_update(box, example_repo, rows, before="any")

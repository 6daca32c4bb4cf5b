"""The fault matrix: an update from 1.0.4 to 1.0.5 (files and a migration) broken at every step,
by every kind of fault, from outside the product.

The host pauses the apt run the moment the journal (or, for the preinst, the update log) says the
step has begun, and then: kills the package tools (SIGKILL), kills the whole machine and boots it
again (power loss), breaks what the step needs (step fails), or fills the app's file system (disk
full), and lets it go on. Each cell then checks the end state and the documented way out.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from . import faults, store
from .conftest import ContainerFactory
from .testbed import Container

STATE_DIR = f"/var/lib/{store.PACKAGE}"
LOG_DIR = f"{store.APP_ROOT}/logs"
BACKUPS = f"{store.APP_ROOT}/backups"
RECOVER_UNIT = "nesop-update-recover@nesop-store.service"  # the boot unit of the store's service
APPLY_STEPS = (
    "record", "stage", "backup", "stop", "snapshot-db", "apply-files", "migrate", "start", "health", "commit",
)  # fmt: skip
AFTER_STOP = APPLY_STEPS[APPLY_STEPS.index("stop") + 1 :]  # a failure there cost an outage


def start_update(box: Container, repo: store.ExampleRepo, toolchain: Path) -> tuple[list[str], int]:
    """A server at 1.0.4 with rows; returns them and the app's MainPID. The update is not begun."""
    store.install_toolchain(box, toolchain)
    store.deploy_by_hand(box, repo, "v1.0.4")
    rows = store.register_customers(box, 5)
    deb = repo.build("v1.0.5")
    box.copy_in(deb, f"/var/tmp/{deb.name}")
    return rows, box.service_main_pid(store.UNIT)


def run_update(box: Container, repo: store.ExampleRepo) -> faults.BackgroundApt:
    return faults.BackgroundApt(box, f"install -y -q /var/tmp/{repo.build('v1.0.5').name}")


def pause_at(box: Container, apt: faults.BackgroundApt, step: str) -> None:
    if step == "preflight":
        ready = faults.log_says(box, f"{LOG_DIR}/update.log", "-> preflight")
        apt.pause_when(LOG_DIR, ready, "its preflight")
    else:
        apt.pause_when(STATE_DIR, faults.journal_at(box, store.JOURNAL, step), f"its {step} step")


def cell(kind: str, step: str, ends_as: str) -> pytest.ParameterSet:
    return pytest.param(step, marks=pytest.mark.fault(kind, step, ends_as=ends_as), id=step)


# --- SIGKILL and power loss at every step ----------------------------------------------------------

CRASH_ENDS = {
    "preflight": "old version untouched; apt install again applies the new one",
    "commit": "new version whole after configure -a (kept or redone)",
}


def _served_after_boot(box: Container, repo: store.ExampleRepo, step: str) -> None:
    """Right after the boot, before any command is typed: the boot unit finished the transaction
    before the app started, so the app serves one whole version, the old one unless the update
    had committed; dpkg's own state waits for `dpkg --configure -a`."""
    if step != "preflight":  # the update's manifest was unpacked: its app waits for its recovery
        assert box.run(["systemctl", "is-active", RECOVER_UNIT], check=False).stdout.strip() == "active"
    box.wait_http(store.HEALTH, timeout=30)
    version = store.health(box)["version"]
    assert version == "1.0.4" or (step == "commit" and version == "1.0.5"), version
    store.assert_tree(box, repo, f"v{version}")
    assert not box.path(store.JOURNAL).exists()
    if step == "preflight":
        return
    last = store.history(box)[-1]
    said = (last["action"], last["version"], last["status"])
    if version == "1.0.4":
        assert said == ("recover", "1.0.5", "interrupted") and last.get("at_boot") is True, last
    else:
        assert said in (("apply", "1.0.5", "success"), ("recover", "1.0.5", "committed")), last


def _after_crash(
    box: Container,
    repo: store.ExampleRepo,
    rows: list[str],
    step: str,
    main_pid: int | None,
    *,
    recovered_at_boot: bool = False,
) -> None:
    if step == "preflight":
        # the preinst changes nothing: the old app never stopped; dpkg wants the install again
        store.assert_tree(box, repo, "v1.0.4")
        if main_pid is not None:
            assert box.service_main_pid(store.UNIT) == main_pid
        assert store.health(box)["version"] == "1.0.4"
        box.run(["dpkg", "--configure", "-a"], timeout=300)  # what apt asks for after dpkg was killed
        result = store.apt_install(box, repo.build("v1.0.5"))
        assert result.returncode == 0, result.stdout + result.stderr
        assert store.dpkg_status(box) == ("ii", "1.0.5")
        store.assert_tree(box, repo, "v1.0.5")
        assert set(rows) <= store.customer_emails(box)
        assert box.run(["dpkg", "--audit"]).stdout.strip() == ""
        return
    assert store.dpkg_status(box)[0] in ("iF", "iU")
    # after a boot, the journal is already gone (_served_after_boot checked the history)
    before = "any" if step == "commit" or recovered_at_boot else "interrupted"
    store.assert_configure_a_completes_the_update(box, repo, rows, before=before)


CRASH_AFTER = {
    "SIGKILL": "dpkg --configure -a",
    "power loss": "boot (the app serves one whole version at once) + dpkg --configure -a",
}


@pytest.mark.parametrize(
    ("kind", "step"),
    [
        pytest.param(
            kind,
            s,
            marks=pytest.mark.fault(kind, s, ends_as=CRASH_ENDS.get(s, f"new version whole after {after}")),
            id=f"{kind}-{s}",
        )
        for kind, after in CRASH_AFTER.items()
        for s in ("preflight", *APPLY_STEPS)
    ],
)
def test_crash(
    kind: str,
    step: str,
    new_container: ContainerFactory,
    toolchain_deb: Path,
    example_repo: store.ExampleRepo,
) -> None:
    box = new_container()
    rows, main_pid = start_update(box, example_repo, toolchain_deb)
    apt = run_update(box, example_repo)
    pause_at(box, apt, step)

    if kind == "SIGKILL":
        apt.kill()  # apt, dpkg and the maintainer script
    else:
        box.kill_hard()  # every process of the machine at once, no shutdown
        apt.untrace()
        box.boot()
        _served_after_boot(box, example_repo, step)

    booted = kind == "power loss"
    _after_crash(box, example_repo, rows, step, None if booted else main_pid, recovered_at_boot=booted)


# --- a step that fails --------------------------------------------------------------------------


def read_only(box: Container, path: str) -> Callable[[], None]:
    """Make ``path`` (a directory) read-only in the container; returns the repair."""
    box.sh(f"mkdir -p {path} && mount --bind {path} {path} && mount -o remount,bind,ro {path}")

    def repair() -> None:
        box.run(["umount", path])

    return repair


def _break_record(box: Container) -> Callable[[], None]:
    return read_only(box, f"{STATE_DIR}/versions")  # the undo data cannot be kept


def _break_stage(box: Container) -> Callable[[], None]:
    return read_only(box, f"{store.APP_ROOT}/styles")  # a directory the new files go to


def _break_backups(box: Container) -> Callable[[], None]:
    return read_only(box, BACKUPS)


def _break_apply_files(box: Container) -> Callable[[], None]:
    staged = box.path(f"{store.APP_ROOT}/store.py{'.nesop-tmp'}")
    assert staged.exists(), "the new store.py should be staged before the stop"
    staged.unlink()  # someone cleaned up "temporary" files while the update ran
    return lambda: None


def _break_commit(box: Container) -> Callable[[], None]:
    # the state file cannot be replaced: where its new copy is written, a directory is in the way
    blocker = box.path(f"{STATE_DIR}/state.json.nesop-tmp")
    blocker.mkdir()
    return blocker.rmdir


# step → (what breaks it, when: "before" the update or at the step, what the history names)
BREAKS: dict[str, tuple[Callable[[Container], Callable[[], None]], str]] = {
    "record": (_break_record, "before"),
    "stage": (_break_stage, "before"),
    "backup": (_break_backups, "at"),
    "snapshot-db": (_break_backups, "at"),
    "apply-files": (_break_apply_files, "at"),
    "commit": (_break_commit, "at"),
}


def _step_fails_ends_as(step: str) -> str:
    if step in AFTER_STOP:  # it cost an outage: not tried again until someone says so
        return "old version whole, every row, iF; configure -a refuses it; fixed, nesop-update retry applies"
    return "old version whole, every row, iF; fixed, configure -a applies"


@pytest.mark.parametrize("step", [cell("step fails", s, _step_fails_ends_as(s)) for s in BREAKS])
def test_step_fails(
    step: str, new_container: ContainerFactory, toolchain_deb: Path, example_repo: store.ExampleRepo
) -> None:
    box = new_container()
    rows, _pid = start_update(box, example_repo, toolchain_deb)
    breaker, when = BREAKS[step]
    if when == "before":
        repair = breaker(box)
        apt = run_update(box, example_repo)
    else:
        apt = run_update(box, example_repo)
        pause_at(box, apt, step)
        repair = breaker(box)
        apt.resume()

    assert apt.wait() != 0, apt.output()[-2000:]

    # the space set aside for the undo could not go where the backups dir is read-only
    clean = step not in ("backup", "snapshot-db")
    store.assert_old_version_whole(box, example_repo, rows, (step,), clean=clean)
    after_stop = step in AFTER_STOP
    if after_stop:
        store.assert_not_tried_again_on_its_own(box, "1.0.5", step)
    repair()
    store.assert_configure_a_completes_the_update(box, example_repo, rows, before="failed", retry=after_stop)


@pytest.mark.fault("step fails", "stop", ends_as="old app never stopped, iF; fixed, configure -a applies")
def test_a_stop_that_systemd_refuses(
    new_container: ContainerFactory, toolchain_deb: Path, example_repo: store.ExampleRepo
) -> None:
    box = new_container()
    rows, main_pid = start_update(box, example_repo, toolchain_deb)
    dropin = "/etc/systemd/system/nesop-store.service.d/refuse-stop.conf"
    box.write_file(dropin, "[Unit]\nRefuseManualStop=yes\n")
    box.run(["systemctl", "daemon-reload"])

    result = store.apt_install(box, example_repo.build("v1.0.5"))

    assert result.returncode != 0
    store.assert_old_version_whole(box, example_repo, rows, ("stop",))
    assert box.service_main_pid(store.UNIT) == main_pid
    box.run(["rm", dropin])
    box.run(["systemctl", "daemon-reload"])
    store.assert_configure_a_completes_the_update(box, example_repo, rows, before="failed")


# --- the app's file system full ----------------------------------------------------------------


# how a full disk shows: the OS; SQLite ("disk I/O error" when it cannot grow a file, and yoyo's
# next statement in the failed migration's transaction then finds "database table is locked");
# the stage step that cannot set the undo's space aside
FULL_DISK = ("No space left", "disk is full", "disk I/O error", "table is locked", "cannot set aside")


def small_app_fs(new_container: ContainerFactory, request: pytest.FixtureRequest) -> Container:
    """A container whose app root is a small file system of its own (mounted before the boot, so
    the container and the host see the same one)."""
    box = new_container(boot=False)
    box._ensure_root()
    app_root = box.root / store.APP_ROOT.lstrip("/")
    app_root.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0755", "tmpfs", str(app_root)], check=True)
    request.addfinalizer(lambda: subprocess.run(["umount", "--lazy", str(app_root)], check=False))
    box.boot()
    return box


def _refused_for_want_of_space(box: Container, repo: store.ExampleRepo, pid: int) -> None:
    """Too little space for the update and its undo: refused by the preinst, nothing changed."""
    box.sh(f"mkdir -p -m 700 {BACKUPS} && fallocate -l 20m {BACKUPS}/.filler")
    before = store.snapshot(box)

    result = store.apt_install(box, repo.build("v1.0.5"))

    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "MiB free, the update needs" in output, output[-2000:]
    assert box.service_main_pid(store.UNIT) == pid
    assert store.snapshot(box) == before
    assert store.dpkg_status(box)[0] in ("not-installed", "in")  # dpkg unwound the install
    box.run(["rm", f"{BACKUPS}/.filler"])
    assert store.apt_install(box, repo.build("v1.0.5")).returncode == 0


@pytest.mark.parametrize(
    "step",
    [
        cell("disk full", "preflight", "refused, nothing changed"),
        *(
            cell("disk full", s, "old version whole, every row, iF; after freeing space configure -a applies")
            for s in APPLY_STEPS
        ),
    ],
)
def test_disk_full(
    step: str,
    new_container: ContainerFactory,
    toolchain_deb: Path,
    example_repo: store.ExampleRepo,
    request: pytest.FixtureRequest,
) -> None:
    box = small_app_fs(new_container, request)
    rows, pid = start_update(box, example_repo, toolchain_deb)
    if step == "preflight":
        _refused_for_want_of_space(box, example_repo, pid)
        return
    apt = run_update(box, example_repo)
    pause_at(box, apt, step)
    filler = faults.fill(box.path(BACKUPS))  # beside the backups: no app file
    apt.resume()

    assert apt.wait() != 0, apt.output()[-2000:]

    # the step itself, or the first later one that writes to the full file system
    failed_at = APPLY_STEPS[APPLY_STEPS.index(step) :]
    if step in ("record", "stage"):
        # Filled before the stage step set space aside, the disk stays full: the update fails
        # before the stop and never touches the old app, which cannot use its database on a full
        # disk (the update says so), nor can the history be written there: it waits in the
        # state dir and goes in with the next entry. Freeing the space is the way out.
        filler.unlink()
        store.assert_old_version_whole(box, example_repo, rows, None)
        store.assert_configure_a_completes_the_update(box, example_repo, rows, before="failed")
        failed = next(e for e in store.history(box) if e["status"] == "failed")
        assert failed["failed_step"] in failed_at and failed["old_app_healthy"] is False, str(failed)
    else:
        # the undo gives the reserved space back first: it completes on the full disk, and the
        # old app serves again before any space is freed
        failed = store.assert_old_version_whole(box, example_repo, rows, failed_at)
        filler.unlink()
        store.assert_configure_a_completes_the_update(box, example_repo, rows, before="failed")
    assert any(s in failed["reason"] for s in FULL_DISK), str(failed)


# --- faults while an undo runs -------------------------------------------------------------------

BROKEN_UNIT = "/etc/systemd/system/nesop-store.service.d/broken.conf"


def break_the_undo(box: Container, apt: faults.BackgroundApt, kind: str) -> Callable[[], None] | None:
    """Hit the paused apt run with ``kind``. SIGKILL and power loss end it; returns None. For
    step fails (the app will not start) and disk full, apt goes on and fails; returns the fix."""
    if kind == "SIGKILL":
        apt.kill()
        return None
    if kind == "power loss":
        box.kill_hard()
        apt.untrace()
        box.boot()
        return None
    if kind == "step fails":
        box.write_file(BROKEN_UNIT, "[Service]\nExecStartPre=/bin/false\n")
        box.run(["systemctl", "daemon-reload"])

        def fix() -> None:
            box.run(["rm", BROKEN_UNIT])
            box.run(["systemctl", "daemon-reload"])

    else:
        fix = faults.fill(box.path(BACKUPS)).unlink
    apt.resume()
    assert apt.wait() != 0, apt.output()[-2000:]
    return fix


# --- the undo of an apt rollback ----------------------------------------------------------------

ROLLBACK_FAULTS = {
    "SIGKILL": "older version whole after configure -a + apt",
    "power loss": "older version whole after boot + configure -a + apt",
    "step fails": "older version whole after the fix + configure -a + apt",
    "disk full": "older version whole after freeing space + configure -a + apt",
}


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(k, marks=pytest.mark.fault(k, "undo (rollback)", ends_as=e), id=k)
        for k, e in ROLLBACK_FAULTS.items()
    ],
)
def test_rollback_fault(
    kind: str,
    new_container: ContainerFactory,
    toolchain_deb: Path,
    example_repo: store.ExampleRepo,
    request: pytest.FixtureRequest,
) -> None:
    """`apt install <package>=1.0.4` from 1.0.5 broken while the newer prerm undoes 1.0.5: the
    rollback is finished, not reversed, once the fault is gone."""
    box = small_app_fs(new_container, request) if kind == "disk full" else new_container()
    store.install_toolchain(box, toolchain_deb)
    store.deploy_by_hand(box, example_repo, "v1.0.3")
    for ref in ("v1.0.4", "v1.0.5"):
        assert store.apt_install(box, example_repo.build(ref)).returncode == 0
    rows = store.register_customers(box, 5)
    apt = faults.BackgroundApt(box, f"install -y -q --allow-downgrades {store.PACKAGE}=1.0.4")
    apt.pause_when(STATE_DIR, faults.journal_at(box, store.JOURNAL, "", kind="undo"), "its undo")

    fix = break_the_undo(box, apt, kind)
    if fix is not None:
        if kind == "step fails":
            assert store.history(box)[-1]["status"] == "failed"
        fix()

    box.run(["dpkg", "--configure", "-a"], check=False, timeout=300)  # finishes the undo
    result = box.run(["apt-get", "install", "-y", "-q", "--allow-downgrades", f"{store.PACKAGE}=1.0.4"],
                     check=False, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert store.dpkg_status(box) == ("ii", "1.0.4")
    store.assert_tree(box, example_repo, "v1.0.4")
    assert store.health(box)["version"] == "1.0.4"
    assert set(rows) <= store.customer_emails(box)
    assert not box.path(store.JOURNAL).exists()
    assert box.run(["dpkg", "--audit"]).stdout.strip() == ""
    last = store.history(box)[-1]
    assert (last["action"], last["version"], last["status"]) in (
        ("rollback", "1.0.4", "success"),
        ("apply", "1.0.4", "success"),
    ), last


# --- the undo of a failed update ----------------------------------------------------------------


UNDO_FAULTS = {
    "SIGKILL": "old version whole after configure -a (undo finished; the failed version is refused)",
    "power loss": "old version whole after boot + configure -a (likewise)",
    "step fails": "apt fails, journal kept; after the fix configure -a finishes the undo (likewise)",
    "disk full": "apt fails; files back or journal kept; space freed, configure -a ends whole (likewise)",
}


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(k, marks=pytest.mark.fault(k, "undo (failed update)", ends_as=e), id=k)
        for k, e in UNDO_FAULTS.items()
    ],
)
def test_fault_while_a_failed_update_is_undone(
    kind: str,
    new_container: ContainerFactory,
    toolchain_deb: Path,
    example_repo: store.ExampleRepo,
    request: pytest.FixtureRequest,
) -> None:
    """An update whose app will not start is being undone (its files going back) when the fault
    hits: the next `dpkg --configure -a` finishes that undo before anything else."""
    box = small_app_fs(new_container, request) if kind == "disk full" else new_container()
    store.install_toolchain(box, toolchain_deb)
    store.deploy_by_hand(box, example_repo, "v1.0.5")
    assert store.apt_install(box, example_repo.build("v1.0.6")).returncode == 0
    rows = store.register_customers(box, 5)
    deb = example_repo.build("broken/start", "--version", "1.0.7", "--since", "v1.0.6")
    box.copy_in(deb, f"/var/tmp/{deb.name}")
    apt = faults.BackgroundApt(box, f"install -y -q /var/tmp/{deb.name}")
    apt.pause_when(LOG_DIR, faults.log_says(box, f"{LOG_DIR}/update.log", "-> undo apply-files"), "its undo")

    fix = break_the_undo(box, apt, kind)  # step fails: the old app, its files back, will not start
    finished = False
    if fix is not None:
        failed = store.history(box)[-1]
        assert (failed["action"], failed["version"], failed["status"]) == ("apply", "1.0.7", "failed"), failed
        # a full disk may still leave room for the few files the undo writes back: then the files
        # are back and the journal is closed, though the old app may not serve on the full disk;
        # else the undo says it could not finish
        finished = kind == "disk full" and not failed["undo_errors"]
        if not finished:
            assert failed["undo_errors"] and failed["old_app_healthy"] is False, failed
            assert box.path(store.JOURNAL).exists()
        assert store.dpkg_status(box) == ("iF", "1.0.7")
        fix()

    pid_before = box.service_main_pid(store.UNIT) if finished else None
    result = box.run(["dpkg", "--configure", "-a"], check=False, timeout=300)
    output = result.stdout + result.stderr
    # the undo is finished; 1.0.7, which failed after the stop, is refused without another outage
    assert result.returncode != 0
    assert "1.0.7 failed at" in output and "nesop-update retry" in output, output[-2000:]
    if pid_before:
        assert box.service_main_pid(store.UNIT) == pid_before
    store.assert_tree(box, example_repo, "v1.0.6")
    assert store.health(box)["version"] == "1.0.6"
    assert set(rows) <= store.customer_emails(box)
    assert store.dpkg_status(box) == ("iF", "1.0.7")
    assert not box.path(store.JOURNAL).exists()
    statuses = [(e["action"], e["version"], e["status"]) for e in store.history(box)]
    assert finished or ("recover", "1.0.7", "interrupted") in statuses
    assert ("apply", "1.0.7", "failed") in statuses or ("recover", "1.0.7", "interrupted") in statuses
    assert statuses[-1] == ("apply", "1.0.7", "refused")
    # and back to a clean dpkg: the live version from the local repository
    back = box.run(["apt-get", "install", "-y", "-q", "--allow-downgrades", f"{store.PACKAGE}=1.0.6"],
                   check=False, timeout=300)  # fmt: skip
    assert back.returncode == 0, back.stdout + back.stderr
    assert store.dpkg_status(box) == ("ii", "1.0.6")
    assert box.run(["dpkg", "--audit"]).stdout.strip() == ""
    store.assert_tree(box, example_repo, "v1.0.6")

"""Faults from outside: the whole machine losing power mid-update, and a full file system."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from . import store
from .conftest import ContainerFactory


@pytest.mark.parametrize(
    "step",
    [
        pytest.param(
            s, marks=pytest.mark.fault("power loss", s, ends_as="new version whole after boot + configure -a")
        )
        for s in ("stop", "start")
    ],
)
def test_power_loss_then_boot_and_configure_a(
    step: str, new_container: ContainerFactory, toolchain_deb: Path, example_repo: store.ExampleRepo
) -> None:
    box = new_container()
    rows = store.interrupt_update_at(box, example_repo, toolchain_deb, step)

    box.kill_hard()  # the power goes: every process, no shutdown
    box.boot()

    store.assert_configure_a_completes_the_update(box, example_repo, rows)


@pytest.mark.fault("disk full", "preflight", ends_as="refused, nothing changed")
def test_full_file_system_is_refused_before_anything_changes(
    new_container: ContainerFactory,
    toolchain_deb: Path,
    example_repo: store.ExampleRepo,
    request: pytest.FixtureRequest,
) -> None:
    box = new_container(boot=False)
    box._ensure_root()  # the root is there before the first boot; the mount goes in first
    # the app root on its own small file system, mounted before boot so that the container
    # (nspawn binds its root recursively) and the host's view of it are the same
    app_root = box.root / store.APP_ROOT.lstrip("/")
    app_root.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0755", "tmpfs", str(app_root)], check=True)
    request.addfinalizer(lambda: subprocess.run(["umount", "--lazy", str(app_root)], check=False))
    box.boot()
    store.install_toolchain(box, toolchain_deb)
    store.deploy_by_hand(box, example_repo, "v1.0.4")
    box.run(["fallocate", "-l", "20m", f"{store.APP_ROOT}/filler"])
    pid = box.service_main_pid(store.UNIT)
    before = store.snapshot(box)

    result = store.apt_install(box, example_repo.build("v1.0.5"))

    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "MiB free, the update needs" in output, output[-2000:]
    assert box.service_main_pid(store.UNIT) == pid
    assert store.snapshot(box) == before
    assert store.dpkg_status(box)[0] in ("not-installed", "in")  # dpkg unwound the install
    box.run(["rm", f"{store.APP_ROOT}/filler"])
    assert store.apt_install(box, example_repo.build("v1.0.5")).returncode == 0

"""dpkg killed while the app is stopped: the next `dpkg --configure -a` brings back one whole
version, healthy, with every row. The fault is injected from outside, at a moment the test
watches for in the write-ahead journal."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from . import store
from .conftest import ContainerFactory


@pytest.mark.parametrize(
    "step",
    [
        pytest.param(
            s, marks=pytest.mark.fault("SIGKILL", s, ends_as="new version whole after dpkg --configure -a")
        )
        for s in ("stop", "start")
    ],
)
def test_sigkill_then_configure_a(
    step: str, new_container: ContainerFactory, toolchain_deb: Path, example_repo: store.ExampleRepo
) -> None:
    box = new_container()
    rows = store.interrupt_update_at(box, example_repo, toolchain_deb, step)

    store.kill_package_tools(box)

    assert store.dpkg_status(box)[0] in ("iF", "iU")
    store.assert_configure_a_completes_the_update(box, example_repo, rows)


@pytest.mark.fault("SIGKILL", "undo (rollback)", ends_as="older version whole after configure -a + apt")
def test_sigkill_during_an_apt_rollback(
    new_container: ContainerFactory, toolchain_deb: Path, example_repo: store.ExampleRepo
) -> None:
    box = new_container()
    store.install_toolchain(box, toolchain_deb)
    store.deploy_by_hand(box, example_repo, "v1.0.3")
    for ref in ("v1.0.4", "v1.0.5", "v1.0.6"):
        assert store.apt_install(box, example_repo.build(ref)).returncode == 0
    rows = store.register_customers(box, 5)
    store.slow_down(box, "stop")
    box.run(
        [
            "sh",
            "-c",
            f"setsid apt-get install -y -q --allow-downgrades {store.PACKAGE}=1.0.4 >/var/tmp/apt.log 2>&1 &",
        ]
    )
    journal = box.path(store.JOURNAL)
    deadline = time.monotonic() + 60
    while not (journal.exists() and '"kind": "undo"' in journal.read_text()):
        assert time.monotonic() < deadline, "the rollback never started"
        time.sleep(0.02)
    store.kill_package_tools(box)

    box.run(["dpkg", "--configure", "-a"], check=False, timeout=300)  # finishes the undo
    result = box.run(["apt-get", "install", "-y", "-q", "--allow-downgrades", f"{store.PACKAGE}=1.0.4"],
                     check=False, timeout=300)  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    assert store.dpkg_status(box) == ("ii", "1.0.4")
    store.assert_tree(box, example_repo, "v1.0.4")
    assert store.health(box)["version"] == "1.0.4"
    assert set(rows) <= store.customer_emails(box)
    assert not box.path(store.JOURNAL).exists()

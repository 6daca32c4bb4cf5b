"""The ground every other end-to-end test stands on: the toolchain package installs in a booted
Debian, and the example store, deployed by hand, answers /health through systemd."""

from __future__ import annotations

from pathlib import Path

from . import store
from .conftest import ContainerFactory


def test_toolchain_installs_and_store_is_healthy(
    new_container: ContainerFactory, toolchain_deb: Path, example_repo: store.ExampleRepo
) -> None:
    box = new_container()
    store.install_toolchain(box, toolchain_deb)
    for cli in ("nesop-deb", "nesop-update"):
        out = box.run([cli, "--help"]).stdout
        assert "Usage:" in out
        assert box.run(["sh", "-c", f"command -v {cli}"]).stdout.strip() == f"/usr/bin/{cli}"
    assert box.run(["nesop-update", "--version"]).stdout.strip().endswith("0.1.0")

    store.deploy_by_hand(box, example_repo, "v1.0.0")
    info = store.health(box)
    assert info["status"] == "ok"
    assert info["version"] == "1.0.0"
    assert info["pid"] == box.service_main_pid(store.UNIT) > 0
    assert box.run(["systemctl", "is-active", store.UNIT]).stdout.strip() == "active"
    store.assert_tree(box, example_repo, "v1.0.0")

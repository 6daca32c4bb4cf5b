"""Hostile and broken packages are refused before anything changes, each with one clear line:
the service keeps its MainPID, the app tree and database stay as they were, dpkg keeps the
installed version."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import store
from .conftest import ContainerFactory
from .doctor import doctor, truncate
from .testbed import Container

EVIL = b"#!/bin/sh\necho owned\n"
SHA = hashlib.sha256(EVIL).hexdigest()


def _add_file(path: str, **extra: Any) -> Callable[[dict[str, Any]], None]:
    def change(m: dict[str, Any]) -> None:
        m["files"].append(
            {"path": path, "action": "add", "sha256": SHA, "size": len(EVIL), "mode": 0o644,
             "preimage_sha256": None, "renamed_from": None, "link_target": None, **extra}
        )  # fmt: skip

    return change


def _refused(box: Container, deb: Path, message: str) -> None:
    pid = box.service_main_pid(store.UNIT)
    before = store.snapshot(box)
    status = store.dpkg_status(box)
    result = store.apt_install(box, deb)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert message in output, f"expected {message!r} in:\n{output[-3000:]}"
    assert box.service_main_pid(store.UNIT) == pid, "the service was touched"
    assert store.snapshot(box) == before, "the app or its database changed"
    assert store.dpkg_status(box) == status, "dpkg's state changed"


def test_hostile_and_broken_packages_are_refused(
    new_container: ContainerFactory, toolchain_deb: Path, example_repo: store.ExampleRepo, tmp_path: Path
) -> None:
    box = new_container()
    store.install_toolchain(box, toolchain_deb)
    store.deploy_by_hand(box, example_repo, "v1.0.2")
    assert store.apt_install(box, example_repo.build("v1.0.3")).returncode == 0  # managed, 0002 applied
    good = example_repo.build("v1.0.4")
    box.run(["ln", "-s", "/etc", f"{store.APP_ROOT}/etc-link"])

    def variant(name: str, **kwargs: Any) -> Path:
        return doctor(good, tmp_path / f"{name}.deb", **kwargs)

    cases: list[tuple[Path, str]] = [
        (
            variant("dotdot", change=_add_file("../../etc/cron.d/evil"), files={"evil": EVIL}),
            "leaves its root",
        ),
        (variant("absolute", change=_add_file("/etc/cron.d/evil"), files={"evil": EVIL}), "is absolute"),
        (
            variant(
                "through-symlink",
                change=_add_file("etc-link/cron.d/evil"),
                files={"etc-link/cron.d/evil": EVIL},
            ),
            "/opt/nesop-store/etc-link is a symlink: the update runs as root and follows no link",
        ),
        (
            variant(
                "escaping-symlink",
                change=_add_file("assets/passwd", link_target="../../../etc/passwd"),
                symlinks={"assets/passwd": "../../../etc/passwd"},
            ),
            "symlink target '../../../etc/passwd' leaves the app root",
        ),
        (
            variant("missing-payload", change=_add_file("scripts/new.js")),
            "scripts/new.js: missing from the payload",
        ),
        (
            variant("future-format", change=lambda m: m.update(format=99)),
            "update manifest format 99 is not supported",
        ),
        (truncate(good, tmp_path / "truncated.deb"), "Could not read meta data from /var/tmp/truncated.deb"),
        (
            variant("other-root", change=lambda m: m["config"]["app"].update(root="/srv/elsewhere")),
            "targets app root '/srv/elsewhere', but 1.0.3 is installed with '/opt/nesop-store'",
        ),
        (
            variant("other-service", change=lambda m: m["config"]["app"].update(service="other.service")),
            "targets app service 'other.service'",
        ),
        (
            variant(
                "changed-migration",
                change=lambda m: m["migrations"].append(
                    {
                        "id": "0002_product_stock",
                        "file": "0002_product_stock.sql",
                        "sha256": SHA,
                        "reversible": False,
                        "rollback_file": None,
                        "rollback_sha256": None,
                    }
                ),
                migrations={"0002_product_stock.sql": EVIL},
            ),
            "migration 0002_product_stock differs from the one already applied on this server",
        ),
    ]
    for deb, message in cases:
        _refused(box, deb, message)
    assert not box.path("/etc/cron.d/evil").exists()
    assert store.dpkg_status(box) == ("ii", "1.0.3")
    # the genuine package still applies afterwards
    assert store.apt_install(box, good).returncode == 0
    assert store.dpkg_status(box) == ("ii", "1.0.4")

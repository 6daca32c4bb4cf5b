"""A first install from a --full package: user, group, app root, database and unit, through the
same transaction; then an update through `nesop-update apply`, and what the operator sees."""

from __future__ import annotations

import json
from pathlib import Path

from . import store
from .conftest import ContainerFactory
from .releases import every_release


@every_release
def test_full_package_installs_the_app_then_nesop_update_applies_an_update(
    new_container: ContainerFactory, toolchain_deb: Path, example_repo: store.ExampleRepo
) -> None:
    box = new_container()
    store.install_toolchain(box, toolchain_deb)
    assert box.run(["id", "nesop"], check=False).returncode != 0
    full = example_repo.build("v1.0.4", "--full", name="full-1.0.4")

    result = store.apt_install(box, full)

    assert result.returncode == 0, result.stdout + result.stderr
    assert box.run(["id", "-gn", "nesop"]).stdout.strip() == "nesop"
    assert box.run(["systemctl", "is-enabled", store.UNIT]).stdout.strip() == "enabled"
    assert store.health(box)["version"] == "1.0.4"
    store.assert_tree(box, example_repo, "v1.0.4")
    assert store.db_dump(box)["migrations"] == ["0001_initial", "0002_product_stock"]
    db = box.path(store.DB).stat()
    uid, gid = int(box.run(["id", "-u", "nesop"]).stdout), int(box.run(["id", "-g", "nesop"]).stdout)
    assert (db.st_uid, db.st_gid) == (uid, gid)
    assert store.dpkg_status(box) == ("ii", "1.0.4")
    # the first install is in the update log (written once the root existed) and in the journal
    first = box.path(f"{store.APP_ROOT}/logs/update.log").read_text()
    assert "-> apply nesop-store-update 1.0.4 (live: unmanaged)" in first, first[:500]
    assert "nesop-store is now at 1.0.4" in first
    journal = box.run(["journalctl", "-t", "nesop-update", "--no-pager", "-o", "cat"]).stdout
    assert "-> apply nesop-store-update 1.0.4 (live: unmanaged)" in journal, journal[-2000:]
    assert "nesop-store is now at 1.0.4" in journal

    upd = example_repo.build("v1.0.5")
    box.copy_in(upd, f"/var/tmp/{upd.name}")
    dry = box.run(["nesop-update", "apply", "--dry-run", f"/var/tmp/{upd.name}"]).stdout
    assert "migration 0003_product_categories" in dry
    assert store.dpkg_status(box) == ("ii", "1.0.4")
    box.run(["nesop-update", "apply", f"/var/tmp/{upd.name}"], timeout=300)
    assert store.dpkg_status(box) == ("ii", "1.0.5")
    assert store.health(box)["version"] == "1.0.5"

    status = json.loads(box.run(["nesop-update", "status", "--json"]).stdout)
    assert status["version"] == "1.0.5"
    assert status["package"] == {"name": store.PACKAGE, "state": "ii", "version": "1.0.5"}
    assert status["service"]["pid"] == box.service_main_pid(store.UNIT)
    assert status["health"]["ok"] is True
    assert status["applied"] == ["1.0.4", "1.0.5"]
    assert status["pending_journal"] is None
    hist = json.loads(box.run(["nesop-update", "history", "--json"]).stdout)
    assert [e["version"] for e in hist["history"]] == ["1.0.4", "1.0.5"]
    assert any("install" in line for line in hist["apt"])
    log = box.path(f"{store.APP_ROOT}/logs/update.log").read_text()
    assert "-> migrate" in log and "nesop-store is now at 1.0.5" in log
    checks = json.loads(box.run(["nesop-update", "validate", "--json"]).stdout)
    assert {c["name"] for c in checks if c["ok"]} == {
        "files", "service", "database", "web", "permissions", "config", "history",
    }  # fmt: skip

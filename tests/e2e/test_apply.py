"""`apt install ./x.deb` applies an update as one transaction, on a real Debian with systemd:
the four scenarios of the original guide, each failure the mission names, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from . import store
from .releases import every_release
from .testbed import Container


def _applied(box: Container, repo: store.ExampleRepo, deb: Path, ref: str, version: str) -> None:
    pid_before = box.service_main_pid(store.UNIT)
    result = store.apt_install(box, deb)
    assert result.returncode == 0, result.stdout + result.stderr
    store.assert_tree(box, repo, ref)
    assert store.dpkg_status(box) == ("ii", version)
    info = store.health(box)
    assert info["version"] == version
    assert info["pid"] != pid_before, "the service was not restarted"
    last = store.history(box)[-1]
    assert (last["action"], last["version"], last["status"]) == ("apply", version, "success")
    assert store.owners(box) == {(0, 0)}, "the code is root's"
    assert store.owners(box, "data") == {_ids(box)}, "the store's account owns its data"


def _ids(box: Container) -> tuple[int, int]:
    """The store account's uid and its group's gid (not equal when other system groups came first)."""
    return int(box.run(["id", "-u", "nesop"]).stdout), int(box.run(["id", "-g", "nesop"]).stdout)


@every_release
def test_guide_scenarios_apply_in_turn(server: Container, example_repo: store.ExampleRepo) -> None:
    repo = example_repo
    store.deploy_by_hand(server, repo, "v1.0.0")
    rows = store.register_customers(server, 3)

    # 1. bug fix: server.py only
    _applied(server, repo, repo.build("v1.0.1"), "v1.0.1", "1.0.1")
    assert store.history(server)[-1]["files"]["modify"] == ["VERSION", "server.py"]

    # 2. frontend: html/css/js, an asset added, one deleted, a script renamed
    _applied(server, repo, repo.build("v1.0.2"), "v1.0.2", "1.0.2")
    entry = store.history(server)[-1]
    assert entry["files"]["add"] == ["assets/cart.svg"]
    assert entry["files"]["delete"] == ["assets/banner.svg"]
    assert entry["files"]["rename"] == ["scripts/products.js"]
    assert not server.path(f"{store.APP_ROOT}/scripts/main.js").exists()

    # 3. schema change: a migration with its rollback
    before = store.db_dump(server)
    _applied(server, repo, repo.build("v1.0.3"), "v1.0.3", "1.0.3")
    after = store.db_dump(server)
    assert after["migrations"] == ["0001_initial", "0002_product_stock"]
    assert after["schema"] != before["schema"]
    assert store.history(server)[-1]["migrations"] == ["0002_product_stock"]

    # 4. configuration and dependencies, and a mode change
    _applied(server, repo, repo.build("v1.0.4"), "v1.0.4", "1.0.4")
    assert server.path(f"{store.APP_ROOT}/manage.py").stat().st_mode & 0o777 == 0o755

    assert rows and set(rows) <= store.customer_emails(server)
    checks = json.loads(server.run(["nesop-update", "validate", "--json"], check=False).stdout)
    failed = [c for c in checks if not c["ok"]]
    assert failed == [], failed
    _assert_permissions(server)


def _assert_permissions(box: Container) -> None:
    """Backups, database snapshots and state are root's alone; nothing is world-writable."""
    root = box.path(store.APP_ROOT)
    for private in (root / "backups", box.path(f"/var/lib/{store.PACKAGE}")):
        st = private.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (0, 0o700), private
    each = [d for d in (root / "backups").iterdir() if d.is_dir()]
    assert each and all((d.stat().st_uid, d.stat().st_mode & 0o777) == (0, 0o700) for d in each)
    secret = [*(root / "backups").glob("*/*.sqlite3"), *(root / "backups").glob("*/backup_manifest.json")]
    assert any(p.name == "database.sqlite3" for p in secret)
    assert all((p.stat().st_uid, p.stat().st_mode & 0o777) == (0, 0o600) for p in secret), secret
    history = (root / "logs/update_history.json").stat()
    assert (history.st_uid, history.st_mode & 0o777) == (0, 0o640)
    writable = [p for p in root.rglob("*") if not p.is_symlink() and p.stat().st_mode & 0o002]
    assert writable == []
    check = box.run(["nesop-update", "validate", "--check", "permissions"], check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def _failing_update(box: Container, repo: store.ExampleRepo, branch: str, step: str) -> None:
    store.deploy_by_hand(box, repo, "v1.0.6")
    store.register_customers(box, 5)
    deb = repo.build(branch, "--version", "1.0.7", "--since", "v1.0.6")
    before = store.snapshot(box)

    result = store.apt_install(box, deb)

    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"update to 1.0.7 FAILED at {step}" in output
    assert store.snapshot(box) == before, "files, schema or rows differ from before the update"
    store.assert_tree(box, repo, "v1.0.6")
    assert store.health(box)["version"] == "1.0.6"
    assert store.dpkg_status(box) == ("iF", "1.0.7")
    last = store.history(box)[-1]
    assert (last["version"], last["status"], last["failed_step"]) == ("1.0.7", "failed", step)
    assert last["old_app_healthy"] is True
    assert last["undo_errors"] == []
    # rows written after the failed attempt are kept too
    assert store.register_customers(box, 1)


@every_release
@pytest.mark.fault("step fails", "migrate", ends_as="old version whole, every row, iF")
def test_failed_migration_restores_everything(server: Container, example_repo: store.ExampleRepo) -> None:
    _failing_update(server, example_repo, "broken/migration", "migrate")
    # the first migration of the pair was applied, then rolled back with its rollback file
    assert store.db_dump(server)["migrations"][-1] == "0004_newsletter"


@every_release
@pytest.mark.fault("step fails", "start", ends_as="old version whole, every row, iF")
def test_app_that_will_not_start_is_rolled_back(server: Container, example_repo: store.ExampleRepo) -> None:
    _failing_update(server, example_repo, "broken/start", "health")


@every_release
@pytest.mark.fault("step fails", "health", ends_as="old version whole, every row, iF")
def test_failed_health_check_is_rolled_back(server: Container, example_repo: store.ExampleRepo) -> None:
    _failing_update(server, example_repo, "broken/health", "health")


@pytest.mark.fault("step fails", "preflight", ends_as="refused, nothing changed (drift)")
def test_drifted_file_is_refused_before_the_service_is_touched(
    server: Container, example_repo: store.ExampleRepo
) -> None:
    store.deploy_by_hand(server, example_repo, "v1.0.0")
    server.sh(f"echo '# hot fix on the server' >> {store.APP_ROOT}/server.py")
    pid = server.service_main_pid(store.UNIT)
    before = store.snapshot(server)

    result = store.apt_install(server, example_repo.build("v1.0.1"))

    assert result.returncode != 0
    assert "/opt/nesop-store/server.py was changed on this server" in result.stdout + result.stderr
    assert server.service_main_pid(store.UNIT) == pid
    assert store.snapshot(server) == before
    assert store.dpkg_status(server)[0] != "ii"


@pytest.mark.fault("step fails", "preflight", ends_as="refused, nothing changed (base)")
def test_wrong_base_version_is_refused(server: Container, example_repo: store.ExampleRepo) -> None:
    store.deploy_by_hand(server, example_repo, "v1.0.3")
    assert store.apt_install(server, example_repo.build("v1.0.4")).returncode == 0
    pid = server.service_main_pid(store.UNIT)
    before = store.snapshot(server)

    result = store.apt_install(server, example_repo.build("v1.0.6"))  # built against 1.0.5

    assert result.returncode != 0
    assert "update 1.0.6 needs base 1.0.5 but 1.0.4 is installed" in result.stdout + result.stderr
    assert server.service_main_pid(store.UNIT) == pid
    assert store.snapshot(server) == before
    assert store.dpkg_status(server) == ("ii", "1.0.4")
    # the preinst's refusal is a record too: in the history, and in the journal
    last = store.history(server)[-1]
    assert (last["version"], last["from"], last["status"], last["failed_step"]) == (
        "1.0.6", "1.0.4", "refused", "preflight",
    ), last  # fmt: skip
    assert "needs base 1.0.5" in last["reason"]
    errors = server.run(["journalctl", "-t", "nesop-update", "-p", "err", "--no-pager", "-o", "cat"]).stdout
    assert "needs base 1.0.5 but 1.0.4 is installed" in errors, errors


@pytest.mark.fault("step fails", "preflight", ends_as="refused, nothing changed (tampered)")
def test_tampered_payload_is_refused(
    server: Container, example_repo: store.ExampleRepo, tmp_path: Path
) -> None:
    store.deploy_by_hand(server, example_repo, "v1.0.0")
    good = example_repo.build("v1.0.1")
    unpacked = tmp_path / "unpacked"
    import subprocess

    subprocess.run(["dpkg-deb", "-R", str(good), str(unpacked)], check=True)
    payload = unpacked / "usr/share/nesop-store-update/payload/server.py"
    payload.write_text(payload.read_text() + "\nimport os; os.system('echo owned')\n")
    tampered = tmp_path / good.name
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-b", str(unpacked), str(tampered)],
        check=True,
        capture_output=True,
    )
    pid = server.service_main_pid(store.UNIT)
    before = store.snapshot(server)

    result = store.apt_install(server, tampered)

    assert result.returncode != 0
    # the APT hook checks every payload file before dpkg runs: nothing is even unpacked
    assert "server.py: sha256 does not match the manifest" in result.stdout + result.stderr
    assert store.dpkg_status(server)[0] == "not-installed"
    assert server.service_main_pid(store.UNIT) == pid
    assert store.snapshot(server) == before

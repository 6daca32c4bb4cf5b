"""A release that changes `[app] unit_file` on a real Debian with systemd: apt installs the new
unit in the update's transaction, a failed update puts the old one back before the old app
starts, and an apt downgrade puts back the unit of the version it returns to."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from . import store
from .testbed import Container

UNIT_REL = "deploy/nesop-store.service"
INSTALLED = f"/etc/systemd/system/{store.UNIT}"
ANCHOR = "Environment=PYTHONDONTWRITEBYTECODE=1\n"


def _unit_release(repo: store.ExampleRepo, branch: str, base: str, lines: str) -> bytes:
    """A commit on ``branch`` off ``base`` that adds ``lines`` to the unit file; its content."""
    env = {**os.environ, **store.GIT_ENV}
    subprocess.run(["git", "-C", str(repo.path), "checkout", "-q", "-b", branch, base], check=True, env=env)
    unit = repo.path / UNIT_REL
    text = unit.read_text()
    assert ANCHOR in text
    unit.write_text(text.replace(ANCHOR, ANCHOR + lines))
    subprocess.run(
        ["git", "-C", str(repo.path), "commit", "-q", "-am", f"Service: {lines.strip()}"], check=True, env=env
    )
    return unit.read_bytes()


def _mark(box: Container) -> tuple[str | None, str | None]:
    """NESOP_UNIT_MARK as systemd has the unit loaded, and in the running app's environment."""
    shown = box.run(["systemctl", "show", "-p", "Environment", "--", store.UNIT]).stdout
    loaded = next((w.split("=", 1)[1] for w in shown.split() if w.startswith("NESOP_UNIT_MARK=")), None)
    pid = box.service_main_pid(store.UNIT)
    environ = box.run(["cat", f"/proc/{pid}/environ"]).stdout.split("\0")
    running = next((v.split("=", 1)[1] for v in environ if v.startswith("NESOP_UNIT_MARK=")), None)
    return loaded, running


def _reloaded(box: Container) -> bool:
    shown = box.run(["systemctl", "show", "-p", "NeedDaemonReload", "--", store.UNIT]).stdout.strip()
    return shown == "NeedDaemonReload=no"


def test_a_release_that_changes_the_unit(server: Container, tmp_path: Path) -> None:
    repo = store.ExampleRepo.create(tmp_path)
    # fails to start: the old app starts again only on the old unit
    _unit_release(repo, "unit/broken", "v1.0.6", "Environment=NESOP_UNIT_MARK=3\nExecStartPre=/bin/false\n")
    marked = _unit_release(repo, "unit/mark", "v1.0.6", "Environment=NESOP_UNIT_MARK=2\n")
    store.deploy_by_hand(server, repo, "v1.0.5")
    store.apply_ok(server, repo, "v1.0.6")
    unit_106 = server.path(INSTALLED).read_bytes()
    assert unit_106 == server.path(f"{store.APP_ROOT}/{UNIT_REL}").read_bytes()
    rows = store.register_customers(server, 2)
    before = store.snapshot(server)

    # (b) the new unit and a failure: the old unit is back, loaded, and runs the old app
    broken = repo.build("unit/broken", "--version", "1.0.7", "--since", "v1.0.6")
    result = store.apt_install(server, broken)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert "update to 1.0.7 FAILED at" in output, output[-3000:]
    assert server.path(INSTALLED).read_bytes() == unit_106
    assert _reloaded(server)
    assert _mark(server) == (None, None)
    assert store.snapshot(server) == before
    assert store.health(server)["version"] == "1.0.6"
    assert set(rows) <= store.customer_emails(server)
    assert store.dpkg_status(server) == ("iF", "1.0.7")
    last = store.history(server)[-1]
    assert (last["action"], last["version"], last["status"]) == ("apply", "1.0.7", "failed"), last
    assert last["failed_step"] in ("start", "health") and last["undo_errors"] == [], last
    assert last["old_app_healthy"] is True, last

    # (a) the new unit: installed with the update, and the app runs with it
    good = repo.build("unit/mark", "--version", "1.0.8", "--since", "v1.0.6")
    result = store.apt_install(server, good)
    assert result.returncode == 0, result.stdout + result.stderr
    assert store.dpkg_status(server) == ("ii", "1.0.8")
    assert server.path(INSTALLED).read_bytes() == marked
    assert _reloaded(server)
    assert _mark(server) == ("2", "2")
    assert store.health(server)["version"] == "1.0.6"  # the release changes the unit only
    service = server.run(["nesop-update", "validate", "--check", "service"], check=False)
    assert service.returncode == 0, service.stdout + service.stderr

    # (c) back to 1.0.6 with apt: its unit again
    down = server.run(
        ["apt-get", "install", "-y", "-q", "--allow-downgrades", f"{store.PACKAGE}=1.0.6"],
        check=False,
        timeout=300,
    )
    assert down.returncode == 0, down.stdout + down.stderr
    assert store.dpkg_status(server) == ("ii", "1.0.6")
    assert server.path(INSTALLED).read_bytes() == unit_106
    assert _reloaded(server)
    assert _mark(server) == (None, None)
    assert store.health(server)["version"] == "1.0.6"
    assert set(rows) <= store.customer_emails(server)
    last = store.history(server)[-1]
    assert (last["action"], last["version"], last["status"]) == ("rollback", "1.0.6", "success"), last
    assert store.leftovers(server) == []

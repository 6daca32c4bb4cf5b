"""Socket activation on a real Debian: no request fails across updates, failed updates, an apt
rollback, a crash with the gate held and a power loss.

From 1.2.0 the example store's `--full` package ships deploy/nesop-store.socket ([app]
socket_file): systemd listens on 127.0.0.1:5000 and keeps listening while the store is stopped,
so connections wait in the socket's queue and the store that starts next answers them. The
update gate keeps the old store from being started by such a connection while its tree, its
database or its units are being changed. A customer (tests/e2e/readclient.py, on new connections,
in the container's network) loads a page that reads the database all along; every check is of the
end state: the version served, dpkg's state, the socket, the gate and the customer's failures.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from . import faults, store
from .test_matrix import pause_at
from .testbed import Container

SOCKET = "nesop-store.socket"
GATE = store.GATE
GATE_UNIT = "nesop-update-gate@nesop-store.service"  # each start of the store waits in it
CLIENT = Path(__file__).with_name("readclient.py")
PAGE = "http://127.0.0.1:5000/api/products"  # reads the database


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each container has a network of its own: the customer reaches the store on its loopback."""
    monkeypatch.setenv("NESOP_TESTBED_PRIVATE_NETWORK", "1")


class Customer:
    def __init__(self) -> None:
        self.result: dict[str, Any] = {}

    @property
    def failures(self) -> list[dict[str, Any]]:
        return list(self.result["failures"])


@contextmanager
def customer(box: Container, work: Path) -> Iterator[Customer]:
    """Load the page from the container's network for the duration of the block."""
    stop = work / "stop-customer"
    stop.unlink(missing_ok=True)
    netns = ["nsenter", "--target", str(box.pid), "--net", "--"]
    client = subprocess.Popen(
        [*netns, sys.executable, str(CLIENT), PAGE, str(stop)], stdout=subprocess.PIPE, text=True
    )
    seen = Customer()
    try:
        yield seen
    finally:
        stop.touch()
        out, _ = client.communicate(timeout=300)
        seen.result = json.loads(out)
    assert seen.result["sent"] > 20, f"the customer barely ran: {seen.result}"


def prop(box: Container, unit: str, name: str) -> str:
    return box.run(["systemctl", "show", f"--property={name}", "--value", unit]).stdout.strip()


def assert_listening(box: Container) -> None:
    state = (prop(box, SOCKET, "ActiveState"), prop(box, SOCKET, "SubState"))
    assert state in (("active", "listening"), ("active", "running")), state
    assert prop(box, SOCKET, "Result") == "success"


def gate(box: Container) -> str:
    p = box.path(GATE)
    return p.read_text() if p.exists() else ""


def apply(box: Container, deb: Path, version: str) -> None:
    result = store.apt_install(box, deb)
    assert result.returncode == 0, result.stdout + result.stderr
    assert store.dpkg_status(box) == ("ii", version)
    assert store.health(box)["version"] == version


def fails(box: Container, deb: Path, version: str, live: str) -> str:
    result = store.apt_install(box, deb)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"update to {version} FAILED at " in output, output[-3000:]
    assert store.dpkg_status(box) == ("iF", version)
    assert store.health(box)["version"] == live
    assert_listening(box)
    assert gate(box) == ""
    return output


def apt_to(box: Container, version: str) -> None:
    result = box.run(
        ["apt-get", "install", "-y", "-q", "--allow-downgrades", f"{store.PACKAGE}={version}"],
        check=False,
        timeout=300,
        env={"DEBIAN_FRONTEND": "noninteractive"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert store.dpkg_status(box) == ("ii", version)
    assert store.health(box)["version"] == version


def first_install(box: Container, repo: store.ExampleRepo) -> None:
    """1.2.0's --full package: the service and its socket, enabled and started."""
    deb = repo.build("v1.2.0", "--full", name="socket-full-v1.2.0")
    apply(box, deb, "1.2.0")
    assert prop(box, SOCKET, "UnitFileState") == "enabled"
    assert_listening(box)
    assert prop(box, SOCKET, "Listen") == "127.0.0.1:5000 (Stream)"
    assert prop(box, store.UNIT, "TriggeredBy") == SOCKET
    # gunicorn took systemd's socket: one listener on the port, held by systemd and the master
    pid = box.service_main_pid(store.UNIT)
    listeners = box.run(["ss", "-Hltnp", "sport = :5000"]).stdout
    assert len(listeners.splitlines()) == 1, listeners
    assert '"systemd",pid=1,' in listeners and f"pid={pid}," in listeners, listeners


def test_no_request_fails_across_updates_failures_and_a_rollback(
    server: Container, example_repo: store.ExampleRepo, tmp_path: Path
) -> None:
    box, repo = server, example_repo
    first_install(box, repo)
    status = box.run(["nesop-update", "status"]).stdout
    assert f"socket:       {SOCKET} active/running on 127.0.0.1:5000 (enabled)" in status, status
    assert "gate:         open" in status, status
    check = box.run(["nesop-update", "validate", "--check", "service"], check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"{SOCKET} active/running on 127.0.0.1:5000; gate open" in check.stdout, check.stdout

    with customer(box, tmp_path) as seen:
        apply(box, repo.build("v1.2.1"), "1.2.1")  # no migration
        masters = prop(box, store.UNIT, "MainPID")
        apply(box, repo.build("v1.2.2"), "1.2.2")  # a migration
        assert prop(box, store.UNIT, "MainPID") != masters
        out = fails(box, repo.build("broken/socket-migration", "--version", "1.2.3", "--since", "v1.2.2",
                                    name="socket-broken-migration"), "1.2.3", "1.2.2")  # fmt: skip
        assert "FAILED at migrate" in out, out[-3000:]
        apt_to(box, "1.2.2")
        out = fails(box, repo.build("broken/socket-start", "--version", "1.2.3", "--since", "v1.2.2",
                                    name="socket-broken-start"), "1.2.3", "1.2.2")  # fmt: skip
        # the broken app started, died and was started again by a waiting connection at most a
        # few times: the socket never hit the service's start limit
        assert "service-start-limit-hit" not in prop(box, SOCKET, "Result")
        apt_to(box, "1.2.2")
        apt_to(box, "1.2.1")  # an apt rollback across the migration
        assert [e["action"] for e in store.history(box)][-1] == "rollback"

    assert seen.failures == [], seen.result
    assert_listening(box)
    assert gate(box) == ""
    # every start the runtime did not make waited at the gate, and went on only once it opened
    waits = box.run(["journalctl", "-u", GATE_UNIT, "--no-pager", "-o", "cat"]).stdout
    assert waits.count("nesop-update gate: an update holds") == waits.count("nesop-update gate: open")
    assert box.run(["dpkg", "--audit"]).stdout.strip() == ""


def at_1_2_1(box: Container, repo: store.ExampleRepo) -> Path:
    first_install(box, repo)
    apply(box, repo.build("v1.2.1"), "1.2.1")
    deb = repo.build("v1.2.2")
    box.copy_in(deb, f"/var/tmp/{deb.name}")
    return deb


@pytest.mark.fault(
    "SIGKILL",
    "migrate",
    ends_as="with a socket: no start while gated, requests wait; configure -a serves old, then new",
)
def test_a_crash_with_the_gate_held_keeps_the_app_from_starting_until_recovery(
    server: Container, example_repo: store.ExampleRepo, tmp_path: Path
) -> None:
    box, repo = server, example_repo
    deb = at_1_2_1(box, repo)
    with customer(box, tmp_path) as seen:
        apt = faults.BackgroundApt(box, f"install -y -q /var/tmp/{deb.name}")
        pause_at(box, apt, "migrate")
        apt.kill()
        # the holder is gone; its line and the journal keep the app gated
        assert gate(box).startswith("pid ")
        assert box.run(["flock", "-n", "-s", GATE, "true"], check=False).returncode == 0
        time.sleep(3)  # connections keep arriving and waiting
        assert prop(box, store.UNIT, "MainPID") == "0"
        assert prop(box, store.UNIT, "ActiveState") == "inactive"
        assert prop(box, GATE_UNIT, "ActiveState") == "activating"  # the store's start waits in it
        assert_listening(box)
        status = box.run(["nesop-update", "status"], check=False).stdout
        assert "left closed" in status and "waits for the recovery" in status, status

        result = box.run(["dpkg", "--configure", "-a"], check=False, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        assert store.dpkg_status(box) == ("ii", "1.2.2")
        assert store.health(box)["version"] == "1.2.2"
    assert seen.failures == [], seen.result
    assert gate(box) == ""
    actions = [(e["action"], e["version"], e["status"]) for e in store.history(box)]
    assert ("recover", "1.2.2", "interrupted") in actions and actions[-1] == ("apply", "1.2.2", "success")
    log = box.run(["journalctl", "-u", GATE_UNIT, "--no-pager", "-o", "cat"]).stdout
    assert "nesop-update gate: an update holds nesop-store.service; its start waits" in log


@pytest.mark.fault(
    "power loss",
    "apply-files",
    ends_as="with a socket: after the boot the recovery runs first, old app serves, no request fails",
)
def test_a_power_loss_with_the_gate_held_leaves_a_server_that_boots_and_serves(
    server: Container, example_repo: store.ExampleRepo, tmp_path: Path
) -> None:
    box, repo = server, example_repo
    deb = at_1_2_1(box, repo)
    apt = faults.BackgroundApt(box, f"install -y -q /var/tmp/{deb.name}")
    pause_at(box, apt, "apply-files")
    box.kill_hard()
    apt.untrace()
    assert box.path(store.JOURNAL).exists() and gate(box).startswith("pid ")

    box.boot()
    with customer(box, tmp_path) as seen:
        box.wait_http(store.HEALTH, timeout=60)
        assert store.health(box)["version"] == "1.2.1"
        assert_listening(box)
        result = box.run(["dpkg", "--configure", "-a"], check=False, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        assert store.dpkg_status(box) == ("ii", "1.2.2")
        assert store.health(box)["version"] == "1.2.2"
        store.assert_tree(box, repo, "v1.2.2")
        assert store.leftovers(box) == []
    assert seen.failures == [], seen.result
    assert gate(box) == ""
    last_recover = [e for e in store.history(box) if e["action"] == "recover"][-1]
    assert last_recover.get("at_boot") is True, last_recover

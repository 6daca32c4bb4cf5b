"""dpkg killed while the app is stopped: the next `dpkg --configure -a` brings back one whole
version, healthy, with every row. The fault is injected from outside, at a moment the test
watches for in the write-ahead journal."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from . import store
from .conftest import ContainerFactory

JOURNAL = "/var/lib/nesop-store-update/journal.json"


def test_sigkill_during_start_then_configure_a(
    new_container: ContainerFactory, toolchain_deb: Path, example_repo: store.ExampleRepo
) -> None:
    box = new_container()
    store.install_toolchain(box, toolchain_deb)
    store.deploy_by_hand(box, example_repo, "v1.0.4")
    rows = store.register_customers(box, 5)
    deb = example_repo.build("v1.0.5")  # carries a migration: files and schema both change
    box.copy_in(deb, f"/var/tmp/{deb.name}")
    # a slow-starting app: the window between "files and schema changed" and "healthy" is wide
    box.write_file(
        "/etc/systemd/system/nesop-store.service.d/slow.conf", "[Service]\nExecStartPre=/bin/sleep 4\n"
    )
    box.run(["systemctl", "daemon-reload"])

    done: dict[str, int] = {}
    apt = threading.Thread(
        target=lambda: done.setdefault(
            "rc", box.run(["apt-get", "install", "-y", "-q", f"/var/tmp/{deb.name}"], check=False).returncode
        )
    )
    apt.start()
    journal = box.path(JOURNAL)
    deadline = time.monotonic() + 60
    steps: list[str] = []
    while time.monotonic() < deadline:
        try:
            steps = json.loads(journal.read_text()).get("steps", [])
        except (OSError, ValueError):
            steps = []
        if "start" in steps:
            break
        time.sleep(0.02)
    assert "start" in steps, f"the update never reached its start step (journal: {steps})"
    assert "migrate" in steps
    box.run(["pkill", "-KILL", "-f", "apt-get|dpkg|nesop_deb.hooks"], check=False)
    apt.join(60)
    assert done.get("rc", 0) != 0
    assert store.dpkg_status(box)[0] in ("iF", "iU")
    assert box.path(JOURNAL).exists(), "the journal must survive the crash"

    result = box.run(["dpkg", "--configure", "-a"], check=False, timeout=300)

    assert result.returncode == 0, result.stdout + result.stderr
    assert not box.path(JOURNAL).exists()
    assert store.dpkg_status(box) == ("ii", "1.0.5")
    store.assert_tree(box, example_repo, "v1.0.5")
    assert store.health(box)["version"] == "1.0.5"
    assert set(rows) <= store.customer_emails(box)
    statuses = [(e["action"], e["version"], e["status"]) for e in store.history(box)]
    assert ("recover", "1.0.5", "interrupted") in statuses
    assert statuses[-1] == ("apply", "1.0.5", "success")

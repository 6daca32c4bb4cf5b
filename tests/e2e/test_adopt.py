"""A store deployed by hand, as the original guide leaves it, before its first package: operated
with `nesop-update --config FILE …`, adopted, checked file by file, then updated with apt."""

from __future__ import annotations

import json

from . import store
from .testbed import Container

CONFIG = "/etc/nesop-deb/nesop-store.toml"  # the builder's nesop-deb.toml, where only root writes


def _update(box: Container, *args: str, check: bool = True) -> str:
    result = box.run(["nesop-update", *args], check=check, timeout=300)
    return result.stdout


def _files_problems(box: Container) -> list[str]:
    result = box.run(["nesop-update", "validate", "--check", "files", "--json"], check=False)
    [files] = json.loads(result.stdout)
    assert result.returncode == (0 if files["ok"] else 1)
    return [str(p) for p in files["problems"]]


def test_a_hand_deployed_store_is_operated_adopted_then_updated(
    server: Container, example_repo: store.ExampleRepo
) -> None:
    box = server
    store.deploy_by_hand(box, example_repo, "v1.0.0")
    config = store._git(example_repo.path, "show", "v1.0.0:nesop-deb.toml")
    box.write_file(CONFIG, config)

    unmanaged = box.run(["nesop-update", "status"], check=False)
    assert unmanaged.returncode == 2
    assert "no app is managed" in unmanaged.stderr and "--config FILE" in unmanaged.stderr

    # every read-only command, a backup and its restore, with the config alone
    status = json.loads(_update(box, "--config", CONFIG, "status", "--json"))
    assert (status["version"], status["adopted"]) == (None, None)
    assert status["package"]["state"] == "not installed"
    assert status["service"]["pid"] == box.service_main_pid(store.UNIT)
    assert status["health"]["ok"] is True
    checks = json.loads(_update(box, "--config", CONFIG, "validate", "--json"))
    assert [c["name"] for c in checks if not c["ok"]] == [], checks
    assert _update(box, "--config", CONFIG, "history").startswith("no update recorded yet")
    backup = _update(box, "--config", CONFIG, "backup", "as-deployed").strip()
    assert backup == f"{store.APP_ROOT}/backups/as-deployed"
    [row] = json.loads(_update(box, "--config", CONFIG, "list-backups", "--json"))
    assert (row["name"], row["kind"], row["version"], row["database"]) == (
        "as-deployed",
        "manual",
        None,
        True,
    )

    # adopted: the commands need no --config, and every file is checked
    shipped = len(example_repo.tree("v1.0.0"))  # the app's files: not its data, backups or logs
    adopted = _update(box, "adopt", CONFIG).strip()
    assert adopted == f"nesop-store: adopted /opt/nesop-store ({shipped} files); --config not needed now"
    assert not box.path(f"/var/lib/{store.PACKAGE}/state.json").exists(), "no version is recorded"
    records = box.path(f"/var/lib/{store.PACKAGE}/adoption")
    for p in (records.parent, records, *records.iterdir()):
        st = p.stat()
        assert (st.st_uid, st.st_mode & 0o077) == (0, 0), f"{p} is not root's alone"
    status = json.loads(_update(box, "status", "--json"))
    assert status["version"] is None and status["adopted"]["config_file"] == CONFIG
    assert _files_problems(box) == []
    index = box.path(f"{store.APP_ROOT}/index.html")
    index.write_text(index.read_text() + "<!-- edited on the server -->\n")
    [problem] = _files_problems(box)
    assert problem.startswith("index.html: content changed since the adoption of "), problem

    # the backup taken before the adoption puts it back, through the same transaction as an update
    _update(box, "rollback", "as-deployed")
    assert _files_problems(box) == []
    assert store.health(box)["version"] == "1.0.0"

    # the first package adopts the app as on a server never adopted, and the check adds its files
    store.apply_ok(box, example_repo, "v1.0.1")
    assert store.dpkg_status(box) == ("ii", "1.0.1")
    assert store.health(box)["version"] == "1.0.1"
    store.assert_tree(box, example_repo, "v1.0.1")
    last = store.history(box)[-1]
    assert (last["action"], last["version"], last["from"], last["status"]) == (
        "apply",
        "1.0.1",
        None,
        "success",
    )
    status = json.loads(_update(box, "status", "--json"))
    assert status["version"] == "1.0.1" and status["adopted"] is not None
    checks = json.loads(_update(box, "validate", "--json"))
    assert [c["name"] for c in checks if not c["ok"]] == [], checks
    files = next(c for c in checks if c["name"] == "files")
    assert files["summary"].endswith(", 2 as 1.0.1 wrote them"), files

    box.path(f"{store.APP_ROOT}/styles/store.css").write_text("body { display: none }\n")
    box.path(f"{store.APP_ROOT}/server.py").write_text("# replaced on the server\n")
    problems = _files_problems(box)
    assert problems[0] == "server.py: content differs from 1.0.1", problems
    assert [p.split(":")[0] for p in problems[1:]] == ["styles/store.css"], problems

"""Rolling back the Debian way (`apt install <package>=<older>`) and with `nesop-update`."""

from __future__ import annotations

import json

from . import store
from .releases import every_release
from .testbed import Container


def _apt(box: Container, *args: str) -> str:
    result = box.run(["apt-get", "-y", "-q", *args], check=False, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@every_release
def test_apt_downgrade_across_versions_keeps_every_row(
    server: Container, example_repo: store.ExampleRepo
) -> None:
    repo = example_repo
    store.deploy_by_hand(server, repo, "v1.0.3")
    rows = store.register_customers(server, 2)
    store.apply_ok(server, repo, "v1.0.4")
    schema_104 = store.db_dump(server)["schema"]
    rows += store.register_customers(server, 2)
    store.apply_ok(server, repo, "v1.0.5")
    rows += store.register_customers(server, 2)
    store.apply_ok(server, repo, "v1.0.6")
    rows += store.register_customers(server, 2)
    policy = server.run(["apt-cache", "policy", store.PACKAGE]).stdout
    for v in ("1.0.4", "1.0.5", "1.0.6"):
        assert v in policy, policy

    _apt(server, "install", "--allow-downgrades", f"{store.PACKAGE}=1.0.4")

    store.assert_tree(server, repo, "v1.0.4")
    dump = store.db_dump(server)
    assert dump["schema"] == schema_104
    assert dump["migrations"] == ["0001_initial", "0002_product_stock"]
    assert set(rows) <= store.customer_emails(server)
    assert store.dpkg_status(server) == ("ii", "1.0.4")
    assert store.health(server)["version"] == "1.0.4"
    last = store.history(server)[-1]
    assert (last["action"], last["from"], last["version"], last["status"]) == (
        "rollback",
        "1.0.6",
        "1.0.4",
        "success",
    )
    assert last["undone"] == ["1.0.6", "1.0.5"]

    # held: an upgrade does not bring 1.0.6 back
    _apt(server, "upgrade")
    _apt(server, "install", store.PACKAGE)
    assert store.dpkg_status(server) == ("ii", "1.0.4")
    status = json.loads(server.run(["nesop-update", "status", "--json"]).stdout)
    assert status["held"] == "1.0.4"

    # released, apt may upgrade again, through the same transactions
    server.run(["nesop-update", "release"])
    _apt(server, "install", f"{store.PACKAGE}=1.0.5")
    assert store.dpkg_status(server) == ("ii", "1.0.5")
    store.assert_tree(server, repo, "v1.0.5")


def test_apt_downgrade_out_of_a_failed_update(server: Container, example_repo: store.ExampleRepo) -> None:
    repo = example_repo
    store.deploy_by_hand(server, repo, "v1.0.5")
    store.apply_ok(server, repo, "v1.0.6")
    deb = repo.build("broken/health", "--version", "1.0.7", "--since", "v1.0.6")
    assert store.apt_install(server, deb).returncode != 0
    assert store.dpkg_status(server) == ("iF", "1.0.7")
    before = store.snapshot(server)
    # a package refused by preinst must not make dpkg call the failed 1.0.7 installed
    wrong_base = repo.build(
        "broken/start", "--version", "1.0.8", "--since", "v1.0.5", name="wrong-base-1.0.8"
    )
    refused = store.apt_install(server, wrong_base)
    assert refused.returncode != 0
    assert "update 1.0.8 needs base 1.0.5 but 1.0.6 is installed" in refused.stdout + refused.stderr
    assert store.dpkg_status(server) in (("iF", "1.0.7"), ("iU", "1.0.7"))  # never "ii": not applied
    assert store.snapshot(server) == before

    _apt(server, "install", "--allow-downgrades", f"{store.PACKAGE}=1.0.6")

    assert store.dpkg_status(server) == ("ii", "1.0.6")
    assert store.snapshot(server) == before
    assert store.health(server)["version"] == "1.0.6"


def test_nesop_update_rollback_commands(server: Container, example_repo: store.ExampleRepo) -> None:
    repo = example_repo
    store.deploy_by_hand(server, repo, "v1.0.4")
    store.apply_ok(server, repo, "v1.0.5")
    store.apply_ok(server, repo, "v1.0.6")
    rows = store.register_customers(server, 2)

    out = server.run(["nesop-update", "rollback", "--to", "1.0.5"]).stdout
    assert "rolled back to 1.0.5" in out
    assert store.dpkg_status(server) == ("ii", "1.0.5")
    store.assert_tree(server, repo, "v1.0.5")
    assert set(rows) <= store.customer_emails(server)

    backups = json.loads(server.run(["nesop-update", "list-backups", "--json"]).stdout)
    names = [b["name"] for b in backups]
    before_105 = next(b for b in backups if b["for_version"] == "1.0.5")
    assert before_105["needed_for_rollback"] is True
    assert all(server.path(f"{store.APP_ROOT}/backups/{n}").stat().st_mode & 0o777 == 0o700 for n in names)

    manual = server.run(["nesop-update", "backup", "before-experiment"]).stdout.strip()
    assert manual.endswith("/before-experiment")
    server.sh(f"echo 'broken = (' >> {store.APP_ROOT}/config.py")
    server.run(["nesop-update", "rollback", "before-experiment"])
    assert store.health(server)["version"] == "1.0.5"
    store.assert_tree(server, repo, "v1.0.5")

    history = json.loads(server.run(["nesop-update", "history", "--json"]).stdout)
    actions = [(e["action"], e["status"]) for e in history["history"]]
    assert actions[-2:] == [("rollback", "success"), ("rollback", "success")]
    assert any("nesop-store-update" in line for line in history["dpkg"])

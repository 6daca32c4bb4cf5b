"""A partial update (`--files ... --allow-partial`), then the regular updates after it, on a real
Debian with systemd: no force flag is needed, and what a partial update left behind is recorded
until an update writes it."""

from __future__ import annotations

import json
from pathlib import Path

from . import store
from .testbed import Container

STATE = f"/var/lib/{store.PACKAGE}/versions"


def _left_behind(box: Container, version: str) -> dict[str, str | None]:
    path = box.path(f"{STATE}/{version}/left_behind.json")
    if not path.exists():
        return {}
    files: dict[str, str | None] = json.loads(path.read_text())["files"]
    return files


def _install(box: Container, deb: Path, version: str, *, says: str | None = None) -> None:
    """Install with apt, no force flag; ``says``: the version the app reports (its VERSION file)."""
    result = store.apt_install(box, deb)
    assert result.returncode == 0, result.stdout + result.stderr
    assert store.dpkg_status(box) == ("ii", version)
    assert store.health(box)["version"] == (says or version)


def test_a_partial_update_then_regular_updates(server: Container, example_repo: store.ExampleRepo) -> None:
    repo = example_repo
    store.deploy_by_hand(server, repo, "v1.0.0")
    v100, v101, v102 = repo.tree("v1.0.0"), repo.tree("v1.0.1"), repo.tree("v1.0.2")

    # the bug fix alone, as the original guide's scenario 1: VERSION stays at 1.0.0
    partial = repo.build("v1.0.1", "--files", "server.py", "--allow-partial", name="partial-1.0.1")
    _install(server, partial, "1.0.1", says="1.0.0")
    live = store.live_tree(server)
    assert live["server.py"] == v101["server.py"] and live["VERSION"] == v100["VERSION"]
    assert _left_behind(server, "1.0.1") == {"VERSION": v100["VERSION"][0]}
    files = server.run(["nesop-update", "validate", "--check", "files"], check=False)
    assert files.returncode == 0, files.stdout + files.stderr
    assert "1 left at an earlier version by a partial update (VERSION)" in files.stdout, files.stdout

    # the next release, built as usual from v1.0.1: applies without a force flag, and the tree is
    # the release's, VERSION included
    _install(server, repo.build("v1.0.2"), "1.0.2")
    store.assert_tree(server, repo, "v1.0.2")
    assert store.live_tree(server)["VERSION"] == v102["VERSION"]
    assert _left_behind(server, "1.0.2") == {}

    # a partial update whose left-out files the next update touches only in part
    partial = repo.build("v1.0.3", "--files", "store.py", "--allow-partial", name="partial-1.0.3")
    _install(server, partial, "1.0.3", says="1.0.2")
    assert store.db_dump(server)["migrations"] == ["0001_initial", "0002_product_stock"]
    behind = _left_behind(server, "1.0.3")
    assert "VERSION" in behind and "admin.html" in behind and "store.py" not in behind

    _install(server, repo.build("v1.0.4"), "1.0.4")
    v104 = repo.tree("v1.0.4")
    live = store.live_tree(server)
    assert live["VERSION"] == v104["VERSION"] and live["server.py"] == v104["server.py"]
    # 1.0.4 does not touch what 1.0.3 left out of the page, its script and style: still behind,
    # at 1.0.2's content
    still = _left_behind(server, "1.0.4")
    assert "VERSION" not in still and set(still) == set(behind) - {"VERSION"}
    for path, digest in still.items():
        assert live[path][0] == digest == v102[path][0], path
    differ = sorted(p for p in v104 if live.get(p) != v104[p])
    assert differ == sorted(still) and set(live) == set(v104)


def test_a_partial_update_whose_pages_load_what_it_left_out_fails_its_health_gate(
    server: Container, example_repo: store.ExampleRepo
) -> None:
    """The original guide's scenario 2 shipped the pages without the script they load: the
    health URL answers, but the health gate loads the pages and their assets, and undoes it."""
    repo = example_repo
    store.deploy_by_hand(server, repo, "v1.0.1")
    before = store.snapshot(server)
    partial = repo.build(
        "v1.0.2", "--files", "index.html", "admin.html", "--allow-partial", name="pages-1.0.2"
    )

    result = store.apt_install(server, partial)

    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert "update to 1.0.2 FAILED at health" in output, output[-3000:]
    assert "scripts/products.js: HTTP 404" in output, output[-3000:]
    assert store.snapshot(server) == before
    assert store.health(server)["version"] == "1.0.1"
    assert store.dpkg_status(server) == ("iF", "1.0.2")
    web = server.run(["nesop-update", "validate", "--check", "web"], check=False)
    assert web.returncode == 0, web.stdout + web.stderr  # the old pages load what they reference

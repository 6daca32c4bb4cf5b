"""Partial builds on the example store's history: `--files` and `--no-migrations` ship part of a
range only when asked to (`--allow-partial`), and then say, and record, what they leave out.

Expectations come from git (`git show`, `git diff`); packages are read with dpkg-deb.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Built
from .helpers import (
    NESOP_DEB,
    Repo,
    build,
    check_payload,
    control_fields,
    data_members,
    expected_entries,
    git_show,
    package_manifest,
    run_tool,
    sha256,
)

pytestmark = pytest.mark.integration

PACKAGE = "nesop-store-update"


def _refused(app: Path, tmp_path: Path, env: dict[str, str], *options: str) -> str:
    """Build with ``options``: it must be refused with one line, writing nothing; return the line."""
    output = tmp_path / "out"
    outcome = build(app, output, env, *options)
    assert outcome.returncode == 2, outcome
    [line] = outcome.stderr.splitlines()
    assert line.startswith("nesop-deb: error: ") and outcome.stdout == ""
    assert not output.exists() or list(output.iterdir()) == []
    return line


def _blob_sha(repo: Repo, ref: str, path: str) -> str:
    return sha256(git_show(repo, ref, path))


def test_files_that_leave_changes_out_are_refused_naming_them(
    example_checkout: Callable[[str], Path], session_env: dict[str, str], tmp_path: Path
) -> None:
    # scenario 1 of the original guide: the bug fix's range also changes VERSION
    line = _refused(
        example_checkout("v1.0.1"), tmp_path, session_env, "--files", "server.py", "--no-migrations"
    )
    assert "--files leaves out 1 file(s) that v1.0.0..HEAD changed: VERSION;" in line
    assert "add them to --files" in line and "--allow-partial" in line
    # scenario 2: the pages load scripts/products.js, which the range adds by a rename
    line = _refused(
        example_checkout("v1.0.2"),
        tmp_path,
        session_env,
        "--files",
        "index.html",
        "admin.html",
        "--no-migrations",
    )
    for path in ("VERSION", "scripts/products.js", "scripts/main.js", "assets/cart.svg", "styles/store.css"):
        assert path in line, path


def test_allow_partial_builds_warns_and_records_what_stays_behind(
    built: Callable[..., Built], example_repo: Repo, session_env: dict[str, str]
) -> None:
    b = built("v1.0.1", "--files", "server.py", "--no-migrations", "--allow-partial")
    assert b.outcome.last_line == str(b.deb)
    assert "warning: partial update: 1 changed file(s) left out (VERSION)" in b.outcome.stderr
    manifest, _ = package_manifest(b.deb, b.package)
    expected = {"server.py": expected_entries(example_repo, "v1.0.0", "v1.0.1", [])["server.py"]}
    assert manifest["files"] == [{"path": "server.py", **expected["server.py"]}]
    check_payload(b.deb, b.package, expected, example_repo, "v1.0.1")
    # the content the server keeps (the base's), and the release's
    assert manifest["left_behind"] == [
        {
            "path": "VERSION",
            "base_sha256": _blob_sha(example_repo, "v1.0.0", "VERSION"),
            "release_sha256": _blob_sha(example_repo, "v1.0.1", "VERSION"),
        }
    ]
    description = control_fields(b.deb)["Description"]
    assert "1 left out" in description and "! VERSION (left out" in description
    inspected = run_tool([NESOP_DEB, "inspect", b.deb], session_env)
    assert "left out (partial; kept as they were): VERSION" in inspected.stdout


def test_a_named_file_that_did_not_change_ships_as_head_has_it(
    built: Callable[..., Built], example_repo: Repo
) -> None:
    # config.py did not change in v1.0.0..v1.0.1: named, it ships anyway (and nothing is left out)
    b = built("v1.0.1", "--files", "server.py", "VERSION", "config.py")
    manifest, _ = package_manifest(b.deb, b.package)
    assert "left_behind" not in manifest and "warning" not in b.outcome.stderr
    entries = {f["path"]: f for f in manifest["files"]}
    assert sorted(entries) == ["VERSION", "config.py", "server.py"]
    same = _blob_sha(example_repo, "v1.0.1", "config.py")
    assert _blob_sha(example_repo, "v1.0.0", "config.py") == same
    assert entries["config.py"]["action"] == "modify"
    assert entries["config.py"]["sha256"] == entries["config.py"]["preimage_sha256"] == same
    _, content = data_members(b.deb)[f"usr/share/{PACKAGE}/payload/config.py"]
    assert content == git_show(example_repo, "v1.0.1", "config.py")


def test_a_named_file_the_range_deletes_ships_its_deletion(
    built: Callable[..., Built], example_repo: Repo
) -> None:
    b = built("v1.0.2", "--files", "assets/banner.svg", "--allow-partial")
    manifest, _ = package_manifest(b.deb, b.package)
    [entry] = manifest["files"]
    assert (entry["path"], entry["action"]) == ("assets/banner.svg", "delete")
    assert entry["preimage_sha256"] == _blob_sha(example_repo, "v1.0.1", "assets/banner.svg")
    left = {lb["path"]: lb for lb in manifest["left_behind"]}
    # the rename is left out on both sides: the old script stays, the new one is not there
    assert left["scripts/main.js"]["release_sha256"] is None
    assert left["scripts/products.js"]["base_sha256"] is None


def test_a_named_file_that_does_not_exist_at_head_is_an_error(
    example_checkout: Callable[[str], Path], session_env: dict[str, str], tmp_path: Path
) -> None:
    line = _refused(example_checkout("v1.0.1"), tmp_path, session_env, "--files", "server.py", "srever.py")
    assert "--files srever.py: no such file in the repository at HEAD" in line


def test_no_migrations_ships_no_migration_files(built: Callable[..., Built], example_repo: Repo) -> None:
    b = built("v1.0.3", "--no-migrations", "--allow-partial")
    manifest, _ = package_manifest(b.deb, b.package)
    assert manifest["migrations"] == []
    assert not any(f["path"].startswith("migrations/") for f in manifest["files"])
    members = data_members(b.deb)
    assert not [n for n in members if n.startswith(f"usr/share/{PACKAGE}/migrations")]
    assert not [n for n in members if n.startswith(f"usr/share/{PACKAGE}/payload/migrations")]
    everything = expected_entries(example_repo, "v1.0.2", "v1.0.3", [])
    shipped = {p: e for p, e in everything.items() if not p.startswith("migrations/")}
    check_payload(b.deb, b.package, shipped, example_repo, "v1.0.3")
    assert manifest["left_behind"] == [
        {
            "path": f"migrations/{name}",
            "base_sha256": None,
            "release_sha256": _blob_sha(example_repo, "v1.0.3", f"migrations/{name}"),
        }
        for name in ("0002_product_stock.rollback.sql", "0002_product_stock.sql")
    ]


def test_files_still_ship_the_ranges_migrations(built: Callable[..., Built]) -> None:
    # without --no-migrations, --files narrows the app's files only: the migration runs, and its
    # files reach the tree with it
    b = built("v1.0.3", "--files", "store.py", "--allow-partial")
    manifest, _ = package_manifest(b.deb, b.package)
    assert [m["id"] for m in manifest["migrations"]] == ["0002_product_stock"]
    paths = [f["path"] for f in manifest["files"]]
    assert paths == [
        "migrations/0002_product_stock.rollback.sql",
        "migrations/0002_product_stock.sql",
        "store.py",
    ]
    assert not any(lb["path"].startswith("migrations/") for lb in manifest["left_behind"])


def test_version_must_name_head(
    built: Callable[..., Built],
    example_checkout: Callable[[str], Path],
    session_env: dict[str, str],
    tmp_path: Path,
) -> None:
    assert built("v1.0.2", "--version", "1.0.2").deb.is_file()  # HEAD is v1.0.2: fine
    line = _refused(example_checkout("broken/start"), tmp_path, session_env, "--version", "1.0.7")
    assert "--version 1.0.7: HEAD carries no release tag" in line and "--since" in line
    # a first install of an untagged commit may take any name: it has no base to mislead about
    b = built("broken/start", "--full", "--version", "1.0.7")
    manifest, _ = package_manifest(b.deb, b.package)
    assert manifest["full"] is True and manifest["version"] == "1.0.7"

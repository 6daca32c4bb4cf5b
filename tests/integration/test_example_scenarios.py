"""The update guide's scenarios on the NESOP Store's real release history, checked against git.

Each release tag is checked out and built the way a developer does (`nesop-deb build -C repo
--output out`); the package is then read with dpkg-deb and compared with what git says changed
since the previous release, file by file and byte by byte.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Callable
from typing import Any

import pytest

from .conftest import Built
from .helpers import (
    Repo,
    check_payload,
    config_at,
    control_fields,
    control_members,
    data_members,
    expected_entries,
    git_changes,
    git_files,
    git_show,
    package_manifest,
    sha256,
    toolchain_version,
)

pytestmark = pytest.mark.integration

RELEASES = ["v1.0.0", "v1.0.1", "v1.0.2", "v1.0.3", "v1.0.4", "v1.0.5", "v1.0.6"]
# Then the store moves onto third-party packages in a virtualenv ([dependencies]).
DEPENDENCY_RELEASES = ["v1.1.0", "v1.1.1", "v1.1.2", "v1.1.3"]
# Then systemd holds its listening socket ([app] socket_file), and releases follow on top of that.
SOCKET_RELEASES = ["v1.2.0", "v1.2.1", "v1.2.2"]
# Then it runs on PostgreSQL as well (migrations-postgresql/, psycopg2-binary), and a schema change follows.
POSTGRESQL_RELEASES = ["v1.3.0", "v1.3.1"]
# (base, release): the 1.2.x updates keep 1.1.3's requirements, so they build without wheels
UPDATES = [*itertools.pairwise(RELEASES), *itertools.pairwise(["v1.1.3", *SOCKET_RELEASES])]
BROKEN_BRANCHES = [
    "broken/migration",
    "broken/start",
    "broken/health",
    "broken/import",
    "broken/socket-migration",
    "broken/socket-start",
]
MIGRATION = re.compile(r"^[0-9]{4}_[A-Za-z0-9_.-]+?\.sql$")


def _exclude(b: Built) -> list[str]:
    patterns: list[str] = b.config.get("files", {}).get("exclude", [])
    return patterns


def test_the_history_holds_the_guide_scenarios(example_repo: Repo) -> None:
    """The example repository really has what the scenarios below exercise."""
    tags = example_repo.git("tag", "--list", "v*").split()
    assert sorted(tags) == RELEASES + DEPENDENCY_RELEASES + SOCKET_RELEASES + POSTGRESQL_RELEASES
    branches = example_repo.git("branch", "--list", "--format=%(refname:short)").split()
    assert set(BROKEN_BRANCHES) <= set(branches)

    def statuses(base: str, tag: str) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for ch in git_changes(example_repo, base, tag, []):
            out.setdefault(ch.status, set()).add(ch.path)
        return out

    assert "server.py" in statuses("v1.0.0", "v1.0.1")["M"]  # bug fix
    frontend = statuses("v1.0.1", "v1.0.2")  # frontend: an asset added, one deleted, a script renamed
    assert {"A", "D", "R", "M"} <= set(frontend)
    assert any(p.endswith((".html", ".css", ".js")) for p in frontend["M"])
    schema = statuses("v1.0.2", "v1.0.3")["A"]  # schema change: migration 0002 and its rollback
    [forward] = [p for p in schema if p.startswith("migrations/0002_") and ".rollback." not in p]
    assert forward.replace(".sql", ".rollback.sql") in schema
    deps = statuses("v1.0.3", "v1.0.4")["M"]  # config and dependencies, and a chmod
    assert {"config.py", "requirements.txt"} <= deps
    assert "mode change 100644 => 100755" in example_repo.git("diff", "--summary", "v1.0.3", "v1.0.4")
    for base, tag in (("v1.0.4", "v1.0.5"), ("v1.0.5", "v1.0.6")):
        assert any(p.startswith("migrations/") for p in statuses(base, tag)["A"])
    # the socket unit arrives, named by the configuration, with no migration
    assert statuses("v1.1.3", "v1.2.0")["A"] == {"deploy/nesop-store.socket"}
    assert config_at(example_repo, "v1.2.0")["app"]["socket_file"] == "deploy/nesop-store.socket"
    assert "A" not in statuses("v1.2.0", "v1.2.1")  # a page changes, the schema does not
    notes = statuses("v1.2.1", "v1.2.2")["A"]  # then a migration with its rollback
    assert notes == {"migrations/0005_order_notes.sql", "migrations/0005_order_notes.rollback.sql"}
    # the same migrations in PostgreSQL's dialect, then a schema change in both
    dialect = statuses("v1.2.2", "v1.3.0")["A"]
    assert {p.replace("migrations-postgresql/", "migrations/") for p in dialect if p.endswith(".sql")} == {
        p for p in git_files(example_repo, "v1.2.2", []) if p.startswith("migrations/")
    }
    assert statuses("v1.3.0", "v1.3.1")["A"] == {
        f"{d}/0006_shipping_status{s}"
        for d in ("migrations", "migrations-postgresql")
        for s in (".sql", ".rollback.sql")
    }


@pytest.mark.parametrize(("base", "tag"), UPDATES)
def test_build_prints_the_deb_last_and_writes_the_manifest_beside_it(
    built: Callable[..., Built], base: str, tag: str
) -> None:
    b = built(tag)
    assert b.outcome.last_line == str(b.deb)
    assert b.deb.is_file()
    assert sorted(p.name for p in b.output.iterdir()) == [b.deb.name, "update_manifest.json"]
    _, inside = package_manifest(b.deb, b.package)
    assert (b.output / "update_manifest.json").read_bytes() == inside


@pytest.mark.parametrize(("base", "tag"), UPDATES)
def test_files_match_git_exactly(
    built: Callable[..., Built], example_repo: Repo, base: str, tag: str
) -> None:
    b = built(tag)
    expected = expected_entries(example_repo, base, tag, _exclude(b))
    assert expected, "every release changes something that ships"
    manifest, _ = package_manifest(b.deb, b.package)
    got = {f["path"]: {k: v for k, v in f.items() if k != "path"} for f in manifest["files"]}
    assert got == expected
    check_payload(b.deb, b.package, expected, example_repo, tag)
    for pattern in _exclude(b):  # nothing excluded slipped in (spot check by literal names)
        assert pattern not in got


@pytest.mark.parametrize(("base", "tag"), UPDATES)
def test_migrations_match_git(built: Callable[..., Built], example_repo: Repo, base: str, tag: str) -> None:
    b = built(tag)
    mig_dir = b.config.get("migrations", {}).get("dir", "migrations")
    added = [c.path for c in git_changes(example_repo, base, tag, []) if c.status == "A"]
    in_dir = sorted(p[len(mig_dir) + 1 :] for p in added if p.startswith(mig_dir + "/"))
    names = [n for n in in_dir if MIGRATION.match(n) and not n.endswith(".rollback.sql")]
    at_tag = git_files(example_repo, tag, [])
    expected = []
    for name in names:
        stem = name.removesuffix(".sql")
        rollback = f"{stem}.rollback.sql"
        has_rollback = f"{mig_dir}/{rollback}" in at_tag
        expected.append(
            {
                "id": stem,
                "file": name,
                "sha256": sha256(git_show(example_repo, tag, f"{mig_dir}/{name}")),
                "reversible": has_rollback,
                "rollback_file": rollback if has_rollback else None,
                "rollback_sha256": (
                    sha256(git_show(example_repo, tag, f"{mig_dir}/{rollback}")) if has_rollback else None
                ),
            }
        )
    manifest, _ = package_manifest(b.deb, b.package)
    assert manifest["migrations"] == expected
    members = data_members(b.deb)
    prefix = f"usr/share/{b.package}/migrations/"
    shipped = {n[len(prefix) :]: c for n, (i, c) in members.items() if n.startswith(prefix) and i.isfile()}
    want = {m["file"] for m in expected} | {m["rollback_file"] for m in expected if m["rollback_file"]}
    assert set(shipped) == want
    for name, content in shipped.items():
        assert content == git_show(example_repo, tag, f"{mig_dir}/{name}")


@pytest.mark.parametrize(("base", "tag"), UPDATES)
def test_manifest_header(built: Callable[..., Built], example_repo: Repo, base: str, tag: str) -> None:
    b = built(tag)
    manifest, _ = package_manifest(b.deb, b.package)
    assert manifest["format"] == 1
    assert manifest["package"] == b.package and manifest["version"] == b.version
    assert manifest["bases"] == [base[1:]]
    assert manifest["full"] is False
    assert manifest["source"]["commit"] == example_repo.git("rev-parse", f"{tag}^{{commit}}").strip()
    assert manifest["source"]["since_commit"] == example_repo.git("rev-parse", f"{base}^{{commit}}").strip()
    assert manifest["source"]["since_ref"] == base
    commit_time = example_repo.git("show", "-s", "--format=%ct", f"{tag}^{{commit}}")
    assert manifest["source"]["created"] == int(commit_time)
    assert manifest["builder_version"] == toolchain_version()
    app = b.config["app"]
    assert manifest["config"]["app"]["name"] == app["name"]
    assert manifest["config"]["app"]["root"] == app["root"]
    assert manifest["config"]["app"]["service"] == app["service"]
    assert manifest["config"]["migrations"]["database"] == b.config["migrations"]["database"]
    assert manifest["config"]["health"]["url"] == b.config["health"]["url"]
    configured = b.config.get("files", {}).get("config", [])
    assert manifest["config_files"] == [p for p in configured if p in git_files(example_repo, tag, [])]


@pytest.mark.parametrize(("base", "tag"), UPDATES)
def test_control_fields(built: Callable[..., Built], example_repo: Repo, base: str, tag: str) -> None:
    b = built(tag)
    fields = control_fields(b.deb)
    assert fields["Package"] == b.package
    assert fields["Version"] == b.version
    assert fields["Architecture"] == "all"
    assert fields["Maintainer"] == b.config["package"]["maintainer"]
    pre_depends = [d.strip() for d in fields["Pre-Depends"].split(",")]
    assert f"nesop-deb (>= {toolchain_version()})" in pre_depends
    assert "python3" in pre_depends
    description = fields["Description"]
    synopsis = f"update of {b.config['app']['name']} to {b.version} (from {base[1:]})"
    assert description.splitlines()[0] == synopsis
    for path in expected_entries(example_repo, base, tag, _exclude(b)):
        assert path in description


@pytest.mark.parametrize(("base", "tag"), UPDATES)
def test_maintainer_scripts_and_md5sums(built: Callable[..., Built], base: str, tag: str) -> None:
    b = built(tag)
    control = control_members(b.deb)
    for script in ("preinst", "postinst", "prerm", "postrm"):
        info, content = control[script]
        assert info.isfile() and info.mode == 0o755, script
        assert content is not None and content.startswith(b"#!/"), script
    _, md5sums = control["md5sums"]
    assert md5sums is not None
    listed = {name: digest for digest, name in (ln.split("  ", 1) for ln in md5sums.decode().splitlines())}
    data = data_members(b.deb)
    regular = {n: c for n, (i, c) in data.items() if i.isfile() and c is not None}
    assert set(listed) == set(regular)
    for name, content in regular.items():
        assert listed[name] == hashlib.md5(content).hexdigest(), name


def test_frontend_release_records_adds_deletes_and_renames(built: Callable[..., Built]) -> None:
    manifest, _ = package_manifest(built("v1.0.2").deb, "nesop-store-update")
    actions = {f["action"] for f in manifest["files"]}
    assert actions == {"add", "modify", "delete", "rename"}
    rename = next(f for f in manifest["files"] if f["action"] == "rename")
    assert rename["renamed_from"] and rename["preimage_sha256"]
    deletion = next(f for f in manifest["files"] if f["action"] == "delete")
    assert deletion["sha256"] is None and deletion["preimage_sha256"]


def test_schema_release_ships_a_reversible_migration(built: Callable[..., Built]) -> None:
    manifest, _ = package_manifest(built("v1.0.3").deb, "nesop-store-update")
    [migration] = manifest["migrations"]
    assert migration["id"].startswith("0002_") and migration["reversible"] is True


def test_socket_release_ships_its_socket_unit_and_names_it(built: Callable[..., Built]) -> None:
    manifest, _ = package_manifest(built("v1.2.0").deb, "nesop-store-update")
    assert manifest["config"]["app"]["socket_file"] == "deploy/nesop-store.socket"
    assert manifest["config"]["app"]["unit_file"] == "deploy/nesop-store.service"
    shipped = {f["path"]: f["action"] for f in manifest["files"]}
    assert shipped["deploy/nesop-store.socket"] == "add"
    assert shipped["deploy/nesop-store.service"] == "modify"
    assert manifest["migrations"] == []


def test_config_release_ships_the_chmod(built: Callable[..., Built], example_repo: Repo) -> None:
    b = built("v1.0.4")
    manifest, _ = package_manifest(b.deb, b.package)
    modes = {f["path"]: f["mode"] for f in manifest["files"]}
    assert modes["manage.py"] == 0o755
    assert {"config.py", "requirements.txt"} <= set(modes)
    info, _ = data_members(b.deb)[f"usr/share/{b.package}/payload/manage.py"]
    assert info.mode == 0o755
    assert "config.py" in manifest["config_files"]


def test_full_build_of_the_first_release(built: Callable[..., Built], example_repo: Repo) -> None:
    b = built("v1.0.0", "--full")
    assert b.outcome.last_line == str(b.deb)
    exclude = _exclude(b)
    files = git_files(example_repo, "v1.0.0", exclude)
    manifest, inside = package_manifest(b.deb, b.package)
    assert manifest["full"] is True and manifest["bases"] == []
    assert manifest["source"]["since_commit"] is None and manifest["source"]["since_ref"] is None
    got = {f["path"]: f for f in manifest["files"]}
    assert sorted(got) == sorted(files)
    expected: dict[str, dict[str, Any]] = {}
    for path, mode in files.items():
        data = git_show(example_repo, "v1.0.0", path)
        assert got[path]["action"] == "add" and got[path]["preimage_sha256"] is None
        assert got[path]["sha256"] == sha256(data) and got[path]["size"] == len(data)
        expected[path] = {"action": "add", "mode": 0o755 if mode == "100755" else 0o644, "link_target": None}
        assert got[path]["mode"] == expected[path]["mode"]
    check_payload(b.deb, b.package, expected, example_repo, "v1.0.0")
    mig_dir = b.config["migrations"]["dir"]
    all_migrations = sorted(
        p.split("/")[-1].removesuffix(".sql")
        for p in git_files(example_repo, "v1.0.0", [])
        if p.startswith(mig_dir + "/") and MIGRATION.match(p.split("/")[-1]) and ".rollback." not in p
    )
    assert [m["id"] for m in manifest["migrations"]] == all_migrations
    assert all_migrations  # the first release creates the schema
    assert (b.output / "update_manifest.json").read_bytes() == inside
    fields = control_fields(b.deb)
    assert fields["Description"].splitlines()[0] == "update of nesop-store to 1.0.0 (a full install)"


def test_files_option_with_no_migrations_is_the_original_bug_fix_usage(
    built: Callable[..., Built], example_repo: Repo
) -> None:
    # v1.0.6 changes server.py, other files and adds a migration: only server.py ships, and the
    # package names (and records) everything else the range changed
    b = built("v1.0.6", "--files", "server.py", "--no-migrations", "--allow-partial")
    manifest, _ = package_manifest(b.deb, b.package)
    assert [f["path"] for f in manifest["files"]] == ["server.py"]
    assert manifest["migrations"] == []
    everything = expected_entries(example_repo, "v1.0.5", "v1.0.6", _exclude(b))
    assert len(everything) > 1
    expected = {"server.py": everything["server.py"]}
    assert manifest["files"] == [{"path": "server.py", **expected["server.py"]}]
    check_payload(b.deb, b.package, expected, example_repo, "v1.0.6")
    assert not any(n.startswith(f"usr/share/{b.package}/migrations/") for n in data_members(b.deb))
    left = {lb["path"]: lb for lb in manifest["left_behind"]}
    assert set(left) == set(everything) - {"server.py"}
    assert {p for p in left if p.startswith("migrations/")} == {
        "migrations/0004_newsletter.sql",
        "migrations/0004_newsletter.rollback.sql",
    }
    assert left["maintenance.html"]["release_sha256"] is None  # the release deletes it
    assert "warning: partial update" in b.outcome.stderr and "maintenance.html" in b.outcome.stderr


def test_several_files_after_one_option_as_the_guide_writes_them(built: Callable[..., Built]) -> None:
    # the guide: create_update_package.py --files index.html admin.html --no-migrations
    b = built("v1.0.2", "--files", "index.html", "admin.html", "--no-migrations", "--allow-partial")
    manifest, _ = package_manifest(b.deb, b.package)
    assert [f["path"] for f in manifest["files"]] == ["admin.html", "index.html"]
    # and scenario 4: --files config.py requirements.txt
    b = built("v1.0.4", "--files", "config.py", "requirements.txt", "--allow-partial")
    manifest, _ = package_manifest(b.deb, b.package)
    assert [f["path"] for f in manifest["files"]] == ["config.py", "requirements.txt"]
    assert [lb["path"] for lb in manifest["left_behind"]] == ["VERSION", "manage.py", "server.py"]


@pytest.mark.parametrize("branch", ["broken/migration", "broken/start", "broken/health"])
def test_untagged_branches_build_with_an_explicit_version(
    built: Callable[..., Built], example_repo: Repo, branch: str
) -> None:
    # the failure scenarios' packages: no tag on HEAD, so --version, with the release it updates
    b = built(branch, "--version", "1.0.7", "--since", "v1.0.6")
    assert b.outcome.last_line == str(b.deb) and b.deb.name == f"{b.package}_1.0.7_all.deb"
    manifest, _ = package_manifest(b.deb, b.package)
    assert manifest["version"] == "1.0.7" and manifest["bases"] == ["1.0.6"]
    expected = expected_entries(example_repo, "v1.0.6", branch, _exclude(b))
    assert {f["path"]: {k: v for k, v in f.items() if k != "path"} for f in manifest["files"]} == expected
    check_payload(b.deb, b.package, expected, example_repo, branch)

"""Change detection on synthetic repositories: what git says changed is exactly what the update records.

Plans are made in this process with real git (fast); the cases where the package's bytes matter
(odd names, symlinks, a sub-directory app) are also built into a .deb and read back with dpkg-deb.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from nesop_deb.builder.plan import BuildOptions, make_plan
from nesop_deb.cli.build import cli
from nesop_deb.errors import BuildError, UsageError

from .conftest import SHOP_CONFIG
from .helpers import Repo, check_payload, data_members, expected_entries, git_show, package_manifest, sha256

pytestmark = pytest.mark.integration

EXCLUDE = ["tests/**", "docs/**", "nesop-deb.toml", "**/*.pyc"]
LONG = "".join(f"line {i}: some content that makes the file long enough to be similar\n" for i in range(30))


def plan_files(app: Path, **options: Any) -> dict[str, dict[str, Any]]:
    """The manifest's file entries of a plan, keyed by path, as plain JSON data."""
    plan = make_plan(app, BuildOptions(**options))
    data: dict[str, Any] = json.loads(plan.manifest.to_json())
    return {f["path"]: {k: v for k, v in f.items() if k != "path"} for f in data["files"]}


def build_deb(app: Path, output: Path, *options: str) -> Path:
    result = CliRunner().invoke(cli, ["build", "-C", str(app), "--output", str(output), *options])
    assert result.exit_code == 0, result.stderr
    return Path(result.stdout.splitlines()[-1])


@pytest.fixture
def base(make_repo: Callable[..., Repo]) -> Repo:
    """v1.0.0: a few files at several depths, an executable, a config file."""
    repo = make_repo("app")
    repo.write("server.py", "print('v1')\n")
    repo.write("config.py", "DEBUG = False\n")
    repo.write("bin/run.sh", "#!/bin/sh\nexec python3 server.py\n")
    repo.write("lib/a/b/deep.py", "X = 1\n")
    repo.write("static/old.css", "body {}\n")
    repo.write("scripts/main.js", LONG)
    repo.write("scripts/cart.js", LONG.replace("line", "row"))
    repo.write("tests/test_server.py", "def test(): pass\n")
    repo.write("docs/guide.md", "# Guide\n")
    repo.commit("1.0.0", tag="v1.0.0")
    return repo


def test_adds_modifications_and_deletions_in_subdirectories(base: Repo) -> None:
    base.write("lib/new.py", "NEW = True\n")
    base.write("lib/a/b/deep.py", "X = 2\n")
    base.remove("static/old.css")
    base.commit("1.0.1", tag="v1.0.1")
    got = plan_files(base.path)
    assert got == expected_entries(base, "v1.0.0", "v1.0.1", EXCLUDE)
    assert {p: e["action"] for p, e in got.items()} == {
        "lib/new.py": "add",
        "lib/a/b/deep.py": "modify",
        "static/old.css": "delete",
    }
    assert got["lib/a/b/deep.py"]["preimage_sha256"] == sha256(b"X = 1\n")
    assert got["lib/a/b/deep.py"]["sha256"] == sha256(b"X = 2\n")
    assert got["static/old.css"]["preimage_sha256"] == sha256(b"body {}\n")
    assert got["lib/new.py"]["preimage_sha256"] is None


def test_renames_with_and_without_content_change(base: Repo) -> None:
    base.move("scripts/main.js", "scripts/products.js")  # identical content
    base.move("scripts/cart.js", "static/js/basket.js")
    base.write("static/js/basket.js", LONG.replace("line", "row").replace("row 3:", "ROW 3:"))
    base.commit("1.0.1", tag="v1.0.1")
    got = plan_files(base.path)
    assert got == expected_entries(base, "v1.0.0", "v1.0.1", EXCLUDE)
    pure, edited = got["scripts/products.js"], got["static/js/basket.js"]
    assert pure["action"] == edited["action"] == "rename"
    assert pure["renamed_from"] == "scripts/main.js" and edited["renamed_from"] == "scripts/cart.js"
    assert pure["sha256"] == pure["preimage_sha256"] == sha256(LONG.encode())
    assert edited["sha256"] != edited["preimage_sha256"]
    assert edited["preimage_sha256"] == sha256(git_show(base, "v1.0.0", "scripts/cart.js"))
    assert set(got) == {"scripts/products.js", "static/js/basket.js"}  # the old paths are not separate


def test_mode_only_change(base: Repo, tmp_path: Path) -> None:
    (base.path / "bin/run.sh").chmod(0o755)
    base.commit("1.0.1", tag="v1.0.1")
    got = plan_files(base.path)
    assert got == {
        "bin/run.sh": {
            "action": "modify",
            "sha256": sha256(b"#!/bin/sh\nexec python3 server.py\n"),
            "preimage_sha256": sha256(b"#!/bin/sh\nexec python3 server.py\n"),
            "size": 33,
            "mode": 0o755,
            "renamed_from": None,
            "link_target": None,
        }
    }
    deb = build_deb(base.path, tmp_path / "out")
    info, _ = data_members(deb)["usr/share/shop-update/payload/bin/run.sh"]
    assert info.mode == 0o755
    (base.path / "bin/run.sh").chmod(0o644)
    base.commit("1.0.2", tag="v1.0.2")
    assert plan_files(base.path)["bin/run.sh"]["mode"] == 0o644


def test_names_with_spaces_and_non_ascii(base: Repo, tmp_path: Path) -> None:
    # (a control character, a tab included, is refused: see test_bad_input.py)
    names = ["static/my file.css", "données/ünïcødé ファイル.txt", "a b/back\\slash.txt", "quote'n\"dq.txt"]
    for i, name in enumerate(names):
        base.write(name, f"content {i}\n")
    base.commit("1.0.1", tag="v1.0.1")
    base.write("static/my file.css", "changed\n")
    base.move("données/ünïcødé ファイル.txt", "données/renommé ファイル.txt")
    base.commit("1.0.2", tag="v1.0.2")
    got = plan_files(base.path)
    expected = expected_entries(base, "v1.0.1", "v1.0.2", EXCLUDE)
    assert got == expected
    assert got["données/renommé ファイル.txt"]["renamed_from"] == "données/ünïcødé ファイル.txt"
    deb = build_deb(base.path, tmp_path / "out")
    check_payload(deb, "shop-update", expected, base, "v1.0.2")
    # and a first install carries them all, byte for byte
    full = build_deb(base.path, tmp_path / "full", "--full")
    manifest, _ = package_manifest(full, "shop-update")
    assert set(names[2:]) <= {f["path"] for f in manifest["files"]}


def test_app_in_a_subdirectory_of_a_bigger_repository(make_repo: Callable[..., Repo], tmp_path: Path) -> None:
    repo = make_repo("monorepo", config=None)
    repo.write("app/nesop-deb.toml", SHOP_CONFIG)
    repo.write("app/server.py", "print('v1')\n")
    repo.write("app/config.py", "DEBUG = False\n")
    repo.write("app/static/site.css", "body {}\n")
    repo.write("app/migrations/0001_init.sql", "CREATE TABLE a (x);\n")
    repo.write("other/service.py", "print('other')\n")
    repo.write("README.md", "# Everything\n")
    repo.commit("1.0.0", tag="v1.0.0")
    repo.write("app/server.py", "print('v2')\n")
    repo.write("app/migrations/0002_more.sql", "ALTER TABLE a ADD y;\n")
    repo.write("other/service.py", "print('other 2')\n")
    repo.write("other/migrations/0002_other.sql", "-- not this app's\n")
    repo.write("README.md", "# Everything, updated\n")
    repo.move("app/static/site.css", "other/site.css")  # moved out of the app: gone from it
    repo.commit("1.0.1", tag="v1.0.1")
    app = repo.path / "app"
    got = plan_files(app)
    assert got == expected_entries(repo, "v1.0.0", "v1.0.1", EXCLUDE, cwd=app)
    assert {p: e["action"] for p, e in got.items()} == {
        "server.py": "modify",
        "migrations/0002_more.sql": "add",
        "static/site.css": "delete",
    }
    deb = build_deb(app, tmp_path / "out")
    manifest, _ = package_manifest(deb, "shop-update")
    assert [m["id"] for m in manifest["migrations"]] == ["0002_more"]
    check_payload(deb, "shop-update", got, repo, "v1.0.1", cwd=app)
    assert manifest["source"]["commit"] == repo.git("rev-parse", "v1.0.1").strip()


def test_since_an_explicit_reference(base: Repo) -> None:
    base.write("server.py", "print('v2')\n")
    base.write("migrations/0002_a.sql", "CREATE TABLE a (x);\n")
    base.commit("1.0.1", tag="v1.0.1")
    base.write("lib/new.py", "NEW = 1\n")
    base.write("migrations/0003_b.sql", "CREATE TABLE b (x);\n")
    base.commit("1.0.2", tag="v1.0.2")
    # default: since v1.0.1
    plan = make_plan(base.path, BuildOptions())
    assert plan.manifest.bases == ("1.0.1",) and plan.manifest.since_ref == "v1.0.1"
    assert [m.id for m in plan.manifest.migrations] == ["0003_b"]
    # --since v1.0.0: both releases' changes, applying to 1.0.0
    plan = make_plan(base.path, BuildOptions(since="v1.0.0"))
    assert plan.manifest.bases == ("1.0.0",) and plan.manifest.since_ref == "v1.0.0"
    assert [m.id for m in plan.manifest.migrations] == ["0002_a", "0003_b"]
    got = plan_files(base.path, since="v1.0.0")
    assert got == expected_entries(base, "v1.0.0", "v1.0.2", EXCLUDE)
    assert set(got) == {"server.py", "lib/new.py", "migrations/0002_a.sql", "migrations/0003_b.sql"}
    # --since a commit id of a release: the base version comes from its tag
    sha = base.git("rev-parse", "v1.0.0").strip()
    plan = make_plan(base.path, BuildOptions(since=sha))
    assert plan.manifest.bases == ("1.0.0",) and plan.manifest.since_commit == sha


def test_exclude_patterns_with_double_stars(make_repo: Callable[..., Repo]) -> None:
    config = SHOP_CONFIG.replace(
        'exclude = ["tests/**", "docs/**", "nesop-deb.toml", "**/*.pyc"]',
        'exclude = ["tests/**", "docs/**", "nesop-deb.toml", "**/*.pyc", "static/**/*.map", "**/.keep"]',
    )
    repo = make_repo("app", config=config)
    repo.write("server.py", "1\n")
    repo.write("config.py", "DEBUG = False\n")
    repo.commit("1.0.0", tag="v1.0.0")
    changed = {
        "pkg/__pycache__/m.cpython-311.pyc": False,
        "m.pyc": False,
        "tests/unit/deep/test_x.py": False,
        "docs/a/b.md": False,
        "static/app.js.map": False,
        "static/js/vendor/lib.js.map": False,
        "static/js/app.js": True,
        "logs/.keep": False,
        "sub/docs/page.md": True,  # docs/** is anchored at the app root
        "sub/tests/helper.py": True,
        "pyc/readme.txt": True,
    }
    for path in changed:
        repo.write(path, f"{path}\n")
    repo.commit("1.0.1", tag="v1.0.1")
    got = plan_files(repo.path)
    assert set(got) == {p for p, ships in changed.items() if ships}
    exclude = ["tests/**", "docs/**", "nesop-deb.toml", "**/*.pyc", "static/**/*.map", "**/.keep"]
    assert got == expected_entries(repo, "v1.0.0", "v1.0.1", exclude)


def test_renames_across_the_exclude_boundary(base: Repo) -> None:
    base.move("docs/guide.md", "help/guide.md")  # from an excluded path into an included one
    base.move("lib/a/b/deep.py", "tests/deep.py")  # out of what ships
    base.move("tests/test_server.py", "docs/test_server.py")  # excluded on both sides
    base.commit("1.0.1", tag="v1.0.1")
    got = plan_files(base.path)
    assert got == {
        "help/guide.md": {
            "action": "add",
            "sha256": sha256(b"# Guide\n"),
            "size": 8,
            "mode": 0o644,
            "preimage_sha256": None,
            "renamed_from": None,
            "link_target": None,
        },
        "lib/a/b/deep.py": {
            "action": "delete",
            "sha256": None,
            "size": 0,
            "mode": None,
            "preimage_sha256": sha256(b"X = 1\n"),
            "renamed_from": None,
            "link_target": None,
        },
    }
    assert got == expected_entries(base, "v1.0.0", "v1.0.1", EXCLUDE)


def test_symlinks_inside_the_repository_ship_as_symlinks(base: Repo, tmp_path: Path) -> None:
    base.write("static/v2/app.js", "v2\n")
    base.symlink("static/current", "v2")
    base.symlink("bin/server", "../server.py")
    base.commit("1.0.1", tag="v1.0.1")
    base.symlink("static/current", "v2/")  # retargeted
    base.remove("bin/run.sh")
    base.symlink("bin/run.sh", "server")  # a file became a symlink
    base.commit("1.0.2", tag="v1.0.2")
    for since, tag in (("v1.0.0", "v1.0.1"), ("v1.0.1", "v1.0.2")):
        base.checkout(tag)
        got = plan_files(base.path)
        expected = expected_entries(base, since, tag, EXCLUDE)
        assert got == expected
        deb = build_deb(base.path, tmp_path / tag)
        check_payload(deb, "shop-update", expected, base, tag)
    assert got["static/current"]["link_target"] == "v2/" and got["static/current"]["action"] == "modify"
    assert got["bin/run.sh"]["link_target"] == "server" and got["bin/run.sh"]["action"] == "modify"
    result = CliRunner().invoke(cli, ["verify", str(deb)])
    assert result.exit_code == 0, result.stderr


def test_an_excluded_symlink_pointing_outside_does_not_stop_the_build(base: Repo) -> None:
    base.symlink("docs/passwd", "/etc/passwd")
    base.symlink("tests/fixtures/up", "../../../outside")
    base.write("server.py", "print('v2')\n")
    base.commit("1.0.1", tag="v1.0.1")
    assert set(plan_files(base.path)) == {"server.py"}
    assert "docs/passwd" not in plan_files(base.path, full=True)


def test_submodules_must_be_excluded(base: Repo) -> None:
    commit = base.git("rev-parse", "HEAD").strip()
    base.git("update-index", "--add", "--cacheinfo", f"160000,{commit},vendor/lib")
    base.git("commit", "--quiet", "--message", "Add a submodule")
    base.git("tag", "v1.0.1")
    (base.path / "vendor/lib").mkdir(parents=True)
    with pytest.raises(BuildError, match="vendor/lib is a git submodule; exclude it"):
        make_plan(base.path, BuildOptions(version="1.0.1"))
    base.write("nesop-deb.toml", SHOP_CONFIG.replace('"**/*.pyc"]', '"**/*.pyc", "vendor/**"]'))
    base.write("server.py", "print('v2')\n")
    base.commit("1.0.2", tag="v1.0.2")
    assert set(plan_files(base.path, since="v1.0.0")) == {"server.py"}
    assert "vendor/lib" not in plan_files(base.path, full=True)


def test_full_ignores_the_history(base: Repo) -> None:
    base.write("server.py", "print('v2')\n")
    base.commit("1.0.1", tag="v1.0.1")
    got = plan_files(base.path, full=True)
    assert set(got) == {
        "server.py",
        "config.py",
        "bin/run.sh",
        "lib/a/b/deep.py",
        "static/old.css",
        "scripts/main.js",
        "scripts/cart.js",
    }
    assert {e["action"] for e in got.values()} == {"add"}
    assert got["server.py"]["sha256"] == sha256(b"print('v2')\n")


def test_files_narrows_to_a_directory(base: Repo) -> None:
    base.write("lib/a/b/deep.py", "X = 2\n")
    base.write("lib/other.py", "Y = 1\n")
    base.write("server.py", "print('v2')\n")
    base.commit("1.0.1", tag="v1.0.1")
    got = plan_files(base.path, files=("lib",), allow_partial=True)
    assert set(got) == {"lib/a/b/deep.py", "lib/other.py"}
    got = plan_files(base.path, files=(str(base.path / "server.py"),), allow_partial=True)
    assert set(got) == {"server.py"}
    # a file that did not change ships as HEAD has it: the user asked for it
    got = plan_files(base.path, files=("config.py", "lib", "server.py"))
    assert got["config.py"]["action"] == "modify"
    assert got["config.py"]["sha256"] == got["config.py"]["preimage_sha256"] == sha256(b"DEBUG = False\n")


def test_a_range_with_only_a_migration(base: Repo) -> None:
    base.write("migrations/0002_add.sql", "CREATE TABLE t (x);\n")
    base.commit("1.0.1", tag="v1.0.1")
    plan = make_plan(base.path, BuildOptions())
    assert [m.id for m in plan.manifest.migrations] == ["0002_add"]
    assert [f.path for f in plan.manifest.files] == ["migrations/0002_add.sql"]
    with pytest.raises(UsageError, match=r"nothing to ship: .* \(--no-migrations leaves out migrations/0002"):
        make_plan(base.path, BuildOptions(no_migrations=True))
    # --files narrows the app's files, not the migrations: they ship with their files
    plan = make_plan(base.path, BuildOptions(files=("server.py",)))
    assert [m.id for m in plan.manifest.migrations] == ["0002_add"]
    assert [f.path for f in plan.manifest.files] == ["migrations/0002_add.sql", "server.py"]

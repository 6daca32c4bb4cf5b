"""Where a build writes and which app it builds: the outputs of `make deb` and `make deb-full` never
overwrite each other, the default output is the app's dist/, a subdirectory of the app builds the
app (as git finds its repository), the config comes from the commit being built."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import SHOP_CONFIG
from .helpers import NESOP_DEB, Repo, data_members, run_tool
from .test_bad_input import shop

pytestmark = pytest.mark.integration


def test_update_and_full_packages_of_one_version_keep_apart(
    make_repo: Callable[..., Repo], tmp_path: Path, env: dict[str, str]
) -> None:
    repo = shop(make_repo("app"))
    out = tmp_path / "dist"
    update = run_tool([NESOP_DEB, "build", "-C", repo.path, "--output", out], env)
    full = run_tool([NESOP_DEB, "build", "-C", repo.path, "--output", out, "--full"], env)
    assert update.returncode == 0 and full.returncode == 0, (update.stderr, full.stderr)
    assert Path(update.last_line) == out / "shop-update_1.0.1_all.deb"
    assert Path(full.last_line) == out / "full" / "shop-update_1.0.1_all.deb"
    # both are still there, each with its own manifest beside it
    assert "usr/share/shop-update/payload/static/app.js" not in data_members(
        out / "shop-update_1.0.1_all.deb"
    )
    assert "usr/share/shop-update/payload/static/app.js" in data_members(
        out / "full/shop-update_1.0.1_all.deb"
    )
    assert '"full": false' in (out / "update_manifest.json").read_text()
    assert '"full": true' in (out / "full/update_manifest.json").read_text()


def test_the_default_output_is_the_apps_dist_wherever_it_runs(
    make_repo: Callable[..., Repo], tmp_path: Path, env: dict[str, str]
) -> None:
    repo = shop(make_repo("app"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    outcome = run_tool([NESOP_DEB, "build", "-C", repo.path], env, cwd=elsewhere)
    assert outcome.returncode == 0, outcome.stderr
    assert Path(outcome.last_line) == repo.path / "dist" / "shop-update_1.0.1_all.deb"
    assert list(elsewhere.iterdir()) == []


def test_a_subdirectory_builds_the_app_above_it(
    make_repo: Callable[..., Repo], tmp_path: Path, env: dict[str, str]
) -> None:
    repo = shop(make_repo("app"))
    outcome = run_tool([NESOP_DEB, "build"], env, cwd=repo.path / "static")
    assert outcome.returncode == 0, outcome.stderr
    assert f"note: building the app in {repo.path} (its nesop-deb.toml)" in outcome.stderr
    assert Path(outcome.last_line) == repo.path / "dist" / "shop-update_1.0.1_all.deb"
    assert not (repo.path / "static" / "dist").exists()


def test_an_app_in_a_subdirectory_of_its_repository_is_found_from_below(
    make_repo: Callable[..., Repo], env: dict[str, str]
) -> None:
    repo = make_repo("monorepo", config=None)
    repo.write("shop/nesop-deb.toml", SHOP_CONFIG)
    repo.write("shop/server.py", "print('v1')\n")
    repo.write("shop/config.py", "DEBUG = False\n")
    repo.write("shop/lib/util.py", "X = 1\n")
    repo.write("other/x.py", "print('other')\n")
    repo.commit("Shop 1.0.0", tag="v1.0.0")
    outcome = run_tool([NESOP_DEB, "build", "--full"], env, cwd=repo.path / "shop" / "lib")
    assert outcome.returncode == 0, outcome.stderr
    deb = Path(outcome.last_line)
    assert deb == repo.path / "shop" / "dist" / "full" / "shop-update_1.0.0_all.deb"
    members = data_members(deb)
    assert "usr/share/shop-update/payload/lib/util.py" in members
    assert not any("other/x.py" in m for m in members)


def test_the_config_comes_from_the_commit_being_built(
    make_repo: Callable[..., Repo], tmp_path: Path, env: dict[str, str]
) -> None:
    repo = shop(make_repo("app"))
    # an uncommitted edit of the config: refused as any, and with --allow-dirty HEAD's config is used
    (repo.path / "nesop-deb.toml").write_text(SHOP_CONFIG.replace('name = "shop"', 'name = "boutique"'))
    refused = run_tool([NESOP_DEB, "build", "-C", repo.path, "--output", tmp_path / "a"], env)
    assert (
        refused.returncode == 2
        and "uncommitted changes" in refused.stderr
        and "nesop-deb.toml" in refused.stderr
    )
    built = run_tool([NESOP_DEB, "build", "-C", repo.path, "--output", tmp_path / "b", "--allow-dirty"], env)
    assert built.returncode == 0, built.stderr
    assert (
        "note: using nesop-deb.toml as committed at HEAD; its uncommitted edits are not used" in built.stderr
    )
    assert Path(built.last_line).name == "shop-update_1.0.1_all.deb"


def test_a_base_named_with_since_outside_heads_history_is_built_with_a_warning(
    make_repo: Callable[..., Repo], tmp_path: Path, env: dict[str, str]
) -> None:
    repo = shop(make_repo("app"))
    repo.git("checkout", "-q", "-b", "hotfix", "v1.0.0")
    repo.write("static/app.js", "let a = 'hotfix';\n")
    repo.commit("Hotfix")
    repo.git("tag", "v1.0.0.1")
    repo.git("checkout", "-q", "-")
    repo.write("server.py", "print('v1.0.2')\n")
    repo.commit("Release", tag="v1.0.2")
    outcome = run_tool(
        [NESOP_DEB, "build", "-C", repo.path, "--since", "v1.0.0.1", "--output", tmp_path / "out"], env
    )
    assert outcome.returncode == 0, outcome.stderr
    assert (
        "warning: --since v1.0.0.1 is not in HEAD's history: what only v1.0.0.1 changed is reverted"
        in outcome.stderr
    )
    # the update takes the hotfix's file back to HEAD's content: what the warning said
    _, content = data_members(Path(outcome.last_line))["usr/share/shop-update/payload/static/app.js"]
    assert content == b"let a = 1;\n"


@pytest.mark.parametrize(
    "name",
    [
        "migrations/README.md",
        "migrations/notes/0002_draft.txt",
    ],
)
def test_other_files_in_the_migrations_dir_build(
    make_repo: Callable[..., Repo], tmp_path: Path, env: dict[str, str], name: str
) -> None:
    repo = shop(make_repo("app"))
    repo.write(name, "-- a note\n")
    repo.commit("Release", tag="v1.0.2")
    outcome = run_tool([NESOP_DEB, "build", "-C", repo.path, "--output", tmp_path / "out"], env)
    assert outcome.returncode == 0, outcome.stderr


def test_a_shallow_clone_with_its_tags_builds_and_says_what_it_could_not_check(
    make_repo: Callable[..., Repo], tmp_path: Path, env: dict[str, str]
) -> None:
    repo = shop(make_repo("app"))
    repo.write("server.py", "print('v1.0.2')\n")
    repo.commit("Release", tag="v1.0.2")
    clone = tmp_path / "ci-checkout"
    repo.git("clone", "-q", "--depth", "1", "--no-single-branch", f"file://{repo.path}", str(clone))
    repo.git("fetch", "-q", "--depth", "1", "--tags", cwd=clone)
    outcome = run_tool([NESOP_DEB, "build", "-C", clone, "--output", tmp_path / "out"], env)
    assert outcome.returncode == 0, outcome.stderr
    assert (
        "warning: this clone is shallow: whether v1.0.1 is in HEAD's history is not checked" in outcome.stderr
    )
    assert Path(outcome.last_line).name == "shop-update_1.0.2_all.deb"


def test_untracked_files_the_migration_check_leaves_alone(
    make_repo: Callable[..., Repo], tmp_path: Path, env: dict[str, str]
) -> None:
    repo = shop(make_repo("app"))
    repo.write("migrations/local/.gitignore", "*.sql\n")  # a developer's own seeds, ignored
    repo.write("server.py", "print('v1.0.2')\n")
    repo.commit("Release", tag="v1.0.2")
    repo.write("migrations/local/devseed.sql", "INSERT INTO product VALUES (1);\n")
    outcome = run_tool([NESOP_DEB, "build", "-C", repo.path, "--output", tmp_path / "a"], env)
    assert outcome.returncode == 0, outcome.stderr
    # one directly in the migrations dir is refused, or left out with --allow-dirty, saying so
    repo.write("migrations/0002_tags.sql", "ALTER TABLE product ADD COLUMN tags TEXT;\n")
    refused = run_tool([NESOP_DEB, "build", "-C", repo.path, "--output", tmp_path / "b"], env)
    assert refused.returncode == 2 and "untracked migration file(s)" in refused.stderr
    built = run_tool([NESOP_DEB, "build", "-C", repo.path, "--output", tmp_path / "c", "--allow-dirty"], env)
    assert built.returncode == 0, built.stderr
    assert "note: untracked migration(s) not included: migrations/0002_tags.sql" in built.stderr
    assert "0002_tags" not in (tmp_path / "c" / "update_manifest.json").read_text()


def test_files_named_from_a_subdirectory_are_relative_to_it(
    make_repo: Callable[..., Repo], tmp_path: Path, env: dict[str, str]
) -> None:
    repo = shop(make_repo("app"))
    repo.write("static/app.js", "let a = 2;\n")
    repo.write("server.py", "print('v1.0.2')\n")
    repo.commit("Release", tag="v1.0.2")
    outcome = run_tool(
        [NESOP_DEB, "build", "--files", "app.js", "--allow-partial", "--output", tmp_path / "out"],
        env,
        cwd=repo.path / "static",
    )
    assert outcome.returncode == 0, outcome.stderr
    members = data_members(Path(outcome.last_line))
    assert "usr/share/shop-update/payload/static/app.js" in members
    assert "usr/share/shop-update/payload/server.py" not in members


def test_a_misnamed_migration_renamed_after_its_release_ships_as_new(
    make_repo: Callable[..., Repo], tmp_path: Path, env: dict[str, str]
) -> None:
    repo = shop(make_repo("app"))
    # released by a builder that did not check names: it shipped as a plain file and never ran
    repo.write("migrations/0002-tags.sql", "ALTER TABLE product ADD COLUMN tags TEXT;\n")
    repo.commit("Tags", tag="v1.0.2")
    repo.move("migrations/0002-tags.sql", "migrations/0002_tags.sql")
    repo.commit("Name the tags migration so that it runs", tag="v1.0.3")
    outcome = run_tool([NESOP_DEB, "build", "-C", repo.path, "--output", tmp_path / "out"], env)
    assert outcome.returncode == 0, outcome.stderr
    assert '"id": "0002_tags"' in (tmp_path / "out" / "update_manifest.json").read_text()


def test_python_files_and_fixtures_elsewhere_do_not_make_a_migrations_dir(
    make_repo: Callable[..., Repo], tmp_path: Path, env: dict[str, str]
) -> None:
    repo = make_repo("app")
    repo.write("server.py", "print('v1')\n")
    repo.write("config.py", "DEBUG = False\n")
    repo.write("shop/migrations/0001_initial.py", "# a Django migration\n")
    repo.write("tests/fixtures/0001_seed.sql", "-- excluded: tests/**\n")
    repo.commit("Shop 1.0.0", tag="v1.0.0")
    outcome = run_tool([NESOP_DEB, "build", "-C", repo.path, "--full", "--output", tmp_path / "out"], env)
    assert outcome.returncode == 0, outcome.stderr


def test_a_fixed_but_uncommitted_config_is_named_as_uncommitted(
    make_repo: Callable[..., Repo], tmp_path: Path, env: dict[str, str]
) -> None:
    repo = make_repo(
        "app", config=SHOP_CONFIG.replace("sqlite:////srv/shop/data/shop.db", "postgresql://x/y")
    )
    repo.write("server.py", "print('v1')\n")
    repo.write("config.py", "DEBUG = False\n")
    repo.commit("Shop 1.0.0", tag="v1.0.0")
    repo.write("nesop-deb.toml", SHOP_CONFIG)
    outcome = run_tool([NESOP_DEB, "build", "-C", repo.path, "--full", "--output", tmp_path / "out"], env)
    assert outcome.returncode == 2
    assert f"uncommitted changes in {repo.path}: nesop-deb.toml" in outcome.stderr


def test_a_unit_file_named_in_the_config_for_the_first_time_ships(
    make_repo: Callable[..., Repo], tmp_path: Path, env: dict[str, str]
) -> None:
    repo = shop(make_repo("app"))
    repo.write("deploy/shop.service", "[Service]\nExecStart=/usr/bin/python3 server.py\n")
    repo.commit("A unit file, not yet named", tag="v1.0.2")
    # only the config changes: the server must still get the unit, from the update that names it
    text = SHOP_CONFIG.replace(
        'service = "shop.service"', 'service = "shop.service"\nunit_file = "deploy/shop.service"'
    )
    repo.write("nesop-deb.toml", text)
    repo.commit("Let updates install the unit", tag="v1.0.3")
    outcome = run_tool([NESOP_DEB, "build", "-C", repo.path, "--output", tmp_path / "out"], env)
    assert outcome.returncode == 0, outcome.stderr
    assert "~ deploy/shop.service" in outcome.stderr
    assert "usr/share/shop-update/payload/deploy/shop.service" in data_members(Path(outcome.last_line))

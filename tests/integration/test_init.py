"""`nesop-deb init` in real git repositories: what it refuses (writing nothing), what it finds and
fills in, what it prints, and the make snippet it writes, run by make."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from nesop_deb.config import load as load_config

from .helpers import BIN, NESOP_DEB, Outcome, Repo, package_manifest, run_tool

pytestmark = pytest.mark.integration

UNIT = "[Unit]\nDescription=My shop\n\n[Service]\nUser=myshop\nExecStart=/opt/myshop/app/run\n"


def init(directory: Path, env: dict[str, str], *args: str, cwd: Path | None = None) -> Outcome:
    return run_tool(
        [NESOP_DEB, "init", *(["-C", str(directory)] if cwd is None else []), *args], env, cwd=cwd
    )


def tree(directory: Path) -> dict[str, bytes]:
    """Every file below ``directory`` but git's own, with its content."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(directory).parts
    }


def make(directory: Path, env: dict[str, str], *args: str) -> Outcome:
    found = shutil.which("make")
    assert found is not None
    return run_tool([found, *args], {**env, "PATH": f"{BIN}{os.pathsep}{env['PATH']}"}, cwd=directory)


def shop(make_repo: Callable[..., Repo]) -> Repo:
    """An app as a developer has it before init: a unit file, migrations, no commit yet."""
    repo = make_repo("myshop", config=None)
    repo.git("config", "user.name", "Ann Dev")
    repo.git("config", "user.email", "ann@example.com")
    repo.write("app/main.py", "print('shop')\n")
    repo.write("deploy/myshop.service", UNIT)
    repo.write("migrations/0001_create_orders.sql", "CREATE TABLE orders (id INTEGER PRIMARY KEY);\n")
    repo.write("migrations/0001_create_orders.rollback.sql", "DROP TABLE orders;\n")
    repo.write("migrations/0002_add_tags.sql", "CREATE TABLE tags (name TEXT);\n")
    return repo


# --- refusals: one line naming the input, exit 2, nothing written ------------------------------


def test_a_missing_directory_is_named(tmp_path: Path, env: dict[str, str]) -> None:
    missing = tmp_path / "nope"
    outcome = init(missing, env)
    assert outcome.returncode == 2
    assert outcome.error_lines == [
        f"nesop-deb: error: {missing}: no such directory; pass the app repository with -C DIR"
    ]
    assert not missing.exists()


def test_a_directory_outside_git_is_refused(tmp_path: Path, env: dict[str, str]) -> None:
    plain = tmp_path / "plain"  # GIT_CEILING_DIRECTORIES keeps git from looking above tmp_path
    plain.mkdir()
    (plain / "app.py").write_text("print('hi')\n")
    outcome = init(plain, env)
    assert outcome.returncode == 2
    assert outcome.error_lines == [
        f"nesop-deb: error: {plain}: not a git repository; run `git init` and commit the app first"
    ]
    assert tree(plain) == {"app.py": b"print('hi')\n"}


def test_the_git_directory_itself_is_refused(make_repo: Callable[..., Repo], env: dict[str, str]) -> None:
    repo = make_repo("app", config=None)
    before = tree(repo.path / ".git")
    outcome = init(repo.path / ".git", env)
    assert outcome.returncode == 2 and "not a git repository" in outcome.stderr
    assert tree(repo.path / ".git") == before


def test_an_existing_config_is_kept_and_nothing_else_written(
    make_repo: Callable[..., Repo], env: dict[str, str]
) -> None:
    repo = shop(make_repo)
    repo.write("nesop-deb.toml", "# mine\n")
    before = tree(repo.path)
    outcome = init(repo.path, env)
    assert outcome.returncode == 2
    assert outcome.error_lines == [
        f"nesop-deb: error: {repo.path / 'nesop-deb.toml'} already exists; edit it, or pass --force to"
        " overwrite it"
    ]
    assert tree(repo.path) == before  # no nesop-deb.mk, Makefile or .gitignore either


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--user", "Shop Owner"), "--user 'Shop Owner' is not a valid account name; pass --user NAME"),
        (("--root", "/etc/myshop"), "--root '/etc/myshop' is a system directory; use a directory like"),
        (("--name", "My_Shop"), "--name 'My_Shop' is not a valid Debian package name; use lower case"),
        (("--name", "2shop"), "the app name '2shop' is not a valid account name, so it cannot be the app's"),
    ],
)
def test_bad_options_are_named(
    make_repo: Callable[..., Repo], env: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    repo = shop(make_repo)
    before = tree(repo.path)
    outcome = init(repo.path, env, *args)
    assert outcome.returncode == 2
    assert len(outcome.error_lines) == 1 and outcome.error_lines[0].startswith(f"nesop-deb: error: {message}")
    assert tree(repo.path) == before


# --- what it finds and fills in --------------------------------------------------------------


def test_the_output_for_an_app_with_a_unit_and_migrations(
    make_repo: Callable[..., Repo], env: dict[str, str]
) -> None:
    repo = shop(make_repo)
    outcome = init(repo.path, env, cwd=repo.path)
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.stderr == ""
    assert outcome.stdout == (
        "wrote nesop-deb.toml, nesop-deb.mk and Makefile\n"
        "added /dist/ to .gitignore: the built packages are not committed\n"
        "found:\n"
        "  unit file   deploy/myshop.service: [app] unit_file, service = myshop.service\n"
        "  migrations  2 in migrations/: [migrations] dir = migrations\n"
        "  maintainer  Ann Dev <ann@example.com> (git config)\n"
        "check in nesop-deb.toml:\n"
        '  - [app] root = "/opt/myshop": where the app lives on the server\n'
        '  - [app] user = "myshop" (group "myshop"): owns the app\'s data; a first install (make deb-full)'
        " creates the system account and group if missing (no login shell, home /opt/myshop), an update"
        " refuses a server without them\n"
        "  - [health] url: a page that answers 2xx when the app works; without it an update counts as"
        " healthy once the service is active\n"
        "  - [migrations] database: the database the migrations in migrations/ change (e.g."
        " sqlite:////opt/myshop/data/myshop.db); a build that ships migrations refuses without it\n"
        "then:\n"
        '  git add -A && git commit -m "Package with nesop-deb"\n'
        "  git tag v1.0.0\n"
        "  make deb-full\n"
    )
    config = load_config(repo.path / "nesop-deb.toml")
    assert (config.app.unit_file, config.app.service) == ("deploy/myshop.service", "myshop.service")
    assert config.migrations.dir == "migrations"
    assert (config.app.user, config.app.group) == ("myshop", "myshop")  # never root by default
    assert config.package.maintainer == "Ann Dev <ann@example.com>"
    assert (repo.path / ".gitignore").read_text() == "/dist/\n"
    ignored = subprocess.run(
        ["git", "-C", repo.path, "check-ignore", "-q", "dist/x.deb"], env=env, check=False
    )
    assert ignored.returncode == 0


def test_tracked_files_count_and_never_shipped_ones_do_not(
    make_repo: Callable[..., Repo], env: dict[str, str]
) -> None:
    repo = make_repo("shop_app", config=None)
    repo.write("deploy/shop-web.service", UNIT)
    repo.write("db/sql/0001_create.sql", "CREATE TABLE t (x);\n")
    repo.commit("the app")  # tracked now
    repo.write("venv/pyvenv.cfg", "home = /usr/bin\n")  # a virtualenv under any name
    repo.write("venv/lib/other.service", UNIT)
    repo.write("tests/fixtures/test.service", UNIT)
    repo.write("tests/fixtures/0001_fixture.sql", "\n")
    repo.write("dist/old.service", UNIT)
    repo.write(".gitignore", "/build/\n")
    repo.write("build/ignored.service", UNIT)  # ignored by git: `git add -A` would not take it
    outcome = init(repo.path, env, "--maintainer", "A <a@b.c>")
    assert outcome.returncode == 0, outcome.stderr
    config = load_config(repo.path / "nesop-deb.toml")
    assert config.app.name == "shop-app"
    assert (config.app.unit_file, config.app.service) == ("deploy/shop-web.service", "shop-web.service")
    assert config.migrations.dir == "db/sql"
    assert "(--maintainer)" in outcome.stdout
    # the unit runs the app as myshop, while its account is shop-app
    assert "deploy/shop-web.service runs the app as myshop (User=), not as shop-app" in outcome.stdout
    assert (repo.path / ".gitignore").read_text() == "/build/\n/dist/\n"


def test_several_unit_files_are_listed_not_chosen(
    make_repo: Callable[..., Repo], env: dict[str, str]
) -> None:
    repo = make_repo("app", config=None)
    repo.write("deploy/app.service", UNIT)
    repo.write("deploy/worker.service", UNIT)
    outcome = init(repo.path, env, "--maintainer", "A <a@b.c>")
    assert outcome.returncode == 0, outcome.stderr
    config = load_config(repo.path / "nesop-deb.toml")
    assert (config.app.unit_file, config.app.service) == (None, "app.service")
    assert "  unit files  deploy/app.service and deploy/worker.service: several, none set\n" in outcome.stdout
    assert (
        "  - [app] unit_file: several unit files (deploy/app.service and deploy/worker.service): set"
        " unit_file and service to the app's\n"
    ) in outcome.stdout
    assert (
        "# found: deploy/app.service, deploy/worker.service\n" in (repo.path / "nesop-deb.toml").read_text()
    )


def test_an_app_without_unit_or_migrations_is_told_what_to_add(
    make_repo: Callable[..., Repo], env: dict[str, str], tmp_path: Path
) -> None:
    repo = make_repo("app", config=None)
    repo.write("app.py", "print('hi')\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    outcome = run_tool([NESOP_DEB, "init", "-C", repo.path], env, cwd=elsewhere)
    assert outcome.returncode == 0, outcome.stderr
    lines = outcome.stdout.splitlines()
    assert "  unit file   none" in lines and "  migrations  none" in lines
    assert "  maintainer  no identity" in lines
    assert any(line.startswith("  - [app] unit_file: no *.service file found: commit") for line in lines)
    assert not any("[migrations] database" in line for line in lines)
    assert any(line.startswith('  - [package] maintainer = "Maintainer <root@localhost>"') for line in lines)
    assert f"then, in {repo.path}:" in lines
    config = load_config(repo.path / "nesop-deb.toml")
    assert config.app.unit_file is None and config.app.user == "app"


def test_an_already_ignored_dist_leaves_gitignore_alone(
    make_repo: Callable[..., Repo], env: dict[str, str]
) -> None:
    repo = make_repo("app", config=None)
    repo.write(".gitignore", "*.pyc\ndist")  # no final newline: kept as it is
    outcome = init(repo.path, env, "--maintainer", "A <a@b.c>")
    assert outcome.returncode == 0, outcome.stderr
    assert (repo.path / ".gitignore").read_text() == "*.pyc\ndist"
    assert ".gitignore" not in outcome.stdout


def test_a_gitignore_without_a_final_newline_gets_dist_on_its_own_line(
    make_repo: Callable[..., Repo], env: dict[str, str]
) -> None:
    repo = make_repo("app", config=None)
    repo.write(".gitignore", "*.pyc")
    outcome = init(repo.path, env, "--maintainer", "A <a@b.c>")
    assert outcome.returncode == 0, outcome.stderr
    assert (repo.path / ".gitignore").read_text() == "*.pyc\n/dist/\n"
    assert f"added /dist/ to {repo.path / '.gitignore'}" in outcome.stdout


def test_root_is_taken_when_asked_for_but_warned_about(
    make_repo: Callable[..., Repo], env: dict[str, str]
) -> None:
    repo = make_repo("app", config=None)
    repo.write("deploy/app.service", "[Service]\nExecStart=/opt/app/run\n")  # no User=: root
    outcome = init(repo.path, env, "--user", "root", "--maintainer", "A <a@b.c>")
    assert outcome.returncode == 0, outcome.stderr
    config = load_config(repo.path / "nesop-deb.toml")
    assert (config.app.user, config.app.group) == ("root", "root")
    assert (
        "  - [app] user = \"root\": warning: the app's data directories and database would be root's; give"
        " the app its own account (init's default: --user app)\n"
    ) in outcome.stdout


# --- the make snippet ------------------------------------------------------------------------


def test_the_make_snippet_takes_its_own_variables_only(
    make_repo: Callable[..., Repo], env: dict[str, str]
) -> None:
    repo = make_repo("app", config=None)
    repo.write("app.py", "print(1)\n")
    repo.write("deploy/app.service", "[Service]\nUser=app\nExecStart=/opt/app/run\n")
    assert init(repo.path, env, "--maintainer", "A <a@b.c>").returncode == 0
    repo.commit("Package with nesop-deb", tag="v1.0.0")
    # variables many Makefiles and environments set mean nothing to the snippet
    foreign = {**env, "VERSION": "9.9.9", "SINCE": "no-such-ref", "DEB_OUTPUT": "elsewhere"}

    full = make(repo.path, foreign, "deb-full")
    assert full.returncode == 0, full.stdout + full.stderr
    assert full.last_line == str(repo.path / "dist/full/app-update_1.0.0_all.deb")
    manifest, _ = package_manifest(Path(full.last_line), "app-update")
    assert manifest["full"] is True and {f["path"] for f in manifest["files"]} == {
        "app.py",
        "deploy/app.service",
    }

    repo.write("app.py", "print(2)\n")
    repo.commit("1.0.1, untagged")
    untagged = make(repo.path, foreign, "deb", "NESOP_VERSION=1.0.1", "NESOP_SINCE=v1.0.0")
    assert untagged.returncode == 0, untagged.stdout + untagged.stderr
    assert untagged.last_line == str(repo.path / "dist/app-update_1.0.1_all.deb")

    repo.write("app.py", "print(3)\n")
    repo.commit("1.0.2", tag="v1.0.2")
    tagged = make(repo.path, foreign, "deb", "NESOP_OUTPUT=out")
    assert tagged.returncode == 0, tagged.stdout + tagged.stderr
    assert tagged.last_line == str(repo.path / "out/app-update_1.0.2_all.deb")
    manifest, _ = package_manifest(Path(tagged.last_line), "app-update")
    assert manifest["bases"] == ["1.0.0"]  # the highest release tag below (SINCE=no-such-ref is not read)

    inspected = make(repo.path, foreign, "deb-inspect")
    assert inspected.returncode == 0, inspected.stdout + inspected.stderr
    assert "package:    app-update 1.0.1" in inspected.stdout.splitlines()  # the newest in dist/
    none = make(repo.path, foreign, "deb-inspect", "NESOP_OUTPUT=empty")
    assert none.returncode != 0 and "no package in empty/: run make deb first" in none.stderr


def test_a_repository_with_release_tags_is_told_the_next_one(
    make_repo: Callable[..., Repo], env: dict[str, str]
) -> None:
    repo = shop(make_repo)
    repo.commit("Shop as it ran before", tag="v3.2.0")
    outcome = init(repo.path, env, cwd=repo.path)
    assert outcome.returncode == 0, outcome.stderr
    lines = outcome.stdout.splitlines()
    assert "  git tag v3.2.1" in lines and "  git tag v1.0.0" not in lines


def test_init_inside_an_app_points_at_it(make_repo: Callable[..., Repo], env: dict[str, str]) -> None:
    repo = shop(make_repo)
    assert init(repo.path, env).returncode == 0
    before = tree(repo.path)
    outcome = init(repo.path / "app", env)
    assert outcome.returncode == 2 and outcome.stdout == ""
    assert outcome.stderr == (
        f"nesop-deb: error: {repo.path / 'app'} is inside the app in {repo.path} (its nesop-deb.toml); run"
        f" nesop-deb init there, or pass --force to set a second app up in {repo.path / 'app'}\n"
    )
    assert tree(repo.path) == before

"""Bad input: exit code 2, one stderr line naming the input and the fix, and nothing written."""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from nesop_deb import signing
from nesop_deb.cli.build import cli
from nesop_deb.errors import ExitCode

from .conftest import SHOP_CONFIG
from .helpers import NESOP_DEB, NESOP_UPDATE, Outcome, Repo, data_members, run_tool

pytestmark = pytest.mark.integration


def invoke(args: list[str]) -> Outcome:
    """The CLI in this process (fast); tests below also run some cases as a subprocess."""
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    return Outcome(result.exit_code, result.stdout, result.stderr)


def shop(repo: Repo) -> Repo:
    """v1.0.0 and v1.0.1 of a small app: the starting point of every case."""
    repo.write("server.py", "print('v1')\n")
    repo.write("config.py", "DEBUG = False\n")
    repo.write("static/app.js", "let a = 1;\n")
    repo.write("docs/readme.md", "# Shop\n")
    repo.write("migrations/0001_init.sql", "CREATE TABLE product (id INTEGER PRIMARY KEY);\n")
    repo.write("migrations/0001_init.rollback.sql", "DROP TABLE product;\n")
    repo.commit("Shop 1.0.0", tag="v1.0.0")
    repo.write("server.py", "print('v1.0.1')\n")
    repo.commit("Fix the server", tag="v1.0.1")
    return repo


@dataclass(frozen=True)
class Case:
    id: str
    prepare: Callable[[Repo], list[str]]  # changes the repository, returns the build's arguments
    names: tuple[str, ...]  # the input the message must name
    fix: str  # and the way out it must give


def _release(repo: Repo, tag: str = "v1.0.2") -> None:
    repo.commit("Release", tag=tag)


def _symlink(target: str, where: str = "link") -> Callable[[Repo], list[str]]:
    def prepare(repo: Repo) -> list[str]:
        repo.symlink(where, target)
        _release(repo)
        return []

    return prepare


def _config(text: str) -> Callable[[Repo], list[str]]:
    def prepare(repo: Repo) -> list[str]:
        repo.write("nesop-deb.toml", text)
        repo.write("server.py", "print('v1.0.2')\n")
        _release(repo)
        return []

    return prepare


def _not_a_repo(repo: Repo) -> list[str]:
    plain = repo.path.parent / "plain"
    plain.mkdir()
    (plain / "nesop-deb.toml").write_text(SHOP_CONFIG)
    return ["-C", str(plain)]


def _untagged(repo: Repo) -> list[str]:
    repo.write("server.py", "print('next')\n")
    repo.commit("Work in progress")
    return []


def _dirty(repo: Repo) -> list[str]:
    repo.write("server.py", "print('not committed')\n")
    return []


def _only_excluded(repo: Repo) -> list[str]:
    repo.write("docs/readme.md", "# Shop, documented\n")
    _release(repo)
    return []


def _edit_released_migration(repo: Repo) -> list[str]:
    repo.write("migrations/0001_init.sql", "CREATE TABLE product (id INTEGER PRIMARY KEY, name TEXT);\n")
    _release(repo)
    return []


def _no_commits(repo: Repo) -> list[str]:
    fresh = Repo.create(repo.path.parent / "fresh", repo.env)
    fresh.write("nesop-deb.toml", SHOP_CONFIG)
    return ["-C", str(fresh.path)]


def _no_config(repo: Repo) -> list[str]:
    repo.remove("nesop-deb.toml")
    repo.write("server.py", "print('v1.0.2')\n")
    _release(repo)
    return []


def _since_untagged(repo: Repo) -> list[str]:
    repo.write("server.py", "print('work in progress')\n")
    repo.commit("Work in progress")
    repo.write("server.py", "print('v1.0.2')\n")
    _release(repo)
    return ["--since", "HEAD~1"]


def _non_utf8_name(repo: Repo) -> list[str]:
    repo.write(os.fsdecode(b"caf\xe9.txt"), "latin-1 name\n")
    _release(repo)
    return []


def _line_break_name(repo: Repo) -> list[str]:
    repo.write("static/new\nline.css", "body {}\n")
    _release(repo)
    return []


def _control_character_name(repo: Repo) -> list[str]:
    repo.write("static/a\x1b[2Jb.css", "body {}\n")
    _release(repo)
    return []


def _tab_name(repo: Repo) -> list[str]:
    repo.write("static/a\tb.css", "body {}\n")
    _release(repo)
    return []


def _python_migration(repo: Repo) -> list[str]:
    repo.write("migrations/0002_data.rollback.py", "steps = []\n")
    repo.write("migrations/0002_data.sql", "CREATE TABLE data (id INTEGER);\n")
    _release(repo)
    return []


def _args(*args: str) -> Callable[[Repo], list[str]]:
    return lambda repo: list(args)


def _partial(*args: str) -> Callable[[Repo], list[str]]:
    """v1.0.2 changes server.py and static/app.js and adds a migration; build with ``args``."""

    def prepare(repo: Repo) -> list[str]:
        repo.write("server.py", "print('v1.0.2')\n")
        repo.write("static/app.js", "let a = 2;\n")
        repo.write("migrations/0002_price.sql", "ALTER TABLE product ADD COLUMN price INTEGER;\n")
        _release(repo)
        return list(args)

    return prepare


def _unit_file(where: str, commit_it: bool) -> Callable[[Repo], list[str]]:
    def prepare(repo: Repo) -> list[str]:
        text = SHOP_CONFIG.replace(
            'service = "shop.service"', f'service = "shop.service"\nunit_file = "{where}"'
        )
        repo.write("nesop-deb.toml", text)
        if commit_it:
            repo.write(where, "[Service]\nExecStart=/usr/bin/python3 server.py\n")
        repo.write("server.py", "print('v1.0.2')\n")
        _release(repo)
        return []

    return prepare


def _socket_file(socket: str | None, unit: bool = True) -> Callable[[Repo], list[str]]:
    """v1.0.2 names deploy/shop.socket (with ``socket`` as its content; None: not committed)."""

    def prepare(repo: Repo) -> list[str]:
        app = 'service = "shop.service"\n'
        if unit:
            app += 'unit_file = "deploy/shop.service"\n'
            repo.write("deploy/shop.service", "[Service]\nExecStart=/usr/bin/python3 server.py\n")
        app += 'socket_file = "deploy/shop.socket"'
        repo.write("nesop-deb.toml", SHOP_CONFIG.replace('service = "shop.service"', app))
        if socket is not None:
            repo.write("deploy/shop.socket", socket)
        repo.write("server.py", "print('v1.0.2')\n")
        _release(repo)
        return []

    return prepare


def _since_off_branch(repo: Repo) -> list[str]:
    """v1.0.3 on a branch HEAD never merged; HEAD is v1.0.2 and names v1.0.3 as its base."""
    repo.git("checkout", "-q", "-b", "next")
    repo.write("server.py", "print('next')\n")
    repo.commit("Next", tag="v1.0.3")
    repo.git("checkout", "-q", "-")
    repo.write("static/app.js", "let a = 2;\n")
    _release(repo)
    return ["--since", "v1.0.3"]


def _unmerged_hotfix(repo: Repo) -> list[str]:
    """v1.0.2 is a hotfix tagged on a branch that was never merged; HEAD is v1.0.3."""
    repo.git("checkout", "-q", "-b", "hotfix", "v1.0.1")
    repo.write("server.py", "print('hotfix')\n")
    repo.commit("Hotfix", tag="v1.0.2")
    repo.git("checkout", "-q", "-")
    repo.write("static/app.js", "let a = 3;\n")
    _release(repo, "v1.0.3")
    return []


def _no_tag_below(repo: Repo) -> list[str]:
    repo.git("tag", "-d", "v1.0.0", "v1.0.1")
    repo.write("server.py", "print('v1.0.5')\n")
    _release(repo, "v1.0.5")
    return []


def _unit_file_excluded(repo: Repo) -> list[str]:
    text = SHOP_CONFIG.replace(
        'service = "shop.service"', 'service = "shop.service"\nunit_file = "deploy/shop.service"'
    )
    repo.write("nesop-deb.toml", text.replace('"**/*.pyc"]', '"**/*.pyc", "deploy/**"]'))
    repo.write("deploy/shop.service", "[Service]\nExecStart=/usr/bin/python3 server.py\n")
    repo.write("server.py", "print('v1.0.2')\n")
    _release(repo)
    return []


def _untagged_with(*args: str) -> Callable[[Repo], list[str]]:
    def prepare(repo: Repo) -> list[str]:
        _untagged(repo)
        return list(args)

    return prepare


def _migration(
    path: str, commit_it: bool = True, sql: str = "ALTER TABLE product ADD COLUMN tags TEXT;\n"
) -> Callable[[Repo], list[str]]:
    """v1.0.2 adds a migration file at ``path`` (committed, or left untracked)."""

    def prepare(repo: Repo) -> list[str]:
        repo.write(path, sql)
        if not commit_it:
            (repo.path / ".git/info").mkdir(exist_ok=True)
            (repo.path / ".git/info/exclude").write_text(path + "\n")  # an ignored one counts too
        repo.write("server.py", "print('v1.0.2')\n")
        _release(repo)
        return []

    return prepare


def _configured(old: str, new: str) -> Callable[[Repo], list[str]]:
    """v1.0.2 changes ``old`` into ``new`` in the app's nesop-deb.toml."""
    assert old in SHOP_CONFIG
    return _config(SHOP_CONFIG.replace(old, new))


def _c_file(repo: Repo) -> list[str]:
    return ["-C", str(repo.path / "server.py")]


def _pre_release(repo: Repo) -> list[str]:
    repo.write("server.py", "print('rc')\n")
    repo.commit("Release candidate", tag="v1.1.0-rc1")
    repo.write("server.py", "print('final')\n")
    _release(repo, "v1.1.0")
    return []


def _config_entry_removed(repo: Repo) -> list[str]:
    repo.remove("config.py")
    _release(repo)
    return []


def _config_uncommitted(repo: Repo) -> list[str]:
    repo.write("server.py", "print('v1.0.2')\n")
    repo.git("add", "server.py")
    repo.git("rm", "-q", "--cached", "nesop-deb.toml")  # still in the working tree
    repo.git("commit", "-q", "-m", "Release")
    repo.git("tag", "v1.0.2")
    return []


def _positional_directory(repo: Repo) -> list[str]:
    return [str(repo.path)]


def _shallow_clone(repo: Repo) -> list[str]:
    repo.write("server.py", "print('next')\n")
    repo.commit("Work in progress")
    clone = repo.path.parent / "shallow"
    repo.git("clone", "-q", "--depth", "1", "--no-tags", f"file://{repo.path}", str(clone))
    return ["-C", str(clone)]


def _shallow_clone_tagged_head(repo: Repo) -> list[str]:
    clone = repo.path.parent / "shallow"
    repo.git("clone", "-q", "--depth", "1", f"file://{repo.path}", str(clone))
    return ["-C", str(clone)]


DEPS_CONFIG = SHOP_CONFIG + '\n[dependencies]\npython = "3.13"\n'


def _dependencies(
    requirements: str | None, *args: str, config: str = DEPS_CONFIG
) -> Callable[[Repo], list[str]]:
    """v1.0.2 adds [dependencies] and (unless None) a requirements.txt holding ``requirements``."""

    def prepare(repo: Repo) -> list[str]:
        repo.write("nesop-deb.toml", config)
        if requirements is not None:
            repo.write("requirements.txt", requirements)
        repo.write("server.py", "print('v1.0.2')\n")
        _release(repo)
        return list(args)

    return prepare


BAD_TOML = SHOP_CONFIG.replace('root = "/srv/shop"', 'root "/srv/shop"')
CASES = [
    Case("not-a-repository", _not_a_repo, ("plain", "is not a git repository"), "git init"),
    Case("no-such-directory", _args("-C", "/nonexistent/app"), ("/nonexistent/app",), "-C DIR"),
    Case("directory-is-a-file", _c_file, ("server.py: not a directory",), "-C DIR"),
    Case("no-commits", _no_commits, ("fresh", "has no commits"), "commit the app first"),
    Case(
        "unknown-files-path", _args("--files", "nope.py"), ("--files nope.py", "no such file"), "name files"
    ),
    Case(
        "files-parent", _args("--files", "../x"), ("--files ../x", "leaves the repository"), "inside the app"
    ),
    Case(
        "files-absolute-outside",
        _args("--files", "/etc/passwd"),
        ("--files /etc/passwd", "leaves the repository"),
        "inside the app",
    ),
    Case("symlink-absolute", _symlink("/etc/passwd"), ("link -> /etc/passwd", "outside"), "make it relative"),
    Case(
        "symlink-parent",
        _symlink("../../x", "static/up"),
        ("static/up -> ../../x", "outside"),
        "exclude it in [files].exclude",
    ),
    Case("version-space", _args("--version", "1.0 5"), ("--version '1.0 5'", "not a valid"), "like 1.0.5"),
    Case("version-letters", _args("--version", "abc"), ("--version 'abc'", "not a valid"), "like 1.0.5"),
    Case(
        "no-version",
        _untagged,
        ("no vX.Y.Z tag", "v1.0.1 is on", '"Fix the server", 1 commit(s) before HEAD'),
        "git tag v1.0.2",
    ),
    Case("dirty", _dirty, ("uncommitted changes", "server.py"), "--allow-dirty"),
    Case("nothing-to-ship", _only_excluded, ("nothing to ship", "v1.0.1..HEAD"), "[files].exclude"),
    Case(
        "version-tag-elsewhere",
        _args("--version", "1.0.0", "--since", "v1.0.1"),
        ("version 1.0.0: the tag v1.0.0 is on", '"Shop 1.0.0", not on HEAD'),
        "git checkout v1.0.0",
    ),
    Case(
        "version-not-above-base",
        _since_off_branch,
        ("version 1.0.2 is not above its base 1.0.3",),
        "higher version",
    ),
    Case(
        "version-below-what-head-contains",
        _args("--version", "0.9", "--files", "server.py"),
        ("version 0.9 is below v1.0.1, which HEAD already contains",),
        "pick a version above 1.0.1",
    ),
    Case(
        "base-not-in-history",
        _unmerged_hotfix,
        ("the base release v1.0.2", '"Hotfix"', "not in HEAD's history", "undo what v1.0.2 shipped"),
        "git merge v1.0.2",
    ),
    Case("since-unknown", _args("--since", "v9.9.9"), ("'v9.9.9'", "does not name a commit"), "release tag"),
    Case("since-untagged", _since_untagged, ("--since HEAD~1", "no vX.Y.Z release tag"), "v1.0.4"),
    Case("no-base", _no_tag_below, ("no release tag below 1.0.5",), "--full"),
    Case(
        "partial-files",
        _partial("--files", "server.py"),
        ("--files leaves out 1 file(s) that v1.0.1..HEAD changed: static/app.js",),
        "--allow-partial",
    ),
    Case(
        "partial-files-and-no-migrations",
        _partial("--files", "server.py", "--no-migrations"),
        ("--files and --no-migrations leave out 2 file(s)", "static/app.js", "migrations/0002_price.sql"),
        "--allow-partial",
    ),
    Case(
        "partial-no-migrations",
        _partial("--no-migrations"),
        ("--no-migrations leaves out 1 file(s)", "migrations/0002_price.sql"),
        "drop --no-migrations",
    ),
    Case(
        "files-excluded",
        _args("--files", "docs/readme.md"),
        ("--files docs/readme.md", "[files] exclude removes it"),
        "change [files].exclude",
    ),
    Case(
        "files-deleted-file",
        _args("--files", "static/gone.js"),
        ("--files static/gone.js", "no such file in the repository at HEAD"),
        "name files",
    ),
    Case(
        "unit-file-excluded",
        _unit_file("docs/shop.service", commit_it=True),
        ("[app] unit_file docs/shop.service", "removed by [files] exclude"),
        "take it out of [files] exclude",
    ),
    Case(
        "unit-file-missing",
        _unit_file("deploy/shop.service", commit_it=False),
        ("[app] unit_file deploy/shop.service", "not a file in the repository at HEAD"),
        "fix [app] unit_file",
    ),
    Case(
        "socket-file-missing",
        _socket_file(None),
        ("[app] socket_file deploy/shop.socket", "not a file in the repository at HEAD"),
        "fix [app] socket_file",
    ),
    Case(
        "socket-file-without-unit-file",
        _socket_file("[Socket]\nListenStream=8000\n", unit=False),
        ("app.socket_file 'deploy/shop.socket' needs app.unit_file",),
        "set [app] unit_file",
    ),
    Case(
        "socket-accepts-per-connection",
        _socket_file("[Socket]\nListenStream=8000\nAccept=yes\n"),
        ("[app] socket_file deploy/shop.socket", "Accept=yes"),
        "remove Accept=",
    ),
    Case(
        "socket-listens-on-nothing",
        _socket_file("[Socket]\nListenDatagram=8000\n"),
        ("[app] socket_file deploy/shop.socket", "no ListenStream="),
        "add ListenStream=",
    ),
    Case(
        "socket-starts-another-service",
        _socket_file("[Socket]\nListenStream=8000\nService=other.service\n"),
        ("[app] socket_file deploy/shop.socket", "starts other.service, not shop.service"),
        "remove Service=",
    ),
    Case(
        "version-not-at-head",
        _args("--version", "1.0.5"),
        ("--version 1.0.5", "HEAD is the release v1.0.1", "HEAD's content as 1.0.5"),
        "--since vX.Y.Z",
    ),
    Case(
        "version-untagged-head",
        _untagged_with("--version", "1.0.2"),
        ("--version 1.0.2", "HEAD carries no release tag"),
        "git tag v1.0.2",
    ),
    Case(
        "full-version-not-at-head",
        _args("--full", "--version", "1.0.9"),
        ("--version 1.0.9", "HEAD is the release v1.0.1"),
        "check out v1.0.9",
    ),
    Case("config-missing", _no_config, ("nesop-deb.toml: no such file",), "nesop-deb init"),
    Case(
        "config-unknown-key",
        _config(SHOP_CONFIG.replace('service = "shop.service"', 'servise = "shop.service"')),
        ("nesop-deb.toml", "unknown key app.servise"),
        "known keys: name, root",
    ),
    Case(
        "config-wrong-type",
        _config(SHOP_CONFIG + '\n[health]\ntimeout = "60"\n'),
        ("nesop-deb.toml", "health.timeout must be a number, not str"),
        "timeout = 60",
    ),
    Case(
        "config-missing-key",
        _config(SHOP_CONFIG.replace('root = "/srv/shop"\n', "")),
        ("nesop-deb.toml", "missing app.root"),
        "add it under [app]",
    ),
    Case("config-invalid-toml", _config(BAD_TOML), ("nesop-deb.toml", "not valid TOML", "line 3"), "syntax"),
    Case("non-utf8-name", _non_utf8_name, ("'caf\\udce9.txt'", "not valid UTF-8"), "git mv"),
    Case("line-break-name", _line_break_name, ("'static/new\\nline.css'", "contains a line break"), "git mv"),
    Case(
        "control-character-name",
        _control_character_name,
        ("'static/a\\x1b[2Jb.css'", "contains a control character"),
        "git mv",
    ),
    Case("tab-name", _tab_name, ("'static/a\\tb.css'", "contains a control character"), "git mv"),
    Case(
        "python-migration",
        _python_migration,
        ("migrations/0002_data.rollback.py", "Python migrations are not supported", "only SQL migrations"),
        "migrations/0002_data.rollback.sql",
    ),
    Case(
        "released-migration-edited",
        _edit_released_migration,
        ("migrations/0001_init.sql", "changed after it was released"),
        "add a new one",
    ),
    # what would build and only fail (or do nothing) on the server
    Case(
        "migration-outside-transaction",
        _migration(
            "migrations/0002_tags_index.sql", sql="CREATE INDEX CONCURRENTLY tags ON product (name);\n"
        ),
        ("migrations/0002_tags_index.sql", "CREATE INDEX CONCURRENTLY cannot run inside a transaction"),
        "-- transactional: false",
    ),
    Case(
        "migration-name-dash",
        _migration("migrations/0002-add-tags.sql"),
        ("migrations/0002-add-tags.sql", "not named NNNN_name.sql", "never run"),
        "git mv migrations/0002-add-tags.sql migrations/0002_add-tags.sql",
    ),
    Case(
        "migration-name-three-digits",
        _migration("migrations/002_tags.sql"),
        ("migrations/002_tags.sql", "not named NNNN_name.sql"),
        "migrations/0002_tags.sql",
    ),
    Case(
        "migration-name-upper-case",
        _migration("migrations/0002_tags.SQL"),
        ("migrations/0002_tags.SQL", "not named NNNN_name.sql"),
        "migrations/0002_tags.sql",
    ),
    Case(
        "migration-in-subdirectory",
        _migration("migrations/v2/0002_tags.sql"),
        ("migrations/v2/0002_tags.sql", "subdirectory of migrations/ never run"),
        "git mv migrations/v2/0002_tags.sql migrations/0002_tags.sql",
    ),
    Case(
        "migration-rollback-orphan",
        _migration("migrations/0001_int.rollback.sql"),
        ("migrations/0001_int.rollback.sql", "a rollback with no migration migrations/0001_int.sql"),
        "NNNN_name.rollback.sql for migrations/NNNN_name.sql",
    ),
    Case(
        "version-below-a-pre-release-tag",
        _pre_release,
        ("version 1.1.0 is below v1.1.0-rc1, which HEAD already contains",),
        "tag a pre-release with ~ (v1.1.0~rc1)",
    ),
    Case(
        "migration-untracked",
        _migration("migrations/0002_tags.sql", commit_it=False),
        ("untracked migration file(s) in migrations/: migrations/0002_tags.sql",),
        "git add -f migrations/0002_tags.sql",
    ),
    Case(
        "migrations-dir-missing",
        _configured('dir = "migrations"', 'dir = "db/migrations"'),
        ("[migrations] dir db/migrations does not exist at HEAD", "migrations are in migrations"),
        "set [migrations] dir",
    ),
    Case(
        "migrations-dir-excluded",
        _configured('"**/*.pyc"]', '"**/*.pyc", "migrations/**"]'),
        ("[files] exclude removes the migrations dir migrations",),
        "take it out of [files] exclude",
    ),
    Case(
        "config-entry-missing",
        _config_entry_removed,
        ("[files] config entry config.py", "not a file in the repository at HEAD"),
        "fix [files] config",
    ),
    Case(
        "config-entry-excluded",
        _configured('"**/*.pyc"]', '"**/*.pyc", "config.py"]'),
        ("[files] config entry config.py", "removed by [files] exclude"),
        "take it out of [files] exclude",
    ),
    Case(
        "unit-file-excluded-by-glob",
        _unit_file_excluded,
        ("[app] unit_file deploy/shop.service", "removed by [files] exclude"),
        "take it out of [files] exclude",
    ),
    Case(
        "database-unknown-engine",
        _configured("sqlite:////srv/shop/data/shop.db", "mysql://shop@localhost/shop"),
        ("migrations.database 'mysql://shop@localhost/shop'", "supports SQLite and PostgreSQL, not mysql"),
        "postgresql:///dbname",
    ),
    Case(
        "database-password-in-url",
        _configured("sqlite:////srv/shop/data/shop.db", "postgresql://shop:s3cret@localhost/shop"),
        ("migrations.database has a password in it",),
        "credentials =",
    ),
    Case(
        "database-credentials-relative",
        _configured(
            'database = "sqlite:////srv/shop/data/shop.db"',
            'database = "postgresql:///shop"\ncredentials = "shop.pgpass"',
        ),
        ("migrations.credentials 'shop.pgpass' must be an absolute path",),
        "/etc/nesop-update/app.pgpass",
    ),
    Case(
        "lock-timeout-for-sqlite",
        _configured(
            'database = "sqlite:////srv/shop/data/shop.db"',
            'database = "sqlite:////srv/shop/data/shop.db"\nlock_timeout = 5',
        ),
        ("migrations.lock_timeout applies to a postgresql:// database only",),
        "remove lock_timeout",
    ),
    Case(
        "database-relative-path",
        _configured("sqlite:////srv/shop/data/shop.db", "sqlite:///data/shop.db"),
        ("migrations.database 'sqlite:///data/shop.db'", "relative path"),
        "sqlite:////srv/shop/data/app.db",
    ),
    Case(
        "config-uncommitted",
        _config_uncommitted,
        ("nesop-deb.toml is not committed",),
        "git add nesop-deb.toml && git commit",
    ),
    Case(
        "positional-directory",
        _positional_directory,
        ("unexpected argument", "app'"),
        "pass -C",
    ),
    Case(
        "positional-file",
        _args("server.py"),
        ("unexpected argument 'server.py'",),
        "--files",
    ),
    Case(
        "dependencies-unpinned",
        _dependencies("# the app's packages\nflask>=2.0\n"),
        ("requirements.txt: 1 line(s) the builder cannot take", "line 2 'flask>=2.0': a range"),
        "pip-compile --generate-hashes",
    ),
    Case(
        "dependencies-without-hashes",
        _dependencies("markupsafe==3.0.2\n"),
        ("requirements.txt", "line 1 'markupsafe==3.0.2': no --hash=sha256:"),
        "pip-compile --generate-hashes",
    ),
    Case(
        "dependencies-editable",
        _dependencies("-e .\n"),
        ("requirements.txt", "line 1 '-e .': an editable install"),
        "pip-compile --generate-hashes",
    ),
    Case(
        "dependencies-include",
        _dependencies("-r base.txt\n"),
        ("requirements.txt", "line 1 '-r base.txt': an include"),
        "pip-compile --generate-hashes",
    ),
    Case(
        "dependencies-requirements-missing",
        _dependencies(None),
        ("[dependencies] requirements requirements.txt is not a file in the repository at HEAD",),
        "fix [dependencies] requirements",
    ),
    Case(
        "dependencies-no-wheel",
        _dependencies(f"markupsafe==99.0.0 --hash=sha256:{'0' * 64}\n"),
        ("no wheel of markupsafe==99.0.0 for Python 3.13 on amd64",),
        "pin a version that publishes one",
    ),
    Case(
        "dependencies-python-missing",
        _dependencies("", config=SHOP_CONFIG + "\n[dependencies]\n"),
        ("nesop-deb.toml", "dependencies.python missing"),
        'python = "3.11" on Debian 12',
    ),
    Case(
        "python-option-without-dependencies",
        _args("--python", "3.13"),
        ("--python 3.13: nesop-deb.toml at HEAD has no [dependencies]",),
        "drop --python",
    ),
    Case(
        "python-option-not-a-version",
        _dependencies("", "--python", "3"),
        ("--python '3' is not a major.minor version",),
        "3.13 on Debian 13",
    ),
    Case(
        "arch-option-unknown",
        _dependencies("", "--arch", "i386"),
        ("--arch 'i386' is not one this builder fetches wheels for",),
        "dpkg --print-architecture",
    ),
    Case(
        "shallow-clone-untagged",
        _shallow_clone,
        ("no version", "this clone is shallow"),
        "git fetch --tags --unshallow",
    ),
    Case(
        "shallow-clone-no-base",
        _shallow_clone_tagged_head,
        ("no release tag below 1.0.1", "this clone is shallow"),
        "git fetch --tags --unshallow",
    ),
]
SUBPROCESS_CASES = {
    "migration-name-dash",
    "base-not-in-history",
    "positional-directory",
    "not-a-repository",
    "files-parent",
    "version-space",
    "dirty",
    "config-wrong-type",
    "partial-files",
    "dependencies-unpinned",
    "dependencies-no-wheel",
}


def _check_refusal(outcome: Outcome, case: Case, tmp_path: Path, output: Path) -> None:
    assert outcome.returncode == int(ExitCode.USAGE) == 2, outcome
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1, outcome.stderr
    line = lines[0]
    assert line.startswith("nesop-deb: error: "), line
    for name in case.names:
        assert name in line, line
    assert case.fix in line, line
    assert "Traceback" not in outcome.stderr and outcome.stdout == ""
    assert not output.exists() or list(output.iterdir()) == []
    assert list(tmp_path.rglob("*.deb")) == [] and list(tmp_path.rglob("update_manifest.json")) == []


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused(case: Case, make_repo: Callable[..., Repo], tmp_path: Path) -> None:
    repo = shop(make_repo("app"))
    args = case.prepare(repo)
    output = tmp_path / "out"
    argv = ["build", *([] if "-C" in args else ["-C", str(repo.path)]), *args, "--output", str(output)]
    _check_refusal(invoke(argv), case, tmp_path, output)


@pytest.mark.parametrize("case", [c for c in CASES if c.id in SUBPROCESS_CASES], ids=lambda c: c.id)
def test_refused_as_a_subprocess(
    case: Case, make_repo: Callable[..., Repo], tmp_path: Path, env: dict[str, str]
) -> None:
    repo = shop(make_repo("app"))
    args = case.prepare(repo)
    output = tmp_path / "out"
    where: list[str | Path] = [] if "-C" in args else ["-C", repo.path]
    argv = [NESOP_DEB, "build", *where, *args, "--output", output]
    _check_refusal(run_tool(argv, env, cwd=tmp_path), case, tmp_path, output)


def test_allow_dirty_builds_the_committed_state(
    make_repo: Callable[..., Repo], tmp_path: Path, env: dict[str, str]
) -> None:
    repo = shop(make_repo("app"))
    repo.write("server.py", "print('not committed')\n")
    output = tmp_path / "out"
    outcome = run_tool([NESOP_DEB, "build", "-C", repo.path, "--allow-dirty", "--output", output], env)
    assert outcome.returncode == 0, outcome.stderr
    assert "1 uncommitted change(s) are not included" in outcome.stderr
    deb = Path(outcome.last_line)
    assert deb == output / "shop-update_1.0.1_all.deb"
    _, content = data_members(deb)["usr/share/shop-update/payload/server.py"]
    assert content == b"print('v1.0.1')\n"  # HEAD, not the working tree


def test_staged_changes_are_uncommitted_too(make_repo: Callable[..., Repo], tmp_path: Path) -> None:
    repo = shop(make_repo("app"))
    repo.write("static/app.js", "let a = 2;\n")
    repo.git("add", "static/app.js")
    outcome = invoke(["build", "-C", str(repo.path), "--output", str(tmp_path / "out")])
    assert outcome.returncode == 2 and "static/app.js" in outcome.stderr


def test_a_staged_rename_is_named_once(make_repo: Callable[..., Repo], tmp_path: Path) -> None:
    repo = shop(make_repo("app"))
    repo.move("static/app.js", "static/application.js")
    outcome = invoke(["build", "-C", str(repo.path), "--output", str(tmp_path / "out")])
    assert outcome.returncode == 2
    assert f"uncommitted changes in {repo.path}: static/application.js; commit them" in outcome.stderr


def test_an_excluded_non_utf8_name_is_ignored(make_repo: Callable[..., Repo], tmp_path: Path) -> None:
    repo = shop(make_repo("app"))
    repo.write(os.fsdecode(b"docs/caf\xe9.md"), "latin-1 name\n")
    repo.write("server.py", "print('v1.0.2')\n")
    _release(repo)
    outcome = invoke(["build", "-C", str(repo.path), "--output", str(tmp_path / "out")])
    assert outcome.returncode == 0, outcome.stderr


def test_untracked_files_do_not_make_the_tree_dirty(make_repo: Callable[..., Repo], tmp_path: Path) -> None:
    repo = shop(make_repo("app"))
    (repo.path / "scratch.txt").write_text("notes\n")
    output = tmp_path / "out"
    outcome = invoke(["build", "-C", str(repo.path), "--output", str(output)])
    assert outcome.returncode == 0, outcome.stderr
    assert "scratch.txt" not in (output / "update_manifest.json").read_text()


def test_a_failing_dpkg_deb_leaves_nothing_behind(
    make_repo: Callable[..., Repo], tmp_path: Path, env: dict[str, str]
) -> None:
    repo = shop(make_repo("app"))
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "dpkg-deb").write_text("#!/bin/sh\necho 'dpkg-deb: error: disk full' >&2\nexit 2\n")
    (fake_bin / "dpkg-deb").chmod(0o755)
    broken = {**env, "PATH": f"{fake_bin}{os.pathsep}{env['PATH']}"}
    output = tmp_path / "out"
    outcome = run_tool([NESOP_DEB, "build", "-C", repo.path, "--output", output], broken)
    assert outcome.returncode == 1
    assert outcome.stderr.splitlines()[-1].startswith("nesop-deb: error: `dpkg-deb")
    assert "disk full" in outcome.stderr.splitlines()[-1]
    assert list(output.glob("*.deb")) == [] and not (output / "update_manifest.json").exists()


# --- files that are not update packages: inspect, verify and apply refuse them alike ---------


def _ar_archive(path: Path) -> None:
    """A valid ar archive of one text member: ar's format, but not a Debian package."""
    data = b"not a package\n"
    header = b"member.txt/".ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) + b"100644".ljust(8)
    path.write_bytes(b"!<arch>\n" + header + str(len(data)).encode().ljust(10) + b"`\n" + data)


def _truncated_deb(path: Path) -> None:
    """A real .deb cut short, as an interrupted copy leaves it."""
    tree = path.parent / "src"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        "Package: hello\nVersion: 1.0\nArchitecture: all\nMaintainer: A <a@b.c>\nDescription: hi\n"
    )
    (tree / "usr/share/hello").mkdir(parents=True)
    (tree / "usr/share/hello/blob").write_bytes(bytes(range(256)) * 64)
    whole = path.parent / "whole.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", tree, whole], check=True, capture_output=True)
    raw = whole.read_bytes()
    path.write_bytes(raw[: len(raw) - 100])


NOT_A_PACKAGE: dict[str, Callable[[Path], object]] = {
    "empty": lambda p: p.write_bytes(b""),
    "random-bytes": lambda p: p.write_bytes(random.Random(7).randbytes(4096)),
    "text": lambda p: p.write_text("Package: shop-update\nVersion: 1.0.1\n"),
    "directory": lambda p: p.mkdir(),
    "ar-not-a-deb": _ar_archive,
    "truncated-deb": _truncated_deb,
}


def _fake_apt(tmp_path: Path, env: dict[str, str]) -> tuple[dict[str, str], Path]:
    """apt-get and dpkg that only record being called: a refusal must come before them."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    calls = tmp_path / "apt-calls"
    for tool in ("apt-get", "apt", "dpkg"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\nexit 0\n')
        (bin_dir / tool).chmod(0o755)
    return {**env, "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}"}, calls


@pytest.mark.parametrize("kind", [*NOT_A_PACKAGE, "missing"])
@pytest.mark.parametrize(
    ("tool", "command"),
    [(NESOP_DEB, "inspect"), (NESOP_DEB, "verify"), (NESOP_UPDATE, "apply")],
    ids=["inspect", "verify", "apply"],
)
def test_a_file_that_is_not_a_package_is_refused(
    kind: str, tool: Path, command: str, tmp_path: Path, env: dict[str, str]
) -> None:
    path = tmp_path / "work" / "update.deb"
    path.parent.mkdir()
    if kind != "missing":
        NOT_A_PACKAGE[kind](path)
    if tool == NESOP_UPDATE and kind not in ("missing", "directory") and signing.trusted_keyrings():
        pytest.skip("this machine requires signed updates: the signature check refuses first")
    before = path.read_bytes() if path.is_file() else None
    fake_env, apt_calls = _fake_apt(tmp_path, env)
    outcome = run_tool([tool, command, path], fake_env)
    assert outcome.returncode == int(ExitCode.USAGE), outcome
    assert len(outcome.error_lines) == 1, outcome.stderr
    line = outcome.error_lines[0]
    assert line.startswith(f"{tool.name}: error: {path}: "), line
    if kind == "missing":
        assert "no such file" in line and "give the path of an update package" in line
    else:
        assert "not a Debian package (" in line and "nesop-deb build" in line, line
    assert "internal error" not in outcome.stderr and "Traceback" not in outcome.stderr
    assert outcome.stdout == ""
    assert not apt_calls.exists(), apt_calls.read_text()  # refused before apt or dpkg ran
    assert (path.read_bytes() if path.is_file() else None) == before

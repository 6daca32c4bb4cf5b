"""`nesop-deb init`'s decisions, without git: what counts as the app's unit file and migrations,
the maintainer's source, the nesop-deb.toml it renders, and the checklist it prints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nesop_deb.builder import scaffold
from nesop_deb.builder.scaffold import Found, Setup, Written
from nesop_deb.config import loads


def setup(user: str = "shop", found: Found | None = None, maintainer_from: str = "git config") -> Setup:
    return Setup("shop", "/opt/shop", user, "Ann Dev <ann@example.com>", maintainer_from, found or Found())


WRITTEN = Written((Path("nesop-deb.toml"),), makefile_includes=True)


# --- what init finds -------------------------------------------------------------------------


def test_one_unit_file_and_one_migration_directory_are_found() -> None:
    found = scaffold.find(
        [
            "app/main.py",
            "deploy/shop.service",
            "db/migrations/0001_create.sql",
            "db/migrations/0001_create.rollback.sql",
            "db/migrations/0002_tags.sql",
            "db/migrations/README",
        ]
    )
    assert found.unit_files == ("deploy/shop.service",) and found.unit_file == "deploy/shop.service"
    assert found.migration_dirs == (("db/migrations", 2),) and found.migrations_dir == "db/migrations"


@pytest.mark.parametrize(
    "path",
    [
        ".venv/lib/systemd/x.service",  # a virtualenv by name
        "pyenv/share/x.service",  # a virtualenv by its pyvenv.cfg
        "dist/x.service",  # built packages
        "node_modules/pkg/x.service",
        "tests/fixtures/x.service",  # [files] exclude keeps it off the server
        "debian/shop.service",
        "deploy/shop@.service",  # a template unit is not the app's service
        "deploy/bad name.service",  # not a unit name systemd takes
        "deploy/shop.service\x1b[2J",  # a control character
    ],
)
def test_files_that_never_ship_are_not_the_unit_file(path: str) -> None:
    found = scaffold.find([path, "pyenv/pyvenv.cfg"])
    assert found.unit_files == () and found.unit_file is None


@pytest.mark.parametrize(
    "path",
    [
        "0001_top_level.sql",  # the app directory itself: not a [migrations] dir
        "tests/fixtures/0001_create.sql",
        "venv/share/0001_create.sql",
        "app/migrations/0001_initial.py",  # a Django migration, not an SQL one
        "migrations/001_create.sql",  # three digits: not a migration name
        "migrations/0001_create.rollback.sql",  # an undo alone is not a migration
    ],
)
def test_files_that_are_not_migrations_are_not_found(path: str) -> None:
    assert scaffold.find([path]).migration_dirs == ()


def test_several_candidates_are_all_listed_and_none_chosen() -> None:
    found = scaffold.find(["a.service", "deploy/b.service", "m1/0001_a.sql", "m2/0001_b.sql"])
    assert found.unit_files == ("a.service", "deploy/b.service") and found.unit_file is None
    assert found.migration_dirs == (("m1", 1), ("m2", 1)) and found.migrations_dir is None


@pytest.mark.parametrize(
    ("text", "user"),
    [
        ("[Service]\nUser=shop\nExecStart=/x\n", "shop"),
        ("[Service]\nUser = first\nUser=second\n", "second"),
        ("[Service]\nExecStart=/x\n", "root"),
        ("[Service]\nUser=\n", "root"),
    ],
)
def test_the_account_a_unit_runs_as(text: str, user: str) -> None:
    assert scaffold.unit_user(text) == user


@pytest.mark.parametrize(
    ("given", "git", "env", "expected"),
    [
        ("Me <me@x.org>", ("Git", "git@x.org"), {}, ("Me <me@x.org>", "--maintainer")),
        (
            None,
            ("Git", "git@x.org"),
            {"DEBFULLNAME": "D", "DEBEMAIL": "d@x"},
            ("Git <git@x.org>", "git config"),
        ),
        (None, ("", ""), {"DEBFULLNAME": "D", "DEBEMAIL": "d@x"}, ("D <d@x>", "DEBFULLNAME/DEBEMAIL")),
        (None, ("Git", ""), {"DEBEMAIL": "d@x"}, ("Git <d@x>", "git config and DEBFULLNAME/DEBEMAIL")),
        (None, ("Git", ""), {}, ("Git <root@localhost>", "")),
        (None, ("", ""), {}, ("Maintainer <root@localhost>", "")),
    ],
)
def test_the_maintainer_and_where_it_came_from(
    given: str | None, git: tuple[str, str], env: dict[str, str], expected: tuple[str, str]
) -> None:
    assert scaffold.maintainer_of(given, git, env) == expected


# --- what init writes ------------------------------------------------------------------------


def test_the_config_names_what_was_found() -> None:
    found = Found(("deploy/shop-web.service",), (("db/migrations", 2),), "shop", dist_ignored=False)
    config = loads(scaffold.render_config(setup(found=found)))
    assert config.app.unit_file == "deploy/shop-web.service" and config.app.service == "shop-web.service"
    assert config.migrations.dir == "db/migrations" and config.migrations.database is None
    assert (config.app.user, config.app.group) == ("shop", "shop")
    assert config.files.exclude == scaffold.DEFAULT_EXCLUDE


def test_without_a_single_unit_file_the_config_leaves_it_commented() -> None:
    found = Found(("a.service", "b.service"), (("m1", 1), ("m2", 1)))
    text = scaffold.render_config(setup(found=found))
    config = loads(text)
    assert config.app.unit_file is None and config.app.service == "shop.service"
    assert config.migrations.dir == "migrations"
    assert "# found: a.service, b.service\n" in text and "# found: m1, m2\n" in text


def test_a_requirements_file_is_found_beside_the_config_only() -> None:
    assert scaffold.find(["app.py", "requirements.txt"]).requirements == "requirements.txt"
    assert scaffold.find(["app.py", "docs/requirements.txt", "requirements-dev.txt"]).requirements is None


def test_with_a_requirements_file_the_dependencies_are_written_commented_out() -> None:
    text = scaffold.render_config(setup(found=Found(requirements="requirements.txt")))
    assert loads(text).dependencies is None  # python is the user's to set
    section = text[text.index("# [dependencies]") :]
    uncommented = text[: text.index("# [dependencies]")] + re.sub(r"(?m)^# ", "", section)
    deps = loads(uncommented).dependencies
    assert deps is not None and (deps.requirements, deps.venv, deps.python) == (
        "requirements.txt",
        "venv",
        "3.13",
    )
    assert "[dependencies]" not in scaffold.render_config(setup())


def test_values_with_quotes_and_backslashes_stay_valid_toml() -> None:
    odd = Setup("shop", '/srv/a "b"\\c', "shop", 'Jo "JJ" O\\Neil <jo@x.org>', "--maintainer")
    config = loads(scaffold.render_config(odd))
    assert str(config.app.root) == '/srv/a "b"\\c'
    assert config.package.maintainer == 'Jo "JJ" O\\Neil <jo@x.org>'


def test_the_make_snippet_uses_its_own_variables() -> None:
    text = scaffold.render_make()
    assert "NESOP_OUTPUT ?= dist\n" in text and "NESOP_DEB ?= nesop-deb\n" in text
    for variable in ("$(VERSION)", "$(SINCE)", "DEB_OUTPUT"):
        assert variable not in text
    for variable in ("NESOP_VERSION", "NESOP_SINCE", "NESOP_OUTPUT", "NESOP_DEB"):
        assert f"#   {variable} " in text  # documented in the header


# --- the checklist ---------------------------------------------------------------------------


def test_the_checklist_of_a_fully_found_app() -> None:
    found = Found(("deploy/shop.service",), (("migrations", 1),), "shop")
    items = scaffold.checklist(setup(found=found), WRITTEN)
    assert [item.split(":")[0] for item in items] == [
        '[app] root = "/opt/shop"',
        '[app] user = "shop" (group "shop")',
        "[health] url",
        "[migrations] database",
    ]
    assert "a first install (make deb-full) creates the system account and group if missing" in items[1]


def test_the_checklist_warns_about_root_and_a_unit_running_as_someone_else() -> None:
    found = Found(("deploy/shop.service",), (), "www-data")
    items = scaffold.checklist(setup(user="root", found=found), WRITTEN)
    assert any(i.startswith('[app] user = "root": warning:') and "--user shop" in i for i in items)
    assert "deploy/shop.service runs the app as www-data (User=), not as root: make them the same" in items


def test_the_checklist_says_how_to_ship_the_requirements() -> None:
    items = scaffold.checklist(setup(found=Found(requirements="requirements.txt")), WRITTEN)
    (item,) = [i for i in items if i.startswith("[dependencies]")]
    assert "pip-compile --generate-hashes" in item and "3.11 on Debian 12, 3.13 on Debian 13" in item
    assert not any(i.startswith("[dependencies]") for i in scaffold.checklist(setup(), WRITTEN))


def test_the_checklist_asks_for_what_is_missing() -> None:
    written = Written((Path("nesop-deb.toml"),), makefile_includes=False)
    items = scaffold.checklist(setup(maintainer_from=""), written)
    assert items[0] == "Makefile: add `include nesop-deb.mk` to it (make deb and make deb-full need it)"
    assert any(i.startswith("[app] unit_file: no *.service file found") for i in items)
    assert any(
        i.startswith('[package] maintainer = "Ann Dev <ann@example.com>": no git identity') for i in items
    )
    several = scaffold.checklist(
        setup(found=Found(("a.service", "b.service"), (("m1", 1), ("m2", 1)))), WRITTEN
    )
    assert any(i.startswith("[app] unit_file: several unit files (a.service and b.service)") for i in several)
    assert any(
        i.startswith("[migrations] dir: several directories hold migrations (m1 and m2)") for i in several
    )

"""``nesop-deb.toml``: the contract example loads, defaults apply, every mistake is a clear error."""

from __future__ import annotations

import tomllib
from pathlib import Path, PurePosixPath

import pytest

from nesop_deb.builder import scaffold
from nesop_deb.config import CONFIG_NAME, load, loads, parse
from nesop_deb.errors import ConfigError, ExitCode

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples/nesop-store/app" / CONFIG_NAME

# The contract example of nesop-deb.toml (docs/guide.md 3.2), with the writable data directory.
CONTRACT = """
[app]
name = "nesop-store"                 # package = "<name>-update" unless [package].name is set
root = "/opt/nesop-store"
user = "nesop"
group = "nesop"
service = "nesop-store.service"
unit_file = "deploy/nesop-store.service"   # optional: a first install (--full) installs and enables it
writable = ["data"]  # the rest of the tree is root's
[package]
maintainer = "NESOP Team <ops@example.com>"
[files]
exclude = ["tests/**", "docs/**", "nesop-deb.toml", "Makefile", "debian/**"]   # git-tracked files minus these
config = ["config.py", ".env.production"]          # never silently overwrite local edits (architecture §17)
[migrations]
dir = "migrations"
database = "sqlite:////opt/nesop-store/data/nesop_store_production.db"
[health]
url = "http://127.0.0.1:5000/health"
timeout = 60
"""

MINIMAL = """
[app]
name = "shop"
root = "/srv/shop"
[package]
maintainer = "Shop Ops <ops@shop.example>"
"""


def test_a_database_outside_the_app_tree_or_in_a_writable_directory_is_accepted() -> None:
    outside = loads(MINIMAL + '[migrations]\ndatabase = "sqlite:////var/lib/shop/shop.db"\n')
    assert outside.app.writable == ()
    inside = loads(
        MINIMAL.replace('root = "/srv/shop"', 'root = "/srv/shop"\nwritable = ["var/db", "data"]')
        + '[migrations]\ndatabase = "sqlite:////srv/shop/var/db/sub/shop.db"\n'
    )
    assert inside.app.writable == ("data", "var/db")
    assert inside.to_dict()["app"]["writable"] == ["data", "var/db"]


def test_contract_example_loads() -> None:
    cfg = loads(CONTRACT)
    assert cfg.app.name == "nesop-store"
    assert cfg.app.root == PurePosixPath("/opt/nesop-store")
    assert (cfg.app.user, cfg.app.group) == ("nesop", "nesop")
    assert cfg.app.service == "nesop-store.service"
    assert cfg.app.unit_file == "deploy/nesop-store.service"
    assert cfg.package.name == "nesop-store-update"
    assert cfg.package.maintainer == "NESOP Team <ops@example.com>"
    assert cfg.files.exclude == ("tests/**", "docs/**", "nesop-deb.toml", "Makefile", "debian/**")
    assert cfg.files.config == ("config.py", ".env.production")
    assert cfg.migrations.dir == "migrations"
    assert cfg.migrations.database == "sqlite:////opt/nesop-store/data/nesop_store_production.db"
    assert cfg.app.writable == ("data",)
    assert cfg.health.url == "http://127.0.0.1:5000/health"
    assert cfg.health.timeout == 60.0


def test_example_app_config_loads() -> None:
    cfg = load(EXAMPLE)
    assert cfg.package.name == "nesop-store-update"
    assert "nesop-deb.toml" in cfg.files.exclude


def test_defaults() -> None:
    cfg = loads(MINIMAL)
    assert cfg.app.user == cfg.app.group == "root"
    assert cfg.app.service == "shop.service"
    assert cfg.app.unit_file is None
    assert cfg.package.name == "shop-update"
    assert cfg.package.section == "admin"
    assert cfg.files.exclude == () and cfg.files.config == ()
    assert cfg.migrations.dir == "migrations" and cfg.migrations.database is None
    assert cfg.health.url is None and cfg.health.timeout == 60.0
    assert cfg.backups.keep == 5


def test_group_defaults_to_user_and_service_gets_its_suffix() -> None:
    cfg = loads(MINIMAL.replace('root = "/srv/shop"', 'root = "/srv/shop"\nuser = "web"\nservice = "shopd"'))
    assert cfg.app.group == "web"
    assert cfg.app.service == "shopd.service"


def test_package_name_override_and_float_timeout() -> None:
    cfg = loads(MINIMAL + 'name = "shop-patch"\n[health]\ntimeout = 2.5\n')
    assert cfg.package.name == "shop-patch"
    assert cfg.health.timeout == 2.5


def test_to_dict_is_plain_data_that_reloads() -> None:
    cfg = loads(CONTRACT)
    data = cfg.to_dict()
    assert data["app"]["root"] == "/opt/nesop-store"
    assert data["files"]["config"] == ["config.py", ".env.production"]
    # what a manifest records reads back as the same configuration (minus the derived defaults)
    again = parse(
        {
            "app": {k: v for k, v in data["app"].items() if v is not None},
            "package": data["package"],
            "files": data["files"],
            "migrations": data["migrations"],
            "health": {k: v for k, v in data["health"].items() if v is not None},
            "backups": data["backups"],
        }
    )
    assert again == cfg


def test_init_template_renders_a_valid_config() -> None:
    setup = scaffold.Setup("my-app", "/opt/my-app", "www-data", "Dev <dev@example.com>", "--maintainer")
    text = scaffold.render_config(setup)
    cfg = loads(text)
    assert cfg.app.name == "my-app" and cfg.app.user == "www-data"
    assert "nesop-deb.toml" in cfg.files.exclude and "nesop-deb.mk" in cfg.files.exclude
    assert tomllib.loads(text)["package"]["maintainer"] == "Dev <dev@example.com>"


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        loads(text, "app/nesop-deb.toml")
    assert info.value.exit_code is ExitCode.USAGE
    message = str(info.value)
    assert message.startswith("app/nesop-deb.toml: "), message
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # invalid TOML
        ("[app\nname = 'x'", "not valid TOML"),
        ('[app]\nname = "x', "not valid TOML"),
        # unknown sections and keys name the known ones
        (MINIMAL + "[server]\nport = 1\n", "unknown section [server]; known sections: [app], [package]"),
        (MINIMAL.replace('name = "shop"', 'name = "shop"\nservise = "x"'), "unknown key app.servise"),
        (MINIMAL + "[health]\ntimout = 5\n", "unknown key health.timout; known keys: url, timeout, pages"),
        # wrong types
        (MINIMAL + '[health]\ntimeout = "60"\n', "health.timeout must be a number, not str"),
        (MINIMAL + "[health]\ntimeout = true\n", "health.timeout must be a number, not bool"),
        (MINIMAL + "[backups]\nkeep = 2.5\n", "backups.keep must be a number, not float"),
        (MINIMAL + '[files]\nexclude = "docs/**"\n', "files.exclude must be a list of strings, not str"),
        (MINIMAL + "[files]\nexclude = [1]\n", "files.exclude must be a list of strings"),
        ("health = 1\n" + MINIMAL, "health must be a table"),
        (MINIMAL.replace('root = "/srv/shop"', "root = 5"), "app.root must be a string, not int"),
        # missing required keys say where to add them
        ('[app]\nname = "x"\n', "missing app.root; add it under [app]"),
        ('[package]\nmaintainer = "A <a@b.c>"\n', "missing app.name; add it under [app]"),
        ("", "missing app.name"),
        # values
        (MINIMAL.replace('"shop"', '"Shop_App"'), "app.name 'Shop_App' is not a valid Debian package name"),
        (
            MINIMAL.replace('"/srv/shop"', '"srv/shop"'),
            "app.root 'srv/shop' must be an absolute, normalised directory",
        ),
        (MINIMAL.replace('"/srv/shop"', '"/"'), "app.root '/' must be an absolute, normalised directory"),
        (MINIMAL.replace('"/srv/shop"', '"/srv/../etc"'), "must be an absolute, normalised directory"),
        (MINIMAL.replace('"/srv/shop"', '"/etc/shop"'), "app.root '/etc/shop' is a system directory"),
        (MINIMAL.replace('root = "/srv/shop"', 'root = "/srv/shop"\nuser = "Bad User"'), "app.user"),
        (MINIMAL.replace('root = "/srv/shop"', 'root = "/srv/shop"\nservice = "a b"'), "app.service"),
        (MINIMAL.replace("<ops@shop.example>", "ops@shop.example"), "must look like 'Name <email@"),
        (MINIMAL + 'name = "Bad_Name"\n', "package.name 'Bad_Name' is not a valid Debian package name"),
        (MINIMAL + "[health]\ntimeout = 0\n", "health.timeout must be a positive number"),
        (MINIMAL + '[health]\nurl = "127.0.0.1:5000/health"\n', "must be an http:// or https:// URL"),
        (MINIMAL + "[backups]\nkeep = 0\n", "backups.keep must be at least 1"),
        (MINIMAL + '[migrations]\ndatabase = "/opt/x.db"\n', "migrations.database '/opt/x.db' must be a da"),
        (MINIMAL + '[migrations]\ndir = "../migrations"\n', "migrations.dir '../migrations' must be a path"),
        (MINIMAL + '[files]\nconfig = ["/etc/app.conf"]\n', "files.config entry '/etc/app.conf' must be"),
        (MINIMAL.replace('root = "/srv/shop"', 'root = "/srv/shop"\nunit_file = "../x"'), "app.unit_file"),
        (
            MINIMAL.replace('root = "/srv/shop"', 'root = "/srv/shop"\nwritable = ["../var"]'),
            "app.writable entry",
        ),
        # the app's account must be able to write its database's directory; the tree is root's
        (
            MINIMAL + '[migrations]\ndatabase = "sqlite:////srv/shop/shop.db"\n',
            "migrations.database 'sqlite:////srv/shop/shop.db' is in /srv/shop, which app.writable does not"
            " list: the app's account could not write its own database; keep it in a data directory:"
            ' writable = ["data"] and database = "sqlite:////srv/shop/data/shop.db"',
        ),
        (
            MINIMAL.replace('root = "/srv/shop"', 'root = "/srv/shop"\nwritable = ["data"]')
            + '[migrations]\ndatabase = "sqlite:////srv/shop/cache/shop.db"\n',
            "is in /srv/shop/cache, which app.writable does not list",
        ),
    ],
)
def test_errors_name_the_file_and_key(text: str, expected: str) -> None:
    assert expected in _error(text)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("name", '"shop\\n"'),
        ("user", '"shop\\n"'),
        ("service", '"shop.service\\n"'),
    ],
)
def test_trailing_newlines_are_refused(key: str, value: str) -> None:
    base = '[app]\nname = "shop"\nroot = "/srv/shop"\n[package]\nmaintainer = "A <a@b.c>"\n'
    text = base.replace(f'{key} = "shop"\n', "") if key == "name" else base
    text = text.replace("[app]\n", f"[app]\n{key} = {value}\n", 1)
    assert f"app.{key}" in _error(text)


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        (MINIMAL + '[health]\ntimeout = "60"\n', "write it like timeout = 60"),
        (MINIMAL + "[backups]\nkeep = 2.5\n", "write it like keep = 5"),
        (MINIMAL + '[files]\nexclude = "docs/**"\n', 'write it like exclude = ["a", "b"]'),
        ("[app\n", "fix the syntax there"),
        (MINIMAL + "[server]\n", "known sections:"),
        ('[app]\nname = "x"\n', "add it under [app]"),
    ],
)
def test_errors_say_how_to_fix_them(text: str, hint: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads(text)
    assert info.value.hint is not None and hint in info.value.hint


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "+inf", "-5", "0.0", "3600.5", "86400", "1e308"])
def test_health_timeout_must_be_finite_and_bounded(value: str) -> None:
    message = _error(MINIMAL + f"[health]\ntimeout = {value}\n")
    assert "health.timeout must be a positive number of seconds, at most 3600" in message
    assert f"(not {tomllib.loads(f'v = {value}')['v']!r})" in message  # names the value given
    assert "write it like timeout = 60" in message  # and the fix


@pytest.mark.parametrize("value", ["0.5", "1", "3600", "3600.0"])
def test_health_timeout_bounds_are_inclusive_of_an_hour(value: str) -> None:
    assert loads(MINIMAL + f"[health]\ntimeout = {value}\n").health.timeout == float(value)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("files", "config", '["conf\\u001b.py"]'),
        ("migrations", "dir", '"migr\\tations"'),
    ],
)
def test_paths_with_control_characters_are_refused(section: str, key: str, value: str) -> None:
    message = _error(MINIMAL + f"[{section}]\n{key} = {value}\n")
    assert "contains a control character" in message


def test_unit_file_with_a_control_character_is_refused() -> None:
    text = MINIMAL.replace(
        'root = "/srv/shop"', 'root = "/srv/shop"\nunit_file = "deploy/shop\\u001b.service"'
    )
    assert "app.unit_file 'deploy/shop\\x1b.service' contains a control character" in _error(text)


def test_maintainer_cannot_inject_control_fields() -> None:
    text = MINIMAL.replace('"Shop Ops <ops@shop.example>"', '"Shop Ops\\nDepends: evil <ops@shop.example>"')
    assert "package.maintainer" in _error(text)


def test_load_missing_file_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path / CONFIG_NAME)
    assert str(tmp_path / CONFIG_NAME) in str(info.value)
    assert "nesop-deb init" in str(info.value)


def test_load_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / CONFIG_NAME
    path.write_bytes(b"\xff\xfe[app]\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load(path)


@pytest.mark.parametrize(
    ("section", "said"),
    [
        ('[dependencies]\nvenv = "venv"\n', "dependencies.python missing"),
        ('[dependencies]\npython = "3.13"\narchitecture = "i386"\n', "dependencies.architecture 'i386'"),
        ('[dependencies]\npython = "3.13"\nvenv = "lib/venv"\n', "must be one name directly in the app root"),
        ('[dependencies]\npython = "3.13"\nvenv = "backups"\n', "must be one name directly in the app root"),
        ('[dependencies]\npython = "3"\n', "is not a major.minor version"),
    ],
)
def test_dependencies_mistakes_are_refused(section: str, said: str) -> None:
    assert said in _error(MINIMAL + section)


def test_dependencies_defaults() -> None:
    deps = loads(MINIMAL + '[dependencies]\npython = "3.11"\n').dependencies
    assert deps is not None
    assert (deps.requirements, deps.venv, deps.python, deps.architecture) == (
        "requirements.txt",
        "venv",
        "3.11",
        "amd64",
    )

"""The app's ``nesop-deb.toml`` (contract: docs/architecture.md §17), loaded into frozen values.

Every app-specific value the builder and the runtime use comes from here. Unknown keys and wrong
types are errors naming the file, the key and the fix: a typo must never silently fall back to a
default on a production server.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from nesop_deb.errors import ConfigError
from nesop_deb.paths import app_root_problem, control_character

CONFIG_NAME = "nesop-deb.toml"

# Debian Policy §5.6.1: package names are lower case letters, digits, + - . and start alnum.
# Names end up in control fields and scripts: always fullmatch() ("$" would accept a final "\n").
_PACKAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.@\\-]+\.service$")
_SOCKET_NAME = re.compile(r"^[A-Za-z0-9:_.@\\-]+\.socket$")
_USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]*\$?$")
# An update waits this long at most for the app to answer: an hour covers the slowest start,
# while a larger value (or inf, nan) would leave a failed update hanging instead of undone.
MAX_HEALTH_TIMEOUT = 3600
DEFAULT_LOCK_TIMEOUT = 10.0  # seconds a PostgreSQL migration waits for a lock before it fails
MAX_LOCK_TIMEOUT = 600


def is_package_name(name: str) -> bool:
    return _PACKAGE_NAME.fullmatch(name) is not None


def is_unit_name(name: str) -> bool:
    return _UNIT_NAME.fullmatch(name) is not None


def is_socket_name(name: str) -> bool:
    return _SOCKET_NAME.fullmatch(name) is not None


def socket_name(service: str) -> str:
    """The socket unit of ``service`` (``shop.service`` -> ``shop.socket``)."""
    return service.removesuffix(".service") + ".socket"


def is_account_name(name: str) -> bool:
    return _USER_NAME.fullmatch(name) is not None


def health_timeout_ok(value: float) -> bool:
    """Whether ``value`` is a usable health timeout in seconds: finite, above 0, at most an hour."""
    return math.isfinite(value) and 0 < value <= MAX_HEALTH_TIMEOUT


@dataclass(frozen=True)
class AppConfig:
    name: str
    root: PurePosixPath
    user: str
    group: str
    service: str
    unit_file: str | None = None
    writable: tuple[str, ...] = ()  # app-relative directories the app's account owns
    # the app's systemd socket unit (app-relative), installed as <service stem>.socket
    socket_file: str | None = None


@dataclass(frozen=True)
class PackageConfig:
    name: str
    maintainer: str
    section: str = "admin"


@dataclass(frozen=True)
class FilesConfig:
    exclude: tuple[str, ...] = ()
    config: tuple[str, ...] = ()


@dataclass(frozen=True)
class MigrationsConfig:
    dir: str = "migrations"
    database: str | None = None
    credentials: str | None = None  # PostgreSQL: a root-only libpq password file on the server
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT  # PostgreSQL: how long a migration waits for a lock


@dataclass(frozen=True)
class HealthConfig:
    url: str | None = None
    timeout: float = 60.0
    pages: tuple[str, ...] = ()


@dataclass(frozen=True)
class BackupsConfig:
    keep: int = 5


# The Debian architectures an update with compiled wheels can target, and the wheel platform
# (manylinux) machine each one is.
ARCHITECTURES = {"amd64": "x86_64", "arm64": "aarch64"}
_PYTHON_VERSION = re.compile(r"3\.[0-9]{1,2}")


@dataclass(frozen=True)
class DependenciesConfig:
    """``[dependencies]``: the app's pinned requirements and the virtualenv it runs from."""

    requirements: str = "requirements.txt"  # repository-relative, pinned with hashes
    venv: str = "venv"  # app-relative: always the active virtualenv (a link the runtime switches)
    python: str = ""  # the servers' python3, major.minor ("3.13")
    architecture: str = "amd64"  # the servers' Debian architecture


@dataclass(frozen=True)
class Config:
    app: AppConfig
    package: PackageConfig
    files: FilesConfig = field(default_factory=FilesConfig)
    migrations: MigrationsConfig = field(default_factory=MigrationsConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    backups: BackupsConfig = field(default_factory=BackupsConfig)
    dependencies: DependenciesConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data, as recorded in an update's manifest."""
        return {
            "app": {
                "name": self.app.name,
                "root": str(self.app.root),
                "user": self.app.user,
                "group": self.app.group,
                "service": self.app.service,
                "unit_file": self.app.unit_file,
                "writable": list(self.app.writable),
                **({"socket_file": self.app.socket_file} if self.app.socket_file is not None else {}),
            },
            "package": {"name": self.package.name, "maintainer": self.package.maintainer},
            "files": {"exclude": list(self.files.exclude), "config": list(self.files.config)},
            "migrations": {
                "dir": self.migrations.dir,
                "database": self.migrations.database,
                **(
                    {"credentials": self.migrations.credentials}
                    if self.migrations.credentials is not None
                    else {}
                ),
                **(
                    {"lock_timeout": self.migrations.lock_timeout}
                    if self.migrations.lock_timeout != DEFAULT_LOCK_TIMEOUT
                    else {}
                ),
            },
            "health": {
                "url": self.health.url,
                "timeout": self.health.timeout,
                "pages": list(self.health.pages),
            },
            "backups": {"keep": self.backups.keep},
            **(
                {
                    "dependencies": {
                        "requirements": self.dependencies.requirements,
                        "venv": self.dependencies.venv,
                        "python": self.dependencies.python,
                        "architecture": self.dependencies.architecture,
                    }
                }
                if self.dependencies is not None
                else {}
            ),
        }


# section -> key -> (accepted types, required)
_SCHEMA: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "app": {
        "name": ((str,), True),
        "root": ((str,), True),
        "user": ((str,), False),
        "group": ((str,), False),
        "service": ((str,), False),
        "unit_file": ((str,), False),
        "socket_file": ((str,), False),
        "writable": ((list,), False),
    },
    "package": {"name": ((str,), False), "maintainer": ((str,), False), "section": ((str,), False)},
    "files": {"exclude": ((list,), False), "config": ((list,), False)},
    "migrations": {
        "dir": ((str,), False),
        "database": ((str,), False),
        "credentials": ((str,), False),
        "lock_timeout": ((int, float), False),
    },
    "health": {"url": ((str,), False), "timeout": ((int, float), False), "pages": ((list,), False)},
    "backups": {"keep": ((int,), False)},
    "dependencies": {
        "requirements": ((str,), False),
        "venv": ((str,), False),
        "python": ((str,), False),
        "architecture": ((str,), False),
    },
}
_TYPE_NAMES = {str: "a string", list: "a list of strings", int: "a number", float: "a number"}
_TYPE_EXAMPLES = {str: '"text"', list: '["a", "b"]', int: "5", float: "60"}


def _check_shape(data: dict[str, Any], source: str) -> None:
    for section, values in data.items():
        if section not in _SCHEMA:
            known = ", ".join(f"[{s}]" for s in _SCHEMA)
            raise ConfigError(f"{source}: unknown section [{section}]", hint=f"known sections: {known}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: {section} must be a table ([{section}])")
        for key, value in values.items():
            spec = _SCHEMA[section].get(key)
            if spec is None:
                known = ", ".join(_SCHEMA[section])
                raise ConfigError(f"{source}: unknown key {section}.{key}", hint=f"known keys: {known}")
            types, _ = spec
            # bool is an int in Python; a boolean is never a valid value here
            if isinstance(value, bool) or not isinstance(value, types):
                raise ConfigError(
                    f"{source}: {section}.{key} must be {_TYPE_NAMES[types[0]]}, not {type(value).__name__}",
                    hint=f"write it like {key} = {_TYPE_EXAMPLES[types[-1]]}",
                )
            if isinstance(value, list) and not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{source}: {section}.{key} must be a list of strings")
    for section, keys in _SCHEMA.items():
        for key, (_, required) in keys.items():
            if required and key not in data.get(section, {}):
                raise ConfigError(f"{source}: missing {section}.{key}", hint=f"add it under [{section}]")


def _relative(value: str, what: str, source: str) -> str:
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or not value:
        raise ConfigError(f"{source}: {what} {value!r} must be a path inside the repository")
    if control_character(value) is not None:  # the runtime refuses it in a manifest
        raise ConfigError(f"{source}: {what} {value!r} contains a control character", hint="rename it")
    return str(path)


def parse(data: dict[str, Any], source: str = CONFIG_NAME) -> Config:
    """Validate raw TOML data and build a :class:`Config`."""
    _check_shape(data, source)
    app = data["app"]
    name = app["name"]
    if not _PACKAGE_NAME.fullmatch(name):
        raise ConfigError(
            f"{source}: app.name {name!r} is not a valid Debian package name",
            hint="use lower case letters, digits, '+', '-' and '.'",
        )
    problem = app_root_problem(app["root"])
    if problem is not None:
        raise ConfigError(
            f"{source}: app.root {app['root']!r} {problem}", hint=f"use a directory like /opt/{name}"
        )
    root = PurePosixPath(app["root"])
    user = app.get("user", "root")
    group = app.get("group", user)
    for key, value in (("user", user), ("group", group)):
        if not _USER_NAME.fullmatch(value):
            raise ConfigError(f"{source}: app.{key} {value!r} is not a valid user or group name")
    service = app.get("service", f"{name}.service")
    if not service.endswith(".service"):
        service += ".service"
    if not _UNIT_NAME.fullmatch(service):
        raise ConfigError(f"{source}: app.service {service!r} is not a valid systemd service name")
    unit_file = app.get("unit_file")
    if unit_file is not None:
        unit_file = _relative(unit_file, "app.unit_file", source)
    writable = tuple(sorted({_relative(w, "app.writable entry", source) for w in app.get("writable", ())}))
    socket_file = app.get("socket_file")
    if socket_file is not None:
        socket_file = _relative(socket_file, "app.socket_file", source)
        if unit_file is None:
            raise ConfigError(
                f"{source}: app.socket_file {socket_file!r} needs app.unit_file: the socket starts the"
                " service the package installs",
                hint="set [app] unit_file to the service's unit file in the repository",
            )
        if socket_file == unit_file:
            raise ConfigError(
                f"{source}: app.socket_file and app.unit_file are both {socket_file!r}",
                hint="name the .socket file in socket_file and the .service file in unit_file",
            )

    pkg = data.get("package", {})
    package_name = pkg.get("name", f"{name}-update")
    if not _PACKAGE_NAME.fullmatch(package_name):
        raise ConfigError(f"{source}: package.name {package_name!r} is not a valid Debian package name")
    maintainer = pkg.get("maintainer", "")
    if not re.fullmatch(r"[^<>\n]+ <[^<>@\s]+@[^<>\s]+>", maintainer):
        raise ConfigError(
            f"{source}: package.maintainer {maintainer!r} must look like 'Name <email@example.com>'",
            hint="set [package] maintainer",
        )

    files = data.get("files", {})
    mig = data.get("migrations", {})
    health = data.get("health", {})
    timeout = float(health.get("timeout", 60))
    if not health_timeout_ok(timeout):  # TOML also has nan and inf
        raise ConfigError(
            f"{source}: health.timeout must be a positive number of seconds, at most {MAX_HEALTH_TIMEOUT} "
            f"(not {health['timeout']!r})",
            hint="write it like timeout = 60",
        )
    url = health.get("url")
    if url is not None and not re.match(r"^https?://", url):
        raise ConfigError(f"{source}: health.url {url!r} must be an http:// or https:// URL")
    keep = data.get("backups", {}).get("keep", 5)
    if keep < 1:
        raise ConfigError(f"{source}: backups.keep must be at least 1 (the backup of the current version)")
    database = mig.get("database")
    if database is not None and not re.match(r"^[a-z0-9+]+://", database):
        raise ConfigError(
            f"{source}: migrations.database {database!r} must be a database URL",
            hint=f"e.g. sqlite:///{root}/data/app.db",
        )
    if database is not None and not database.startswith(("sqlite:///", "postgresql://")):
        scheme = database.split("://", 1)[0]
        raise ConfigError(
            f"{source}: migrations.database {database!r}: the server runtime supports SQLite and"
            f" PostgreSQL, not {scheme}",
            hint=f"use a sqlite:/// URL such as sqlite:///{root}/data/app.db, or postgresql:///dbname",
        )
    if database is not None and database.startswith("sqlite:///") and not database.startswith("sqlite:////"):
        raise ConfigError(
            f"{source}: migrations.database {database!r} names a relative path; the server needs an"
            " absolute one",
            hint=f"write sqlite:/// and the absolute path, e.g. sqlite:///{root}/data/app.db",
        )
    credentials, lock_timeout = _postgresql_settings(mig, database, source)
    _database_is_writable(database, root, writable, source)
    dependencies = _dependencies(data.get("dependencies"), writable, source)
    return Config(
        app=AppConfig(name, root, user, group, service, unit_file, writable, socket_file),
        package=PackageConfig(package_name, maintainer, pkg.get("section", "admin")),
        files=FilesConfig(
            tuple(files.get("exclude", ())),
            tuple(_relative(p, "files.config entry", source) for p in files.get("config", ())),
        ),
        migrations=MigrationsConfig(
            _relative(mig.get("dir", "migrations"), "migrations.dir", source),
            database,
            credentials,
            lock_timeout,
        ),
        health=HealthConfig(url, timeout, tuple(health.get("pages", ()))),
        backups=BackupsConfig(keep),
        dependencies=dependencies,
    )


def _postgresql_settings(mig: dict[str, Any], database: str | None, source: str) -> tuple[str | None, float]:
    """``credentials`` and ``lock_timeout``, which only a PostgreSQL database takes."""
    credentials, lock_timeout = mig.get("credentials"), mig.get("lock_timeout", DEFAULT_LOCK_TIMEOUT)
    postgresql = database is not None and database.startswith("postgresql://")
    for key in ("credentials", "lock_timeout"):
        if key in mig and not postgresql:
            raise ConfigError(
                f"{source}: migrations.{key} applies to a postgresql:// database only",
                hint=f"remove {key}, or set database to a postgresql:// URL",
            )
    if postgresql:
        assert database is not None
        parts = urlsplit(database)
        if parts.password is not None or "password" in dict(parse_qsl(parts.query)):
            raise ConfigError(
                f"{source}: migrations.database has a password in it: the package would carry it",
                hint='remove it; name a root-only password file on the server with credentials = "/etc/..."',
            )
        if credentials is not None and not credentials.startswith("/"):
            raise ConfigError(
                f"{source}: migrations.credentials {credentials!r} must be an absolute path on the server",
                hint='e.g. credentials = "/etc/nesop-update/app.pgpass" (root:root, mode 0600)',
            )
    if not (isinstance(lock_timeout, int | float) and 0 < lock_timeout <= MAX_LOCK_TIMEOUT):
        raise ConfigError(
            f"{source}: migrations.lock_timeout must be a positive number of seconds, at most"
            f" {MAX_LOCK_TIMEOUT} (not {lock_timeout!r})",
            hint="write it like lock_timeout = 10",
        )
    return credentials, float(lock_timeout)


def _dependencies(
    section: dict[str, Any] | None, writable: tuple[str, ...], source: str
) -> DependenciesConfig | None:
    if section is None:
        return None
    python = section.get("python")
    if python is None or not _PYTHON_VERSION.fullmatch(python):
        shown = "missing" if python is None else f"{python!r} is not a major.minor version"
        raise ConfigError(
            f"{source}: dependencies.python {shown}: the wheels are fetched for the servers' Python",
            hint='set it to their python3 version: python = "3.11" on Debian 12, "3.13" on Debian 13',
        )
    arch = section.get("architecture", "amd64")
    if arch not in ARCHITECTURES:
        raise ConfigError(
            f"{source}: dependencies.architecture {arch!r} is not one this builder fetches wheels for",
            hint=f"use the servers' `dpkg --print-architecture`: one of {', '.join(ARCHITECTURES)}",
        )
    venv = _relative(section.get("venv", "venv"), "dependencies.venv", source)
    if "/" in venv or venv in ("backups", "logs", "."):
        raise ConfigError(
            f"{source}: dependencies.venv {venv!r} must be one name directly in the app root, and not"
            " backups or logs",
            hint='e.g. venv = "venv"',
        )
    if any(venv == w or venv.startswith(w + "/") or w.startswith(venv + "/") for w in writable):
        raise ConfigError(
            f"{source}: dependencies.venv {venv!r} is in (or holds) a directory app.writable lists:"
            " the app's account could change the code root runs to build it",
            hint='keep it beside the code, e.g. venv = "venv"',
        )
    return DependenciesConfig(
        requirements=_relative(
            section.get("requirements", "requirements.txt"), "dependencies.requirements", source
        ),
        venv=venv,
        python=python,
        architecture=arch,
    )


def _database_is_writable(
    database: str | None, root: PurePosixPath, writable: tuple[str, ...], source: str
) -> None:
    """A SQLite database inside the app's tree must be in a directory its account may write: the
    tree itself is root's, and SQLite writes its journal beside the database."""
    if database is None or not database.startswith("sqlite:///"):
        return
    path = PurePosixPath(database[len("sqlite:///") :])
    if root not in path.parents:
        return
    rel = path.parent.relative_to(root).as_posix()
    if not any(rel == w or rel.startswith(w + "/") for w in writable):
        raise ConfigError(
            f"{source}: migrations.database {database!r} is in {path.parent}, which app.writable does not"
            " list: the app's account could not write its own database",
            hint=f'keep it in a data directory: writable = ["data"] and database = "sqlite:///{root}/data/{path.name}"',
        )


def loads(text: str, source: str = CONFIG_NAME) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{source}: not valid TOML: {exc}", hint="fix the syntax there (see https://toml.io)"
        ) from exc
    return parse(data, source)


def load(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file", hint="run `nesop-deb init` in the app repository to write one"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    return loads(text, str(path))

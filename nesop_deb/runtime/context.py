"""Every server path in one place, derived from the package name, the app settings and $DPKG_ROOT.

Nothing in the runtime spells a path literally: tests point ``root`` at a temporary directory and
``dpkg --root`` (which sets DPKG_ROOT for the scripts) works without special cases.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from nesop_deb.config import DEFAULT_LOCK_TIMEOUT, Config, socket_name
from nesop_deb.runtime import database as database_


def _under(root: Path, absolute: str | PurePosixPath) -> Path:
    return root / str(absolute).lstrip("/")


@dataclass(frozen=True)
class AppSettings:
    """The app settings an update carries in its manifest (``config`` there)."""

    name: str
    root: str
    user: str
    group: str
    service: str
    unit_file: str | None
    database: str | None
    migrations_dir: str
    health_url: str | None
    health_timeout: float
    health_pages: tuple[str, ...]
    keep_backups: int
    config_files: tuple[str, ...]
    writable: tuple[str, ...] = ()  # app-relative directories the app's account owns
    venv: str | None = None  # app-relative: the link to the active virtualenv ([dependencies])
    socket_file: str | None = None  # app-relative: the app's socket unit ([app] socket_file)
    database_credentials: str | None = None  # PostgreSQL: a root-only libpq password file
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT  # PostgreSQL: seconds a migration waits for a lock

    @property
    def socket(self) -> str:
        """The name the app's socket unit has (installed or not)."""
        return socket_name(self.service)

    def is_writable(self, rel: str) -> bool:
        """Whether ``rel`` is in (or is) a directory the app's account owns."""
        return any(rel == w or rel.startswith(w + "/") for w in self.writable)

    @classmethod
    def from_manifest_config(cls, cfg: dict[str, Any]) -> AppSettings:
        app, mig, health = cfg["app"], cfg.get("migrations", {}), cfg.get("health", {})
        return cls(
            name=app["name"],
            root=app["root"],
            user=app.get("user", "root"),
            group=app.get("group", app.get("user", "root")),
            service=app["service"],
            unit_file=app.get("unit_file"),
            database=mig.get("database"),
            migrations_dir=mig.get("dir", "migrations"),
            health_url=health.get("url"),
            health_timeout=float(health.get("timeout", 60)),
            health_pages=tuple(health.get("pages", ())),
            keep_backups=int(cfg.get("backups", {}).get("keep", 5)),
            config_files=tuple(cfg.get("files", {}).get("config", ())),
            writable=tuple(app.get("writable", ())),
            venv=cfg.get("dependencies", {}).get("venv"),
            socket_file=app.get("socket_file"),
            database_credentials=mig.get("credentials"),
            lock_timeout=float(mig.get("lock_timeout", DEFAULT_LOCK_TIMEOUT)),
        )

    @classmethod
    def from_config(cls, config: Config) -> AppSettings:
        """The settings of an app's ``nesop-deb.toml``: what its packages would carry."""
        return cls.from_manifest_config(config.to_dict())

    def to_config(self) -> dict[str, Any]:
        """The settings as a manifest's ``config`` holds them (:meth:`from_manifest_config` reads
        it back): what an adoption records, so that later commands need no config file."""
        return {
            "app": {
                "name": self.name,
                "root": self.root,
                "user": self.user,
                "group": self.group,
                "service": self.service,
                "unit_file": self.unit_file,
                "writable": list(self.writable),
                **({"socket_file": self.socket_file} if self.socket_file is not None else {}),
            },
            "files": {"config": list(self.config_files)},
            "migrations": {
                "dir": self.migrations_dir,
                "database": self.database,
                **({"credentials": self.database_credentials} if self.database_credentials else {}),
                **({"lock_timeout": self.lock_timeout} if self.lock_timeout != DEFAULT_LOCK_TIMEOUT else {}),
            },
            "health": {
                "url": self.health_url,
                "timeout": self.health_timeout,
                "pages": list(self.health_pages),
            },
            "backups": {"keep": self.keep_backups},
            **({"dependencies": {"venv": self.venv}} if self.venv is not None else {}),
        }


@dataclass(frozen=True)
class Context:
    package: str
    app: AppSettings
    root: Path = Path("/")

    @classmethod
    def for_package(cls, package: str, app: AppSettings) -> Context:
        return cls(package, app, Path(os.environ.get("DPKG_ROOT") or "/"))

    def host(self, absolute: str | PurePosixPath) -> Path:
        """A path on the managed system (below DPKG_ROOT)."""
        return _under(self.root, absolute)

    @property
    def app_root(self) -> Path:
        return self.host(self.app.root)

    def app_path(self, rel: str) -> Path:
        return self.app_root / rel

    @property
    def share(self) -> Path:
        """Where dpkg unpacked the installed package's files."""
        return self.host(f"/usr/share/{self.package}")

    @property
    def state_dir(self) -> Path:
        return self.host(f"/var/lib/{self.package}")

    @property
    def wheels_dir(self) -> Path:
        """The wheel store: every wheel the updates shipped, root's (see :mod:`runtime.deps`)."""
        return self.state_dir / "wheels"

    @property
    def venvs_dir(self) -> Path:
        """The virtualenvs root built for the app, one per requirements set; the app's ``venv``
        link names one. Root's and outside the app tree (see :mod:`runtime.deps`)."""
        return self.host(f"/opt/venvs/{self.package}")

    @property
    def backups_dir(self) -> Path:
        return self.app_root / "backups"

    @property
    def logs_dir(self) -> Path:
        return self.app_root / "logs"

    @property
    def log_file(self) -> Path:
        return self.logs_dir / "update.log"

    @property
    def history_file(self) -> Path:
        return self.logs_dir / "update_history.json"

    @property
    def database_path(self) -> Path | None:
        """A SQLite database's file on this host; None for none or another engine."""
        url = self.app.database
        if url is None or not url.startswith("sqlite:///"):
            return None
        return self.host(url[len("sqlite:///") :])

    @property
    def database(self) -> database_.Database | None:
        """The app's database, through the engine its URL names (see :mod:`runtime.database`)."""
        url = self.app.database
        if url is None:
            return None
        from nesop_deb.runtime import accounts

        path = self.database_path
        credentials = self.app.database_credentials
        return database_.of(
            url,
            owner=accounts.app_owner(self),
            host_path=path if path is not None else Path("/"),
            app_root=self.app_root,
            credentials=None if credentials is None else self.host(credentials),
            lock_timeout=self.app.lock_timeout,
        )

"""The example store on PostgreSQL: the repository of a deployment that moved to it, and a
booted server running it (Debian's PostgreSQL, the store's account connecting by peer
authentication, as the runtime's migrations do).

The example's own nesop-deb.toml stays on SQLite; a deployment on PostgreSQL changes two lines of
it (``[migrations] dir`` and ``database``, see examples/nesop-store/README.md). :func:`make_repo`
does that on a branch of the release history: ``pg/1.3.0`` is v1.3.0 with those two lines, and
``pg/1.3.1`` is v1.3.1's change on top of it, and the tags v1.3.0 and v1.3.1 of the clone move
to them (the deployment's own release history).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import postgres, store
from .testbed import Container

DBNAME = "nesop_store"
URL = postgres.database_url(DBNAME)
PYTHONS = {"bookworm": "3.11", "trixie": "3.13"}  # each Debian release's python3
CONFIG_PYTHON = "3.13"  # [dependencies] python of the example's nesop-deb.toml
DROP_IN = "/etc/systemd/system/nesop-store.service.d/local.conf"


def python_for(suite: str) -> tuple[str, ...]:
    """The build options that target ``suite``'s python3 when it is not the one the example's
    nesop-deb.toml names (the 1.3 releases build a virtualenv)."""
    python = PYTHONS[suite]
    return () if python == CONFIG_PYTHON else ("--python", python)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **store.GIT_ENV},
    ).stdout


@dataclass
class PgRepo:
    repo: store.ExampleRepo

    @property
    def path(self) -> Path:
        return self.repo.path

    def commit(self, branch: str, base: str, edits: dict[str, str], message: str) -> str:
        """A branch ``branch`` from ``base`` with files replaced (path → new text); its name."""
        _git(self.path, "checkout", "-q", "-B", branch, base)
        for rel, text in edits.items():
            target = self.path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        _git(self.path, "add", "-A")
        _git(self.path, "commit", "-q", "-m", message)
        return branch

    def read(self, ref: str, rel: str) -> str:
        return _git(self.path, "show", f"{ref}:{rel}")

    def build(self, suite: str, ref: str, *args: str) -> Path:
        """``ref``'s package for the servers of ``suite`` (their python3 given when it is not the
        one nesop-deb.toml names)."""
        key = f"pg-{suite}-{ref.replace('/', '-')}{'-'.join(('', *args))}"
        return self.repo.build(ref, *args, *python_for(suite), name=key)

    def full(self, suite: str) -> Path:
        return self.build(suite, "v1.3.0", "--full")

    def update(self, suite: str) -> Path:
        return self.build(suite, "v1.3.1")


def make_repo(example: store.ExampleRepo, where: Path) -> PgRepo:
    """A clone of the release history with the PostgreSQL branches (see the module's doc)."""
    clone = where / "nesop-store-pg"
    subprocess.run(
        ["git", "clone", "-q", str(example.path), str(clone)], check=True, env={**os.environ, **store.GIT_ENV}
    )
    out = where / "debs-pg"
    out.mkdir()
    pg = PgRepo(store.ExampleRepo(clone, out))
    config = pg.read("v1.3.0", "nesop-deb.toml")
    sqlite_url = next(line for line in config.splitlines() if line.startswith("database = "))
    moved = config.replace('dir = "migrations"', 'dir = "migrations-postgresql"').replace(
        sqlite_url, f'database = "{URL}"'
    )
    assert 'dir = "migrations-postgresql"' in moved.splitlines() and URL in moved, moved
    pg.commit("pg/1.3.0", "v1.3.0", {"nesop-deb.toml": moved}, "Run the store on PostgreSQL")
    _git(clone, "checkout", "-q", "-B", "pg/1.3.1", "pg/1.3.0")
    _git(clone, "cherry-pick", "--allow-empty", "v1.3.0..v1.3.1")
    for version in ("1.3.0", "1.3.1"):
        _git(
            clone, "tag", "-f", "-a", "-m", f"Release {version} on PostgreSQL", f"v{version}", f"pg/{version}"
        )
    return pg


def prepare(box: Container) -> str:
    """What a server needs before the store's first install on PostgreSQL: the server started, the
    store's role and database, the service's local settings; returns the server's version."""
    version = postgres.start_postgresql(box)
    assert postgres.create_app_database(box, "nesop", DBNAME) == URL
    box.write_file(
        DROP_IN,
        "[Unit]\nAfter=postgresql.service\nWants=postgresql.service\n[Service]\n"
        f"Environment=NESOP_STORE_ADMIN_TOKEN={store.ADMIN_TOKEN}\n"
        f'Environment="DATABASE_URL={URL}"\n',
    )
    return version


def deploy(box: Container, toolchain: Path, pg: PgRepo, suite: str) -> str:
    """A server running 1.3.0 on PostgreSQL: the toolchain, :func:`prepare`, then the --full
    package; returns the server version."""
    store.install_toolchain(box, toolchain)
    version = prepare(box)
    result = store.apt_install(box, pg.full(suite))
    assert result.returncode == 0, result.stdout + result.stderr
    assert store.health(box)["version"] == "1.3.0"
    return version


def sql(box: Container, statement: str) -> str:
    """``statement`` as the store's account, on its database."""
    return postgres.psql(box, statement, user="nesop", db=URL)


def customer_emails(box: Container) -> set[str]:
    return set(sql(box, "SELECT email FROM customers").split())


def schema(box: Container) -> dict[str, Any]:
    """Tables and their columns in the store's schema, and the migrations yoyo recorded."""
    columns = sql(
        box,
        "SELECT table_name || '.' || column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' ORDER BY 1",
    ).split()
    migrations = sql(box, "SELECT migration_id FROM _yoyo_migration ORDER BY applied_at_utc").split()
    return {"columns": columns, "migrations": migrations}


def rows(box: Container) -> dict[str, Any]:
    """Every row of the store's own tables (yoyo's are left out: they record when)."""
    tables = sql(
        box, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename !~ '^_yoyo|^yoyo'"
    ).split()
    dump: dict[str, Any] = {}
    for table in sorted(tables):
        out = sql(box, f"SELECT coalesce(json_agg(t ORDER BY t::text), '[]') FROM {table} t")
        dump[table] = json.loads(out)
    return dump


def history(box: Container) -> list[dict[str, Any]]:
    return store.history(box)

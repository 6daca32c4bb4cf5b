"""Migrations through yoyo-migrations, for every engine.

yoyo applies each migration in its own transaction (SQLite's and PostgreSQL's DDL are
transactional; a migration marked ``-- transactional: false`` runs outside one) and records it
in its ``_yoyo_migration`` table; we only choose which migrations and in which direction, and run
them as :attr:`Database.owner`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from nesop_deb.runtime.database.base import Database, MigrationError, as_owner

TRACKING_TABLE = "_yoyo_migration"

Migrations = Any  # yoyo's MigrationList, every migration in it loaded


@contextlib.contextmanager
def _backend(url: str) -> Iterator[Any]:
    from yoyo import get_backend

    backend = get_backend(url)
    try:
        yield backend
    finally:
        with contextlib.suppress(Exception):
            backend.connection.close()


def read(directory: Path, ids: Sequence[str]) -> Migrations:
    """The migrations ``ids`` of ``directory``, read and parsed (rollbacks included).

    Importing yoyo and parsing take tens of milliseconds: an update does both before the stop
    and hands the result to :func:`apply` (a rollback to :func:`rollback`), so that the outage
    pays only for running them, and a migration that cannot be parsed fails the update while
    the old app still serves.
    """
    from yoyo import read_migrations

    wanted = set(ids)
    migrations = read_migrations(str(directory)).filter(lambda m: m.id in wanted)
    missing = sorted(wanted - {m.id for m in migrations})
    if missing:
        raise MigrationError(f"{directory}: migration(s) {', '.join(missing)} not found")
    for m in migrations:
        try:
            m.load()  # yoyo reads a migration's files only when first asked for its steps
        except Exception as exc:  # yoyo's own BadMigration, or whatever a malformed file raises
            raise MigrationError(f"cannot read migration {m.id}: {exc!r}") from exc
    return migrations


def applied_ids(db: Database) -> list[str]:
    """Ids of the migrations recorded in the tracking table, in the order applied.

    Read-only for a database yoyo never touched (a hand-deployed app): opening it through yoyo's
    schema upgrade would create yoyo's tables, and validate or an undo must not change the app's
    schema.
    """
    url = db.migration_url

    def read_ids() -> list[str]:
        if not db.exists() or not db.has_table(TRACKING_TABLE):
            return []
        with _backend(url) as backend:
            backend.ensure_internal_schema_updated()
            rows = backend.execute(
                f"SELECT migration_id FROM {TRACKING_TABLE} ORDER BY applied_at_utc"  # noqa: S608
            ).fetchall()
            return [str(r[0]) for r in rows]

    return as_owner(db.owner, read_ids)


def apply(db: Database, directory: Path, ids: Sequence[str], migrations: Migrations = None) -> list[str]:
    """Apply those of ``ids`` not yet applied, in name order; return the ids applied now.

    ``migrations``: what :func:`read` returned for the same ``directory`` and ``ids``, if the
    caller read them already."""
    from yoyo.exceptions import LockTimeout

    parsed = read(directory, ids) if migrations is None else migrations
    url = db.migration_url

    def run() -> list[str]:
        with _backend(url) as backend:
            try:
                with backend.lock():
                    todo = backend.to_apply(parsed)
                    done: list[str] = []
                    for m in sorted(todo, key=lambda m: m.id):
                        try:
                            backend.apply_one(m)
                        except Exception as exc:
                            raise MigrationError(f"migration {m.id} failed: {exc}") from exc
                        done.append(m.id)
                    return done
            except LockTimeout as exc:
                raise MigrationError(f"the database migration lock is held: {exc}") from exc

    return as_owner(db.owner, run)


def rollback(db: Database, directory: Path, ids: Sequence[str], migrations: Migrations = None) -> list[str]:
    """Roll back those of ``ids`` that are applied, newest first; return the ids rolled back.

    ``migrations``: as for :func:`apply`."""
    parsed = read(directory, ids) if migrations is None else migrations
    url = db.migration_url

    def run() -> list[str]:
        with _backend(url) as backend, backend.lock():
            todo = backend.to_rollback(parsed)
            done: list[str] = []
            for m in sorted(todo, key=lambda m: m.id, reverse=True):
                try:
                    backend.rollback_one(m)
                except Exception as exc:
                    raise MigrationError(f"rollback of migration {m.id} failed: {exc}") from exc
                done.append(m.id)
            return done

    return as_owner(db.owner, run)

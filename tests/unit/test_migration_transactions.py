"""Statements that cannot run in a migration's transaction are refused at build time, unless the
migration is marked to run outside one and holds that statement alone."""

from __future__ import annotations

import pytest

from nesop_deb.builder.migrations import check_transactional, runs_outside_transaction
from nesop_deb.errors import BuildError

MARK = "-- transactional: false\n"


@pytest.mark.parametrize(
    ("sql", "named"),
    [
        ("CREATE INDEX CONCURRENTLY items_name ON items (name);", "CREATE INDEX CONCURRENTLY"),
        ("create unique index\n  concurrently i ON items (name);", "CREATE UNIQUE INDEX CONCURRENTLY"),
        ("DROP INDEX CONCURRENTLY items_name;", "DROP INDEX CONCURRENTLY"),
        ("REINDEX TABLE CONCURRENTLY items;", "REINDEX TABLE CONCURRENTLY"),
        ("ALTER TABLE items ADD COLUMN x INT;\nVACUUM items;", "VACUUM"),
        ("CREATE DATABASE other;", "CREATE DATABASE"),
        ("ALTER SYSTEM SET work_mem = '64MB';", "ALTER SYSTEM"),
    ],
)
def test_a_statement_that_needs_no_transaction_is_refused_unmarked(sql: str, named: str) -> None:
    data = sql.encode()
    with pytest.raises(BuildError) as err:
        check_transactional("migrations/0007_x.sql", data, runs_outside_transaction(data))
    assert err.value.message == (
        f"migrations/0007_x.sql: {named} cannot run inside a transaction, and every migration runs in one"
    )
    assert err.value.hint is not None and "-- transactional: false" in err.value.hint


@pytest.mark.parametrize(
    "sql",
    [
        "-- vacuum later, by hand\nALTER TABLE items ADD COLUMN note TEXT;",
        "INSERT INTO notes (body) VALUES ('vacuum the shop floor');",
        "/* CREATE INDEX CONCURRENTLY would be better */ CREATE INDEX i ON items (name);",
        "CREATE FUNCTION f() RETURNS text AS $$ SELECT 'create database' $$ LANGUAGE sql;",
        "CREATE TABLE vacuums (id INTEGER PRIMARY KEY);",
    ],
)
def test_words_in_comments_strings_and_names_are_not_statements(sql: str) -> None:
    data = sql.encode()
    check_transactional("migrations/0007_x.sql", data, runs_outside_transaction(data))


def test_a_marked_migration_with_that_statement_alone_is_taken() -> None:
    data = (MARK + "CREATE INDEX CONCURRENTLY items_name ON items (name);\n").encode()
    assert runs_outside_transaction(data)
    check_transactional("migrations/0007_x.sql", data, True)


def test_a_marked_migration_with_several_statements_is_refused() -> None:
    data = (
        MARK + "CREATE INDEX CONCURRENTLY a ON items (name);\nCREATE INDEX CONCURRENTLY b ON items (id);"
    ).encode()
    with pytest.raises(BuildError, match="holds 2 statements"):
        check_transactional("migrations/0007_x.sql", data, True)


def test_a_rollback_follows_its_migration_s_mark() -> None:
    """yoyo runs a rollback the way it runs its migration: the migration's mark decides."""
    rollback = b"DROP INDEX CONCURRENTLY items_name;"
    check_transactional("migrations/0007_x.rollback.sql", rollback, True)
    with pytest.raises(BuildError, match="DROP INDEX CONCURRENTLY cannot run inside a transaction"):
        check_transactional("migrations/0007_x.rollback.sql", rollback, False)

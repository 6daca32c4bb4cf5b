"""The store's database: a SQLite file, or a PostgreSQL database.

config.py names it: DATABASE_URL, a ``postgresql://`` URL in libpq's form
(``postgresql:///nesop_store`` is the local socket, as the store's own
account), or, when that is empty, the SQLite file DATABASE. This module is
the one place that knows which engine it talks to. store.py writes its SQL
once for both, with ``?`` placeholders and nothing either engine lacks, and
runs it through a Connection from here.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.extras

POSTGRESQL_SCHEMES = ("postgresql://", "postgres://")
# A failure of either engine; and a broken constraint, such as a duplicate key.
Error = (sqlite3.Error, psycopg2.Error)
IntegrityError = (sqlite3.IntegrityError, psycopg2.IntegrityError)
# On PostgreSQL every write transaction takes this advisory lock first, so that
# writers take turns as on SQLite: the stock an order checks is the stock it
# then takes from.
WRITE_LOCK = 0x4E45534F50  # "NESOP"


def is_postgresql(target: str) -> bool:
    return target.startswith(POSTGRESQL_SCHEMES)


def target(url: str, path: str) -> str:
    """What to open: the database of ``url`` (DATABASE_URL) if it is set, else the SQLite file ``path``."""
    if url and not is_postgresql(url):
        scheme = url.partition(":")[0]
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, not a {scheme!r} one")
    return url or path


def describe(target: str) -> str:
    """``target`` as a log line or /health may show it: a URL without its password."""
    if not is_postgresql(target):
        return target
    parts = urllib.parse.urlsplit(target)
    user, at, host = parts.netloc.rpartition("@")
    query = "&".join(p for p in parts.query.split("&") if not p.startswith("password="))
    return urllib.parse.urlunsplit(parts._replace(netloc=user.partition(":")[0] + at + host, query=query))


class Connection:
    """An open connection to either engine, with the few operations the store needs.

    Outside write_transaction() each statement commits on its own. Rows answer
    by position and by column name, and dict(row) maps names to values.
    """

    def __init__(self, raw: Any, postgresql: bool) -> None:
        self.raw = raw
        self.postgresql = postgresql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement, a ``?`` for each parameter; the cursor, to fetch from."""
        if not self.postgresql:
            return self.raw.execute(sql, params)
        cursor = self.raw.cursor()
        cursor.execute(_psycopg2_sql(sql), params)
        return cursor

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not self.postgresql:
            self.raw.executemany(sql, rows)
            return
        with self.raw.cursor() as cursor:
            cursor.executemany(_psycopg2_sql(sql), rows)

    def insert(self, sql: str, params: Sequence[Any]) -> int:
        """Run an INSERT of one row into a table with an ``id`` column; the new row's id."""
        if self.postgresql:
            return int(self.execute(f"{sql} RETURNING id", params).fetchone()[0])
        return int(self.raw.execute(sql, params).lastrowid)

    @contextmanager
    def write_transaction(self) -> Iterator[None]:
        """Run the block in one transaction, committed when the block ends, rolled back if it raises.

        The write lock is taken up front (SQLite: BEGIN IMMEDIATE; PostgreSQL:
        WRITE_LOCK): a busy database makes the writer wait, for at most the
        busy timeout, instead of failing half-way when a read lock cannot be
        upgraded or writing what a concurrent order has changed meanwhile.
        """
        self.execute("BEGIN" if self.postgresql else "BEGIN IMMEDIATE")
        try:
            if self.postgresql:
                self.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK,))
            yield
        except BaseException:
            self.execute("ROLLBACK")
            raise
        self.execute("COMMIT")

    def tables(self) -> dict[str, set[str]]:
        """Each table of the database with its columns (on PostgreSQL, the tables of the current schema)."""
        if self.postgresql:
            sql = (
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema()"
            )
        else:
            sql = (
                "SELECT m.name, p.name FROM sqlite_master AS m, pragma_table_info(m.name) AS p"
                " WHERE m.type = 'table'"
            )
        found: dict[str, set[str]] = {}
        for table, column in self.execute(sql).fetchall():
            found.setdefault(table, set()).add(column)
        return found

    def close(self) -> None:
        self.raw.close()


def _psycopg2_sql(sql: str) -> str:
    """SQL with ``?`` placeholders as psycopg2 takes it: ``%s``, and a literal ``%`` doubled."""
    return sql.replace("%", "%%").replace("?", "%s")


def connect(target: str, busy_timeout_ms: int = 5000) -> Connection:
    """Open the store's database (see target()), which must exist: the migrations make it."""
    if is_postgresql(target):
        raw = psycopg2.connect(target, cursor_factory=psycopg2.extras.DictCursor)
        try:
            raw.autocommit = True  # transactions are explicit (write_transaction)
            with raw.cursor() as cursor:
                # How long a statement waits for a lock, the write lock among them.
                cursor.execute("SET lock_timeout = %s", (busy_timeout_ms,))
        except psycopg2.Error:
            raw.close()
            raise
        return Connection(raw, postgresql=True)
    # mode=rw: a missing database is an error to report, not an empty file to
    # create silently where the migrations will not look.
    uri = "file:" + urllib.parse.quote(target) + "?mode=rw"
    # isolation_level=None: transactions are explicit (write_transaction).
    conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout_ms / 1000, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        # WAL lets readers (and /health) run while an order is being written.
        # synchronous stays FULL: an acknowledged order survives a power cut too.
        conn.execute("PRAGMA journal_mode = WAL")
    except sqlite3.Error:
        conn.close()
        raise
    return Connection(conn, postgresql=False)

"""Grow the store's database, SQLite or PostgreSQL, to a given size with plausible,
deterministic rows.

Customers, their orders and the order lines: the tables a real store's database grows by. The
rows are made by SQL itself (a recursive CTE; ``generate_series`` on PostgreSQL), so hundreds of
megabytes take seconds. Run it while the store is stopped.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

MAX_BATCH = 50_000  # orders per transaction
PG_MAX_BATCH = 400_000  # orders per transaction on PostgreSQL
_EPOCH = 1735689600  # 2025-01-01: order dates are spread from there, one a minute

_INSERT = """
WITH RECURSIVE n(i) AS (SELECT :first UNION ALL SELECT i + 1 FROM n WHERE i < :last)
INSERT INTO {table} {columns} SELECT {values} FROM n
"""
_TABLES = (
    (
        "customers",
        "(id, name, email, created_at)",
        "i, 'Shopper ' || i, 'shopper' || i || '@example.com', "
        f"strftime('%Y-%m-%dT%H:%M:%SZ', {_EPOCH} + i * 60, 'unixepoch')",
    ),
    (
        "orders",
        "(id, email, total_cents, created_at)",
        "i, 'shopper' || i || '@example.com', 490 + (i * 7919) % 49500, "
        f"strftime('%Y-%m-%dT%H:%M:%SZ', {_EPOCH} + i * 60, 'unixepoch')",
    ),
    ("order_items", "(order_id, product_id, quantity, unit_price_cents)", "i, 1 + i % 8, 1 + i % 3, 1290"),
    ("order_items", "(order_id, product_id, quantity, unit_price_cents)", "i, 1 + (i + 3) % 8, 1, 890"),
)


def size_of(conn: sqlite3.Connection) -> int:
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    return int(pages) * int(page_size)


def grow(db: Path, target_bytes: int) -> int:
    """Add orders until the database holds at least ``target_bytes``; return its size then."""
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        first = int(conn.execute("SELECT coalesce(max(id), 0) FROM orders").fetchone()[0]) + 1
        first = max(first, int(conn.execute("SELECT coalesce(max(id), 0) FROM customers").fetchone()[0]) + 1)
        batch, current = 2_000, size_of(conn)
        while current < target_bytes:
            conn.execute("BEGIN IMMEDIATE")
            for table, columns, values in _TABLES:
                sql = _INSERT.format(table=table, columns=columns, values=values)
                conn.execute(sql, {"first": first, "last": first + batch - 1})
            conn.execute("COMMIT")
            first += batch
            grown, current = size_of(conn) - current, size_of(conn)
            # aim the next batch at what is left, from the bytes an order took in this one
            per_order = max(grown / batch, 1.0)
            batch = int(min(MAX_BATCH, max(500, (target_bytes - current) / per_order)))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return size_of(conn)


# The same rows on PostgreSQL (the store's migrations-postgresql schema): timestamps as the
# store writes them, ids given explicitly (the identity sequences are moved past them after).
_PG_STAMP = f"""to_char(to_timestamp({_EPOCH} + i * 60) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')"""
_PG_INSERT = (
    "INSERT INTO {table} {columns} SELECT {values} FROM generate_series({first}::bigint, {last}) AS i;"
)
_PG_EMAIL = "'shopper' || i || '@example.com'"
_PG_TOTAL = "490 + (i * 7919) % 49500"
_PG_TABLES = (
    ("customers", "(id, name, email, created_at)", f"i, 'Shopper ' || i, {_PG_EMAIL}, {_PG_STAMP}"),
    ("orders", "(id, email, total_cents, created_at)", f"i, {_PG_EMAIL}, {_PG_TOTAL}, {_PG_STAMP}"),
    ("order_items", "(order_id, product_id, quantity, unit_price_cents)", "i, 1 + i % 8, 1 + i % 3, 1290"),
    ("order_items", "(order_id, product_id, quantity, unit_price_cents)", "i, 1 + (i + 3) % 8, 1, 890"),
)  # fmt: skip
_PG_SIZE = "SELECT pg_database_size(current_database());"
_PG_SEQUENCES = "SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}));"


def pg_batch(first: int, last: int) -> str:
    """One transaction adding orders ``first`` to ``last`` with their customers and lines, then
    the database's size (the one line it prints)."""
    inserts = "\n".join(
        _PG_INSERT.format(table=table, columns=columns, values=values, first=first, last=last)
        for table, columns, values in _PG_TABLES
    )
    return f"BEGIN;\n{inserts}\nCOMMIT;\n{_PG_SIZE}\n"


def grow_postgresql(sql: Callable[[str], str], target_bytes: int) -> int:
    """Add orders through ``sql`` (runs statements as the database's owner, returns their
    output) until the database holds at least ``target_bytes``; move the identity sequences past
    the new rows, vacuum and analyze (so that no autovacuum writes during a measurement);
    return the database's size then."""
    first = int(sql("SELECT greatest((SELECT coalesce(max(id), 0) FROM orders), "
                    "(SELECT coalesce(max(id), 0) FROM customers));")) + 1  # fmt: skip
    batch, current = 5_000, int(sql(_PG_SIZE))
    while current < target_bytes:
        grown = int(sql(pg_batch(first, first + batch - 1)).splitlines()[-1])
        per_order = max((grown - current) / batch, 1.0)
        first, current = first + batch, grown
        batch = int(min(PG_MAX_BATCH, max(1_000, (target_bytes - current) / per_order)))
    sql("\n".join(_PG_SEQUENCES.format(table=t) for t in ("customers", "orders")) + "\nVACUUM ANALYZE;\n")
    return int(sql(_PG_SIZE))

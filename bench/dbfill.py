"""Grow the store's SQLite database to a given size with plausible, deterministic rows.

Customers, their orders and the order lines: the tables a real store's database grows by. The
rows are made by SQL itself (a recursive CTE), so hundreds of megabytes take seconds.
Run it while the store is stopped.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

MAX_BATCH = 50_000  # orders per transaction
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

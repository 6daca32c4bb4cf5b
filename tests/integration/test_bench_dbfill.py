"""The benchmark's database growth on PostgreSQL, against a throwaway server with the store's own
schema (1.3.0's migrations-postgresql/): the size reached, rows that hang together, and the store
still able to add its own rows after (the identity sequences moved past the ones added)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import dbfill

from . import pgserver

pytestmark = pytest.mark.integration

RELEASE = Path(__file__).resolve().parents[2] / "examples/nesop-store/releases/20-postgresql"
SCHEMA = RELEASE / "migrations-postgresql"
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def pg() -> Iterator[pgserver.PgServer]:
    with pgserver.for_tests("nesop-bench-pg") as server:
        yield server


def store_database(pg: pgserver.PgServer, name: str) -> str:
    pg.psql(f'CREATE DATABASE "{name}";')
    migrations = sorted(p for p in SCHEMA.glob("*.sql") if not p.name.endswith(".rollback.sql"))
    assert [p.stem for p in migrations][:2] == ["0001_initial", "0002_product_stock"]
    pg.psql("\n".join(p.read_text() for p in migrations), db=name)
    return name


def test_the_postgresql_database_grows_to_the_size_with_rows_the_store_can_add_to(
    pg: pgserver.PgServer,
) -> None:
    db = store_database(pg, "grow")
    pg.psql("INSERT INTO customers (name, email) VALUES ('Early', 'early@example.com');", db=db)

    def sql(statements: str) -> str:
        return pg.psql(statements, db=db).strip()

    size = dbfill.grow_postgresql(sql, 12 * MIB)
    assert size >= 12 * MIB
    assert size == int(sql("SELECT pg_database_size(current_database())"))
    customers, orders, lines = (
        int(sql(f"SELECT count(*) FROM {t}")) for t in ("customers", "orders", "order_items")
    )
    assert orders > 5_000 and customers == orders + 1 and lines == 2 * orders
    assert sql("SELECT count(*) FROM orders o JOIN customers c USING (email)") == str(orders)
    # the store's own inserts take the next ids: no collision with the ones the fill gave
    last = int(sql("SELECT max(id) FROM orders"))
    new_id = int(sql("INSERT INTO orders (email, total_cents) VALUES ('x@example.com', 1) RETURNING id"))
    assert new_id == last + 1

    # growing again continues after the existing rows
    larger = dbfill.grow_postgresql(sql, size + 4 * MIB)
    assert larger >= size + 4 * MIB
    added = int(sql("SELECT count(*) FROM orders")) - orders - 1
    assert added > 0 and int(sql(f"SELECT min(id) FROM orders WHERE id > {new_id}")) == new_id + 1

"""The runtime's PostgreSQL engine against a real server: snapshot and the check after the stop,
migrations with a lock timeout, undo keeping rows, restore in one transaction, credentials."""

from __future__ import annotations

import hashlib
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nesop_deb.runtime import database
from nesop_deb.runtime.database.postgresql import PostgresDatabase
from nesop_deb.runtime.safefs import Tree

from . import pgserver

NOBODY = (65534, 65534)


@pytest.fixture(scope="module")
def pg() -> Iterator[pgserver.PgServer]:
    with pgserver.for_tests("nesop-pg", password_roles=("shop",)) as server:
        yield server


_count = 0


@pytest.fixture
def dbname(pg: pgserver.PgServer) -> Iterator[str]:
    global _count
    _count += 1
    name = f"shop{_count}"
    pg.create_database(name, "root")
    yield name
    pg.drop_database(name)


def engine(pg: pgserver.PgServer, name: str, lock_timeout: float = 10) -> PostgresDatabase:
    return PostgresDatabase(pg.url(name), None, None, lock_timeout)


def sql(pg: pgserver.PgServer, name: str, statement: str) -> str:
    out = subprocess.run(
        [str(pg.bindir / "psql"), "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", pg.url(name), "-c", statement],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def write(directory: Path, name: str, up: str, down: str | None = None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.sql").write_text(up)
    if down is not None:
        (directory / f"{name}.rollback.sql").write_text(down)


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    d = tmp_path / "migrations"
    write(
        d,
        "0001_initial",
        "CREATE TABLE items (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL);",
        "DROP TABLE items;",
    )
    write(d, "0002_price", "ALTER TABLE items ADD COLUMN price INTEGER NOT NULL DEFAULT 0;",
          "ALTER TABLE items DROP COLUMN price;")  # fmt: skip
    return d


def test_a_quiet_database_is_known_unchanged_after_its_dump(
    pg: pgserver.PgServer, dbname: str, migrations: Path, tmp_path: Path
) -> None:
    db = engine(pg, dbname)
    database.apply(db, migrations, ["0001_initial"])
    sql(pg, dbname, "INSERT INTO items (name) VALUES ('apple')")
    with Tree.open(tmp_path) as here:
        held = db.snapshot_held(here, "early.pgdump")
        assert held.size > 0 and (tmp_path / "early.pgdump").read_bytes().startswith(b"PGDMP")
        assert held.unchanged() is True
        # a read changes nothing
        assert sql(pg, dbname, "SELECT name FROM items") == "apple"
        assert held.unchanged() is True


def test_a_commit_after_the_dump_is_seen(
    pg: pgserver.PgServer, dbname: str, migrations: Path, tmp_path: Path
) -> None:
    db = engine(pg, dbname)
    database.apply(db, migrations, ["0001_initial"])
    with Tree.open(tmp_path) as here:
        held = db.snapshot_held(here, "early.pgdump")
        sql(pg, dbname, "INSERT INTO items (name) VALUES ('pear')")
        assert held.unchanged() is False


def _session(pg: pgserver.PgServer, name: str, script: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [str(pg.bindir / "psql"), "-XAtq", "-d", pg.url(name)], stdin=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None
    proc.stdin.write(script)
    proc.stdin.close()
    return proc


def test_a_transaction_open_during_the_dump_that_commits_before_the_check_is_seen(
    pg: pgserver.PgServer, dbname: str, migrations: Path, tmp_path: Path
) -> None:
    db = engine(pg, dbname)
    database.apply(db, migrations, ["0001_initial"])
    writer = _session(
        pg, dbname, "BEGIN; INSERT INTO items (name) VALUES ('plum'); SELECT pg_sleep(0.6); COMMIT;\n"
    )
    time.sleep(0.2)
    with Tree.open(tmp_path) as here:
        held = db.snapshot_held(here, "early.pgdump")
        assert writer.wait(10) == 0
        assert held.unchanged() is False


def test_an_older_transaction_still_running_at_the_reading_makes_it_unsure(
    pg: pgserver.PgServer, dbname: str, migrations: Path, tmp_path: Path
) -> None:
    """A writer that got its id before a newer one finished runs below ``xmax``: its commit
    would not move ``xmax``, so the check cannot vouch for the dump at all."""
    db = engine(pg, dbname)
    database.apply(db, migrations, ["0001_initial"])
    older = _session(
        pg, dbname, "BEGIN; INSERT INTO items (name) VALUES ('old'); SELECT pg_sleep(0.8); COMMIT;\n"
    )
    time.sleep(0.2)
    sql(pg, dbname, "INSERT INTO items (name) VALUES ('new')")  # a newer id, finished
    with Tree.open(tmp_path) as here:
        held = db.snapshot_held(here, "early.pgdump")
        assert held.unchanged() is False
    assert older.wait(10) == 0


def test_a_failed_migration_leaves_nothing(pg: pgserver.PgServer, dbname: str, migrations: Path) -> None:
    db = engine(pg, dbname)
    database.apply(db, migrations, ["0001_initial"])
    write(
        migrations, "0003_broken", "CREATE TABLE extra (id INTEGER);\nINSERT INTO no_such_table VALUES (1);"
    )
    with pytest.raises(database.MigrationError, match="0003_broken"):
        database.apply(db, migrations, ["0001_initial", "0002_price", "0003_broken"])
    # 0002 applied in its own transaction; 0003's first statement was rolled back with it
    assert database.applied_ids(db) == ["0001_initial", "0002_price"]
    assert sql(pg, dbname, "SELECT to_regclass('extra') IS NULL") == "t"


def test_a_migration_waiting_for_a_lock_fails_fast(
    pg: pgserver.PgServer, dbname: str, migrations: Path
) -> None:
    db = engine(pg, dbname, lock_timeout=0.5)
    database.apply(db, migrations, ["0001_initial"])
    reader = subprocess.Popen(
        [str(pg.bindir / "psql"), "-XAtq", "-d", pg.url(dbname)], stdin=subprocess.PIPE, text=True
    )
    assert reader.stdin is not None
    reader.stdin.write("BEGIN; SELECT count(*) FROM items; SELECT pg_sleep(30);\n")
    reader.stdin.flush()
    time.sleep(0.3)
    started = time.monotonic()
    try:
        with pytest.raises(database.MigrationError, match="lock timeout"):
            database.apply(db, migrations, ["0001_initial", "0002_price"])
        waited = time.monotonic() - started
    finally:
        reader.kill()
        reader.wait()
    assert waited < 20  # the reader holds its lock for 30 s
    assert database.applied_ids(db) == ["0001_initial"]
    assert (
        sql(pg, dbname, "SELECT count(*) FROM information_schema.columns WHERE column_name = 'price'") == "0"
    )


def test_rolling_back_keeps_the_rows_written_since(
    pg: pgserver.PgServer, dbname: str, migrations: Path
) -> None:
    db = engine(pg, dbname)
    database.apply(db, migrations, ["0001_initial", "0002_price"])
    sql(pg, dbname, "INSERT INTO items (name, price) VALUES ('apple', 3), ('pear', 4)")
    assert database.rollback(db, migrations, ["0002_price"]) == ["0002_price"]
    assert sql(pg, dbname, "SELECT string_agg(name, ',' ORDER BY id) FROM items") == "apple,pear"
    assert database.applied_ids(db) == ["0001_initial"]


def test_a_restore_puts_back_exactly_the_snapshot_in_one_transaction(
    pg: pgserver.PgServer, dbname: str, migrations: Path, tmp_path: Path
) -> None:
    db = engine(pg, dbname)
    database.apply(db, migrations, ["0001_initial"])
    sql(pg, dbname, "INSERT INTO items (name) VALUES ('apple')")
    with Tree.open(tmp_path) as here:
        db.snapshot(here, "snap.pgdump")
        write(migrations, "0003_tags", "CREATE TABLE tags (id SERIAL PRIMARY KEY, tag TEXT);")
        database.apply(db, migrations, ["0002_price", "0003_tags"])
        sql(pg, dbname, "INSERT INTO tags (tag) VALUES ('new'); DELETE FROM items")
        db.restore(here, "snap.pgdump", "replaced.pgdump")
        assert (tmp_path / "replaced.pgdump").read_bytes().startswith(b"PGDMP")
    assert sql(pg, dbname, "SELECT string_agg(name, ',') FROM items") == "apple"
    assert sql(pg, dbname, "SELECT to_regclass('tags') IS NULL") == "t"
    assert database.applied_ids(db) == ["0001_initial"]
    # the sequence goes on from where the snapshot had it
    sql(pg, dbname, "INSERT INTO items (name) VALUES ('pear')")
    assert sql(pg, dbname, "SELECT id FROM items WHERE name = 'pear'") == "2"


def test_a_restore_that_fails_changes_nothing(
    pg: pgserver.PgServer, dbname: str, migrations: Path, tmp_path: Path
) -> None:
    db = engine(pg, dbname, lock_timeout=0.5)
    database.apply(db, migrations, ["0001_initial"])
    with Tree.open(tmp_path) as here:
        db.snapshot(here, "snap.pgdump")
        sql(pg, dbname, "INSERT INTO items (name) VALUES ('kept')")
        holder = subprocess.Popen(
            [str(pg.bindir / "psql"), "-XAtq", "-d", pg.url(dbname)], stdin=subprocess.PIPE, text=True
        )
        assert holder.stdin is not None
        holder.stdin.write("BEGIN; SELECT count(*) FROM items; SELECT pg_sleep(30);\n")
        holder.stdin.flush()
        time.sleep(0.3)
        try:
            with pytest.raises(database.DatabaseError, match="lock timeout"):
                db.restore(here, "snap.pgdump", None)
        finally:
            holder.kill()
            holder.wait()
    assert sql(pg, dbname, "SELECT string_agg(name, ',') FROM items") == "kept"


def test_a_restore_whose_pg_restore_dies_part_way_commits_nothing(
    pg: pgserver.PgServer, dbname: str, tmp_path: Path
) -> None:
    """pg_restore dying half-way (here: of a dump cut in half) leaves psql at the end of its
    input inside the transaction: the server rolls it back, the drop of newer objects included.
    The table has one integer column, so whatever part of a row pg_restore got out is a row psql
    accepts: psql's own --single-transaction would commit there (half the rows, no key)."""
    db = engine(pg, dbname)
    sql(
        pg,
        dbname,
        "CREATE TABLE numbers (n int PRIMARY KEY); INSERT INTO numbers SELECT generate_series(1, 200000)",
    )
    with Tree.open(tmp_path) as here:
        db.snapshot(here, "snap.pgdump")
        whole = (tmp_path / "snap.pgdump").read_bytes()
        (tmp_path / "cut.pgdump").write_bytes(whole[: len(whole) // 2])
        sql(pg, dbname, "INSERT INTO numbers VALUES (0); CREATE TABLE newer (i int)")
        with pytest.raises(database.DatabaseError, match="pg_restore failed"):
            db.restore(here, "cut.pgdump", None)
    assert sql(pg, dbname, "SELECT count(*) FROM numbers") == "200001"
    assert sql(pg, dbname, "SELECT to_regclass('newer') IS NOT NULL") == "t"
    assert sql(pg, dbname, "SELECT count(*) FROM pg_indexes WHERE tablename = 'numbers'") == "1"


def test_a_restore_handles_large_objects_composite_types_and_routines_that_call_each_other(
    pg: pgserver.PgServer, dbname: str, migrations: Path, tmp_path: Path
) -> None:
    """What the role owns besides tables: a large object and a composite type in the dump (put
    back, not doubled), and after it, routines whose bodies call one another (dropped, by name)."""
    db = engine(pg, dbname)
    database.apply(db, migrations, ["0001_initial"])
    sql(pg, dbname, "CREATE TYPE pair AS (a int, b int); SELECT lo_from_bytea(0, 'kept')")
    with Tree.open(tmp_path) as here:
        db.snapshot(here, "snap.pgdump")
        later = "CREATE FUNCTION a0() RETURNS int LANGUAGE sql RETURN 1;" + "".join(
            f"CREATE FUNCTION z{i}() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT a0(); END;"
            for i in range(12)
        )
        sql(pg, dbname, later + "CREATE TYPE triple AS (a int, b int, c int); SELECT lo_from_bytea(0, 'new')")
        db.restore(here, "snap.pgdump", None)
        db.restore(here, "snap.pgdump", None)  # again: nothing of the dump is left over to collide
    assert (
        sql(
            pg,
            dbname,
            "SELECT string_agg(convert_from(lo_get(oid), 'UTF8'), ',') FROM pg_largeobject_metadata",
        )
        == "kept"
    )
    assert sql(pg, dbname, "SELECT to_regtype('pair') IS NOT NULL, to_regtype('triple') IS NULL") == "t|t"
    assert sql(pg, dbname, "SELECT count(*) FROM pg_proc WHERE proname ~ '^(a0|z[0-9]+)$'") == "0"


def test_a_sequence_advanced_without_a_row_is_a_change(
    pg: pgserver.PgServer, dbname: str, migrations: Path, tmp_path: Path
) -> None:
    """nextval() takes a transaction id only every 32 values: the check reads the sequences too,
    so a restored snapshot never hands out a number twice."""
    db = engine(pg, dbname)
    database.apply(db, migrations, ["0001_initial"])
    sql(pg, dbname, "CREATE UNLOGGED SEQUENCE invoice_numbers")
    with Tree.open(tmp_path) as here:
        held = db.snapshot_held(here, "early.pgdump")
        assert held.unchanged() is True
        sql(pg, dbname, "SELECT nextval('invoice_numbers')")
        assert held.unchanged() is False


def test_the_roles_search_path_cannot_make_the_check_answer_quiet(
    pg: pgserver.PgServer, dbname: str, migrations: Path, tmp_path: Path
) -> None:
    """The role shadows ``=`` for transaction ids in a schema it puts before pg_catalog: the
    runtime's connections set search_path=pg_catalog and compare the ids themselves."""
    db = engine(pg, dbname)
    database.apply(db, migrations, ["0001_initial"])
    sql(
        pg,
        dbname,
        "CREATE SCHEMA evil;"
        " CREATE FUNCTION evil.eq(a xid8, b xid8) RETURNS bool LANGUAGE sql AS 'SELECT true';"
        " CREATE OPERATOR evil.= (LEFTARG = xid8, RIGHTARG = xid8, FUNCTION = evil.eq);"
        f" ALTER ROLE root IN DATABASE {dbname} SET search_path = evil, pg_catalog, public",
    )
    older = _session(
        pg, dbname, "BEGIN; INSERT INTO items (name) VALUES ('old'); SELECT pg_sleep(0.8); COMMIT;\n"
    )
    time.sleep(0.2)
    sql(pg, dbname, "INSERT INTO items (name) VALUES ('new')")  # a newer id, finished
    try:
        with Tree.open(tmp_path) as here:
            held = db.snapshot_held(here, "early.pgdump")
            assert held.before.quiet is False
        assert older.wait(10) == 0
    finally:
        older.kill()
        pg.psql(f"ALTER ROLE root IN DATABASE {dbname} RESET search_path;")


def test_the_app_account_works_by_peer_authentication(
    pg: pgserver.PgServer, migrations: Path, tmp_path: Path
) -> None:
    """Without credentials every tool runs as the app's account: the role is that account."""
    pg.create_database("nobodys", "nobody")
    try:
        db = PostgresDatabase(pg.url("nobodys"), NOBODY, None, 10)
        assert database.apply(db, migrations, ["0001_initial"]) == ["0001_initial"]
        assert sql(pg, "nobodys", "SELECT tableowner FROM pg_tables WHERE tablename = 'items'") == "nobody"
        with Tree.open(tmp_path) as here:
            held = db.snapshot_held(here, "early.pgdump")
            assert held.unchanged() is True
        assert db.check() == "ok"
        assert database.applied_ids(db) == ["0001_initial"]
    finally:
        pg.drop_database("nobodys")


def test_credentials_come_from_a_root_only_password_file(
    pg: pgserver.PgServer, migrations: Path, tmp_path: Path
) -> None:
    pg.create_database("shopdb", "shop", password="s3cret")
    try:
        secret = tmp_path / "shop.pgpass"
        secret.write_text("*:*:*:shop:s3cret\n")
        secret.chmod(0o644)
        db = PostgresDatabase(pg.url("shopdb", "shop"), NOBODY, secret, 10)
        with pytest.raises(database.DatabaseError, match="mode 0600"):
            db.check()
        secret.chmod(0o600)
        assert db.check() == "ok"
        assert database.apply(db, migrations, ["0001_initial"]) == ["0001_initial"]
        assert db.owner is None  # root connects, with the file
        # in a directory another account can write, the file checked may not be the file read
        tmp_path.chmod(0o777)
        with pytest.raises(database.DatabaseError, match="directories only root can change"):
            db.check()
    finally:
        pg.drop_database("shopdb")


def test_a_superuser_role_is_reported_and_never_restored_as(
    pg: pgserver.PgServer, dbname: str, tmp_path: Path
) -> None:
    pg.psql("ALTER ROLE root SUPERUSER;")
    try:
        db = engine(pg, dbname)
        assert "superuser" in db.check()
        with Tree.open(tmp_path) as here:
            db.snapshot(here, "snap.pgdump")
            with pytest.raises(database.DatabaseError, match="superuser"):
                db.restore(here, "snap.pgdump", None)
    finally:
        pg.psql("ALTER ROLE root NOSUPERUSER;")


def test_a_migration_marked_non_transactional_runs_outside_a_transaction(
    pg: pgserver.PgServer, dbname: str, migrations: Path
) -> None:
    db = engine(pg, dbname)
    write(
        migrations,
        "0003_index",
        "-- transactional: false\nCREATE INDEX CONCURRENTLY items_name ON items (name);",
    )
    assert database.apply(db, migrations, ["0001_initial", "0003_index"]) == ["0001_initial", "0003_index"]
    assert sql(pg, dbname, "SELECT count(*) FROM pg_indexes WHERE indexname = 'items_name'") == "1"


def test_reading_the_applied_migrations_of_an_unmanaged_database_changes_nothing(
    pg: pgserver.PgServer, dbname: str
) -> None:
    db = engine(pg, dbname)
    sql(pg, dbname, "CREATE TABLE items (id INTEGER)")
    assert database.applied_ids(db) == []
    assert (
        sql(pg, dbname, "SELECT string_agg(tablename, ',') FROM pg_tables WHERE schemaname = 'public'")
        == "items"
    )


def test_concurrent_writers_lose_nothing_across_a_migration(
    pg: pgserver.PgServer, dbname: str, migrations: Path
) -> None:
    db = engine(pg, dbname)
    database.apply(db, migrations, ["0001_initial"])
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            sql(pg, dbname, f"INSERT INTO items (name) VALUES ('w{n}')")
            written.append(n)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.2)
        database.apply(db, migrations, ["0001_initial", "0002_price"])
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    assert int(sql(pg, dbname, "SELECT count(*) FROM items")) == len(written) > 0


def test_a_dump_that_fails_leaves_no_file(pg: pgserver.PgServer, tmp_path: Path) -> None:
    db = engine(pg, "no_such_db")
    out = tmp_path / "backup"
    out.mkdir()
    with Tree.open(out) as here, pytest.raises(database.DatabaseError, match='"no_such_db" does not exist'):
        db.snapshot(here, "snap.pgdump")
    assert list(out.iterdir()) == []


def test_a_large_dump_streams_into_the_backup(
    pg: pgserver.PgServer, dbname: str, migrations: Path, tmp_path: Path
) -> None:
    """The dump goes to the backup as pg_dump writes it; its recorded sha256 is the file's."""
    db = engine(pg, dbname)
    database.apply(db, migrations, ["0001_initial"])
    sql(pg, dbname, "INSERT INTO items (name) SELECT md5(i::text) FROM generate_series(1, 200000) i")
    with Tree.open(tmp_path) as here:
        held = db.snapshot_held(here, "big.pgdump")
    data = (tmp_path / "big.pgdump").read_bytes()
    assert (held.sha256, held.size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert len(data) > 1 << 20
    assert not (tmp_path / "big.pgdump.part").exists()

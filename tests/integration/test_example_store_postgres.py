"""The NESOP Store on PostgreSQL (from 1.3.0), against a throwaway server.

Each release's migrations-postgresql/ is applied by yoyo to a new database, then the release runs
as its unit runs it (gunicorn from a virtualenv of its requirements.txt, every hash required) with
DATABASE_URL naming that database, and is driven over HTTP on loopback. The same scenario runs on
SQLite without DATABASE_URL. 1.3.1's migration 0006 rolls back and applies again on PostgreSQL, and
a nesop-deb.toml switched to PostgreSQL builds, migrations-postgresql/ being its migrations.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from yoyo import get_backend, read_migrations

from nesop_deb.runtime.deps.venvs import check_imports, top_level_modules

from . import pgserver
from .helpers import Repo, build, package_manifest, sha256

pytestmark = pytest.mark.integration

ROOT = "/opt/nesop-store"
UNIT = "deploy/nesop-store.service"
ADMIN = {"Authorization": "Bearer admin-token"}
# A password role: the store's URL then carries a password that nothing may show.
PASSWORD_ROLE, PASSWORD = "shopper", "s3cret-pw"
IDS_1_3_0 = ["0001_initial", "0002_product_stock", "0003_product_categories", "0004_newsletter",
             "0005_order_notes"]  # fmt: skip
IDS_1_3_1 = [*IDS_1_3_0, "0006_shipping_status"]
YOYO_TABLES = {"_yoyo_log", "_yoyo_migration", "_yoyo_version", "yoyo_lock"}


@pytest.fixture(scope="module")
def pg() -> Iterator[pgserver.PgServer]:
    with pgserver.for_tests("nesop-store-pg", password_roles=(PASSWORD_ROLE,)) as server:
        yield server


_databases = iter(range(1, 1000))


@pytest.fixture
def database(pg: pgserver.PgServer) -> Iterator[str]:
    """A new, empty database this process's account (root) owns; its libpq URL."""
    name = f"store{next(_databases)}"
    url = pg.create_database(name, "root")
    yield url
    pg.drop_database(name)


@pytest.fixture(scope="module")
def venv(example_checkout: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The virtualenv of 1.3.x's requirements.txt, built as the server builds it: only wheels."""
    requirements = example_checkout("v1.3.1") / "requirements.txt"
    assert requirements.read_bytes() == (example_checkout("v1.3.0") / "requirements.txt").read_bytes()
    path = tmp_path_factory.mktemp("venv") / "v1.3"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", path], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", path / "bin/python", "--disable-pip-version-check",
         "install", "--quiet", "--require-hashes", "--only-binary=:all:", "-r", requirements],
        check=True, capture_output=True,
    )  # fmt: skip
    return path


# -- the migrations, by yoyo --------------------------------------------------


def migrate(url: str, directory: Path, upto: str | None = None) -> None:
    """Apply the migrations of ``directory`` not applied yet, each in its own transaction."""
    backend = get_backend(url)
    try:
        with backend.lock():
            pending = backend.to_apply(read_migrations(str(directory)))
            for migration in pending:
                backend.apply_one(migration)
                if migration.id == upto:
                    break
    finally:
        backend.connection.close()


def roll_back(url: str, directory: Path, last: str) -> None:
    """Roll back the applied migrations of ``directory`` down to ``last``, newest first."""
    backend = get_backend(url)
    try:
        with backend.lock():
            for migration in backend.to_rollback(read_migrations(str(directory))):
                backend.rollback_one(migration)
                if migration.id == last:
                    break
    finally:
        backend.connection.close()


def pg_schema(pg: pgserver.PgServer, url: str) -> dict[str, Any]:
    """The tables (but yoyo's), columns, indexes and products of a PostgreSQL database, as text."""
    db = urllib.parse.urlsplit(url).path.lstrip("/")
    columns = pg.psql(
        "SELECT table_name, column_name, data_type, is_nullable, column_default, collation_name"
        " FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2",
        db,
    )
    indexes = pg.psql("SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1", db)
    tables = {line.split("|")[0] for line in columns.splitlines()}
    products = pg.psql("SELECT * FROM products ORDER BY id", db) if "products" in tables else ""
    keep = [line for line in columns.splitlines() if line.split("|")[0] not in YOYO_TABLES]
    return {
        "columns": keep,
        "indexes": [line for line in indexes.splitlines() if not any(t in line for t in YOYO_TABLES)],
        "products": products,
    }


def pg_tables(pg: pgserver.PgServer, url: str) -> dict[str, set[str]]:
    tables: dict[str, set[str]] = {}
    for line in pg_schema(pg, url)["columns"]:
        table, column = line.split("|")[:2]
        tables.setdefault(table, set()).add(column)
    return tables


def sqlite_tables(path: Path) -> dict[str, set[str]]:
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(
            "SELECT m.name, p.name FROM sqlite_master AS m, pragma_table_info(m.name) AS p"
            " WHERE m.type = 'table'"
        ).fetchall()
    tables: dict[str, set[str]] = {}
    for table, column in rows:
        if table not in YOYO_TABLES:
            tables.setdefault(table, set()).add(column)
    return tables


def migration_ids(directory: Path) -> list[str]:
    return sorted(p.name.removesuffix(".sql") for p in directory.glob("*.sql") if ".rollback." not in p.name)


# -- the store, run as its unit runs it -----------------------------------------


@dataclass
class Store:
    process: subprocess.Popen[str]
    url: str
    log: list[str]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=60) == 0, "".join(self.log)


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


@pytest.fixture
def run_store(venv: Path) -> Iterator[Callable[..., Store]]:
    """Start a release's gunicorn (the unit's ExecStart) on a free port; stopped at the end."""
    started: list[Store] = []

    def start(app: Path, **env: str) -> Store:
        unit = (app / UNIT).read_text().splitlines()
        exec_start = next(ln for ln in unit if ln.startswith("ExecStart=")).removeprefix("ExecStart=")
        argv = exec_start.replace(f"{ROOT}/venv/", f"{venv}/").replace(ROOT, str(app)).split()
        environment = {
            "PATH": "/usr/bin:/bin",
            "LC_ALL": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",  # as the unit: the shared checkout stays as it is
            "NESOP_STORE_PORT": "0",
            "NESOP_STORE_ADMIN_TOKEN": "admin-token",
            "NESOP_STORE_SECRET_KEY": "receipt-key",
            **env,
        }
        process = subprocess.Popen(argv, cwd=app, env=environment, stderr=subprocess.PIPE, text=True)
        assert process.stderr is not None
        log: list[str] = []
        for line in process.stderr:
            log.append(line)
            if "Listening at: " in line:
                break
        else:
            process.wait()
            pytest.fail("gunicorn exited before listening:\n" + "".join(log))
        # keep reading what it logs, so that it never blocks on a full pipe
        threading.Thread(target=lambda: log.extend(process.stderr or ()), daemon=True).start()
        store = Store(process, line.split("Listening at: ")[1].split()[0], log)
        started.append(store)
        return store

    yield start
    for store in started:
        if store.process.poll() is None:
            store.process.kill()
        store.process.wait()


def call(
    store: Store, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> Reply:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(store.url + path, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Reply(response.status, response.read(), dict(response.headers))
    except urllib.error.HTTPError as error:
        return Reply(error.code, error.read(), dict(error.headers))


def shop(store: Store, version: str) -> dict[str, Any]:
    """What a customer and an admin do: register, fill a cart, check out, manage products."""
    health = call(store, "GET", "/health")
    assert health.status == 200, health.body
    assert {k: health.json()[k] for k in ("status", "version", "database", "products")} == {
        "status": "ok",
        "version": version,
        "database": "ok",
        "products": 8,
    }
    products = call(store, "GET", "/api/products").json()["products"]
    assert [p["category"] for p in products] == sorted(p["category"] for p in products)
    by_sku = {p["sku"]: p for p in products}
    hoodie, mug = by_sku["HOOD-01"], by_sku["MUG-01"]
    assert (hoodie["stock"], hoodie["category"], mug["price_cents"]) == (12, "Apparel", 1290)

    registered = call(store, "POST", "/api/register", {"name": "Ann", "email": "ann@example.com"})
    assert registered.status == 201 and registered.json()["customer_id"] == 1
    again = call(store, "POST", "/api/register", {"name": "Ann", "email": "ANN@example.com"})
    assert again.status == 409, again.body

    added = call(store, "POST", "/api/cart", {"product_id": hoodie["id"], "quantity": 2})
    assert added.status == 200 and "nesop_cart=" in added.headers["Set-Cookie"]
    cart = {"X-Cart-Id": added.json()["cart_id"]}
    assert call(store, "POST", "/api/cart", {"product_id": mug["id"]}, cart).status == 200
    assert call(store, "POST", "/api/cart", {"product_id": mug["id"], "quantity": 11}, cart).status == 400
    assert call(store, "GET", "/api/cart", headers=cart).json()["total_cents"] == 2 * 4990 + 1290

    placed = call(
        store, "POST", "/api/orders", {"email": "ann@example.com", "note": "leave it at the desk"}, cart
    )
    assert placed.status == 201, placed.body
    order: dict[str, Any] = placed.json()
    assert (order["total_cents"], order["note"], order["currency"]) == (
        2 * 4990 + 1290,
        "leave it at the desk",
        "EUR",
    )
    assert order["items"] == [
        {"product_id": mug["id"], "quantity": 1, "unit_price_cents": 1290},
        {"product_id": hoodie["id"], "quantity": 2, "unit_price_cents": 4990},
    ]
    assert call(store, "GET", "/api/cart", headers=cart).json()["items"] == []
    stock = {p["sku"]: p["stock"] for p in call(store, "GET", "/api/products").json()["products"]}
    assert (stock["HOOD-01"], stock["MUG-01"]) == (10, 99)
    too_many = call(store, "POST", "/api/orders", {"items": [{"product_id": hoodie["id"], "quantity": 10}]})
    assert too_many.status == 201
    sold_out = call(store, "POST", "/api/orders", {"items": [{"product_id": hoodie["id"], "quantity": 1}]})
    assert sold_out.status == 409 and "only 0" in sold_out.json()["error"]
    receipt = call(store, "GET", order["receipt_url"])
    assert receipt.status == 200 and b"leave it at the desk" in receipt.body

    assert call(store, "GET", "/api/admin/stats").status == 401
    assert call(store, "GET", "/api/admin/stats", headers=ADMIN).json() == {
        "products": 8,
        "customers": 1,
        "orders": 2,
    }
    shown = call(store, "GET", f"/api/admin/orders/{order['order_id']}", headers=ADMIN).json()
    assert {k: shown[k] for k in ("order_id", "email", "total_cents", "note", "items")} == {
        k: order[k] for k in ("order_id", "email", "total_cents", "note", "items")
    }
    new = {"sku": "PIN-01", "name": "Enamel Pin", "price_cents": 350, "stock": 40, "category": "Accessories"}
    created = call(store, "POST", "/api/admin/products", new, ADMIN)
    assert created.status == 201 and created.json()["id"] == 9, created.body
    assert call(store, "POST", "/api/admin/products", new, ADMIN).status == 409
    updated = call(store, "PUT", "/api/admin/products/9", {"price_cents": 399}, ADMIN)
    assert updated.status == 200 and updated.json()["price_cents"] == 399
    assert call(store, "PUT", "/api/admin/products/9", {"sku": "MUG-01"}, ADMIN).status == 409
    assert call(store, "DELETE", "/api/admin/products/9", headers=ADMIN).status == 204
    assert call(store, "DELETE", "/api/admin/products/9", headers=ADMIN).status == 404
    catalogue = call(store, "GET", "/catalogue")
    assert (
        catalogue.status == 200 and b"NESOP Hoodie" in catalogue.body and b"Enamel Pin" not in catalogue.body
    )
    health = call(store, "GET", "/health")
    assert (health.status, health.json()["products"]) == (200, 8)
    return order


# -- the tests ---------------------------------------------------------------


def test_migrations_postgresql_has_the_ids_and_rollbacks_of_migrations(
    example_checkout: Callable[[str], Path],
) -> None:
    for ref, ids in (("v1.3.0", IDS_1_3_0), ("v1.3.1", IDS_1_3_1)):
        app = example_checkout(ref)
        assert migration_ids(app / "migrations") == migration_ids(app / "migrations-postgresql") == ids
        for stem in ids:
            assert (app / "migrations" / f"{stem}.rollback.sql").is_file()
            assert (app / "migrations-postgresql" / f"{stem}.rollback.sql").is_file()


def test_migrations_postgresql_make_the_schema_of_migrations(
    example_checkout: Callable[[str], Path], pg: pgserver.PgServer, database: str, tmp_path: Path
) -> None:
    """Step by step, each the same tables and columns as on SQLite; each rollback undoes its
    migration exactly (columns, types, defaults, indexes and the catalogue)."""
    app = example_checkout("v1.3.1")
    sqlite_db = tmp_path / "store.db"
    before = []
    for stem in IDS_1_3_1:
        before.append(pg_schema(pg, database))
        migrate(database, app / "migrations-postgresql", upto=stem)
        migrate(f"sqlite:///{sqlite_db}", app / "migrations", upto=stem)
        assert pg_tables(pg, database) == sqlite_tables(sqlite_db), stem
    assert "customers_email_key" in "".join(pg_schema(pg, database)["indexes"])
    for stem, expected in zip(reversed(IDS_1_3_1), reversed(before), strict=True):
        roll_back(database, app / "migrations-postgresql", last=stem)
        assert pg_schema(pg, database) == expected, f"{stem}.rollback.sql is not the inverse"
    assert pg_tables(pg, database) == {}
    migrate(database, app / "migrations-postgresql")
    assert pg_tables(pg, database) == sqlite_tables(sqlite_db)


def test_the_virtualenv_imports_as_the_server_checks_it(venv: Path) -> None:
    modules = top_level_modules(venv)
    assert modules == ["gunicorn", "markupsafe", "psycopg2"]
    check_imports(venv, modules, None)


@pytest.mark.parametrize("engine", ["postgresql", "sqlite"])
def test_release_1_3_1_serves_a_shop_on(
    engine: str,
    example_checkout: Callable[[str], Path],
    run_store: Callable[..., Store],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    app = example_checkout("v1.3.1")
    if engine == "postgresql":
        url: str = request.getfixturevalue("database")
        migrate(url, app / "migrations-postgresql")
        env = {"DATABASE_URL": url}
    else:
        file = tmp_path / "store.db"
        migrate(f"sqlite:///{file}", app / "migrations")
        url, env = str(file), {"NESOP_STORE_DB": str(file)}
    store = run_store(app, **env)
    assert f"database {url}: 8 products\n" in "".join(store.log)
    order = shop(store, "1.3.1")
    path = f"/api/admin/orders/{order['order_id']}"
    assert call(store, "GET", path, headers=ADMIN).json()["status"] == "placed"
    shipped = call(store, "POST", f"{path}/ship", headers=ADMIN)
    assert (shipped.status, shipped.json()["status"]) == (200, "shipped")
    assert call(store, "GET", path, headers=ADMIN).json()["status"] == "shipped"
    assert call(store, "POST", "/api/admin/orders/99/ship", headers=ADMIN).status == 404
    store.stop()


def test_orders_take_turns_with_the_stock_on_postgresql(
    example_checkout: Callable[[str], Path], run_store: Callable[..., Store], database: str
) -> None:
    """Eight orders of 5 hoodies at once, 12 in stock, served by gunicorn's processes and threads:
    each checks the stock and takes from it under the write lock, so two succeed and none oversells."""
    app = example_checkout("v1.3.1")
    migrate(database, app / "migrations-postgresql")
    store = run_store(app, DATABASE_URL=database)
    hoodie = next(p for p in call(store, "GET", "/api/products").json()["products"] if p["sku"] == "HOOD-01")
    body = {"items": [{"product_id": hoodie["id"], "quantity": 5}]}
    replies: list[Reply] = []
    threads = [threading.Thread(target=lambda: replies.append(call(store, "POST", "/api/orders", body)))
               for _ in range(8)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(reply.status for reply in replies) == [201, 201, *[409] * 6], [r.body for r in replies]
    stock = {p["sku"]: p["stock"] for p in call(store, "GET", "/api/products").json()["products"]}
    assert stock["HOOD-01"] == 2
    assert call(store, "GET", "/api/admin/stats", headers=ADMIN).json()["orders"] == 2
    store.stop()


def test_migration_0006_rolls_back_and_applies_again_on_postgresql(
    example_checkout: Callable[[str], Path],
    run_store: Callable[..., Store],
    pg: pgserver.PgServer,
    database: str,
) -> None:
    """1.3.0 to 1.3.1 and back: the order placed meanwhile stays, its status goes with the column."""
    old, new = example_checkout("v1.3.0"), example_checkout("v1.3.1")
    migrate(database, old / "migrations-postgresql")
    store = run_store(old, DATABASE_URL=database)
    order = shop(store, "1.3.0")
    store.stop()
    path = f"/api/admin/orders/{order['order_id']}"

    migrate(database, new / "migrations-postgresql")  # the update: 0006 only
    store = run_store(new, DATABASE_URL=database)
    assert call(store, "GET", "/health").json()["version"] == "1.3.1"
    assert call(store, "GET", path, headers=ADMIN).json()["status"] == "placed"  # the column's default
    assert call(store, "POST", f"{path}/ship", headers=ADMIN).json()["status"] == "shipped"
    store.stop()

    roll_back(database, new / "migrations-postgresql", last="0006_shipping_status")
    assert "status" not in pg_tables(pg, database)["orders"]
    store = run_store(new, DATABASE_URL=database)  # 1.3.1 on 1.3.0's schema: never healthy
    health = call(store, "GET", "/health")
    assert (health.status, health.json()["reason"]) == (503, "missing column orders.status")
    store.stop()
    store = run_store(old, DATABASE_URL=database)  # 1.3.0 again: healthy, its orders all there
    assert call(store, "GET", "/health").status == 200
    shown = call(store, "GET", path, headers=ADMIN).json()
    assert shown["note"] == order["note"] and "status" not in shown
    store.stop()

    migrate(database, new / "migrations-postgresql")  # and the update once more
    store = run_store(new, DATABASE_URL=database)
    assert call(store, "GET", "/health").status == 200
    assert call(store, "GET", path, headers=ADMIN).json()["status"] == "placed"
    store.stop()


def test_health_never_shows_the_password_of_the_url(
    example_checkout: Callable[[str], Path], run_store: Callable[..., Store], pg: pgserver.PgServer
) -> None:
    app = example_checkout("v1.3.1")
    pg.create_database("pwstore", PASSWORD_ROLE, password=PASSWORD)
    try:
        url = pg.url("pwstore", PASSWORD_ROLE, PASSWORD)
        migrate(url, app / "migrations-postgresql")
        store = run_store(app, DATABASE_URL=url)
        assert call(store, "GET", "/health").status == 200
        store.stop()
        missing = pg.url("nosuchdb", PASSWORD_ROLE, PASSWORD)
        store = run_store(app, DATABASE_URL=missing)
        health = call(store, "GET", "/health")
        reason = health.json()["reason"]
        assert health.status == 503 and 'database "nosuchdb" does not exist' in reason
        assert pg.url("nosuchdb", PASSWORD_ROLE) in reason
        store.stop()
        assert PASSWORD not in reason + "".join(store.log)
    finally:
        pg.drop_database("pwstore")


def test_a_url_that_is_not_postgresql_stops_the_store_at_once(
    example_checkout: Callable[[str], Path], venv: Path
) -> None:
    app = example_checkout("v1.3.1")
    env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "DATABASE_URL": "mysql://shop@db/shop"}
    result = subprocess.run(
        [venv / "bin/python", "server.py"], cwd=app, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "DATABASE_URL must be a postgresql:// URL, not a 'mysql' one" in result.stderr


def test_a_configuration_on_postgresql_builds_with_migrations_postgresql(
    example_repo: Repo, session_env: dict[str, str], tmp_path: Path
) -> None:
    """A deployment on PostgreSQL: its clone of the history has nesop-deb.toml switched from 1.3.0 on
    (the releases re-tagged there); the first install ships 0001 to 0006 of migrations-postgresql/,
    the update from 1.3.0 to 1.3.1 ships 0006."""
    repo = Repo(tmp_path / "store", session_env)
    example_repo.git("clone", "--quiet", str(example_repo.path), str(repo.path), cwd=tmp_path)
    repo.checkout("v1.3.0")
    toml = (repo.path / "nesop-deb.toml").read_text()
    switched = toml.replace('\ndir = "migrations"\n', '\ndir = "migrations-postgresql"\n').replace(
        '\ndatabase = "sqlite:////opt/nesop-store/data/nesop_store_production.db"\n',
        '\ndatabase = "postgresql:///nesop_store"\n',
    )
    assert switched.count('"migrations-postgresql"') == 2 and '"postgresql:///nesop_store"' in switched
    repo.write("nesop-deb.toml", switched)
    repo.commit("Keep the store's database in PostgreSQL")
    repo.git("tag", "--force", "v1.3.0")
    repo.git("cherry-pick", "v1.3.1")
    repo.git("tag", "--force", "v1.3.1")

    def shipped(output: Path) -> list[str]:
        [deb] = output.rglob("*.deb")
        manifest, _ = package_manifest(deb, "nesop-store-update")
        assert manifest["version"] == "1.3.1"
        assert manifest["config"]["migrations"]["database"] == "postgresql:///nesop_store"
        for migration in manifest["migrations"]:
            assert migration["reversible"] is True
            for key in ("", "rollback_"):
                text = (repo.path / "migrations-postgresql" / migration[f"{key}file"]).read_bytes()
                assert migration[f"{key}sha256"] == sha256(text)
        return [m["id"] for m in manifest["migrations"]]

    full = build(repo.path, tmp_path / "full", session_env, "--full")
    assert full.returncode == 0, full.stderr
    assert shipped(tmp_path / "full") == IDS_1_3_1
    update = build(repo.path, tmp_path / "update", session_env)
    assert update.returncode == 0, update.stderr
    assert shipped(tmp_path / "update") == ["0006_shipping_status"]

"""The example app in examples/nesop-store: the store, its migrations and its release history.

The store is driven through its WSGI callable with the standard library
sqlite3 applying the migrations, except for one real server on a free
loopback port and the ``python3 server.py`` process itself. From 1.1.0 the
store needs third-party packages: MarkupSafe comes with the test environment
(Jinja2 needs it); gunicorn and itsdangerous do not, so what needs them is
checked from the files (requirements.txt, imports, gunicorn.conf.py).
tests/integration/test_example_store_venv.py builds the virtualenvs from PyPI
and runs gunicorn in them. From 1.2.0 the store takes its listening socket from
systemd (socket activation): ``python3 server.py`` is started here as systemd
starts it, with a real socket at fd 3; tests/integration/test_example_store_socket.py
does the same with gunicorn.
"""

from __future__ import annotations

import ast
import http.client
import importlib
import importlib.util
import io
import itertools
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import tomllib
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest

from tests.unit.activation import activated

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nesop-store"
APP = EXAMPLE / "app"
MAKE_RELEASE_REPO = EXAMPLE / "make-release-repo"
# The app's modules import each other by these plain names.
APP_MODULES = ("server", "store", "db", "config", "views", "receipts", "wsgi")
ADMIN_TOKEN = "test-admin-token"
# branch: (the release it is off, its VERSION)
BROKEN_BRANCHES = {
    "broken/migration": ("v1.0.6", "1.0.7"),
    "broken/start": ("v1.0.6", "1.0.7"),
    "broken/health": ("v1.0.6", "1.0.7"),
    "broken/import": ("v1.1.3", "1.1.4"),
    "broken/socket-migration": ("v1.2.2", "1.2.3"),
    "broken/socket-start": ("v1.2.2", "1.2.3"),
}


# -- helpers ----------------------------------------------------------------


@contextmanager
def app_imports(app_dir: Path) -> Iterator[None]:
    """Let the block import the modules of ``app_dir``, leaving sys.modules as it was.

    Several versions of the app are loaded side by side; each module imported
    keeps its own store and config modules.
    """
    saved = {name: sys.modules.pop(name) for name in APP_MODULES if name in sys.modules}
    sys.path.insert(0, str(app_dir))
    dont_write_bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # no __pycache__ in the source tree
    try:
        yield
    finally:
        sys.dont_write_bytecode = dont_write_bytecode
        sys.path.remove(str(app_dir))
        for name in APP_MODULES:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


def load_server(app_dir: Path, module: str = "server") -> ModuleType:
    """Import server.py (or another ``module``) from ``app_dir``."""
    with app_imports(app_dir):
        return importlib.import_module(module)


def migration_files(app_dir: Path) -> list[Path]:
    files = (app_dir / "migrations").glob("*.sql")
    return sorted(path for path in files if not path.name.endswith(".rollback.sql"))


def rollback_file(migration: Path) -> Path:
    return migration.with_name(migration.stem + ".rollback.sql")


def run_sql(database: Path, script: Path) -> None:
    with closing(sqlite3.connect(database)) as conn:
        # Test scaffolding need not survive a power cut: skip the fsyncs.
        conn.execute("PRAGMA synchronous = OFF")
        conn.executescript(script.read_text())


def migrate(database: Path, app_dir: Path, upto: str | None = None) -> None:
    """Apply the app's migrations in name order, up to and including ``upto``."""
    for migration in migration_files(app_dir):
        run_sql(database, migration)
        if upto is not None and migration.stem.startswith(upto):
            break


def statements(script: str) -> list[str]:
    """Split an SQL script into statements, as a migration runner does."""
    found, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            found.append(pending.strip())
            pending = ""
    return found


def snapshot(database: Path) -> dict[str, Any]:
    """The schema as SQLite stores it, and every row of every table."""
    with closing(sqlite3.connect(database)) as conn:
        schema = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        ).fetchall()
        tables = [name for kind, name, _, _ in schema if kind == "table"]
        rows = {table: conn.execute(f'SELECT * FROM "{table}" ORDER BY 1').fetchall() for table in tables}
    return {"schema": schema, "rows": rows}


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Wsgi = Callable[..., Any]


def call(
    app: Wsgi,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> Reply:
    """One request straight to the WSGI app; ``on_start`` runs when the status is sent."""
    raw = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "CONTENT_LENGTH": str(len(raw)),
        "wsgi.input": io.BytesIO(raw),
    }
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    setup_testing_defaults(environ)
    started: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        started["status"] = int(status.split()[0])
        started["headers"] = dict(response_headers)
        if on_start is not None:
            on_start(started["status"])

    body_bytes = b"".join(app(environ, start_response))
    return Reply(started["status"], started["headers"], body_bytes)


def make_app(server: ModuleType, database: Path, app_dir: Path = APP, **settings: Any) -> Wsgi:
    app: Wsgi = server.StoreApp(
        server.Settings(
            database=str(database),
            version=server.read_version(app_dir),
            app_dir=app_dir,
            **{"admin_token": ADMIN_TOKEN, **settings},
        )
    )
    return app


def admin(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}", **(extra or {})}


def git(repo: Path, *args: str) -> str:
    # Without the caller's git configuration (colours, rename limits...), as the script runs git.
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    result = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True)
    return result.stdout.strip()


def make_release_repo(dest: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(MAKE_RELEASE_REPO), str(dest)], capture_output=True, text=True, check=True
    )


# -- fixtures ---------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> ModuleType:
    return load_server(APP)


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "store.db"
    migrate(path, APP)
    return path


@pytest.fixture
def app(server: ModuleType, database: Path) -> Wsgi:
    return make_app(server, database)


@pytest.fixture(scope="module")
def release_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("release-repo") / "nesop-store"
    make_release_repo(path)
    return path


@pytest.fixture(scope="module")
def tree(release_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Export a release (tag or branch) of the generated repository to a directory."""
    exported: dict[str, Path] = {}

    def export(ref: str) -> Path:
        if ref not in exported:
            archive = subprocess.run(
                ["git", "archive", "--format=tar", ref], cwd=release_repo, capture_output=True, check=True
            ).stdout
            dest = tmp_path_factory.mktemp(ref.replace("/", "-"))
            subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
            exported[ref] = dest
        return exported[ref]

    return export


# -- catalogue and cart -----------------------------------------------------


def test_products_lists_the_seeded_catalogue(app: Wsgi) -> None:
    reply = call(app, "GET", "/api/products")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    products = reply.json()["products"]
    assert len(products) == 8
    assert products[0] == {
        "id": 1,
        "sku": "MUG-01",
        "name": "NESOP Mug",
        "description": "Stoneware mug, 330 ml, dishwasher safe.",
        "price_cents": 1290,
        "image": "assets/product.svg",
    }


def test_cart_add_list_and_remove(app: Wsgi) -> None:
    first = call(app, "POST", "/api/cart", {"product_id": 1, "quantity": 2})
    assert first.status == 200
    cart_id = first.json()["cart_id"]
    assert first.headers["Set-Cookie"].startswith(f"nesop_cart={cart_id};")

    # A browser sends the cookie, an API client may send the header instead.
    call(app, "POST", "/api/cart", {"product_id": 4}, {"X-Cart-Id": cart_id})
    call(app, "POST", "/api/cart", {"product_id": 1}, {"Cookie": f"nesop_cart={cart_id}"})
    cart = call(app, "GET", "/api/cart", headers={"Cookie": f"nesop_cart={cart_id}"}).json()
    assert [(line["product_id"], line["quantity"]) for line in cart["items"]] == [(1, 3), (4, 1)]
    assert cart["items"][0]["line_total_cents"] == 3 * 1290
    assert cart["item_count"] == 4

    removed = call(app, "DELETE", "/api/cart/4", headers={"X-Cart-Id": cart_id})
    assert removed.status == 200
    assert [line["product_id"] for line in removed.json()["items"]] == [1]
    assert call(app, "DELETE", "/api/cart/4", headers={"X-Cart-Id": cart_id}).status == 404
    assert call(app, "DELETE", f"/api/cart/{10**20}", headers={"X-Cart-Id": cart_id}).status == 404


def test_a_new_client_has_an_empty_cart(app: Wsgi) -> None:
    assert call(app, "GET", "/api/cart").json()["items"] == []


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"product_id": 999}, 404),
        ({"product_id": 1, "quantity": 0}, 400),
        ({"product_id": 1, "quantity": 100}, 400),
        ({"product_id": "1"}, 400),
        ({"product_id": True}, 400),
        ({"product_id": 2**70}, 400),
        ({}, 400),
        (b"{not json", 400),
        (b"[1]", 400),
    ],
)
def test_cart_refuses_bad_requests(app: Wsgi, body: Any, status: int) -> None:
    reply = call(app, "POST", "/api/cart", body)
    assert reply.status == status
    assert "error" in reply.json()


def test_cart_refuses_a_malformed_cart_id(app: Wsgi) -> None:
    assert call(app, "GET", "/api/cart", headers={"X-Cart-Id": "../x"}).status == 400


def test_release_1_0_1_fixes_the_cart_total(
    server: ModuleType, database: Path, tree: Callable[[str], Path]
) -> None:
    def total(app: Wsgi) -> int:
        cart_id = call(app, "POST", "/api/cart", {"product_id": 1, "quantity": 3}).json()["cart_id"]
        return int(call(app, "GET", "/api/cart", headers={"X-Cart-Id": cart_id}).json()["total_cents"])

    fixed = tree("v1.0.1")
    assert total(make_app(server, database)) == 1290  # 1.0.0 counted one mug
    assert total(make_app(load_server(fixed), database, fixed)) == 3 * 1290


# -- customers and orders ---------------------------------------------------


def test_register_creates_a_customer(app: Wsgi, database: Path) -> None:
    reply = call(app, "POST", "/api/register", {"name": " Ann Admin ", "email": "ann@example.com"})
    assert reply.status == 201
    assert reply.json() == {"customer_id": 1, "name": "Ann Admin", "email": "ann@example.com"}
    with closing(sqlite3.connect(database)) as conn:
        assert conn.execute("SELECT name, email FROM customers").fetchall() == [
            ("Ann Admin", "ann@example.com")
        ]


def test_register_refuses_a_duplicate_email_whatever_its_case(app: Wsgi) -> None:
    assert call(app, "POST", "/api/register", {"name": "Ann", "email": "ann@example.com"}).status == 201
    reply = call(app, "POST", "/api/register", {"name": "Ann", "email": "ANN@example.com"})
    assert reply.status == 409
    assert "already registered" in reply.json()["error"]


@pytest.mark.parametrize(
    "body",
    [
        {"name": "Ann"},
        {"email": "ann@example.com"},
        {"name": "", "email": "ann@example.com"},
        {"name": "x" * 101, "email": "ann@example.com"},
        {"name": "Ann", "email": "not-an-address"},
        {"name": "Ann", "email": "ann@example"},
        {"name": "Ann", "email": 42},
    ],
)
def test_register_validates_its_input(app: Wsgi, body: dict[str, Any]) -> None:
    reply = call(app, "POST", "/api/register", body)
    assert reply.status == 400
    assert reply.json()["error"]


def test_order_is_committed_before_it_is_acknowledged(app: Wsgi, database: Path) -> None:
    cart_id = call(app, "POST", "/api/cart", {"product_id": 2, "quantity": 2}).json()["cart_id"]
    seen_at_start: list[Any] = []

    def look(status: int) -> None:
        # Another connection, at the moment the status line goes out.
        with closing(sqlite3.connect(database)) as conn:
            seen_at_start.append(conn.execute("SELECT id, email, total_cents FROM orders").fetchall())

    reply = call(
        app, "POST", "/api/orders", {"email": "bob@example.com"}, {"X-Cart-Id": cart_id}, on_start=look
    )
    assert reply.status == 201
    order = reply.json()
    assert seen_at_start == [[(order["order_id"], "bob@example.com", 2 * 2490)]]
    assert order["items"] == [{"product_id": 2, "quantity": 2, "unit_price_cents": 2490}]
    assert reply.headers["Location"] == f"/api/admin/orders/{order['order_id']}"
    # The cart was checked out, so it is empty now.
    assert call(app, "GET", "/api/cart", headers={"X-Cart-Id": cart_id}).json()["items"] == []


def test_order_from_items_in_the_body(app: Wsgi) -> None:
    reply = call(
        app,
        "POST",
        "/api/orders",
        {"items": [{"product_id": 4, "quantity": 2}, {"product_id": 1}, {"product_id": 4}]},
    )
    assert reply.status == 201
    order = reply.json()
    assert order["total_cents"] == 3 * 490 + 1290
    assert [(item["product_id"], item["quantity"]) for item in order["items"]] == [(1, 1), (4, 3)]
    fetched = call(app, "GET", f"/api/admin/orders/{order['order_id']}", headers=admin())
    assert fetched.json()["total_cents"] == order["total_cents"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({}, 400),
        ({"items": []}, 400),
        ({"items": [{"product_id": 999}]}, 404),
        ({"items": [{"product_id": 1, "quantity": 0}]}, 400),
        ({"items": "everything"}, 400),
        ({"items": [{"product_id": 1}], "email": 5}, 400),
    ],
)
def test_order_refuses_bad_requests_and_writes_nothing(
    app: Wsgi, database: Path, body: dict[str, Any], status: int
) -> None:
    assert call(app, "POST", "/api/orders", body).status == status
    with closing(sqlite3.connect(database)) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (0,)


# -- admin ------------------------------------------------------------------


NEW_PRODUCT = {"sku": "PIN-01", "name": "Enamel Pin", "price_cents": 350}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN_TOKEN}],
)
def test_admin_api_requires_the_token(app: Wsgi, headers: dict[str, str]) -> None:
    reply = call(app, "POST", "/api/admin/products", NEW_PRODUCT, headers)
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"] == "Bearer"
    assert call(app, "GET", "/api/admin/stats", headers=headers).status == 401
    assert call(app, "DELETE", "/api/admin/products/1", headers=headers).status == 401
    assert len(call(app, "GET", "/api/products").json()["products"]) == 8


def test_admin_api_is_off_without_a_configured_token(server: ModuleType, database: Path) -> None:
    app = make_app(server, database, admin_token="")
    assert call(app, "GET", "/api/admin/stats", headers={"Authorization": "Bearer "}).status == 401


def test_admin_manages_products_with_the_token(app: Wsgi) -> None:
    created = call(app, "POST", "/api/admin/products", NEW_PRODUCT, admin())
    assert created.status == 201
    product = created.json()
    assert product["name"] == "Enamel Pin" and product["description"] == ""

    updated = call(app, "PUT", f"/api/admin/products/{product['id']}", {"price_cents": 400}, admin())
    assert updated.status == 200 and updated.json()["price_cents"] == 400
    listed = {p["sku"]: p for p in call(app, "GET", "/api/products").json()["products"]}
    assert listed["PIN-01"]["price_cents"] == 400

    assert call(app, "DELETE", f"/api/admin/products/{product['id']}", headers=admin()).status == 204
    assert "PIN-01" not in {p["sku"] for p in call(app, "GET", "/api/products").json()["products"]}
    assert call(app, "DELETE", f"/api/admin/products/{product['id']}", headers=admin()).status == 404
    assert call(app, "GET", "/api/admin/stats", headers=admin()).json() == {
        "products": 8,
        "customers": 0,
        "orders": 0,
    }


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"sku": "MUG-01", "name": "Twin", "price_cents": 1}, 409),
        ({"name": "No SKU", "price_cents": 1}, 400),
        ({"sku": "X", "name": "X", "price_cents": -1}, 400),
        ({"sku": "X", "name": "X", "price_cents": 1.5}, 400),
        ({"sku": "X", "name": "X", "price_cents": 2**63}, 400),
        ({"sku": "X", "name": "X", "price_cents": 1, "colour": "red"}, 400),
    ],
)
def test_admin_validates_products(app: Wsgi, body: dict[str, Any], status: int) -> None:
    assert call(app, "POST", "/api/admin/products", body, admin()).status == status


# -- static files -----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "file", "content_type"),
    [
        ("/", "index.html", "text/html; charset=utf-8"),
        ("/cart", "cart.html", "text/html; charset=utf-8"),
        ("/register", "register.html", "text/html; charset=utf-8"),
        ("/admin", "admin.html", "text/html; charset=utf-8"),
        ("/maintenance.html", "maintenance.html", "text/html; charset=utf-8"),
        ("/scripts/api.js", "scripts/api.js", "text/javascript; charset=utf-8"),
        ("/styles/store.css", "styles/store.css", "text/css; charset=utf-8"),
        ("/assets/logo.svg", "assets/logo.svg", "image/svg+xml"),
        ("/assets/favicon.png", "assets/favicon.png", "image/png"),
    ],
)
def test_static_files_are_served(app: Wsgi, path: str, file: str, content_type: str) -> None:
    reply = call(app, "GET", path)
    assert reply.status == 200
    assert reply.body == (APP / file).read_bytes()
    assert reply.headers["Content-Type"] == content_type


def test_head_sends_the_headers_only(app: Wsgi) -> None:
    reply = call(app, "HEAD", "/")
    assert reply.status == 200 and reply.body == b""
    assert reply.headers["Content-Length"] == str((APP / "index.html").stat().st_size)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/scripts/../server.py", 403),
        ("/../config.py", 403),
        ("/assets/../../etc/passwd", 403),
        ("/.gitignore", 403),
        ("/scripts/..\\server.py", 403),
        ("/server.py", 404),
        ("/config.py", 404),
        ("/store.db", 404),
        ("/migrations/0001_initial.sql", 404),
        ("/deploy/nesop-store.service", 404),
        ("//etc/passwd", 404),
        ("/scripts/missing.js", 404),
        ("/scripts/", 404),
    ],
)
def test_static_files_outside_the_public_ones_are_refused(app: Wsgi, path: str, status: int) -> None:
    reply = call(app, "GET", path)
    assert reply.status == status
    assert "error" in reply.json()


def test_a_symlink_out_of_the_app_is_not_followed(server: ModuleType, database: Path, tmp_path: Path) -> None:
    app_dir = tmp_path / "app"
    (app_dir / "scripts").mkdir(parents=True)
    secret = tmp_path / "secret.js"
    secret.write_text("secret")
    (app_dir / "scripts" / "leak.js").symlink_to(secret)
    assert call(make_app(server, database, app_dir), "GET", "/scripts/leak.js").status == 404


def test_unknown_method_is_refused(app: Wsgi) -> None:
    reply = call(app, "PUT", "/api/cart")
    assert reply.status == 405
    assert set(reply.headers["Allow"].split(", ")) == {"GET", "POST"}
    assert call(app, "POST", "/index.html").status == 404


# -- health -----------------------------------------------------------------


def test_health_reports_version_and_database(app: Wsgi) -> None:
    reply = call(app, "GET", "/health")
    assert reply.status == 200
    health = reply.json()
    assert health["status"] == "ok" and health["database"] == "ok"
    assert health["version"] == (APP / "VERSION").read_text().strip() == "1.0.0"
    assert health["products"] == 8
    assert health["pid"] == os.getpid()
    assert reply.headers["Cache-Control"] == "no-store"


def test_health_fails_without_a_database_and_does_not_create_one(server: ModuleType, tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    reply = call(make_app(server, missing), "GET", "/health")
    assert reply.status == 503
    health = reply.json()
    assert health["status"] == "error" and health["database"] == "error"
    assert "unable to open database file" in health["reason"]
    assert health["version"] == "1.0.0"
    assert not missing.exists()


def test_health_names_the_missing_schema(server: ModuleType, tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    reply = call(make_app(server, empty), "GET", "/health")
    assert reply.status == 503
    assert "missing table products" in reply.json()["reason"]
    # The rest of the API answers too, with an error rather than a crash.
    assert call(make_app(server, empty), "GET", "/api/products").status == 503


def test_health_fails_on_a_file_that_is_not_a_database(server: ModuleType, tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not SQLite" * 100)
    reply = call(make_app(server, junk), "GET", "/health")
    assert reply.status == 503
    assert "not a database" in reply.json()["reason"]


def test_the_store_uses_wal(app: Wsgi, database: Path) -> None:
    call(app, "GET", "/health")
    with closing(sqlite3.connect(database)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


# -- configuration and the real server --------------------------------------


def test_config_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NESOP_STORE_HOST", "0.0.0.0")
    monkeypatch.setenv("NESOP_STORE_PORT", "8081")
    monkeypatch.setenv("NESOP_STORE_DB", "/srv/store.db")
    monkeypatch.setenv("NESOP_STORE_ADMIN_TOKEN", "t0ken")
    settings = load_server(APP).settings_from_config()
    assert (settings.host, settings.port, settings.database, settings.admin_token) == (
        "0.0.0.0",
        8081,
        "/srv/store.db",
        "t0ken",
    )
    assert settings.version == "1.0.0"


def test_config_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HOST", "PORT", "DB", "ADMIN_TOKEN"):
        monkeypatch.delenv(f"NESOP_STORE_{name}", raising=False)
    settings = load_server(APP).settings_from_config()
    assert (settings.host, settings.port, settings.database, settings.admin_token) == (
        "127.0.0.1",
        5000,
        "/opt/nesop-store/data/nesop_store_production.db",
        "",
    )


def test_threaded_server_serves_health_and_shuts_down(server: ModuleType, app: Wsgi) -> None:
    httpd = server.make_server("127.0.0.1", 0, app)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_port}/health"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
            assert json.load(response)["status"] == "ok"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
    assert not thread.is_alive()


def start_store(app_dir: Path, database: Path, **extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "NESOP_STORE_DB": str(database), "NESOP_STORE_PORT": "0", **extra}
    return subprocess.Popen(
        [sys.executable, "-B", "server.py"], cwd=app_dir, env=env, stderr=subprocess.PIPE, text=True
    )


def test_server_process_serves_until_sigterm_and_exits_0(database: Path) -> None:
    process = start_store(APP, database)
    try:
        assert process.stderr is not None
        first = process.stderr.readline()
        # "nesop-store: NESOP Store 1.0.0 listening on http://127.0.0.1:PORT"
        assert "1.0.0 listening on http://127.0.0.1:" in first
        url = first.split()[-1] + "/health"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert json.load(response)["pid"] == process.pid
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert "stopped" in process.stderr.read()
    finally:
        process.kill()
        process.wait()


# -- migrations -------------------------------------------------------------


MIGRATIONS_1_0_6 = ["0001_initial", "0002_product_stock", "0003_product_categories", "0004_newsletter"]


@pytest.mark.parametrize(
    ("ref", "names"),
    [
        ("v1.0.6", MIGRATIONS_1_0_6),
        ("v1.2.2", [*MIGRATIONS_1_0_6, "0005_order_notes"]),
        ("v1.3.1", [*MIGRATIONS_1_0_6, "0005_order_notes", "0006_shipping_status"]),
    ],
)
def test_every_migration_has_a_rollback_that_undoes_it_exactly(
    tree: Callable[[str], Path], tmp_path: Path, ref: str, names: list[str]
) -> None:
    app_dir = tree(ref)
    migrations = migration_files(app_dir)
    assert [m.stem for m in migrations] == names
    database = tmp_path / "store.db"
    sqlite3.connect(database).close()
    before = []
    for migration in migrations:
        before.append(snapshot(database))
        run_sql(database, migration)
    for migration, expected in zip(reversed(migrations), reversed(before), strict=True):
        run_sql(database, rollback_file(migration))
        assert snapshot(database) == expected, f"{rollback_file(migration).name} is not the inverse"


def assert_fails_at_the_third_statement(
    database: Path, steps: list[str], error: type[sqlite3.Error], match: str
) -> None:
    """In one transaction, as a migration engine runs it, nothing of ``steps`` stays; statement by
    statement, the first two stay applied and the third fails."""
    before = snapshot(database)
    with closing(sqlite3.connect(database, isolation_level=None)) as conn:
        conn.execute("BEGIN")
        conn.execute(steps[0])
        conn.execute(steps[1])
        with pytest.raises(error, match=match):
            conn.execute(steps[2])
        conn.execute("ROLLBACK")
        assert snapshot(database) == before
        conn.execute(steps[0])
        conn.execute(steps[1])
        with pytest.raises(error):
            conn.execute(steps[2])


def test_broken_migration_fails_half_way(tree: Callable[[str], Path], tmp_path: Path) -> None:
    app_dir = tree("broken/migration")
    database = tmp_path / "store.db"
    migrate(database, app_dir, upto="0005")  # 0005 is fine
    with closing(sqlite3.connect(database)) as conn:
        assert conn.execute("SELECT code FROM gift_cards").fetchall() == [("WELCOME-10",)]
    steps = statements((app_dir / "migrations" / "0006_product_slugs.sql").read_text())
    assert len(steps) == 3
    assert_fails_at_the_third_statement(database, steps, sqlite3.IntegrityError, "UNIQUE constraint failed")
    with closing(sqlite3.connect(database)) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(products)")]
    assert "slug" in columns


def test_broken_socket_migration_fails_half_way(tree: Callable[[str], Path], tmp_path: Path) -> None:
    app_dir = tree("broken/socket-migration")
    database = tmp_path / "store.db"
    migrate(database, app_dir, upto="0005")  # 1.2.2's schema
    script = app_dir / "migrations" / "0006_order_status.sql"
    steps = statements(script.read_text())
    assert len(steps) == 3
    before = snapshot(database)
    # a column of the developer's own database, which no migration adds: on any other, even empty
    assert_fails_at_the_third_statement(
        database, steps, sqlite3.OperationalError, "no such column: shipped_at"
    )
    with closing(sqlite3.connect(database)) as conn:
        assert "status" in [row[1] for row in conn.execute("PRAGMA table_info(orders)")]
    # what did get applied, its rollback takes out again
    run_sql(database, rollback_file(script))
    assert snapshot(database) == before


# -- the release history ----------------------------------------------------


RELEASE_CHANGES = {
    "v1.0.1": {"M server.py"},
    "v1.0.2": {
        "M index.html",
        "M cart.html",
        "M register.html",
        "M admin.html",
        "M styles/store.css",
        "M scripts/api.js",
        "R100 scripts/main.js scripts/products.js",
        "A assets/cart.svg",
        "D assets/banner.svg",
    },
    "v1.0.3": {
        "A migrations/0002_product_stock.sql",
        "A migrations/0002_product_stock.rollback.sql",
        "M store.py",
        "M scripts/products.js",
        "M scripts/admin.js",
        "M admin.html",
        "M styles/store.css",
    },
    "v1.0.4": {"M config.py", "M requirements.txt", "M server.py", "M manage.py"},
    "v1.0.5": {
        "A migrations/0003_product_categories.sql",
        "A migrations/0003_product_categories.rollback.sql",
        "M store.py",
        "M scripts/products.js",
        "M index.html",
        "M styles/store.css",
    },
    "v1.0.6": {
        "A migrations/0004_newsletter.sql",
        "A migrations/0004_newsletter.rollback.sql",
        "D maintenance.html",
        "M store.py",
        "M server.py",
        "M register.html",
        "M scripts/register.js",
        "M styles/store.css",
    },
    "broken/migration": {
        "A migrations/0005_gift_cards.sql",
        "A migrations/0005_gift_cards.rollback.sql",
        "A migrations/0006_product_slugs.sql",
        "A migrations/0006_product_slugs.rollback.sql",
        "M store.py",
    },
    "broken/start": {"M server.py"},
    "broken/health": {"M store.py"},
    "v1.1.0": {
        "A gunicorn.conf.py",
        "A views.py",
        "A wsgi.py",
        "M .gitignore",
        "M deploy/nesop-store.service",
        "M index.html",
        "M nesop-deb.toml",
        "M requirements.txt",
        "M server.py",
        "M styles/store.css",
    },
    "v1.1.1": {"M requirements.txt"},
    "v1.1.2": {
        "A receipts.py",
        "M config.py",
        "M requirements.txt",
        "M scripts/cart.js",
        "M server.py",
        "M store.py",
        "M styles/store.css",
        "M views.py",
    },
    "v1.1.3": {"M receipts.py", "M requirements.txt"},
    "broken/import": {"M receipts.py", "M requirements.txt", "M server.py"},
    "v1.2.0": {
        "A deploy/nesop-store.socket",
        "M config.py",
        "M deploy/nesop-store.service",
        "M gunicorn.conf.py",
        "M nesop-deb.toml",
        "M server.py",
    },
    "v1.2.1": {"M styles/store.css", "M views.py"},
    "v1.2.2": {
        "A migrations/0005_order_notes.sql",
        "A migrations/0005_order_notes.rollback.sql",
        "M cart.html",
        "M scripts/cart.js",
        "M server.py",
        "M store.py",
        "M styles/store.css",
        "M views.py",
    },
    "broken/socket-migration": {
        "A migrations/0006_order_status.sql",
        "A migrations/0006_order_status.rollback.sql",
        "M server.py",
        "M store.py",
    },
    "broken/socket-start": {"M server.py", "M store.py"},
    "v1.3.0": {
        "A db.py",
        *(
            f"A migrations-postgresql/{name}{suffix}"
            for name in [*MIGRATIONS_1_0_6, "0005_order_notes"]
            for suffix in (".sql", ".rollback.sql")
        ),
        "M config.py",
        "M manage.py",
        "M nesop-deb.toml",
        "M requirements.txt",
        "M server.py",
        "M store.py",
    },
    "v1.3.1": {
        "A migrations/0006_shipping_status.sql",
        "A migrations/0006_shipping_status.rollback.sql",
        "A migrations-postgresql/0006_shipping_status.sql",
        "A migrations-postgresql/0006_shipping_status.rollback.sql",
        "M server.py",
        "M store.py",
    },
}
TAGS = [
    *(f"v1.0.{n}" for n in range(7)),
    *(f"v1.1.{n}" for n in range(4)),
    *(f"v1.2.{n}" for n in range(3)),
    *(f"v1.3.{n}" for n in range(2)),
]
# Releases added later never change these commits, which other tests and packages name.
PINNED_COMMITS = {
    "v1.0.6": "632889255cc8a05bbaf3f9208d5f655ef9428985",
    "broken/migration": "72c4cb95a500e54a7ebbc271161d87cc3183b39c",
    "broken/start": "e87473e02843eeaeac3423adaacc71637d40200b",
    "broken/health": "8a415f7dc09bc47346c6fda5dcc4b5c13da76d8c",
}


def test_release_repo_has_the_tags_and_branches(release_repo: Path) -> None:
    assert git(release_repo, "tag", "--list").split() == TAGS
    branches = git(release_repo, "branch", "--list", "--format=%(refname:short)").split()
    assert sorted(branches) == sorted(["main", *BROKEN_BRANCHES])
    assert git(release_repo, "rev-parse", "main") == git(release_repo, "rev-parse", f"{TAGS[-1]}^{{commit}}")
    assert git(release_repo, "status", "--porcelain") == ""
    for older, newer in itertools.pairwise(TAGS):
        assert git(release_repo, "rev-parse", f"{newer}^{{commit}}~1") == git(
            release_repo, "rev-parse", f"{older}^{{commit}}"
        )
    for branch, (base, _) in BROKEN_BRANCHES.items():
        assert git(release_repo, "rev-parse", f"{branch}~1") == git(
            release_repo, "rev-parse", f"{base}^{{commit}}"
        )
        assert git(release_repo, "tag", "--points-at", branch) == ""
    for ref, commit in PINNED_COMMITS.items():
        assert git(release_repo, "rev-parse", f"{ref}^{{commit}}") == commit, ref


@pytest.mark.parametrize("ref", list(RELEASE_CHANGES))
def test_each_release_changes_what_it_claims(release_repo: Path, ref: str) -> None:
    lines = git(release_repo, "diff", "--name-status", "--find-renames", f"{ref}~1", ref).splitlines()
    changes = {" ".join(line.split("\t")) for line in lines}
    assert changes == RELEASE_CHANGES[ref] | {"M VERSION"}
    version = ref.removeprefix("v") if ref.startswith("v") else BROKEN_BRANCHES[ref][1]
    assert git(release_repo, "show", f"{ref}:VERSION") == version


def test_release_1_0_4_makes_manage_py_executable(release_repo: Path) -> None:
    def mode(ref: str) -> str:
        return git(release_repo, "ls-tree", ref, "manage.py").split()[0]

    assert (mode("v1.0.3"), mode("v1.0.4")) == ("100644", "100755")
    summary = git(release_repo, "diff", "--summary", "v1.0.3", "v1.0.4")
    assert "mode change 100644 => 100755 manage.py" in summary


def test_release_repo_is_reproducible(release_repo: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    result = make_release_repo(again)
    assert result.stderr == ""
    assert result.stdout.count("\n") == 1 and "v1.0.0..v1.3.1" in result.stdout
    assert git(again, "show-ref") == git(release_repo, "show-ref")
    assert git(again, "log", "-1", "--format=%an <%ae> %ad", "v1.0.0") == (
        "NESOP Team <ops@example.com> Mon Jan 6 09:00:00 2025 +0000"
    )


def test_release_repo_refuses_a_non_empty_destination(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = subprocess.run(
        [sys.executable, str(MAKE_RELEASE_REPO), str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "not empty" in result.stderr


def test_release_1_0_6_runs_on_its_migrations(tree: Callable[[str], Path], tmp_path: Path) -> None:
    app_dir = tree("v1.0.6")
    database = tmp_path / "store.db"
    migrate(database, app_dir)
    app = make_app(load_server(app_dir), database, app_dir)
    health = call(app, "GET", "/health").json()
    assert (health["status"], health["version"]) == ("ok", "1.0.6")
    products = call(app, "GET", "/api/products").json()["products"]
    hoodie = next(p for p in products if p["sku"] == "HOOD-01")
    assert (hoodie["stock"], hoodie["category"]) == (12, "Apparel")
    assert [p["category"] for p in products] == sorted(p["category"] for p in products)
    assert call(app, "GET", "/api/info").json()["max_item_quantity"] == 10

    # Stock runs out, and an order takes from it.
    assert (
        call(app, "POST", "/api/orders", {"items": [{"product_id": hoodie["id"], "quantity": 10}]}).status
        == 201
    )
    reply = call(app, "POST", "/api/orders", {"items": [{"product_id": hoodie["id"], "quantity": 3}]})
    assert reply.status == 409 and "only 2" in reply.json()["error"]
    assert call(app, "POST", "/api/cart", {"product_id": 1, "quantity": 11}).status == 400

    registered = call(
        app, "POST", "/api/register", {"name": "Ann", "email": "a@example.com", "newsletter": True}
    )
    assert registered.status == 201 and registered.json()["newsletter"] is True
    with closing(sqlite3.connect(database)) as conn:
        assert conn.execute("SELECT customer_id FROM newsletter_subscriptions").fetchall() == [(1,)]


def test_health_catches_an_app_deployed_without_its_migration(
    tree: Callable[[str], Path], tmp_path: Path
) -> None:
    app_dir = tree("v1.0.6")
    database = tmp_path / "store.db"
    migrate(database, app_dir, upto="0003")
    reply = call(make_app(load_server(app_dir), database, app_dir), "GET", "/health")
    assert reply.status == 503
    assert reply.json()["reason"] == "missing table newsletter_subscriptions"


def test_broken_health_serves_but_is_never_healthy(tree: Callable[[str], Path], tmp_path: Path) -> None:
    app_dir = tree("broken/health")
    database = tmp_path / "store.db"
    migrate(database, app_dir)
    app = make_app(load_server(app_dir), database, app_dir)
    assert call(app, "GET", "/api/products").status == 200
    reply = call(app, "GET", "/health")
    assert reply.status == 503
    assert reply.json()["reason"] == "missing column orders.shipping_cents"


def test_broken_start_exits_at_once(tree: Callable[[str], Path], tmp_path: Path) -> None:
    app_dir = tree("broken/start")
    database = tmp_path / "store.db"
    migrate(database, app_dir)
    process = start_store(app_dir, database)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode != 0
    assert "ImportError" in stderr and "PAYMENT_PROVIDER_URL" in stderr


# -- third-party dependencies (1.1.x) -----------------------------------------

# What each release pins in requirements.txt. The code imports each package
# under its own name; gunicorn is not imported but runs the app (the unit).
PINS: dict[str, dict[str, str]] = {
    "v1.0.6": {},
    "v1.1.0": {"gunicorn": "27.0.1", "markupsafe": "3.0.3"},
    "v1.1.1": {"gunicorn": "27.0.1", "markupsafe": "3.0.4"},
    "v1.1.2": {"gunicorn": "27.0.1", "itsdangerous": "2.2.0", "markupsafe": "3.0.4"},
    "v1.1.3": {"gunicorn": "27.0.1", "markupsafe": "3.0.4"},
    "broken/import": {"gunicorn": "27.0.1", "itsdangerous": "2.2.0", "markupsafe": "3.0.4"},
    # socket activation, the price list, order notes: no dependency changes
    "v1.2.0": {"gunicorn": "27.0.1", "markupsafe": "3.0.4"},
    "v1.2.2": {"gunicorn": "27.0.1", "markupsafe": "3.0.4"},
    "broken/socket-start": {"gunicorn": "27.0.1", "markupsafe": "3.0.4"},
    # PostgreSQL besides SQLite
    "v1.3.0": {"gunicorn": "27.0.1", "markupsafe": "3.0.4", "psycopg2-binary": "2.9.13"},
    "v1.3.1": {"gunicorn": "27.0.1", "markupsafe": "3.0.4", "psycopg2-binary": "2.9.13"},
}
# The module a package is imported by, where its name differs.
IMPORT_NAMES = {"psycopg2-binary": "psycopg2"}
DEPENDENCY_RELEASES = [ref for ref in PINS if ref != "v1.0.6"]
HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")
RECEIPT_KEY = "test-secret"
# The receipt link of order 42 under RECEIPT_KEY, as 1.1.2 (itsdangerous 2.2.0) signed it.
RECEIPT_TOKEN_FROM_1_1_2 = "42.Im2VpQykuOTUyb6bJadh4r7pJRg"


def requirements(text: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 hashes) of a requirements file whose every line is pinned."""
    pins = {}
    for line in text.replace("\\\n", " ").splitlines():
        words = line.partition("#")[0].split()
        if not words:
            continue
        name, _, version = words[0].partition("==")
        hashes = [HASH.fullmatch(word) for word in words[1:]]
        assert version and hashes and all(hashes), f"not pinned with == and hashes: {line}"
        pins[name.lower()] = (version, [match[1] for match in hashes if match])
    return pins


def third_party_imports(app_dir: Path) -> set[str]:
    """Top-level modules the app's Python files import, other than the standard library and its own."""
    own = {path.name.removesuffix(".py") for path in app_dir.glob("*.py")}
    found: set[str] = set()
    for path in app_dir.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.partition(".")[0])
    return found - own - set(sys.stdlib_module_names)


def gunicorn_settings(app_dir: Path) -> dict[str, Any]:
    """The names gunicorn.conf.py defines, as gunicorn reads them from the app directory."""
    spec = importlib.util.spec_from_file_location("gunicorn_conf", app_dir / "gunicorn.conf.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with app_imports(app_dir):
        spec.loader.exec_module(module)
    return vars(module)


@pytest.mark.parametrize("ref", DEPENDENCY_RELEASES)
def test_every_dependency_is_pinned_with_its_hashes(release_repo: Path, ref: str) -> None:
    pins = requirements(git(release_repo, "show", f"{ref}:requirements.txt"))
    assert {name: version for name, (version, _) in pins.items()} == PINS[ref]
    for name, (_, hashes) in pins.items():
        # every file of the version: a pure package's wheel and sdist, a compiled one's many wheels
        compiled = name in ("markupsafe", "psycopg2-binary")
        assert len(set(hashes)) == len(hashes) >= (40 if compiled else 2), name
    config = tomllib.loads(git(release_repo, "show", f"{ref}:nesop-deb.toml"))
    assert config["dependencies"] == {
        "requirements": "requirements.txt",
        "venv": "venv",
        "python": "3.13",
        "architecture": "amd64",
    }


@pytest.mark.parametrize("ref", list(PINS))
def test_the_code_imports_what_requirements_pin(tree: Callable[[str], Path], ref: str) -> None:
    imported = third_party_imports(tree(ref))
    # broken/import too: what it gets wrong is a name itsdangerous 2.2.0 lacks, not a package
    pinned = {IMPORT_NAMES.get(name, name) for name in PINS[ref]}
    assert imported - pinned == set()
    assert pinned - imported == ({"gunicorn"} if PINS[ref] else set())


def test_release_1_1_0_runs_on_gunicorn_with_config_py_settings(
    tree: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    app_dir = tree("v1.1.0")
    monkeypatch.setenv("NESOP_STORE_HOST", "127.0.0.2")
    monkeypatch.setenv("NESOP_STORE_PORT", "5077")
    settings = gunicorn_settings(app_dir)
    assert settings["bind"] == ["127.0.0.2:5077"]
    # gunicorn takes every name of the file that is a setting: "config" is one
    assert "config" not in settings
    assert (settings["worker_class"], settings["workers"], settings["preload_app"]) == ("gthread", 2, True)
    assert settings["control_socket_disable"] is True  # not in $HOME, the app directory
    assert callable(settings["post_fork"])
    unit = (app_dir / "deploy/nesop-store.service").read_text().splitlines()
    exec_start = next(line for line in unit if line.startswith("ExecStart=")).split()
    assert exec_start == [
        "ExecStart=/opt/nesop-store/venv/bin/gunicorn",
        "--chdir",
        "/opt/nesop-store",
        "--config",
        "/opt/nesop-store/gunicorn.conf.py",
        "wsgi:application",
    ]
    assert {"KillSignal=SIGTERM", "KillMode=mixed", "Environment=PYTHONDONTWRITEBYTECODE=1"} <= set(unit)
    stop_timeout = next(int(line.partition("=")[2]) for line in unit if line.startswith("TimeoutStopSec="))
    assert settings["graceful_timeout"] < stop_timeout


def test_release_1_1_0_wsgi_application_is_the_configured_store(
    tree: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app_dir = tree("v1.1.0")
    database = tmp_path / "store.db"
    migrate(database, app_dir)
    monkeypatch.setenv("NESOP_STORE_DB", str(database))
    application = load_server(app_dir, "wsgi").application
    health = call(application, "GET", "/health").json()
    # built in gunicorn's master (preload_app): its pid is the service's MainPID
    assert (health["status"], health["version"], health["pid"]) == ("ok", "1.1.0", os.getpid())


def test_release_1_1_0_renders_the_price_list_escaped(tree: Callable[[str], Path], tmp_path: Path) -> None:
    app_dir = tree("v1.1.0")
    database = tmp_path / "store.db"
    migrate(database, app_dir)
    app = make_app(load_server(app_dir), database, app_dir)
    product = {
        "sku": "X-1",
        "name": '<script>alert("x")</script> & Co',
        "description": "<b>bold</b>",
        "price_cents": 1205,
        "category": "Zines",
    }
    assert call(app, "POST", "/api/admin/products", product, admin()).status == 201
    reply = call(app, "GET", "/catalogue")
    assert (reply.status, reply.headers["Content-Type"]) == (200, "text/html; charset=utf-8")
    page = reply.body.decode()
    assert "<script>" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; Co" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "12.05 EUR" in page and "sold out" in page  # no stock given: none
    assert page.index("Accessories") < page.index("Apparel") < page.index("Zines")
    for url in re.findall(r'(?:src|href)="(/(?:styles|assets|scripts)/[^"]+)"', page):
        assert call(app, "GET", url).status == 200, url
    assert "/catalogue" in tomllib.loads((app_dir / "nesop-deb.toml").read_text())["health"]["pages"]


def test_release_1_1_3_gives_receipt_links_signed_as_1_1_2_did(
    tree: Callable[[str], Path], tmp_path: Path
) -> None:
    app_dir = tree("v1.1.3")
    database = tmp_path / "store.db"
    migrate(database, app_dir)
    server = load_server(app_dir)
    app = make_app(server, database, app_dir, secret_key=RECEIPT_KEY)
    order = call(
        app, "POST", "/api/orders", {"items": [{"product_id": 1, "quantity": 2}], "email": "<i>e</i>@x.org"}
    ).json()
    # the product is retired since: the receipt still names it
    assert call(app, "DELETE", "/api/admin/products/1", headers=admin()).status == 204
    reply = call(app, "GET", order["receipt_url"])
    assert (reply.status, reply.headers["Content-Type"]) == (200, "text/html; charset=utf-8")
    page = reply.body.decode()
    assert "NESOP Mug" in page and "25.80 EUR" in page
    assert "&lt;i&gt;e&lt;/i&gt;@x.org" in page and "<i>" not in page
    signature = order["receipt_url"].rpartition(".")[2]
    assert call(app, "GET", f"/receipt/{order['order_id'] + 1}.{signature}").status == 404
    # without a key: no links, and no receipt opens
    plain = make_app(server, database, app_dir)
    assert "receipt_url" not in call(plain, "POST", "/api/orders", {"items": [{"product_id": 2}]}).json()
    assert call(plain, "GET", order["receipt_url"]).status == 404
    # the links 1.1.2 gave still open
    assert load_server(app_dir, "receipts").order_id(RECEIPT_KEY, RECEIPT_TOKEN_FROM_1_1_2) == 42


def test_release_1_1_3_still_runs_as_python3_server_py(tree: Callable[[str], Path], tmp_path: Path) -> None:
    app_dir = tree("v1.1.3")
    database = tmp_path / "store.db"
    migrate(database, app_dir)
    process = start_store(app_dir, database)
    try:
        assert process.stderr is not None
        base = process.stderr.readline().split()[-1]
        with urllib.request.urlopen(base + "/health", timeout=5) as response:
            health = json.load(response)
        assert (health["version"], health["pid"]) == ("1.1.3", process.pid)
        with urllib.request.urlopen(base + "/catalogue", timeout=5) as response:
            assert b"NESOP Mug" in response.read()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.wait()


def names_imported_from(app_dir: Path, package: str) -> dict[str, set[str]]:
    """module file -> the names its ``from <package> import ...`` lines import."""
    found: dict[str, set[str]] = {}
    for path in sorted(app_dir.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == package:
                found.setdefault(path.name, set()).update(alias.name for alias in node.names)
    return found


def test_broken_import_needs_a_name_its_pinned_itsdangerous_lacks(tree: Callable[[str], Path]) -> None:
    """The dependencies change, so the update builds a new virtualenv, and every package in it
    imports; the app does not: itsdangerous removed its JWS serializers in 2.1. That it then dies
    with an ImportError is shown in a real virtualenv, by tests/integration/test_example_store_venv.py."""
    app_dir = tree("broken/import")
    pins = requirements((app_dir / "requirements.txt").read_text())
    # 1.1.3's pins plus itsdangerous, pinned with every hash, exactly as 1.1.2 pinned it
    before = requirements((tree("v1.1.3") / "requirements.txt").read_text())
    as_in_1_1_2 = requirements((tree("v1.1.2") / "requirements.txt").read_text())["itsdangerous"]
    assert pins == {**before, "itsdangerous": as_in_1_1_2}
    version = tuple(int(part) for part in pins["itsdangerous"][0].split("."))
    assert version >= (2, 1)
    assert names_imported_from(app_dir, "itsdangerous") == {
        "receipts.py": {"BadData", "TimedJSONWebSignatureSerializer"}
    }
    # receipts is imported as the app is loaded (wsgi imports server), not on the first receipt
    server_imports = ast.parse((app_dir / "server.py").read_text()).body
    assert any(isinstance(node, ast.Import) and node.names[0].name == "receipts" for node in server_imports)
    assert (app_dir / "wsgi.py").read_text().count("import server\n") == 1


# -- socket activation, and the releases on it (1.2.x) -------------------------


def start_activated(
    app_dir: Path, database: Path, listener: socket.socket, **extra: str
) -> subprocess.Popen[str]:
    """``python3 server.py`` handed ``listener`` the way systemd hands it nesop-store.socket."""
    env = {**os.environ, "NESOP_STORE_DB": str(database), **extra}
    return activated([sys.executable, "-B", "server.py"], listener, cwd=app_dir, env=env)


def stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=10)


def get_health(host: str, port: int) -> dict[str, Any]:
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        assert response.status == 200
        health: dict[str, Any] = json.loads(response.read())
        return health
    finally:
        connection.close()


def unit_settings(text: str) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit file: each section's settings, in order (a key may come more than once)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
        else:
            key, _, value = line.partition("=")
            current.append((key, value))
    return sections


def test_release_1_2_0_ships_a_socket_unit_that_starts_the_service(
    tree: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    app_dir = tree("v1.2.0")
    config = tomllib.loads((app_dir / "nesop-deb.toml").read_text())
    assert (config["app"]["unit_file"], config["app"]["socket_file"]) == (
        "deploy/nesop-store.service",
        "deploy/nesop-store.socket",
    )
    socket_unit = unit_settings((app_dir / "deploy/nesop-store.socket").read_text())
    assert socket_unit["Socket"] == [("ListenStream", "127.0.0.1:5000"), ("Accept", "no")]
    assert socket_unit["Install"] == [("WantedBy", "sockets.target")]
    # the health gate asks the address the socket listens on
    health = urllib.parse.urlsplit(config["health"]["url"])
    assert f"{health.hostname}:{health.port}" == "127.0.0.1:5000"
    service = unit_settings((app_dir / "deploy/nesop-store.service").read_text())
    assert {("Requires", "nesop-store.socket"), ("After", "nesop-store.socket")} <= set(service["Unit"])
    # systemd passes the socket to the process it starts: gunicorn itself, no wrapper
    exec_start = [value for key, value in service["Service"] if key == "ExecStart"]
    assert exec_start == [
        "/opt/nesop-store/venv/bin/gunicorn --chdir /opt/nesop-store"
        " --config /opt/nesop-store/gunicorn.conf.py wsgi:application"
    ]
    # gunicorn ignores bind when given a socket, and binds it without one (see the integration test)
    monkeypatch.setenv("NESOP_STORE_PORT", "5077")
    settings = gunicorn_settings(app_dir)
    assert settings["bind"] == ["127.0.0.1:5077"]
    assert settings["keepalive"] == 2


@pytest.mark.parametrize(
    ("family", "host", "url_host"),
    [(socket.AF_INET, "127.0.0.1", "127.0.0.1"), (socket.AF_INET6, "::1", "[::1]")],
    ids=["ipv4", "ipv6"],
)
def test_release_1_2_0_server_py_serves_on_the_socket_systemd_passes(
    tree: Callable[[str], Path], tmp_path: Path, family: socket.AddressFamily, host: str, url_host: str
) -> None:
    app_dir = tree("v1.2.0")
    database = tmp_path / "store.db"
    migrate(database, app_dir)
    try:
        listener = socket.create_server((host, 0), family=family)
    except OSError as error:
        pytest.skip(f"cannot listen on {host} here: {error}")
    with listener:
        port = listener.getsockname()[1]
        # config.py names the socket's own address: binding it too would fail
        process = start_activated(
            app_dir, database, listener, NESOP_STORE_HOST=host, NESOP_STORE_PORT=str(port)
        )
        try:
            assert process.stderr is not None
            first = process.stderr.readline()
            assert first.endswith(f"1.2.0 listening on the socket from systemd, http://{url_host}:{port}\n")
            health = get_health(host, port)
            assert (health["status"], health["version"], health["pid"]) == ("ok", "1.2.0", process.pid)
            assert stop(process) == 0
            assert "stopped" in process.stderr.read()
        finally:
            process.kill()
            process.wait()


def test_release_1_2_0_a_request_sent_while_the_store_is_stopped_is_answered_by_the_next(
    tree: Callable[[str], Path], tmp_path: Path
) -> None:
    """The socket outlives the store: a connection made between a stop and the next start waits
    in its queue, and the store that starts next answers it; nothing refuses it."""
    app_dir = tree("v1.2.0")
    database = tmp_path / "store.db"
    migrate(database, app_dir)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        first = start_activated(app_dir, database, listener)
        try:
            assert first.stderr is not None
            assert "listening on the socket from systemd" in first.stderr.readline()
            assert get_health("127.0.0.1", port)["pid"] == first.pid
            assert stop(first) == 0
        finally:
            first.kill()
            first.wait()
        # no process serves now: the request is sent all the same
        waiting = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        waiting.request("GET", "/health")
        second = start_activated(app_dir, database, listener)
        try:
            response = waiting.getresponse()
            assert response.status == 200
            assert json.loads(response.read())["pid"] == second.pid
            assert stop(second) == 0
        finally:
            waiting.close()
            second.kill()
            second.wait()


def test_release_1_2_0_server_py_binds_its_address_without_a_socket_of_its_own(
    tree: Callable[[str], Path], tmp_path: Path
) -> None:
    app_dir = tree("v1.2.0")
    database = tmp_path / "store.db"
    migrate(database, app_dir)
    # LISTEN_PID names another process: the socket, if any, is not this one's
    process = start_store(app_dir, database, LISTEN_PID="1", LISTEN_FDS="1")
    try:
        assert process.stderr is not None
        first = process.stderr.readline()
        assert "1.2.0 listening on http://127.0.0.1:" in first and "systemd" not in first
        with urllib.request.urlopen(first.split()[-1] + "/health", timeout=10) as response:
            assert json.load(response)["pid"] == process.pid
        assert stop(process) == 0
    finally:
        process.kill()
        process.wait()


def test_release_1_2_0_takes_the_variables_only_when_they_name_it(
    tree: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app_dir = tree("v1.2.0")
    monkeypatch.setenv("NESOP_STORE_DB", str(tmp_path / "store.db"))
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "1")
    # gunicorn loads wsgi.py (and so server.py) before it looks for the socket: importing takes nothing
    server = load_server(app_dir, "wsgi").server
    assert (os.environ["LISTEN_PID"], os.environ["LISTEN_FDS"]) == (str(os.getpid()), "1")
    monkeypatch.setenv("LISTEN_PID", "1")
    assert server.inherited_socket() is None
    assert os.environ["LISTEN_PID"] == "1"  # left to the process they name
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "0")
    assert server.inherited_socket() is None
    assert "LISTEN_PID" not in os.environ and "LISTEN_FDS" not in os.environ


def test_release_1_2_0_refuses_a_socket_that_is_not_tcp(tree: Callable[[str], Path], tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(tmp_path / "store.sock"))
        listener.listen()
        process = start_activated(tree("v1.2.0"), tmp_path / "store.db", listener)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 1
    assert "OSError: the socket systemd passed (fd 3) is not a TCP socket" in stderr


def test_release_1_2_1_price_list_says_how_many_are_left(tree: Callable[[str], Path], tmp_path: Path) -> None:
    app_dir = tree("v1.2.1")
    database = tmp_path / "store.db"
    migrate(database, app_dir)
    app = make_app(load_server(app_dir), database, app_dir)
    for product_id, stock in ((1, 0), (2, 3), (3, 5), (4, 6)):
        assert call(app, "PUT", f"/api/admin/products/{product_id}", {"stock": stock}, admin()).status == 200
    page = call(app, "GET", "/catalogue").body.decode()
    names = {cell.partition(" <")[0]: cell for cell in re.findall(r"<tr><td>(.*?)</td>", page)}
    assert names["NESOP Mug"] == 'NESOP Mug <span class="sold-out">sold out</span>'
    assert names["NESOP T-Shirt"] == 'NESOP T-Shirt <span class="few-left">only 3 left</span>'
    assert names["NESOP Hoodie"] == 'NESOP Hoodie <span class="few-left">only 5 left</span>'
    assert names["Sticker Pack"] == "Sticker Pack"  # 6 left: enough
    assert ".few-left {" in call(app, "GET", "/styles/store.css").body.decode()


def test_release_1_2_2_orders_keep_the_customers_note(tree: Callable[[str], Path], tmp_path: Path) -> None:
    app_dir = tree("v1.2.2")
    database = tmp_path / "store.db"
    migrate(database, app_dir)
    server = load_server(app_dir)
    app = make_app(server, database, app_dir, secret_key=RECEIPT_KEY)
    assert call(app, "GET", "/health").json()["status"] == "ok"
    note = "  Leave it at the <b>reception</b>,\nthank you  "
    cart_id = call(app, "POST", "/api/cart", {"product_id": 2}).json()["cart_id"]
    reply = call(app, "POST", "/api/orders", {"note": note}, {"X-Cart-Id": cart_id})
    assert reply.status == 201
    order = reply.json()
    assert order["note"] == note.strip()
    shown = call(app, "GET", f"/api/admin/orders/{order['order_id']}", headers=admin()).json()
    assert shown["note"] == note.strip()
    receipt = call(app, "GET", order["receipt_url"]).body.decode()
    assert (
        '<p class="order-note">Note: Leave it at the &lt;b&gt;reception&lt;/b&gt;,\nthank you</p>' in receipt
    )
    # without one: an empty note, and none on the receipt
    plain = call(app, "POST", "/api/orders", {"items": [{"product_id": 1}]}).json()
    assert plain["note"] == ""
    assert "order-note" not in call(app, "GET", plain["receipt_url"]).body.decode()
    for bad in ("x" * (server.MAX_NOTE_CHARS + 1), 42, None):
        assert call(app, "POST", "/api/orders", {"items": [{"product_id": 1}], "note": bad}).status == 400
    assert call(app, "GET", "/api/admin/stats", headers=admin()).json()["orders"] == 2
    # the form offers no more than the API takes
    assert f'<textarea name="note" rows="3" maxlength="{server.MAX_NOTE_CHARS}">' in (
        (app_dir / "cart.html").read_text()
    )
    # deployed without its migration, it says so
    old = tmp_path / "old.db"
    migrate(old, app_dir, upto="0004")
    reply = call(make_app(server, old, app_dir), "GET", "/health")
    assert reply.status == 503
    assert reply.json()["reason"] == "missing column orders.note"


def test_broken_socket_start_exits_at_once_and_the_socket_waits_for_the_release_before(
    tree: Callable[[str], Path], tmp_path: Path
) -> None:
    database = tmp_path / "store.db"
    migrate(database, tree("v1.2.2"))
    process = start_store(tree("broken/socket-start"), database)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 1
    assert "missing ), unterminated subpattern" in stderr and "listening" not in stderr
    # given the socket, it exits just the same; a request sent meanwhile waits for 1.2.2
    with socket.create_server(("127.0.0.1", 0)) as listener:
        waiting = http.client.HTTPConnection("127.0.0.1", listener.getsockname()[1], timeout=60)
        waiting.request("GET", "/health")
        broken = start_activated(tree("broken/socket-start"), database, listener)
        _, stderr = broken.communicate(timeout=10)
        assert broken.returncode == 1 and "unterminated subpattern" in stderr
        again = start_activated(tree("v1.2.2"), database, listener)
        try:
            response = waiting.getresponse()
            health = json.loads(response.read())
            assert (response.status, health["version"], health["pid"]) == (200, "1.2.2", again.pid)
            assert stop(again) == 0
        finally:
            waiting.close()
            again.kill()
            again.wait()

"""HTTP side of the NESOP Store: a WSGI app and the threaded server running it.

``python3 server.py`` serves on config.HOST:config.PORT until SIGTERM or
SIGINT, then finishes the requests in flight and exits 0.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets
import signal
import socketserver
import sqlite3
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from types import FrameType
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.types import StartResponse, WSGIEnvironment

import config
import store

APP_DIR = Path(__file__).resolve().parent
CART_COOKIE = "nesop_cart"
CART_ID_RE = re.compile(r"[A-Za-z0-9_-]{8,64}")
MAX_BODY_BYTES = 64 * 1024
MAX_ITEM_QUANTITY = 99

# Pages with a short address; any other top-level .html file is served by name.
PAGES = {"/": "index.html", "/cart": "cart.html", "/register": "register.html", "/admin": "admin.html"}
STATIC_DIRS = ("scripts", "styles", "assets")
# Fixed here rather than taken from mimetypes, whose answers depend on the host's /etc/mime.types.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}


@dataclass(frozen=True)
class Settings:
    database: str
    version: str
    app_dir: Path = APP_DIR
    admin_token: str = ""
    store_name: str = "NESOP Store"
    currency: str = "EUR"
    busy_timeout_ms: int = 5000
    host: str = "127.0.0.1"
    port: int = 5000


def read_version(app_dir: Path) -> str:
    try:
        return (app_dir / "VERSION").read_text(encoding="utf-8").strip() or "unknown"
    except OSError:
        return "unknown"


def settings_from_config() -> Settings:
    return Settings(
        database=config.DATABASE,
        version=read_version(APP_DIR),
        admin_token=config.ADMIN_TOKEN,
        store_name=config.STORE_NAME,
        currency=config.CURRENCY,
        busy_timeout_ms=config.BUSY_TIMEOUT_MS,
        host=config.HOST,
        port=config.PORT,
    )


def log(message: str) -> None:
    print(f"nesop-store: {message}", file=sys.stderr, flush=True)


class Unauthorized(store.StoreError):
    status = 401


class PayloadTooLarge(store.StoreError):
    status = 413


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_response(status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(
        status,
        body,
        [("Content-Type", "application/json"), ("Cache-Control", "no-store"), *headers],
    )


def error_response(status: int, message: str, headers: Iterable[tuple[str, str]] = ()) -> Response:
    if status == 401:
        headers = [*headers, ("WWW-Authenticate", "Bearer")]
    return json_response(status, {"error": message}, headers)


class Request:
    def __init__(self, environ: WSGIEnvironment) -> None:
        self.environ = environ
        self.method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        self.path = str(environ.get("PATH_INFO") or "/")

    def header(self, name: str) -> str:
        return str(self.environ.get("HTTP_" + name.upper().replace("-", "_"), ""))

    def cookie(self, name: str) -> str | None:
        try:
            morsel = SimpleCookie(self.header("Cookie")).get(name)
        except CookieError:
            return None
        return morsel.value if morsel else None

    def json(self) -> dict[str, Any]:
        try:
            length = int(self.environ.get("CONTENT_LENGTH") or 0)
        except ValueError as error:
            raise store.InvalidInput("bad Content-Length") from error
        if length > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"request body over {MAX_BODY_BYTES} bytes")
        raw = self.environ["wsgi.input"].read(length) if length > 0 else b""
        if not raw:
            return {}
        try:
            data = json.loads(raw)
        except ValueError as error:
            raise store.InvalidInput("request body is not valid JSON") from error
        if not isinstance(data, dict):
            raise store.InvalidInput("request body must be a JSON object")
        return data


def int_field(body: dict[str, Any], name: str, default: int | None = None) -> int:
    value = body.get(name, default)
    if value is None:
        raise store.InvalidInput(f"{name} is required")
    # bool is an int subclass, but true is not a quantity; SQLite integers are 64-bit.
    if not isinstance(value, int) or isinstance(value, bool) or not -(2**63) <= value < 2**63:
        raise store.InvalidInput(f"{name} must be an integer")
    return value


def str_field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise store.InvalidInput(f"{name} is required and must be a string")
    return value


Handler = Callable[[Request, re.Match[str]], Response]


class StoreApp:
    """The WSGI application: the JSON API, /health and the static pages."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.static_root = settings.app_dir.resolve()
        self.started = time.monotonic()
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "/health", self.health),
            ("GET", "/api/info", self.info),
            ("GET", "/api/products", self.products),
            ("GET", "/api/cart", self.get_cart),
            ("POST", "/api/cart", self.add_to_cart),
            ("DELETE", r"/api/cart/(\d{1,18})", self.remove_from_cart),
            ("POST", "/api/register", self.register),
            ("POST", "/api/orders", self.create_order),
            ("GET", "/api/admin/stats", self.admin_stats),
            ("GET", r"/api/admin/orders/(\d{1,18})", self.admin_order),
            ("POST", "/api/admin/products", self.admin_create_product),
            ("PUT", r"/api/admin/products/(\d{1,18})", self.admin_update_product),
            ("DELETE", r"/api/admin/products/(\d{1,18})", self.admin_retire_product),
        ]
        self.routes = [(method, re.compile(path), handler) for method, path, handler in routes]

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        response = self.dispatch(request)
        headers = [*response.headers, ("Content-Length", str(len(response.body)))]
        start_response(f"{response.status} {HTTPStatus(response.status).phrase}", headers)
        return [] if request.method == "HEAD" else [response.body]

    def dispatch(self, request: Request) -> Response:
        try:
            return self.route(request)
        except store.StoreError as error:
            return error_response(error.status, error.message)
        except sqlite3.Error as error:
            log(f"database error on {request.method} {request.path}: {error}")
            return error_response(503, "database unavailable")
        except Exception:
            log(f"internal error on {request.method} {request.path}:\n{traceback.format_exc()}")
            return error_response(500, "internal error")

    def route(self, request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        allowed = []
        for route_method, pattern, handler in self.routes:
            match = pattern.fullmatch(request.path)
            if match:
                if route_method == method:
                    return handler(request, match)
                allowed.append(route_method)
        if allowed:
            return error_response(405, "method not allowed", [("Allow", ", ".join(allowed))])
        if method == "GET":
            return self.static(request.path)
        return error_response(404, "not found")

    @contextmanager
    def database(self) -> Iterator[sqlite3.Connection]:
        """One connection per request: nothing is shared between threads."""
        conn = store.connect(self.settings.database, self.settings.busy_timeout_ms)
        try:
            yield conn
        finally:
            conn.close()

    # -- health -------------------------------------------------------------

    def database_status(self) -> tuple[list[str], int]:
        """Problems that make the store unusable (none when healthy), and the product count."""
        try:
            with self.database() as conn:
                problems = store.schema_problems(conn)
                return problems, 0 if problems else store.count_products(conn)
        except sqlite3.Error as error:
            return [f"cannot use database {self.settings.database}: {error}"], 0

    def health(self, request: Request, match: re.Match[str]) -> Response:
        problems, products = self.database_status()
        # pid and uptime let an update check that the service really restarted.
        about = {
            "version": self.settings.version,
            "pid": os.getpid(),
            "uptime_seconds": round(time.monotonic() - self.started, 3),
        }
        if problems:
            return json_response(
                503, {"status": "error", **about, "database": "error", "reason": "; ".join(problems)}
            )
        return json_response(200, {"status": "ok", **about, "database": "ok", "products": products})

    def info(self, request: Request, match: re.Match[str]) -> Response:
        return json_response(
            200,
            {
                "store_name": self.settings.store_name,
                "currency": self.settings.currency,
                "version": self.settings.version,
            },
        )

    # -- catalogue and cart -------------------------------------------------

    def products(self, request: Request, match: re.Match[str]) -> Response:
        with self.database() as conn:
            products = store.list_products(conn)
        return json_response(200, {"products": products, "currency": self.settings.currency})

    def cart_id(self, request: Request) -> str | None:
        """The client's cart: an X-Cart-Id header (API clients) or the cookie (browsers)."""
        cart_id = request.header("X-Cart-Id") or request.cookie(CART_COOKIE)
        if cart_id is not None and not CART_ID_RE.fullmatch(cart_id):
            raise store.InvalidInput("malformed cart id")
        return cart_id

    def cart_view(self, conn: sqlite3.Connection, cart_id: str | None) -> dict[str, Any]:
        lines = store.cart_lines(conn, cart_id) if cart_id else []
        total = 0
        for line in lines:
            line["line_total_cents"] = line["quantity"] * line["unit_price_cents"]
            total += line["unit_price_cents"]
        return {
            "cart_id": cart_id,
            "items": lines,
            "item_count": sum(line["quantity"] for line in lines),
            "total_cents": total,
            "currency": self.settings.currency,
        }

    def get_cart(self, request: Request, match: re.Match[str]) -> Response:
        with self.database() as conn:
            return json_response(200, self.cart_view(conn, self.cart_id(request)))

    def add_to_cart(self, request: Request, match: re.Match[str]) -> Response:
        body = request.json()
        product_id = int_field(body, "product_id")
        quantity = int_field(body, "quantity", default=1)
        if quantity < 1:
            raise store.InvalidInput("quantity must be at least 1")
        cart_id = self.cart_id(request) or secrets.token_urlsafe(16)
        with self.database() as conn:
            store.add_to_cart(conn, cart_id, product_id, quantity, MAX_ITEM_QUANTITY)
            view = self.cart_view(conn, cart_id)
        cookie = f"{CART_COOKIE}={cart_id}; Path=/; HttpOnly; SameSite=Lax"
        return json_response(200, view, [("Set-Cookie", cookie)])

    def remove_from_cart(self, request: Request, match: re.Match[str]) -> Response:
        cart_id = self.cart_id(request)
        if cart_id is None:
            raise store.NotFound("there is no cart")
        with self.database() as conn:
            store.remove_from_cart(conn, cart_id, int(match[1]))
            return json_response(200, self.cart_view(conn, cart_id))

    # -- customers and orders -----------------------------------------------

    def register(self, request: Request, match: re.Match[str]) -> Response:
        body = request.json()
        name, email = str_field(body, "name"), str_field(body, "email")
        with self.database() as conn:
            customer = store.register_customer(conn, name, email)
        return json_response(201, customer)

    def create_order(self, request: Request, match: re.Match[str]) -> Response:
        """Check out the cart, or the ``items`` given in the body.

        201 is sent only once the order is committed, so an acknowledged order
        survives a crash or an update that follows.
        """
        body = request.json()
        email = body.get("email")
        if email is not None and (not isinstance(email, str) or len(email) > 254):
            raise store.InvalidInput("email must be a string of at most 254 characters")
        with self.database() as conn:
            if "items" in body:
                order = store.create_order(conn, email, items=self.order_items(body["items"]))
            else:
                cart_id = self.cart_id(request)
                if cart_id is None:
                    raise store.InvalidInput("the cart is empty")
                order = store.create_order(conn, email, cart_id=cart_id)
        order["currency"] = self.settings.currency
        return json_response(201, order, [("Location", f"/api/admin/orders/{order['order_id']}")])

    def order_items(self, items: Any) -> list[tuple[int, int]]:
        if not isinstance(items, list):
            raise store.InvalidInput("items must be a list")
        parsed = []
        for item in items:
            if not isinstance(item, dict):
                raise store.InvalidInput("each item must be an object")
            quantity = int_field(item, "quantity", default=1)
            if not 1 <= quantity <= MAX_ITEM_QUANTITY:
                raise store.InvalidInput(f"quantity must be 1 to {MAX_ITEM_QUANTITY}")
            parsed.append((int_field(item, "product_id"), quantity))
        return parsed

    # -- admin --------------------------------------------------------------

    def require_admin(self, request: Request) -> None:
        token = self.settings.admin_token
        given = request.header("Authorization").encode()
        # No token configured means no admin API, rather than an open one.
        if not token or not hmac.compare_digest(given, f"Bearer {token}".encode()):
            raise Unauthorized("a valid admin token is required")

    def admin_stats(self, request: Request, match: re.Match[str]) -> Response:
        self.require_admin(request)
        with self.database() as conn:
            return json_response(200, store.stats(conn))

    def admin_order(self, request: Request, match: re.Match[str]) -> Response:
        self.require_admin(request)
        with self.database() as conn:
            return json_response(200, store.get_order(conn, int(match[1])))

    def admin_create_product(self, request: Request, match: re.Match[str]) -> Response:
        self.require_admin(request)
        body = request.json()
        with self.database() as conn:
            product = store.create_product(conn, body)
        return json_response(201, product)

    def admin_update_product(self, request: Request, match: re.Match[str]) -> Response:
        self.require_admin(request)
        body = request.json()
        with self.database() as conn:
            return json_response(200, store.update_product(conn, int(match[1]), body))

    def admin_retire_product(self, request: Request, match: re.Match[str]) -> Response:
        self.require_admin(request)
        with self.database() as conn:
            store.retire_product(conn, int(match[1]))
        return Response(204)

    # -- static files -------------------------------------------------------

    def static(self, path: str) -> Response:
        name = PAGES.get(path) or path.lstrip("/")
        parts = name.split("/")
        # "..", hidden files and Windows separators never name a file we serve.
        if any(part.startswith(".") or "\\" in part or "\0" in part for part in parts):
            return error_response(403, "forbidden path")
        top_level_page = len(parts) == 1 and name.endswith(".html")
        if not (top_level_page or (len(parts) > 1 and parts[0] in STATIC_DIRS)):
            return error_response(404, "not found")
        try:
            file = (self.static_root / name).resolve(strict=True)
        except OSError:
            return error_response(404, "not found")
        # resolve() followed any symlink: refuse one that leads out of the app.
        if not file.is_relative_to(self.static_root) or not file.is_file():
            return error_response(404, "not found")
        content_type = CONTENT_TYPES.get(file.suffix, "application/octet-stream")
        # no-cache: browsers revalidate, so an update's new files show at once.
        return Response(
            200, file.read_bytes(), [("Content-Type", content_type), ("Cache-Control", "no-cache")]
        )


class RequestHandler(WSGIRequestHandler):
    # A stalled client must not hold a thread, or the shutdown, for long.
    timeout = 10

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # /health is polled many times a second during updates: log only its failures.
        if self.path.startswith("/health") and str(code) == "200":
            return
        super().log_request(code, size)


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    # Non-daemon threads that server_close() joins: requests in flight finish
    # (and their orders commit) before the process exits.
    daemon_threads = False
    block_on_close = True


def make_server(host: str, port: int, app: StoreApp) -> ThreadingWSGIServer:
    """Bind the server (port 0 picks a free port: see ``server.server_port``)."""
    server = ThreadingWSGIServer((host, port), RequestHandler)
    server.set_app(app)
    return server


def main() -> int:
    settings = settings_from_config()
    app = StoreApp(settings)
    server = make_server(settings.host, settings.port, app)

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever(), which runs in this very thread.
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(f"{settings.store_name} {settings.version} listening on http://{settings.host}:{server.server_port}")
    problems, products = app.database_status()
    if problems:
        log(f"database {settings.database} is not ready: {'; '.join(problems)}")
    else:
        log(f"database {settings.database}: {products} products")
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

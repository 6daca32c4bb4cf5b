"""Database access for the NESOP Store, on SQLite or PostgreSQL.

The schema belongs to the SQL files in migrations/ (SQLite) and
migrations-postgresql/ (the same migrations in PostgreSQL's dialect): this
module never creates or alters tables, it only checks that the ones it uses
are there.

Every function takes an open connection (db.connect), so the caller decides
its lifetime (the web app uses one connection per request). The SQL here is
the same for both engines; db.py adapts what differs. Writes run in
``conn.write_transaction()``, which takes the write lock up front.
"""

from __future__ import annotations

import re
from typing import Any

from db import Connection, IntegrityError

# A product as the API shows it; one per line, so a new column is a one-line change.
PRODUCT_COLUMNS = (
    "id",
    "sku",
    "name",
    "description",
    "price_cents",
    "image",
    "stock",
    "category",
)
SELECT_PRODUCTS = f"SELECT {', '.join(PRODUCT_COLUMNS)} FROM products"

# Tables and columns the code below relies on. /health reports any that is
# missing, which catches an app deployed without its migrations.
REQUIRED_SCHEMA: dict[str, tuple[str, ...]] = {
    "products": (*PRODUCT_COLUMNS, "active"),
    "customers": ("id", "name", "email"),
    "newsletter_subscriptions": ("customer_id",),
    "carts": ("id",),
    "cart_items": ("cart_id", "product_id", "quantity"),
    "orders": ("id", "email", "total_cents", "note"),
    "order_items": ("order_id", "product_id", "quantity", "unit_price_cents"),
}

# Fields an admin may set on a product, with their types.
PRODUCT_FIELDS: dict[str, type] = {
    "sku": str,
    "name": str,
    "description": str,
    "price_cents": int,
    "image": str,
    "stock": int,
    "category": str,
}

EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


class StoreError(Exception):
    """A request the store refuses; ``status`` is the HTTP status to answer."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(StoreError):
    status = 400


class NotFound(StoreError):
    status = 404


class Conflict(StoreError):
    status = 409


def schema_problems(conn: Connection) -> list[str]:
    """Name every required table or column that the database lacks."""
    present = conn.tables()
    problems = []
    for table, columns in REQUIRED_SCHEMA.items():
        if table not in present:
            problems.append(f"missing table {table}")
            continue
        problems.extend(
            f"missing column {table}.{column}" for column in columns if column not in present[table]
        )
    return problems


def count_products(conn: Connection) -> int:
    row = conn.execute("SELECT count(*) FROM products WHERE active = 1").fetchone()
    return int(row[0])


# -- products ---------------------------------------------------------------


def list_products(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(f"{SELECT_PRODUCTS} WHERE active = 1 ORDER BY category, id").fetchall()
    return [dict(row) for row in rows]


def get_product(conn: Connection, product_id: int) -> dict[str, Any]:
    row = conn.execute(f"{SELECT_PRODUCTS} WHERE id = ? AND active = 1", (product_id,)).fetchone()
    if row is None:
        raise NotFound(f"no product with id {product_id}")
    return dict(row)


def _product_values(data: dict[str, Any], partial: bool) -> dict[str, Any]:
    """Check an admin's product fields; all but description/image are required on create."""
    unknown = sorted(set(data) - set(PRODUCT_FIELDS))
    if unknown:
        raise InvalidInput(f"unknown product fields: {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for field, kind in PRODUCT_FIELDS.items():
        if field not in data:
            if not partial and field in ("sku", "name", "price_cents"):
                raise InvalidInput(f"{field} is required")
            continue
        value = data[field]
        if kind is str and isinstance(value, str):
            value = value.strip()
            if field in ("sku", "name", "category") and not value:
                raise InvalidInput(f"{field} must not be empty")
        # bool is an int subclass, but true is not a price.
        elif kind is int and isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value < 2**63:
                raise InvalidInput(f"{field} must be an integer from 0 to 2**63 - 1")
        else:
            raise InvalidInput(f"{field} must be {'an integer' if kind is int else 'a string'}")
        values[field] = value
    if not values:
        raise InvalidInput("no product fields given")
    return values


def create_product(conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    values = _product_values(data, partial=False)
    columns = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    try:
        with conn.write_transaction():
            product_id = conn.insert(
                f"INSERT INTO products ({columns}) VALUES ({marks})", tuple(values.values())
            )
    except IntegrityError as error:
        raise Conflict(f"sku {values['sku']!r} is already used") from error
    return get_product(conn, product_id)


def update_product(conn: Connection, product_id: int, data: dict[str, Any]) -> dict[str, Any]:
    values = _product_values(data, partial=True)
    assignments = ", ".join(f"{column} = ?" for column in values)
    try:
        with conn.write_transaction():
            cursor = conn.execute(
                f"UPDATE products SET {assignments} WHERE id = ? AND active = 1",
                (*values.values(), product_id),
            )
    except IntegrityError as error:
        raise Conflict(f"sku {values.get('sku')!r} is already used") from error
    if cursor.rowcount == 0:
        raise NotFound(f"no product with id {product_id}")
    return get_product(conn, product_id)


def retire_product(conn: Connection, product_id: int) -> None:
    """Take a product off the shelf; past orders keep referring to it."""
    with conn.write_transaction():
        cursor = conn.execute("UPDATE products SET active = 0 WHERE id = ? AND active = 1", (product_id,))
        conn.execute("DELETE FROM cart_items WHERE product_id = ?", (product_id,))
    if cursor.rowcount == 0:
        raise NotFound(f"no product with id {product_id}")


# -- carts ------------------------------------------------------------------


def cart_lines(conn: Connection, cart_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT p.id AS product_id, p.name, p.image, ci.quantity, p.price_cents AS unit_price_cents"
        " FROM cart_items AS ci JOIN products AS p ON p.id = ci.product_id"
        " WHERE ci.cart_id = ? ORDER BY p.id",
        (cart_id,),
    ).fetchall()
    return [dict(row) for row in rows]


def add_to_cart(conn: Connection, cart_id: str, product_id: int, quantity: int, max_quantity: int) -> None:
    """Add ``quantity`` of a product; a line never holds more than ``max_quantity``."""
    with conn.write_transaction():
        product = get_product(conn, product_id)
        conn.execute("INSERT INTO carts (id) VALUES (?) ON CONFLICT DO NOTHING", (cart_id,))
        row = conn.execute(
            "SELECT quantity FROM cart_items WHERE cart_id = ? AND product_id = ?",
            (cart_id, product_id),
        ).fetchone()
        new_quantity = quantity + (row[0] if row else 0)
        if new_quantity > max_quantity:
            raise InvalidInput(f"at most {max_quantity} of one product per order")
        if new_quantity > product["stock"]:
            raise Conflict(f"only {product['stock']} of {product['name']} left")
        conn.execute(
            "INSERT INTO cart_items (cart_id, product_id, quantity) VALUES (?, ?, ?)"
            " ON CONFLICT (cart_id, product_id) DO UPDATE SET quantity = excluded.quantity",
            (cart_id, product_id, new_quantity),
        )


def remove_from_cart(conn: Connection, cart_id: str, product_id: int) -> None:
    with conn.write_transaction():
        cursor = conn.execute(
            "DELETE FROM cart_items WHERE cart_id = ? AND product_id = ?", (cart_id, product_id)
        )
    if cursor.rowcount == 0:
        raise NotFound(f"product {product_id} is not in the cart")


# -- customers --------------------------------------------------------------


def register_customer(conn: Connection, name: str, email: str, newsletter: bool = False) -> dict[str, Any]:
    name = name.strip()
    email = email.strip()
    if not 1 <= len(name) <= 100:
        raise InvalidInput("name must be 1 to 100 characters")
    if len(email) > 254 or not EMAIL_RE.fullmatch(email):
        raise InvalidInput("email is not a valid address")
    try:
        with conn.write_transaction():
            customer_id = conn.insert("INSERT INTO customers (name, email) VALUES (?, ?)", (name, email))
            if newsletter:
                conn.execute("INSERT INTO newsletter_subscriptions (customer_id) VALUES (?)", (customer_id,))
    except IntegrityError as error:
        raise Conflict(f"{email} is already registered") from error
    return {"customer_id": customer_id, "name": name, "email": email, "newsletter": newsletter}


# -- orders -----------------------------------------------------------------


def create_order(
    conn: Connection,
    email: str | None,
    items: list[tuple[int, int]] | None = None,
    cart_id: str | None = None,
    note: str = "",
) -> dict[str, Any]:
    """Turn ``items`` (product id, quantity) or the cart ``cart_id`` into an order.

    Give one of the two; a checked-out cart is emptied. ``note`` is the
    customer's, kept with the order (empty: none).

    The order is committed when this returns: callers may acknowledge it.
    """
    with conn.write_transaction():
        if items is None:
            items = [(line["product_id"], line["quantity"]) for line in cart_lines(conn, cart_id or "")]
        # One line per product, as in a cart, even if a client repeats one.
        quantities: dict[int, int] = {}
        for product_id, quantity in items:
            quantities[product_id] = quantities.get(product_id, 0) + quantity
        if not quantities:
            raise InvalidInput("the order has no items")
        priced = []
        for product_id, quantity in sorted(quantities.items()):
            product = get_product(conn, product_id)
            if quantity > product["stock"]:
                raise Conflict(f"only {product['stock']} of {product['name']} left")
            conn.execute("UPDATE products SET stock = stock - ? WHERE id = ?", (quantity, product_id))
            priced.append((product_id, quantity, int(product["price_cents"])))
        total = sum(quantity * price for _, quantity, price in priced)
        order_id = conn.insert(
            "INSERT INTO orders (email, total_cents, note) VALUES (?, ?, ?)", (email, total, note)
        )
        conn.executemany(
            "INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents) VALUES (?, ?, ?, ?)",
            [(order_id, product_id, quantity, price) for product_id, quantity, price in priced],
        )
        if cart_id:
            conn.execute("DELETE FROM carts WHERE id = ?", (cart_id,))
    return get_order(conn, order_id)


def get_order(conn: Connection, order_id: int) -> dict[str, Any]:
    order = conn.execute(
        "SELECT id AS order_id, email, total_cents, note, created_at FROM orders WHERE id = ?",
        (order_id,),
    ).fetchone()
    if order is None:
        raise NotFound(f"no order with id {order_id}")
    items = conn.execute(
        "SELECT product_id, quantity, unit_price_cents FROM order_items"
        " WHERE order_id = ? ORDER BY product_id",
        (order_id,),
    ).fetchall()
    return {**dict(order), "items": [dict(item) for item in items]}


def order_with_names(conn: Connection, order_id: int) -> dict[str, Any]:
    """An order, each item with its product's name (a retired product's too): its receipt."""
    order = get_order(conn, order_id)
    rows = conn.execute(
        "SELECT p.id, p.name FROM order_items AS oi JOIN products AS p ON p.id = oi.product_id"
        " WHERE oi.order_id = ?",
        (order_id,),
    ).fetchall()
    names = {row[0]: row[1] for row in rows}
    for item in order["items"]:
        item["name"] = names[item["product_id"]]
    return order


def stats(conn: Connection) -> dict[str, int]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM products WHERE active = 1),"
        " (SELECT count(*) FROM customers), (SELECT count(*) FROM orders)"
    ).fetchone()
    return {"products": row[0], "customers": row[1], "orders": row[2]}

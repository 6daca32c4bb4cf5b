-- Initial NESOP Store schema, with the launch catalogue.
-- Prices are integer cents, so totals never suffer from float rounding.

CREATE TABLE products (
    id          INTEGER PRIMARY KEY,
    sku         TEXT    NOT NULL UNIQUE,
    name        TEXT    NOT NULL,
    description TEXT    NOT NULL DEFAULT '',
    price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
    image       TEXT    NOT NULL DEFAULT 'assets/product.svg',
    -- Products are retired, never deleted: old orders still point at them.
    active      INTEGER NOT NULL DEFAULT 1,
    created_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);

CREATE TABLE customers (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    email      TEXT NOT NULL UNIQUE COLLATE NOCASE,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);

CREATE TABLE carts (
    id         TEXT PRIMARY KEY,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);

CREATE TABLE cart_items (
    cart_id    TEXT    NOT NULL REFERENCES carts (id) ON DELETE CASCADE,
    product_id INTEGER NOT NULL REFERENCES products (id),
    quantity   INTEGER NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (cart_id, product_id)
);

CREATE TABLE orders (
    id          INTEGER PRIMARY KEY,
    email       TEXT,
    total_cents INTEGER NOT NULL,
    created_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);

CREATE TABLE order_items (
    order_id         INTEGER NOT NULL REFERENCES orders (id),
    product_id       INTEGER NOT NULL REFERENCES products (id),
    quantity         INTEGER NOT NULL CHECK (quantity > 0),
    -- The price paid, kept even if the product's price changes later.
    unit_price_cents INTEGER NOT NULL,
    PRIMARY KEY (order_id, product_id)
);

INSERT INTO products (sku, name, description, price_cents) VALUES
    ('MUG-01',  'NESOP Mug',            'Stoneware mug, 330 ml, dishwasher safe.',        1290),
    ('TEE-01',  'NESOP T-Shirt',        'Organic cotton t-shirt with the NESOP logo.',    2490),
    ('HOOD-01', 'NESOP Hoodie',         'Warm hoodie for cold server rooms.',             4990),
    ('STK-01',  'Sticker Pack',         'Six vinyl stickers for laptops and racks.',       490),
    ('NOTE-01', 'Notebook',             'A5 dotted notebook, 120 pages.',                  890),
    ('CAP-01',  'Baseball Cap',         'Adjustable cap, embroidered logo.',              1990),
    ('BAG-01',  'Tote Bag',             'Heavy canvas tote for spare cables.',            1490),
    ('USB-01',  'USB Stick 32 GB',      'Rescue stick with a Debian installer.',          1190);

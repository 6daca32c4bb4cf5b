-- Customers can subscribe to the newsletter when they register.
CREATE TABLE newsletter_subscriptions (
    customer_id   INTEGER PRIMARY KEY REFERENCES customers (id),
    subscribed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);

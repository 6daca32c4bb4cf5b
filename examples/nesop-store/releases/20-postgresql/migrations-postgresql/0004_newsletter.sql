-- Customers can subscribe to the newsletter when they register.
CREATE TABLE newsletter_subscriptions (
    customer_id   BIGINT PRIMARY KEY REFERENCES customers (id),
    subscribed_at TEXT NOT NULL DEFAULT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
);

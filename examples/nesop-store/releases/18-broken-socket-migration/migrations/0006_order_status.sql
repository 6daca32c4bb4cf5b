-- Orders get a status: placed, then shipped once an admin marks them so.
ALTER TABLE orders ADD COLUMN status TEXT NOT NULL DEFAULT 'placed'
    CHECK (status IN ('placed', 'shipped'));
CREATE INDEX idx_orders_status ON orders (status, id);
-- The orders sent already count as shipped.
UPDATE orders SET status = 'shipped' WHERE shipped_at IS NOT NULL;

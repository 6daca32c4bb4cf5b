-- Inverse of 0006_order_status.sql. The index goes first: SQLite refuses
-- to drop an indexed column.
DROP INDEX IF EXISTS idx_orders_status;
ALTER TABLE orders DROP COLUMN status;

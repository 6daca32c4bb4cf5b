-- Inverse of 0006_shipping_status.sql.
ALTER TABLE orders DROP COLUMN status;

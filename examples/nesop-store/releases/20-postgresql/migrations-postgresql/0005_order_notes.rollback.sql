-- Inverse of 0005_order_notes.sql.
ALTER TABLE orders DROP COLUMN note;

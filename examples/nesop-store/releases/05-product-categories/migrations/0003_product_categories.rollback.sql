-- Inverse of 0003_product_categories.sql. The index goes first: SQLite
-- refuses to drop an indexed column.
DROP INDEX idx_products_category;
ALTER TABLE products DROP COLUMN category;

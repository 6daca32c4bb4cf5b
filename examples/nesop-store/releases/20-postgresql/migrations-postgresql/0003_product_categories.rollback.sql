-- Inverse of 0003_product_categories.sql.
DROP INDEX idx_products_category;
ALTER TABLE products DROP COLUMN category;

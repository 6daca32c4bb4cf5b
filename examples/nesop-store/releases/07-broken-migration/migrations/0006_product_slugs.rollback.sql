-- Inverse of 0006_product_slugs.sql.
DROP INDEX IF EXISTS idx_products_slug;
ALTER TABLE products DROP COLUMN slug;

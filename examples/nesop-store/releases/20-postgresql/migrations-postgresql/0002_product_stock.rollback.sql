-- Inverse of 0002_product_stock.sql.
ALTER TABLE products DROP COLUMN stock;

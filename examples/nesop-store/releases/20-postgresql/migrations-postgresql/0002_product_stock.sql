-- Products get a stock level; an order takes its items out of stock.
-- New products start at 0 until someone counts them.
ALTER TABLE products ADD COLUMN stock BIGINT NOT NULL DEFAULT 0;
UPDATE products SET stock = 100;
UPDATE products SET stock = 12 WHERE sku = 'HOOD-01';

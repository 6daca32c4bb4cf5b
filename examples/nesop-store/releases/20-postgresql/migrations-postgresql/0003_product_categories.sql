-- Products get a category, indexed because the list is sorted by it. COLLATE "C"
-- sorts byte by byte, as SQLite does, whatever the database's locale.
ALTER TABLE products ADD COLUMN category TEXT COLLATE "C" NOT NULL DEFAULT 'Other';
UPDATE products SET category = 'Drinkware' WHERE sku = 'MUG-01';
UPDATE products SET category = 'Apparel' WHERE sku IN ('TEE-01', 'HOOD-01', 'CAP-01');
UPDATE products SET category = 'Accessories' WHERE sku IN ('STK-01', 'BAG-01', 'USB-01');
UPDATE products SET category = 'Stationery' WHERE sku = 'NOTE-01';
CREATE INDEX idx_products_category ON products (category, id);

-- Short product addresses such as /products/nesop-mug.
ALTER TABLE products ADD COLUMN slug TEXT;
UPDATE products SET slug = lower(replace(category, ' ', '-'));
CREATE UNIQUE INDEX idx_products_slug ON products (slug);

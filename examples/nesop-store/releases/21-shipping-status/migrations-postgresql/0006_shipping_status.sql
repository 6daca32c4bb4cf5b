-- Orders get a status: placed, then shipped once an admin marks the parcel
-- sent. The orders placed before count as placed.
ALTER TABLE orders ADD COLUMN status TEXT NOT NULL DEFAULT 'placed';

-- Orders carry the customer's note, such as delivery instructions; empty
-- when there is none, for the orders placed before too.
ALTER TABLE orders ADD COLUMN note TEXT NOT NULL DEFAULT '';

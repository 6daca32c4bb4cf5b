-- Inverse of 0001_initial.sql: drops the tables, children before parents.
DROP TABLE order_items;
DROP TABLE orders;
DROP TABLE cart_items;
DROP TABLE carts;
DROP TABLE customers;
DROP TABLE products;

-- Inverse of 0005_gift_cards.sql.
DROP TABLE gift_cards;

-- Inverse of 0004_newsletter.sql.
DROP TABLE newsletter_subscriptions;

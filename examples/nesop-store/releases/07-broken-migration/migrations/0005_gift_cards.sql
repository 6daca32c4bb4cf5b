-- Gift cards, with one for the launch campaign.
CREATE TABLE gift_cards (
    code          TEXT    PRIMARY KEY,
    balance_cents INTEGER NOT NULL CHECK (balance_cents >= 0),
    created_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);
INSERT INTO gift_cards (code, balance_cents) VALUES ('WELCOME-10', 1000);

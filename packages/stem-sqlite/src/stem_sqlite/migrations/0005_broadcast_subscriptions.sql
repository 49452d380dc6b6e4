-- Stem on SQLite, schema version 5: subscriptions to broadcast queues.
--
-- A broadcast queue gives each live subscriber a copy of every message, on a queue of
-- the subscriber's own; this table says who is subscribed, and until when (on the
-- broker's clock). Ended subscriptions stay until a worker reaps them.

CREATE TABLE stem_subscriptions (
    queue      TEXT NOT NULL,
    subscriber TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (queue, subscriber)
) WITHOUT ROWID;

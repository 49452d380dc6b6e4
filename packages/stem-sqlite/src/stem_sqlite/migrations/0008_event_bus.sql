-- Stem on SQLite, schema version 8: the event bus (live events for observers).
--
-- A publish appends a row to stem_events, and subscribers read the rows after the last
-- one they read, woken by the file's datagrams. `seq` never goes back (AUTOINCREMENT:
-- not even once every row was pruned), and SQLite writes one transaction at a time, so
-- rows appear in the order of their seq. Rows go after a short retention (on the
-- publishers' clock): this is pub/sub, the workflow store keeps what must last.
--
-- Subscribers list themselves in stem_event_listeners until `alive_until` (wall-clock
-- seconds, renewed while they live); a publish in a namespace nobody listens to writes
-- nothing at all.

CREATE TABLE stem_events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace    TEXT NOT NULL,
    topic        TEXT NOT NULL,
    payload      TEXT NOT NULL,  -- JSON
    published_at REAL NOT NULL
);

-- A subscriber's read: its namespace's rows after a seq, in order.
CREATE INDEX stem_events_read ON stem_events (namespace, seq);
-- Pruning, oldest first.
CREATE INDEX stem_events_published ON stem_events (published_at);

CREATE TABLE stem_event_listeners (
    id          TEXT PRIMARY KEY,
    namespace   TEXT NOT NULL,
    alive_until REAL NOT NULL
) WITHOUT ROWID;

CREATE INDEX stem_event_listeners_live ON stem_event_listeners (namespace, alive_until);

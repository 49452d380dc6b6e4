-- Stem on SQLite, schema version 2: revocations are read in commit order.
--
-- Workers read the revocations recorded since the last one they saw. A timestamp
-- cannot order them (it is taken before the write lock, and clocks step back), so
-- each revocation gets a sequence number inside its write transaction. AUTOINCREMENT
-- keeps numbers from being reused after the newest row is deleted (expired), which a
-- plain rowid would do, hiding the next revocation from a reader that saw the old one.

CREATE TABLE stem_revokes_v2 (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id    TEXT    NOT NULL UNIQUE,
    revoked_at REAL    NOT NULL,
    expires_at REAL,
    data       TEXT    NOT NULL        -- the RevokeEntry as JSON (its seq is the column's)
);

INSERT INTO stem_revokes_v2 (task_id, revoked_at, expires_at, data)
    SELECT task_id, revoked_at, expires_at, data FROM stem_revokes ORDER BY revoked_at, rowid;

DROP TABLE stem_revokes;

ALTER TABLE stem_revokes_v2 RENAME TO stem_revokes;

CREATE INDEX stem_revokes_expires ON stem_revokes (expires_at) WHERE expires_at IS NOT NULL;

-- Stem on SQLite, schema version 9: groups expire, and a chord claim is recorded.
--
-- A group created with a time to live expires `ttl` seconds after the last write to it
-- (`expires_at`, on the writers' clock; NULL: never). An expired group reads as absent
-- and refuses results; expired groups and their results are swept now and then.
-- The chord claim's winner records when it claimed and its meta (JSON).

ALTER TABLE stem_groups ADD COLUMN ttl REAL;
ALTER TABLE stem_groups ADD COLUMN expires_at REAL;
ALTER TABLE stem_groups ADD COLUMN chord_claimed_at REAL;
ALTER TABLE stem_groups ADD COLUMN chord_meta TEXT;

CREATE INDEX stem_groups_expiring ON stem_groups (expires_at) WHERE expires_at IS NOT NULL;

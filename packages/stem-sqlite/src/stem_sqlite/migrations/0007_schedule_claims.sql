-- Stem on SQLite, schema version 7: beat entries claimed per firing, versioned, and kept
-- apart by namespace.
--
-- Several beat processes may share a file: `due` claims each entry it hands out
-- (`claimed_by` until `claimed_until`, on the store's clock) so no other beat gets the
-- same firing, and every write of an entry moves its `version` on, so a stale write is
-- refused. Apps sharing the file keep their entries apart by `namespace`; an entry is
-- known by (namespace, id). `seq` is the order entries were first stored (an explicit
-- rowid alias: VACUUM may renumber an implicit rowid). `data` is the ScheduleEntry as
-- JSON without `version` and the claim, which are the columns'. Entries stored before
-- this version go to the namespace 'default', at version 1, unclaimed.

CREATE TABLE stem_schedules_v7 (
    seq           INTEGER PRIMARY KEY,
    namespace     TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    enabled       INTEGER NOT NULL,
    next_run_at   REAL,
    version       INTEGER NOT NULL,
    claimed_by    TEXT,
    claimed_until REAL,
    data          TEXT    NOT NULL,
    UNIQUE (namespace, id)
);

INSERT INTO stem_schedules_v7 (namespace, id, enabled, next_run_at, version, data)
    SELECT 'default', id, enabled, next_run_at, 1, data FROM stem_schedules ORDER BY rowid;

DROP TABLE stem_schedules;

ALTER TABLE stem_schedules_v7 RENAME TO stem_schedules;

CREATE INDEX stem_schedules_due ON stem_schedules (namespace, next_run_at) WHERE enabled = 1;

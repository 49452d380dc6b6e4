-- Stem on SQLite, schema version 1.
--
-- Every time is a REAL number of seconds since the epoch, always written from the
-- adapter's clock (never SQLite's own 'now'), so tests can drive it with a FakeClock.
-- JSON documents are stored as TEXT, so the sqlite3 shell and json_extract() can read them.
-- One statement per line ending in ';' (the migration runner splits on complete statements).

-- Broker -------------------------------------------------------------------------------

-- One row per stored message. state: 0 ready, 1 delayed (due later), 2 leased.
-- A delayed row becomes ready, and a leased row whose lease ran out becomes ready
-- again, inside the reserve transaction of its queue.
CREATE TABLE stem_messages (
    seq         INTEGER PRIMARY KEY,   -- row identity and publish order
    queue       TEXT    NOT NULL,
    id          TEXT    NOT NULL,      -- not unique: a retry is published under its task id
    body        BLOB    NOT NULL,
    priority    INTEGER NOT NULL DEFAULT 0,
    eta         REAL,                  -- as published
    due         REAL    NOT NULL,      -- when it is (or was) ready: eta, publish time, or requeue delay
    state       INTEGER NOT NULL DEFAULT 0,
    deliveries  INTEGER NOT NULL DEFAULT 0,
    receipt     TEXT,                  -- the current hand-out, while leased
    lease_until REAL                   -- when the current lease ends, while leased
);

-- Serves reserve: the ready rows of a queue in hand-out order, and nothing else.
CREATE INDEX stem_messages_ready ON stem_messages (queue, priority DESC, due, seq) WHERE state = 0;
CREATE INDEX stem_messages_delayed ON stem_messages (queue, due) WHERE state = 1;
CREATE INDEX stem_messages_leased ON stem_messages (queue, lease_until) WHERE state = 2;

CREATE TABLE stem_dead_letters (
    seq         INTEGER PRIMARY KEY,   -- order of arrival
    queue       TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    body        BLOB    NOT NULL,
    priority    INTEGER NOT NULL DEFAULT 0,
    eta         REAL,
    reason      TEXT    NOT NULL,
    error       TEXT,
    traceback   TEXT,
    deliveries  INTEGER NOT NULL DEFAULT 0,
    dead_at     REAL    NOT NULL
);

CREATE INDEX stem_dead_letters_queue ON stem_dead_letters (queue, seq);
CREATE INDEX stem_dead_letters_id ON stem_dead_letters (queue, id);

-- Bumped by every commit that makes a message ready, so consumers in other
-- processes notice new work with one tiny read instead of a query of the queue.
CREATE TABLE stem_queue_signals (
    queue   TEXT    PRIMARY KEY,
    version INTEGER NOT NULL
) WITHOUT ROWID;

-- Result backend -------------------------------------------------------------------------

CREATE TABLE stem_task_statuses (
    seq        INTEGER PRIMARY KEY,    -- order of first store, breaks ties in listings
    id         TEXT    NOT NULL UNIQUE,
    state      TEXT    NOT NULL,
    task       TEXT    NOT NULL,
    updated_at REAL    NOT NULL,
    expires_at REAL,
    version    INTEGER NOT NULL,       -- bumped by every store, for watchers in other processes
    data       TEXT    NOT NULL        -- the TaskStatus as JSON
);

CREATE INDEX stem_task_statuses_updated ON stem_task_statuses (updated_at);
CREATE INDEX stem_task_statuses_state ON stem_task_statuses (state, updated_at);
CREATE INDEX stem_task_statuses_task ON stem_task_statuses (task, updated_at);
CREATE INDEX stem_task_statuses_expires ON stem_task_statuses (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE stem_groups (
    id               TEXT    PRIMARY KEY,
    size             INTEGER NOT NULL,
    meta             TEXT    NOT NULL,
    chord_claimed_by TEXT
);

CREATE TABLE stem_group_results (
    group_id TEXT NOT NULL,
    task_id  TEXT NOT NULL,
    data     TEXT NOT NULL,            -- the member's TaskStatus as JSON
    PRIMARY KEY (group_id, task_id)
);

CREATE TABLE stem_heartbeats (
    worker_id  TEXT PRIMARY KEY,
    expires_at REAL NOT NULL,
    data       TEXT NOT NULL
);

-- Locks, revocations, schedules ----------------------------------------------------------

CREATE TABLE stem_locks (
    key        TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;

CREATE INDEX stem_locks_expires ON stem_locks (expires_at);

CREATE TABLE stem_revokes (
    task_id    TEXT PRIMARY KEY,
    revoked_at REAL NOT NULL,
    expires_at REAL,
    data       TEXT NOT NULL
);

CREATE INDEX stem_revokes_revoked ON stem_revokes (revoked_at);

CREATE TABLE stem_schedules (
    id          TEXT    PRIMARY KEY,
    enabled     INTEGER NOT NULL,
    next_run_at REAL,
    data        TEXT    NOT NULL       -- the ScheduleEntry as JSON
);

CREATE INDEX stem_schedules_due ON stem_schedules (next_run_at) WHERE enabled = 1;

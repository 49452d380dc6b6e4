-- Stem on SQLite, schema version 6: durable workflow runs.
--
-- A run is stored as JSON (the WorkflowRun, in `data`) beside the columns its queries
-- read; the columns are written from the same record in the same statement, so they
-- never disagree with it. Every write to a run is one transaction that reads the row,
-- changes it and writes it back, under BEGIN IMMEDIATE: other processes see all of it
-- or none. Final runs (completed, failed, cancelled) never have a wake_at.

CREATE TABLE stem_workflow_runs (
    seq              INTEGER PRIMARY KEY,  -- creation order: breaks ties between due runs
    id               TEXT    NOT NULL UNIQUE,
    workflow         TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    created_at       REAL    NOT NULL,
    wake_at          REAL,                 -- when due_runs may hand the run out
    lease_expires_at REAL,                 -- a running run's lease
    parent_id        TEXT,
    version          INTEGER NOT NULL,     -- bumped by every write, for watchers in other processes
    data             TEXT    NOT NULL      -- the WorkflowRun as JSON
);

-- Listing by workflow (and status), oldest first: one index range, in order.
CREATE INDEX stem_workflow_runs_listing ON stem_workflow_runs (workflow, status, created_at, id);
-- Due runs, earliest first, among the runs that are not final (the same predicate is in
-- the queries, so that SQLite uses this partial index).
CREATE INDEX stem_workflow_runs_wake ON stem_workflow_runs (wake_at, created_at) WHERE wake_at IS NOT NULL AND status IN ('pending', 'running', 'suspended');
CREATE INDEX stem_workflow_runs_parent ON stem_workflow_runs (parent_id, created_at, id) WHERE parent_id IS NOT NULL;

-- Step checkpoints: one per (run, name); seq is the order a name was first recorded,
-- which orders the versions of one step (`name#0`, `name#1`) at one position.
CREATE TABLE stem_workflow_steps (
    seq          INTEGER PRIMARY KEY,
    run_id       TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    position     INTEGER NOT NULL,
    completed_at REAL    NOT NULL,
    data         TEXT    NOT NULL,        -- the StepCheckpoint as JSON
    UNIQUE (run_id, name)
);

CREATE INDEX stem_workflow_steps_position ON stem_workflow_steps (run_id, position);

-- Runs waiting for an event: at most one wait per run.
CREATE TABLE stem_workflow_watchers (
    seq        INTEGER PRIMARY KEY,        -- order of arrival: events resolve oldest first
    run_id     TEXT    NOT NULL UNIQUE,
    topic      TEXT    NOT NULL,
    deadline   REAL,
    created_at REAL    NOT NULL
);

CREATE INDEX stem_workflow_watchers_topic ON stem_workflow_watchers (topic, created_at);

-- Events sent to one run (send_event) before it waits on their topic, taken oldest first.
CREATE TABLE stem_workflow_mail (
    seq     INTEGER PRIMARY KEY,           -- order of arrival
    run_id  TEXT    NOT NULL,
    topic   TEXT    NOT NULL,
    payload TEXT    NOT NULL               -- JSON
);

CREATE INDEX stem_workflow_mail_run ON stem_workflow_mail (run_id, topic, seq);

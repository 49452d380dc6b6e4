-- Stem on SQLite, schema version 3: status indexes sized to the work.
--
-- Every status write pays for each index of stem_task_statuses (a worker's result
-- moves a row in each), so an index stays only if a query walks it:
-- - the index on updated_at alone goes: listing with no state is served by merging
--   the newest rows of each state's range of stem_task_statuses_state;
-- - the task index gains the state, so that listing a task's statuses in one state
--   is one index range too (by task alone: the states' ranges merged).
-- Measured on one worker draining no-op tasks: each index of this table costs 2-4 us
-- per task, and a single enqueue writes one page per index touched.

DROP INDEX stem_task_statuses_updated;

DROP INDEX stem_task_statuses_task;

CREATE INDEX stem_task_statuses_task ON stem_task_statuses (task, state, updated_at);

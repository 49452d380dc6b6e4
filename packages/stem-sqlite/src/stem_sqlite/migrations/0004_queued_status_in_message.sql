-- Stem on SQLite, schema version 4: an enqueue writes one row and nothing else.
--
-- A task's `queued` status used to be a row of stem_task_statuses written with its
-- message: four B-trees (the table, its id, state and task indexes) besides the
-- message's two, about half the cost of a one-by-one enqueue. When the broker and the
-- result backend share this file, the `queued` status now rides in the message row
-- (`status`, the TaskStatus as JSON) until a worker stores the task's next status in
-- stem_task_statuses, whose row then wins. Reading a status looks in
-- stem_task_statuses first, then in the messages that carry one (this partial index:
-- rows published without a status, such as retries, are not in it).

ALTER TABLE stem_messages ADD COLUMN status TEXT;

CREATE INDEX stem_messages_status ON stem_messages (id) WHERE status IS NOT NULL;

-- The per-queue counters that every publish bumped, so that other processes noticed
-- it, go too (another B-tree written per enqueue): a publish now wakes them with a
-- datagram, and their fallback check reads PRAGMA data_version, which costs no write.
DROP TABLE stem_queue_signals;

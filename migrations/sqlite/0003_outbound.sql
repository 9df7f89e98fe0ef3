-- Outbound messages: their delivery state, and the embedded outbound queue (the SQS stand-in
-- of the embedded default, with SQS's semantics: visibility timeout, receive count, DLQ).
ALTER TABLE messages ADD COLUMN priority INTEGER NOT NULL DEFAULT 5;
-- The job that puts the message on the outbound queue.
ALTER TABLE messages ADD COLUMN job_id TEXT;
-- On the outbound queue since (NULL: not yet). Set once per message: a re-run of its job
-- skips messages already there.
ALTER TABLE messages ADD COLUMN enqueued_at TEXT;
CREATE INDEX messages_job ON messages (job_id) WHERE job_id IS NOT NULL;
CREATE INDEX messages_user_status ON messages (user_id, status);

CREATE TABLE outbound_queue (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    -- FALSE: the main queue; TRUE: moved to the dead-letter queue after too many receives.
    dead          INTEGER     NOT NULL DEFAULT 0,
    body          TEXT        NOT NULL,
    -- The message id: a message is on the queue at most once, however often it is sent.
    dedup_key     TEXT        NOT NULL,
    visible_at    TEXT NOT NULL,
    receive_count INTEGER      NOT NULL DEFAULT 0,
    -- The current receive's handle; deleting needs it, so a stale receiver cannot delete.
    receipt       TEXT,
    created_at    TEXT NOT NULL
);
CREATE UNIQUE INDEX outbound_queue_dedup ON outbound_queue (dedup_key);
CREATE INDEX outbound_queue_ready ON outbound_queue (dead, visible_at, id);

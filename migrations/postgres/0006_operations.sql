-- Operations: when a message failed (the failed list is newest first), how often the sweeper
-- put it back on the queue, and the processes seen alive (health).

ALTER TABLE messages ADD COLUMN failed_at TIMESTAMPTZ;
-- Times the sweeper re-drove the message from the DLQ or re-queued it when stuck.
ALTER TABLE messages ADD COLUMN redrives BIGINT NOT NULL DEFAULT 0;
-- Bumped when a message the platform rejected (a 4xx, which an idempotent platform keeps
-- answering for the same key) is retried by hand: its idempotency key becomes `<id>-r<n>`.
-- Any other retry keeps the key, so a delivery that may have landed is never applied twice.
ALTER TABLE messages ADD COLUMN key_generation BIGINT NOT NULL DEFAULT 0;
UPDATE messages SET failed_at = created_at WHERE status = 'failed';
CREATE INDEX messages_failed ON messages (failed_at DESC, id DESC) WHERE status = 'failed';
CREATE INDEX messages_user_failed ON messages (user_id, failed_at DESC, id DESC) WHERE status = 'failed';

-- One row per running process role (serve, worker, dispatch, sweep), beaten every few seconds.
CREATE TABLE processes (
    id         TEXT PRIMARY KEY,
    role       TEXT        NOT NULL,
    host       TEXT        NOT NULL,
    pid        BIGINT      NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    seen_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX processes_seen ON processes (seen_at);

-- What clients see of a job (GET /api/jobs/{id}). apalis keeps its own queue tables (schema
-- `apalis` on PostgreSQL, `Jobs` on SQLite, keys on Redis); this table is ours, the same on
-- every backend, and is written in the same transaction as the rows a job is about.
CREATE TABLE job_records (
    -- The apalis task id (a ULID), so the two can be joined when debugging.
    id               TEXT PRIMARY KEY,
    user_id          BIGINT      NOT NULL,
    kind             TEXT        NOT NULL,
    status           TEXT        NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    attempts         BIGINT      NOT NULL DEFAULT 0,
    progress_done    BIGINT      NOT NULL DEFAULT 0,
    progress_total   BIGINT,
    -- The job's input, as the API accepted it.
    payload          JSONB       NOT NULL,
    -- Resume state, committed with each batch: a re-run after a crash continues from here.
    checkpoint       JSONB,
    result           JSONB,
    error            TEXT,
    cancel_requested BOOLEAN     NOT NULL DEFAULT FALSE,
    -- Outbox: NULL until the job is in the job backend (set in the same transaction when the
    -- backend shares the database; by the relay afterwards for Redis).
    dispatched_at    TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL,
    started_at       TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ
);
CREATE INDEX job_records_user_created ON job_records (user_id, created_at DESC);
CREATE INDEX job_records_undispatched ON job_records (created_at) WHERE dispatched_at IS NULL;

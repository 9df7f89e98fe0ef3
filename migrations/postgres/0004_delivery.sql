-- Delivery. The dispatcher moves each message from the outbound queue into its creator's
-- schedule (the messages table itself, ordered by priority then age) and delivers from there
-- when the creator's limiter has a slot; every attempt is logged, which also lets the limiter
-- rebuild its window after losing its state.

-- Taken off the outbound queue into the schedule (NULL: still on the queue, or not outbound).
ALTER TABLE messages ADD COLUMN ready_at TIMESTAMPTZ;
-- After a failed attempt that will be retried: not before this.
ALTER TABLE messages ADD COLUMN next_attempt_at TIMESTAMPTZ;
-- While `sending`: the dispatcher holding it owns it until then; past it, another takes over
-- (with the same idempotency key, so the platform never sees it twice).
ALTER TABLE messages ADD COLUMN lease_until TIMESTAMPTZ;
CREATE INDEX messages_schedule ON messages (user_id, priority DESC, created_at, id)
    WHERE status = 'queued' AND ready_at IS NOT NULL;
CREATE INDEX messages_leases ON messages (lease_until) WHERE status = 'sending';

CREATE TABLE delivery_attempts (
    id          BIGSERIAL PRIMARY KEY,
    message_id  BIGINT      NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    user_id     BIGINT      NOT NULL,
    -- The message's attempt number (1, 2, …).
    attempt     BIGINT      NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL,
    -- NULL while in flight, or when the dispatcher died during it.
    finished_at TIMESTAMPTZ,
    outcome     TEXT CHECK (outcome IN ('delivered', 'rate_limited', 'retry', 'rejected', 'failed')),
    http_status INTEGER,
    error       TEXT
);
CREATE INDEX delivery_attempts_user_started ON delivery_attempts (user_id, started_at);
CREATE INDEX delivery_attempts_message ON delivery_attempts (message_id);

-- Why a message was put in the embedded dead-letter queue by the dispatcher.
ALTER TABLE outbound_queue ADD COLUMN last_error TEXT;

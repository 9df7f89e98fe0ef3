-- Safe retries (the Idempotency-Key header): the first answer to a POST, kept per user and key
-- for 24 hours and given again to a repeat of the same request.
CREATE TABLE idempotency_keys (
    user_id      INTEGER     NOT NULL,
    key          TEXT        NOT NULL,
    -- The request the key was first used with: method, path and query, and a hash of the body.
    fingerprint  TEXT        NOT NULL,
    -- The answer kept: NULL while the first request runs.
    status       INTEGER,
    headers      TEXT,
    body         BLOB,
    -- A first request not answered by then (its process died) may be run again.
    locked_until TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

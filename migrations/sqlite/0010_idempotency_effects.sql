-- Safe retries across a crash: the write a keyed request made commits with its key.
-- `token` names the attempt that holds the key (a repeat that takes a lapsed claim over gets
-- a new one, and an older attempt can then no longer record a write); `effect` is the write
-- ("message:42", "campaign:7", "job:01J…", "fan:3"), set in the same transaction as the write,
-- so a repeat after any crash finds either the committed write or nothing.
ALTER TABLE idempotency_keys ADD COLUMN token TEXT NOT NULL DEFAULT '';
ALTER TABLE idempotency_keys ADD COLUMN effect TEXT;

-- Fan value history, platform events and the figures analytics reads (as on PostgreSQL).
--
-- Every change of a fan's value_cents is recorded by a trigger, whoever writes it (the API's
-- PUT, the import's batched upsert, a platform event): the writer says why and when in
-- value_source and value_at, in the same statement. The same trigger adds the change to the
-- creator's revenue of that day (UTC). A deleted fan's history goes with it; the revenue the
-- fan brought stays in its days.
ALTER TABLE fans ADD COLUMN value_source TEXT NOT NULL DEFAULT 'created'
    CHECK (value_source IN ('created', 'edit', 'import', 'purchased', 'tip', 'subscription'));
ALTER TABLE fans ADD COLUMN value_at TEXT;

CREATE TABLE fan_value_changes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     INTEGER NOT NULL,
    fan_id      INTEGER NOT NULL REFERENCES fans (id) ON DELETE CASCADE,
    at          TEXT    NOT NULL,
    value_cents INTEGER NOT NULL,
    delta_cents INTEGER NOT NULL,
    source      TEXT    NOT NULL
);
CREATE INDEX fan_value_changes_fan ON fan_value_changes (fan_id, id);

CREATE TABLE revenue_days (
    user_id       INTEGER NOT NULL,
    day           TEXT    NOT NULL,
    revenue_cents INTEGER NOT NULL,
    PRIMARY KEY (user_id, day)
);

CREATE TRIGGER fans_value_inserted AFTER INSERT ON fans WHEN NEW.value_cents <> 0
BEGIN
    INSERT INTO fan_value_changes (user_id, fan_id, at, value_cents, delta_cents, source)
    VALUES (NEW.user_id, NEW.id, COALESCE(NEW.value_at, NEW.updated_at), NEW.value_cents,
            NEW.value_cents, NEW.value_source);
    INSERT INTO revenue_days (user_id, day, revenue_cents)
    VALUES (NEW.user_id, date(COALESCE(NEW.value_at, NEW.updated_at)), NEW.value_cents)
    ON CONFLICT (user_id, day) DO UPDATE SET revenue_cents = revenue_cents + excluded.revenue_cents;
END;
CREATE TRIGGER fans_value_updated AFTER UPDATE OF value_cents ON fans
WHEN NEW.value_cents <> OLD.value_cents
BEGIN
    INSERT INTO fan_value_changes (user_id, fan_id, at, value_cents, delta_cents, source)
    VALUES (NEW.user_id, NEW.id, COALESCE(NEW.value_at, NEW.updated_at), NEW.value_cents,
            NEW.value_cents - OLD.value_cents, NEW.value_source);
    INSERT INTO revenue_days (user_id, day, revenue_cents)
    VALUES (NEW.user_id, date(COALESCE(NEW.value_at, NEW.updated_at)),
            NEW.value_cents - OLD.value_cents)
    ON CONFLICT (user_id, day) DO UPDATE SET revenue_cents = revenue_cents + excluded.revenue_cents;
END;

-- The fans there before: their value as one change at their creation.
INSERT INTO fan_value_changes (user_id, fan_id, at, value_cents, delta_cents, source)
SELECT user_id, id, created_at, value_cents, value_cents, 'created' FROM fans WHERE value_cents <> 0;
INSERT INTO revenue_days (user_id, day, revenue_cents)
SELECT user_id, date(created_at), SUM(value_cents) FROM fans WHERE value_cents <> 0 GROUP BY 1, 2;

-- Active fans (seen since a time) are counted from an index, not by reading every fan; the
-- top fans by value are the first entries of one, ties in id order.
CREATE INDEX fans_user_last_seen ON fans (user_id, last_seen_at);
DROP INDEX fans_user_value;
CREATE INDEX fans_user_value ON fans (user_id, value_cents DESC, id);

ALTER TABLE messages ADD COLUMN delivered_at TEXT;
ALTER TABLE messages ADD COLUMN opened_at TEXT;
ALTER TABLE messages ADD COLUMN revenue_cents INTEGER NOT NULL DEFAULT 0;
CREATE INDEX messages_user_external ON messages (user_id, external_id) WHERE external_id IS NOT NULL;
CREATE INDEX messages_user_sent ON messages (user_id, sent_at) WHERE direction = 'out' AND status = 'sent';

CREATE TABLE platform_events (
    user_id    INTEGER NOT NULL,
    event_id   TEXT    NOT NULL,
    type       TEXT    NOT NULL,
    at         TEXT    NOT NULL,
    applied_at TEXT    NOT NULL,
    PRIMARY KEY (user_id, event_id)
);

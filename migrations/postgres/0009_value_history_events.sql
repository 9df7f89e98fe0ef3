-- Fan value history, platform events and the figures analytics reads.
--
-- Every change of a fan's value_cents is recorded by a trigger, whoever writes it (the API's
-- PUT, the import's batched upsert, a platform event): the writer says why and when in
-- value_source and value_at, in the same statement. The same trigger adds the change to the
-- creator's revenue of that day (UTC), so revenue per day, week or month reads a few hundred
-- rows instead of the whole history. A deleted fan's history goes with it; the revenue the
-- fan brought stays in its days.
ALTER TABLE fans ADD COLUMN value_source TEXT NOT NULL DEFAULT 'created'
    CHECK (value_source IN ('created', 'edit', 'import', 'purchased', 'tip', 'subscription'));
ALTER TABLE fans ADD COLUMN value_at TIMESTAMPTZ;

CREATE TABLE fan_value_changes (
    id          BIGSERIAL PRIMARY KEY,
    user_id     BIGINT      NOT NULL,
    fan_id      BIGINT      NOT NULL REFERENCES fans (id) ON DELETE CASCADE,
    at          TIMESTAMPTZ NOT NULL,
    value_cents BIGINT      NOT NULL,
    delta_cents BIGINT      NOT NULL,
    source      TEXT        NOT NULL
);
CREATE INDEX fan_value_changes_fan ON fan_value_changes (fan_id, id);

CREATE TABLE revenue_days (
    user_id       BIGINT NOT NULL,
    day           DATE   NOT NULL,
    revenue_cents BIGINT NOT NULL,
    PRIMARY KEY (user_id, day)
);

CREATE FUNCTION fans_record_value_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    delta BIGINT := NEW.value_cents - CASE WHEN TG_OP = 'INSERT' THEN 0 ELSE OLD.value_cents END;
    at TIMESTAMPTZ := COALESCE(NEW.value_at, NEW.updated_at);
BEGIN
    IF delta <> 0 THEN
        INSERT INTO fan_value_changes (user_id, fan_id, at, value_cents, delta_cents, source)
        VALUES (NEW.user_id, NEW.id, at, NEW.value_cents, delta, NEW.value_source);
        INSERT INTO revenue_days (user_id, day, revenue_cents)
        VALUES (NEW.user_id, (at AT TIME ZONE 'UTC')::date, delta)
        ON CONFLICT (user_id, day) DO UPDATE
            SET revenue_cents = revenue_days.revenue_cents + EXCLUDED.revenue_cents;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER fans_value_inserted AFTER INSERT ON fans
    FOR EACH ROW WHEN (NEW.value_cents <> 0) EXECUTE FUNCTION fans_record_value_change();
CREATE TRIGGER fans_value_updated AFTER UPDATE OF value_cents ON fans
    FOR EACH ROW WHEN (NEW.value_cents <> OLD.value_cents) EXECUTE FUNCTION fans_record_value_change();

-- The fans there before: their value as one change at their creation.
INSERT INTO fan_value_changes (user_id, fan_id, at, value_cents, delta_cents, source)
SELECT user_id, id, created_at, value_cents, value_cents, 'created' FROM fans WHERE value_cents <> 0;
INSERT INTO revenue_days (user_id, day, revenue_cents)
SELECT user_id, (created_at AT TIME ZONE 'UTC')::date, SUM(value_cents)
FROM fans WHERE value_cents <> 0 GROUP BY 1, 2;

-- Active fans (seen since a time) are counted from an index, not by reading every fan; the
-- top fans by value are the first entries of one, ties in id order.
CREATE INDEX fans_user_last_seen ON fans (user_id, last_seen_at);
DROP INDEX fans_user_value;
CREATE INDEX fans_user_value ON fans (user_id, value_cents DESC, id);

-- What the platform reported about our outbound messages.
ALTER TABLE messages ADD COLUMN delivered_at TIMESTAMPTZ;
ALTER TABLE messages ADD COLUMN opened_at TIMESTAMPTZ;
-- Paid unlocks and tips attributed to the message.
ALTER TABLE messages ADD COLUMN revenue_cents BIGINT NOT NULL DEFAULT 0;
-- Outbound messages carry the platform's id once delivered (external_id), found by it.
CREATE INDEX messages_user_external ON messages (user_id, external_id) WHERE external_id IS NOT NULL;
-- Messages sent and failed per day.
CREATE INDEX messages_user_sent ON messages (user_id, sent_at) WHERE direction = 'out' AND status = 'sent';

-- Each platform event is applied once: a repeat of its id is reported and changes nothing.
CREATE TABLE platform_events (
    user_id    BIGINT      NOT NULL,
    event_id   TEXT        NOT NULL,
    type       TEXT        NOT NULL,
    at         TIMESTAMPTZ NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, event_id)
);

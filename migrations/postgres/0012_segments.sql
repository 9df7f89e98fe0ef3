-- Audiences. A segment is a creator's saved filter over their fans (crm/segments owns it); the
-- filter is stored as the typed filter's JSON and turned into SQL with bound parameters when
-- it is read.
CREATE TABLE segments (
    id         BIGSERIAL PRIMARY KEY,
    user_id    BIGINT      NOT NULL,
    name       TEXT        NOT NULL,
    filter     JSONB       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX segments_user ON segments (user_id, id);

-- A fan's subscription as the platform's events last reported it: 'active' (subscribed or
-- renewed), 'renewal_off' (still subscribed, will not renew), 'expired'; NULL when no event
-- said. `subscription_at` is that event's time: an older event arriving late changes nothing.
ALTER TABLE fans ADD COLUMN subscription TEXT
    CHECK (subscription IN ('active', 'renewal_off', 'expired'));
ALTER TABLE fans ADD COLUMN subscription_at TIMESTAMPTZ;

-- When the fan unlocked this paid message (the earliest `purchased` event naming it).
ALTER TABLE messages ADD COLUMN purchased_at TIMESTAMPTZ;

-- What the segment filters read per creator: spend in a window (covering: the sum reads no
-- table rows), tags compared without case, and the last inbound and outbound messages.
CREATE INDEX fan_value_changes_user_at ON fan_value_changes (user_id, at)
    INCLUDE (fan_id, delta_cents, source);
CREATE INDEX fans_tags_lower ON fans USING gin ((lower(tags::text)::jsonb));
CREATE INDEX messages_user_direction_created ON messages (user_id, direction, created_at);

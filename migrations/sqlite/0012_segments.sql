-- Audiences. A segment is a creator's saved filter over their fans (crm/segments owns it); the
-- filter is stored as the typed filter's JSON and turned into SQL with bound parameters when
-- it is read.
CREATE TABLE segments (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    INTEGER     NOT NULL,
    name       TEXT        NOT NULL,
    filter     TEXT        NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX segments_user ON segments (user_id, id);

-- A fan's subscription as the platform's events last reported it: 'active' (subscribed or
-- renewed), 'renewal_off' (still subscribed, will not renew), 'expired'; NULL when no event
-- said. `subscription_at` is that event's time: an older event arriving late changes nothing.
ALTER TABLE fans ADD COLUMN subscription TEXT
    CHECK (subscription IN ('active', 'renewal_off', 'expired'));
ALTER TABLE fans ADD COLUMN subscription_at TEXT;

-- When the fan unlocked this paid message (the earliest `purchased` event naming it).
ALTER TABLE messages ADD COLUMN purchased_at TEXT;

-- What the segment filters read per creator: spend in a window (covering: the sum reads no
-- table rows), and the last inbound and outbound messages.
CREATE INDEX fan_value_changes_user_at ON fan_value_changes (user_id, at, fan_id, delta_cents, source);
CREATE INDEX messages_user_direction_created ON messages (user_id, direction, created_at);

-- The CRM aggregates (SPEC section 3). Every row carries user_id; every query filters on it.
CREATE TABLE fans (
    id            BIGSERIAL PRIMARY KEY,
    user_id       BIGINT      NOT NULL,
    platform      TEXT        NOT NULL CHECK (platform IN ('onlyfans', 'fansly', 'other')),
    -- Stored normalised ('@' + lower case) so the unique index matches handles without case.
    handle        TEXT        NOT NULL,
    name          TEXT,
    email         TEXT,
    avatar_url    TEXT,
    tags          JSONB       NOT NULL DEFAULT '[]'::jsonb,
    notes         TEXT,
    value_cents   BIGINT      NOT NULL DEFAULT 0 CHECK (value_cents >= 0),
    last_seen_at  TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX fans_user_platform_handle ON fans (user_id, platform, handle);
CREATE INDEX fans_user_value ON fans (user_id, value_cents DESC);

CREATE TABLE conversations (
    id              BIGSERIAL PRIMARY KEY,
    user_id         BIGINT      NOT NULL,
    fan_id          BIGINT      NOT NULL REFERENCES fans (id) ON DELETE CASCADE,
    platform        TEXT        NOT NULL,
    last_message_at TIMESTAMPTZ,
    unread_count    BIGINT      NOT NULL DEFAULT 0 CHECK (unread_count >= 0),
    created_at      TIMESTAMPTZ NOT NULL
);
-- One thread per fan: "open the fan's conversation" is an upsert on this key.
CREATE UNIQUE INDEX conversations_fan ON conversations (fan_id);
CREATE INDEX conversations_user_last_message ON conversations (user_id, last_message_at DESC NULLS LAST);

CREATE TABLE campaigns (
    id              BIGSERIAL PRIMARY KEY,
    user_id         BIGINT      NOT NULL,
    name            TEXT        NOT NULL,
    type            TEXT        NOT NULL CHECK (type IN ('bulk_message', 'welcome', 're-engagement', 'ppv', 'custom')),
    status          TEXT        NOT NULL CHECK (status IN ('draft', 'scheduled', 'active', 'paused', 'completed')),
    template        JSONB       NOT NULL,
    target_audience JSONB       NOT NULL,
    metrics         JSONB       NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    started_at      TIMESTAMPTZ,
    completed_at    TIMESTAMPTZ
);
CREATE INDEX campaigns_user_created ON campaigns (user_id, created_at DESC);

CREATE TABLE messages (
    id              BIGSERIAL PRIMARY KEY,
    user_id         BIGINT      NOT NULL,
    conversation_id BIGINT      NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    fan_id          BIGINT      NOT NULL REFERENCES fans (id) ON DELETE CASCADE,
    direction       TEXT        NOT NULL CHECK (direction IN ('in', 'out')),
    text            TEXT        NOT NULL,
    price_cents     BIGINT      NOT NULL DEFAULT 0 CHECK (price_cents >= 0),
    attachments     JSONB       NOT NULL DEFAULT '[]'::jsonb,
    status          TEXT        NOT NULL CHECK (status IN ('queued', 'sending', 'sent', 'failed')),
    error           TEXT,
    attempts        BIGINT      NOT NULL DEFAULT 0,
    campaign_id     BIGINT      REFERENCES campaigns (id) ON DELETE SET NULL,
    -- The platform's own id for an inbound message: a sync that replays it records nothing new.
    external_id     TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    sent_at         TIMESTAMPTZ
);
CREATE INDEX messages_conversation_created ON messages (conversation_id, created_at);
CREATE UNIQUE INDEX messages_conversation_external ON messages (conversation_id, external_id)
    WHERE external_id IS NOT NULL;
CREATE INDEX messages_campaign ON messages (campaign_id) WHERE campaign_id IS NOT NULL;

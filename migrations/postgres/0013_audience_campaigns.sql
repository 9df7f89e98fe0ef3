-- Campaigns to an audience: scheduled, pausable, cancellable, recurring (crm/campaigns owns
-- `campaigns`, crm/campaigns/runs `campaign_runs`, crm/campaigns/recipients
-- `campaign_recipients`).
ALTER TABLE campaigns DROP CONSTRAINT campaigns_status_check;
ALTER TABLE campaigns ADD CONSTRAINT campaigns_status_check
    CHECK (status IN ('draft', 'scheduled', 'active', 'paused', 'completed', 'cancelled'));
-- What is re-checked before each recipient's message is queued (the API's `exclude`).
ALTER TABLE campaigns ADD COLUMN exclude JSONB;
-- When a scheduled campaign starts; for a recurring one, `cron` (seconds first) read in
-- `timezone` (IANA), and `starts_at` its next tick.
ALTER TABLE campaigns ADD COLUMN starts_at TIMESTAMPTZ;
ALTER TABLE campaigns ADD COLUMN cron TEXT;
ALTER TABLE campaigns ADD COLUMN timezone TEXT;
ALTER TABLE campaigns ADD COLUMN cancelled_at TIMESTAMPTZ;
CREATE INDEX campaigns_due ON campaigns (starts_at) WHERE starts_at IS NOT NULL;

-- One occurrence of a campaign: a one-off campaign has one, a recurring one a run per tick
-- (`tick` unique per campaign: a tick starts once however many schedulers run). `audience`
-- is NULL until the audience is resolved into `campaign_recipients`; `feeding` says a
-- `campaign_feed` job is stored or running for it.
CREATE TABLE campaign_runs (
    id           BIGSERIAL PRIMARY KEY,
    campaign_id  BIGINT      NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    user_id      BIGINT      NOT NULL,
    tick         TIMESTAMPTZ NOT NULL,
    status       TEXT        NOT NULL
        CHECK (status IN ('active', 'paused', 'completed', 'cancelled', 'skipped')),
    audience     BIGINT,
    feeding      BOOLEAN     NOT NULL DEFAULT FALSE,
    started_at   TIMESTAMPTZ NOT NULL,
    completed_at TIMESTAMPTZ,
    UNIQUE (campaign_id, tick)
);
CREATE INDEX campaign_runs_live ON campaign_runs (user_id, campaign_id)
    WHERE status IN ('active', 'paused');

-- Who a run is for, each once: `pending` (not queued yet), `queued` (its message, of the
-- same run and fan, is stored), `excluded` (with `reason`, checked just before queueing) or
-- `cancelled`.
CREATE TABLE campaign_recipients (
    run_id     BIGINT NOT NULL REFERENCES campaign_runs (id) ON DELETE CASCADE,
    fan_id     BIGINT NOT NULL REFERENCES fans (id) ON DELETE CASCADE,
    status     TEXT   NOT NULL CHECK (status IN ('pending', 'queued', 'excluded', 'cancelled')),
    reason     TEXT,
    PRIMARY KEY (run_id, fan_id)
);
CREATE INDEX campaign_recipients_pending ON campaign_recipients (run_id, fan_id)
    WHERE status = 'pending';

-- The run a campaign message was queued for: how many are on their way decides the refill.
ALTER TABLE messages ADD COLUMN run_id BIGINT REFERENCES campaign_runs (id);
CREATE INDEX messages_run_status ON messages (run_id, status) WHERE run_id IS NOT NULL;

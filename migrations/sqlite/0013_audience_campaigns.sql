-- no-transaction
-- (SQLite cannot change a CHECK in place: `campaigns` is rebuilt with the new status, with
-- foreign keys off so that rebuilding it leaves its messages' campaign ids alone; the rebuild
-- itself is one transaction.)
-- Campaigns to an audience: scheduled, pausable, cancellable, recurring (crm/campaigns owns
-- `campaigns`, crm/campaigns/runs `campaign_runs`, crm/campaigns/recipients
-- `campaign_recipients`).
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;
CREATE TABLE campaigns_rebuilt (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id         INTEGER     NOT NULL,
    name            TEXT        NOT NULL,
    type            TEXT        NOT NULL CHECK (type IN ('bulk_message', 'welcome', 're-engagement', 'ppv', 'custom')),
    status          TEXT        NOT NULL
        CHECK (status IN ('draft', 'scheduled', 'active', 'paused', 'completed', 'cancelled')),
    template        TEXT       NOT NULL,
    target_audience TEXT       NOT NULL,
    metrics         TEXT       NOT NULL,
    created_at      TEXT NOT NULL,
    started_at      TEXT,
    completed_at    TEXT,
    -- What is re-checked before each recipient's message is queued (the API's `exclude`).
    exclude         TEXT,
    -- When a scheduled campaign starts; for a recurring one, `cron` (seconds first) read in
    -- `timezone` (IANA), and `starts_at` its next tick.
    starts_at       TEXT,
    cron            TEXT,
    timezone        TEXT,
    cancelled_at    TEXT
);
INSERT INTO campaigns_rebuilt (id, user_id, name, type, status, template, target_audience,
                               metrics, created_at, started_at, completed_at)
    SELECT id, user_id, name, type, status, template, target_audience, metrics, created_at,
           started_at, completed_at
    FROM campaigns;
DROP TABLE campaigns;
ALTER TABLE campaigns_rebuilt RENAME TO campaigns;
CREATE INDEX campaigns_user_created ON campaigns (user_id, created_at DESC);
CREATE INDEX campaigns_due ON campaigns (starts_at) WHERE starts_at IS NOT NULL;

-- One occurrence of a campaign: a one-off campaign has one, a recurring one a run per tick
-- (`tick` unique per campaign: a tick starts once however many schedulers run). `audience`
-- is NULL until the audience is resolved into `campaign_recipients`; `feeding` says a
-- `campaign_feed` job is stored or running for it.
CREATE TABLE campaign_runs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    campaign_id  INTEGER NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    user_id      INTEGER NOT NULL,
    tick         TEXT    NOT NULL,
    status       TEXT    NOT NULL
        CHECK (status IN ('active', 'paused', 'completed', 'cancelled', 'skipped')),
    audience     INTEGER,
    feeding      BOOLEAN NOT NULL DEFAULT FALSE,
    started_at   TEXT    NOT NULL,
    completed_at TEXT,
    UNIQUE (campaign_id, tick)
);
CREATE INDEX campaign_runs_live ON campaign_runs (user_id, campaign_id)
    WHERE status IN ('active', 'paused');

-- Who a run is for, each once: `pending` (not queued yet), `queued` (its message, of the
-- same run and fan, is stored), `excluded` (with `reason`, checked just before queueing) or
-- `cancelled`.
CREATE TABLE campaign_recipients (
    run_id     INTEGER NOT NULL REFERENCES campaign_runs (id) ON DELETE CASCADE,
    fan_id     INTEGER NOT NULL REFERENCES fans (id) ON DELETE CASCADE,
    status     TEXT    NOT NULL CHECK (status IN ('pending', 'queued', 'excluded', 'cancelled')),
    reason     TEXT,
    PRIMARY KEY (run_id, fan_id)
) WITHOUT ROWID;
CREATE INDEX campaign_recipients_pending ON campaign_recipients (run_id, fan_id)
    WHERE status = 'pending';

-- The run a campaign message was queued for: how many are on their way decides the refill.
ALTER TABLE messages ADD COLUMN run_id INTEGER REFERENCES campaign_runs (id);
CREATE INDEX messages_run_status ON messages (run_id, status) WHERE run_id IS NOT NULL;
COMMIT;
PRAGMA foreign_keys = ON;

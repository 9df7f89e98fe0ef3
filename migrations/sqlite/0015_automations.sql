-- Automations (issue 28): a trigger, then steps (waits, sends, conditions) run per enrolled
-- fan. crm/automations owns these four tables.
--
-- An automation's definition is versioned: editing it stores a new version, and an enrollment
-- keeps the version it started with. `trigger_type` is the current version's trigger, which
-- the events look automations up by; `checked_on` is the day of a daily trigger's last check.
CREATE TABLE automations (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id      INTEGER     NOT NULL,
    name         TEXT        NOT NULL,
    status       TEXT        NOT NULL CHECK (status IN ('active', 'paused')),
    trigger_type TEXT        NOT NULL,
    version      INTEGER     NOT NULL,
    checked_on   TEXT,
    created_at   TEXT        NOT NULL,
    updated_at   TEXT        NOT NULL,
    deleted_at   TEXT       
);
CREATE INDEX automations_user ON automations (user_id, id) WHERE deleted_at IS NULL;
CREATE INDEX automations_trigger ON automations (user_id, trigger_type) WHERE deleted_at IS NULL;

CREATE TABLE automation_versions (
    automation_id INTEGER     NOT NULL REFERENCES automations (id) ON DELETE CASCADE,
    version       INTEGER     NOT NULL,
    definition    TEXT        NOT NULL,
    created_at    TEXT        NOT NULL,
    PRIMARY KEY (automation_id, version)
);

-- One fan going through one automation: `step` is the step it is at, `due_at` when that step
-- runs (a wait step's end; NULL once finished). A waiting enrollment holds no worker: the
-- clock reads the due ones through `automation_enrollments_due`. `trigger_key` names what
-- enrolled it (an event id, or a fan's subscription period or inactivity spell): unique per
-- automation, so a replayed event enrolls no one. `held_by` says why the current send was
-- put off (`quiet_hours`, `daily_cap`).
CREATE TABLE automation_enrollments (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       INTEGER     NOT NULL,
    automation_id INTEGER     NOT NULL,
    version       INTEGER     NOT NULL,
    fan_id        INTEGER     NOT NULL REFERENCES fans (id) ON DELETE CASCADE,
    trigger_key   TEXT        NOT NULL,
    status        TEXT        NOT NULL CHECK (status IN ('active', 'completed', 'exited')),
    exit_reason   TEXT,
    step          INTEGER     NOT NULL,
    due_at        TEXT       ,
    held_by       TEXT,
    created_at    TEXT        NOT NULL,
    finished_at   TEXT       ,
    FOREIGN KEY (automation_id, version)
        REFERENCES automation_versions (automation_id, version) ON DELETE CASCADE,
    UNIQUE (automation_id, trigger_key)
);
CREATE INDEX automation_enrollments_due ON automation_enrollments (due_at)
    WHERE status = 'active';
CREATE INDEX automation_enrollments_fan ON automation_enrollments (fan_id, automation_id);

-- Each step an enrollment went through, once (the primary key): what came of it, and for a
-- send its message and variant (revenue per step and variant is read through the message).
CREATE TABLE automation_steps (
    enrollment_id INTEGER     NOT NULL REFERENCES automation_enrollments (id) ON DELETE CASCADE,
    step          INTEGER     NOT NULL,
    kind          TEXT        NOT NULL,
    outcome       TEXT        NOT NULL,
    held_by       TEXT,
    message_id    INTEGER,
    variant       TEXT,
    at            TEXT        NOT NULL,
    PRIMARY KEY (enrollment_id, step)
);
CREATE INDEX automation_steps_message ON automation_steps (message_id)
    WHERE message_id IS NOT NULL;

-- When the fan's current subscription period ends (renews or expires), as an event said.
ALTER TABLE fans ADD COLUMN subscription_ends_at TEXT       ;

-- The daily cap counts a fan's automated and campaign messages of the day (lanes 1 and 2).
CREATE INDEX messages_fan_lane_created ON messages (fan_id, created_at) WHERE lane > 0;

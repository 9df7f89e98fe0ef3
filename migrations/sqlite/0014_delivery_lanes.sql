-- Delivery lanes: within each creator's rate, one-to-one messages first (lane 0), then
-- automations (1), then campaigns (2); priority keeps its meaning inside a lane. Campaigns
-- sending at once take turns: a campaign message's `turn` is its place in its campaign from
-- where the creator's campaigns stood when it was queued, so two campaigns alternate.
ALTER TABLE messages ADD COLUMN lane INTEGER NOT NULL DEFAULT 0 CHECK (lane IN (0, 1, 2));
ALTER TABLE messages ADD COLUMN turn INTEGER NOT NULL DEFAULT 0;
UPDATE messages SET lane = 2 WHERE campaign_id IS NOT NULL;
DROP INDEX messages_schedule;
CREATE INDEX messages_schedule ON messages (user_id, lane, priority DESC, turn, created_at, id)
    WHERE status = 'queued' AND ready_at IS NOT NULL;
-- The turn a run's next message takes (at least where the creator's campaigns stand then).
ALTER TABLE campaign_runs ADD COLUMN next_turn INTEGER NOT NULL DEFAULT 0;

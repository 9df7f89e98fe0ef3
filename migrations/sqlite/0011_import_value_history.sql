-- The import writes the value history and the revenue rollup of its batches itself, once per
-- batch (crm::fans::import): migration 0009's row triggers added each imported fan to its
-- (creator, day) revenue on its own, 5,000 updates of the same row for a batch of 5,000. The
-- triggers stay for every other writer (the API, platform events), which change one fan a
-- statement and say so in value_source; a row the import writes says 'import'.
DROP TRIGGER fans_value_inserted;
DROP TRIGGER fans_value_updated;

CREATE TRIGGER fans_value_inserted AFTER INSERT ON fans
WHEN NEW.value_cents <> 0 AND NEW.value_source <> 'import'
BEGIN
    INSERT INTO fan_value_changes (user_id, fan_id, at, value_cents, delta_cents, source)
    VALUES (NEW.user_id, NEW.id, COALESCE(NEW.value_at, NEW.updated_at), NEW.value_cents,
            NEW.value_cents, NEW.value_source);
    INSERT INTO revenue_days (user_id, day, revenue_cents)
    VALUES (NEW.user_id, date(COALESCE(NEW.value_at, NEW.updated_at)), NEW.value_cents)
    ON CONFLICT (user_id, day) DO UPDATE SET revenue_cents = revenue_cents + excluded.revenue_cents;
END;
CREATE TRIGGER fans_value_updated AFTER UPDATE OF value_cents ON fans
WHEN NEW.value_cents <> OLD.value_cents AND NEW.value_source <> 'import'
BEGIN
    INSERT INTO fan_value_changes (user_id, fan_id, at, value_cents, delta_cents, source)
    VALUES (NEW.user_id, NEW.id, COALESCE(NEW.value_at, NEW.updated_at), NEW.value_cents,
            NEW.value_cents - OLD.value_cents, NEW.value_source);
    INSERT INTO revenue_days (user_id, day, revenue_cents)
    VALUES (NEW.user_id, date(COALESCE(NEW.value_at, NEW.updated_at)),
            NEW.value_cents - OLD.value_cents)
    ON CONFLICT (user_id, day) DO UPDATE SET revenue_cents = revenue_cents + excluded.revenue_cents;
END;

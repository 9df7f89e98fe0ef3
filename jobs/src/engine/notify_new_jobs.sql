-- apalis-postgres's trigger function, apalis.notify_new_jobs (migration
-- 20251018165121_notify_run_at), with one more condition: a transaction that set
-- `fanqueue.announced` for itself stores tasks its process announces (engine::wake,
-- Wakeups::announce: at most one notification per queue every 20 ms), so its inserts notify
-- nobody. apalis notifies once per task: at 1,000 sends a second that woke the workers'
-- listening backend, and the workers, a thousand times a second, for workers that look at
-- most every 20 ms anyway. Tasks stored otherwise notify as apalis does. The notification is
-- apalis's, word for word; a test compares the two. Run at every start after apalis's
-- migrations (which would put theirs back); replicas starting together take turns.
DO $outer$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('fanqueue: apalis notify_new_jobs'));
    IF NOT EXISTS (
        SELECT 1 FROM pg_proc
        WHERE oid = 'apalis.notify_new_jobs()'::regprocedure
          AND prosrc LIKE '%fanqueue.announced%'
    ) THEN
        CREATE OR REPLACE FUNCTION apalis.notify_new_jobs() RETURNS TRIGGER AS $body$
        BEGIN
            IF NEW.run_at <= now()
               AND current_setting('fanqueue.announced', true) IS DISTINCT FROM 'on' THEN
                PERFORM pg_notify(
                    'apalis::job::insert',
                    json_build_object(
                        'job_type', NEW.job_type,
                        'id', NEW.id,
                        'run_at', NEW.run_at
                    )::text
                );
            END IF;
            RETURN NEW;
        END;
        $body$ LANGUAGE plpgsql;
    END IF;
END $outer$

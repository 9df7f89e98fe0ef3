-- apalis-postgres's fetch, apalis.get_jobs, as PL/pgSQL. apalis 1.0 defines it in SQL
-- (migration 20260902075949_remove_pl_in_get_jobs), and PostgreSQL 15 plans an SQL function's
-- body again on every call: 0.25 ms a fetch that finds nothing, where PL/pgSQL keeps the plan
-- for the connection's life (0.10 ms). A worker fetches hundreds of times a second under load.
-- The body is apalis's, word for word; a test compares the two, so an apalis upgrade that
-- changes it fails there first. Run at every start after apalis's migrations (which would put
-- the SQL one back); replicas starting together take turns.
DO $outer$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('fanqueue: apalis get_jobs'));
    IF NOT EXISTS (
        SELECT 1 FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
        WHERE p.oid = 'apalis.get_jobs(text, text, integer)'::regprocedure
          AND l.lanname = 'plpgsql'
    ) THEN
        CREATE OR REPLACE FUNCTION apalis.get_jobs(
            worker_id TEXT,
            v_job_type TEXT,
            v_job_count INTEGER DEFAULT 5
        )
        RETURNS SETOF apalis.jobs
        LANGUAGE plpgsql
        VOLATILE
        AS $body$
        BEGIN
            RETURN QUERY
    WITH jobs AS (
        SELECT id
        FROM apalis.jobs
        WHERE
            (
                status = 'Pending'
                OR (
                    status = 'Failed'
                    AND attempts < max_attempts
                )
            )
            AND run_at < now()
            AND job_type = v_job_type
        ORDER BY priority DESC, run_at ASC
        LIMIT v_job_count
        FOR UPDATE SKIP LOCKED
    )
    UPDATE apalis.jobs j
    SET
        status = 'Queued',
        lock_by = worker_id,
        lock_at = now()
    FROM jobs
    WHERE j.id = jobs.id
    RETURNING j.*;
        END
        $body$;
    END IF;
END $outer$

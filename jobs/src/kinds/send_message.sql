-- Stores a group of single sends on PostgreSQL in one statement: one round trip and one
-- commit, whatever the group's size, and one prepared statement (every list is an array).
-- It makes the same rows as the portable path of send_message.rs, which takes nine round
-- trips for them; each write mirrors the function that owns its table, named beside it.
-- At 1,000 sends a second those round trips on a busy machine were most of a send's time.
--
-- $1..$9: one element per send, in request order (ord); fan_id or conversation_id is NULL.
-- $10: the creator's backlog limit (NULL for none). $11: the time the sends are stored.
-- Per send (ord order): its backlog before it, whether it was admitted, its fan when found,
-- and when stored, its message (m.*), how many waiting messages go before it and when the
-- creator's latest delivery started.
WITH input AS (
    SELECT * FROM unnest($1::int[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[],
                         $6::bigint[], $7::text[], $8::bigint[], $9::text[])
        AS t(ord, user_id, fan_id, conversation_id, body, price_cents, attachments, priority,
             job_id)
),
-- messages::backlogs_in, one index read per creator (messages_user_status): so written, the
-- plan PostgreSQL prepares once for any group is as good as one made for the group's ids.
backlog AS (
    SELECT u.user_id, b.n
    FROM (SELECT DISTINCT user_id FROM input) u,
    LATERAL (SELECT COUNT(*) AS n FROM messages m
             WHERE m.user_id = u.user_id AND m.status IN ('queued', 'sending')
               AND m.direction = 'out') b
),
-- conversations::fans_of, and Backpressure::admit: the n-th send of a creator in the group
-- is admitted while its backlog plus n stays within the limit.
addressed AS (
    SELECT i.*,
           COALESCE(i.fan_id, (SELECT c.fan_id FROM conversations c
                               WHERE c.id = i.conversation_id AND c.user_id = i.user_id))
               AS fan,
           b.n AS backlog,
           row_number() OVER (PARTITION BY i.user_id ORDER BY i.ord) AS nth
    FROM input i JOIN backlog b ON b.user_id = i.user_id
),
admitted AS (
    SELECT * FROM addressed
    WHERE fan IS NOT NULL AND ($10::bigint IS NULL OR backlog + nth <= $10::bigint)
),
-- conversations::touch_for_outbound (rows in fan order: locks are taken in one order)
conv AS (
    INSERT INTO conversations AS c (user_id, fan_id, platform, unread_count, created_at,
                                    last_message_at)
    SELECT f.user_id, f.id, f.platform, 0, $11, $11 FROM fans f
    WHERE (f.id, f.user_id) IN (SELECT fan, user_id FROM admitted)
    ORDER BY f.id
    ON CONFLICT (fan_id) DO UPDATE SET last_message_at = CASE
        WHEN c.last_message_at IS NULL OR c.last_message_at < excluded.last_message_at
        THEN excluded.last_message_at ELSE c.last_message_at END
    RETURNING id, user_id, fan_id
),
-- messages::insert_queued
msg AS (
    INSERT INTO messages (user_id, conversation_id, fan_id, direction, text, price_cents,
                          attachments, status, attempts, campaign_id, created_at, priority,
                          job_id)
    SELECT a.user_id, c.id, a.fan, 'out', a.body, a.price_cents, a.attachments::jsonb,
           'queued', 0, NULL, $11, a.priority, a.job_id
    FROM admitted a JOIN conv c ON c.user_id = a.user_id AND c.fan_id = a.fan
    ORDER BY a.ord
    RETURNING *
),
-- engine::record::insert_many (dispatched: the task commits with it)
rec AS (
    INSERT INTO job_records (id, user_id, kind, status, payload, created_at, dispatched_at,
                             progress_total)
    SELECT job_id, user_id, 'send_message', 'queued',
           jsonb_build_object('messageIds', jsonb_build_array(id)), $11, $11, 1
    FROM msg
),
-- engine::backend::enqueue_many: this transaction's tasks are announced by its process once
-- it committed (engine::wake's ANNOUNCED), so apalis's trigger stays quiet for them.
quiet AS (
    SELECT set_config('fanqueue.announced', 'on', true)
),
-- engine::backend::enqueue_many: one apalis task (apalis-postgres's sink.sql) for the jobs
-- stored together, named after the first, carrying a JobTask.
jobs AS (
    SELECT (array_agg(job_id ORDER BY id))[1] AS first,
           (array_agg(job_id ORDER BY id))[2:] AS rest
    FROM msg
),
task AS (
    INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at,
                             priority, metadata, idempotency_key)
    SELECT first, 'send_message',
           convert_to(json_build_object('job_id', first, 'with', rest)::text, 'UTF8'),
           'Pending', 0, 50, date_trunc('second', $11::timestamptz), 0, ''::hstore, first
    FROM jobs, quiet WHERE first IS NOT NULL
)
-- messages::ahead_of_many (the statement's snapshot holds the older messages; the group's
-- own are counted from msg) and deliveries::last_started_many
SELECT a.ord, a.backlog, a.nth, a.fan, m.*,
       (SELECT COUNT(*) FROM messages o
         WHERE o.user_id = m.user_id AND o.direction = 'out' AND o.status = 'queued'
           AND (o.priority > m.priority OR (o.priority = m.priority
                AND (o.created_at < m.created_at
                     OR (o.created_at = m.created_at AND o.id < m.id)))))
     + (SELECT COUNT(*) FROM msg n
         WHERE n.user_id = m.user_id AND n.id <> m.id
           AND (n.priority > m.priority OR (n.priority = m.priority AND n.id < m.id)))
       AS ahead,
       (SELECT MAX(started_at) FROM delivery_attempts d WHERE d.user_id = a.user_id)
       AS last_started
FROM addressed a LEFT JOIN msg m ON m.job_id = a.job_id
ORDER BY a.ord

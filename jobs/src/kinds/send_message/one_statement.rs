//! A group of single sends stored on PostgreSQL in one statement: one round trip and one
//! commit whatever the group's size, and one prepared statement (every list is an array). At
//! 1,000 sends a second the nine round trips of the portable path were most of a send's time
//! on a busy machine.
//!
//! The statement is built from parts the owners of its tables provide (the messages module
//! writes `messages`, conversations `conversations`, the engine `job_records` and apalis's
//! table); this file only says which sends are admitted and joins the parts. The tests
//! (`tests.rs`) hold its effects equal to the portable path's.

use std::sync::LazyLock;

use sqlx::{AssertSqlSafe, FromRow, PgPool, Row};

use super::{NewSend, Recipient, SendMessage, Stored, announce, job_of, recorded};
use crate::{
    crm::{
        conversations, deliveries,
        messages::{self, Message},
    },
    db::{Db, Tx},
    domain::{MessageId, Timestamp},
    engine::{EnqueueError, JobBackend, JobId, JobKind},
    idempotency,
    kinds::{Backpressure, SubmitError},
};

/// `$1..$9`: one element per send, in request order (`ord`); `to_fan` or `to_conversation`
/// is NULL. `$10`: the creator's backlog limit (NULL for none). `$11`: when the sends are
/// stored. Per send (`ord` order): its backlog before it, its rank among its creator's sends
/// of the group (`nth`), its fan when found, and when stored, its message (`m.*`), how many
/// waiting messages go before it and when the creator's latest delivery started.
static STATEMENT: LazyLock<String> = LazyLock::new(|| {
    let now = "$11";
    // One index read per creator (messages_user_status): so written, the plan PostgreSQL
    // prepares once for any group is as good as one made for the group's ids.
    let backlog = messages::backlog_sql("u.user_id");
    let fan_of = conversations::fan_of_sql("i.to_conversation", "i.user_id");
    let conversation = conversations::touch_for_outbound_sql("admitted", now);
    let message = messages::insert_queued_sql("queued", now);
    let jobs = JobBackend::enqueue_sql(SendMessage::NAME, "new_jobs", now);
    let ahead_stored = messages::ahead_sql("m", "messages");
    let ahead_new = messages::ahead_sql("m", "msg");
    let last_started = deliveries::last_started_sql("a.user_id");
    format!(
        "WITH input AS (
             SELECT * FROM unnest($1::int[], $2::bigint[], $3::bigint[], $4::bigint[],
                                  $5::text[], $6::bigint[], $7::text[], $8::bigint[], $9::text[])
                 AS t(ord, user_id, to_fan, to_conversation, text, price_cents, attachments,
                      priority, job_id)
         ),
         backlog AS (
             SELECT u.user_id, b.n FROM (SELECT DISTINCT user_id FROM input) u,
             LATERAL ({backlog}) b(n)
         ),
         -- Backpressure::admit: the n-th send of a creator in the group is admitted while
         -- its backlog plus n stays within the limit.
         addressed AS (
             SELECT i.*, COALESCE(i.to_fan, ({fan_of})) AS fan_id, b.n AS backlog,
                    row_number() OVER (PARTITION BY i.user_id ORDER BY i.ord) AS nth
             FROM input i JOIN backlog b ON b.user_id = i.user_id
         ),
         admitted AS (
             SELECT * FROM addressed
             WHERE fan_id IS NOT NULL AND ($10::bigint IS NULL OR backlog + nth <= $10::bigint)
         ),
         conv AS ({conversation}),
         queued AS (
             SELECT a.ord, a.user_id, c.id AS conversation_id, a.fan_id, a.text, a.price_cents,
                    a.attachments, a.priority, a.job_id, NULL::bigint AS campaign_id
             FROM admitted a JOIN conv c ON c.user_id = a.user_id AND c.fan_id = a.fan_id
         ),
         msg AS ({message}),
         new_jobs AS (
             SELECT job_id AS id, user_id, jsonb_build_object('messageIds', jsonb_build_array(id))
                    AS payload, 1::bigint AS total, id AS ord
             FROM msg
         ),
         {jobs}
         -- The statement's snapshot holds the older messages; the group's own are in msg.
         SELECT a.ord, a.backlog, a.nth, a.fan_id AS fan, m.*,
                ({ahead_stored}) + ({ahead_new}) AS ahead, ({last_started}) AS last_started
         FROM addressed a LEFT JOIN msg m ON m.job_id = a.job_id
         ORDER BY a.ord"
    )
});

/// [`store`](super::store) on PostgreSQL: [`STATEMENT`] makes the rows
/// [`store_all`](super::store_all) makes (messages, conversations, job records, one apalis
/// task) and reads the estimates, in one round trip.
pub(super) async fn store(
    db: &Db,
    pool: &PgPool,
    backend: &JobBackend,
    limit: Option<Backpressure>,
    sends: &[NewSend],
) -> Result<Vec<Result<Stored, SubmitError>>, SubmitError> {
    let now = Timestamp::now();
    let jobs: Vec<JobId> = sends.iter().map(|_| JobId::generate()).collect();
    let (mut fans, mut conversations) = (vec![], vec![]);
    for send in sends {
        let (fan, conversation) = match send.to {
            Recipient::Fan(f) => (Some(f.0), None),
            Recipient::Conversation(c) => (None, Some(c.0)),
        };
        fans.push(fan);
        conversations.push(conversation);
    }
    let sql = |e| SubmitError::Enqueue(EnqueueError::Sql(e));
    let keyed = sends.iter().any(|s| s.key.is_some());
    // Keyed sends record their messages on their keys in the statement's transaction.
    let mut tx = if keyed {
        Some(pool.begin().await.map_err(sql)?)
    } else {
        None
    };
    let query = sqlx::query(AssertSqlSafe(STATEMENT.as_str()))
        .bind((1..).take(sends.len()).collect::<Vec<i32>>())
        .bind(sends.iter().map(|s| s.user.0).collect::<Vec<i64>>())
        .bind(fans)
        .bind(conversations)
        .bind(
            sends
                .iter()
                .map(|s| s.out.text.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            sends
                .iter()
                .map(|s| s.out.price_cents.get())
                .collect::<Vec<i64>>(),
        )
        .bind(
            sends
                .iter()
                .map(|s| messages::attachments_json(&s.out.attachments))
                .collect::<Vec<String>>(),
        )
        .bind(sends.iter().map(|s| s.out.priority).collect::<Vec<i64>>())
        .bind(jobs.iter().map(|j| j.0.as_str()).collect::<Vec<_>>())
        .bind(limit.map(|l| l.max_backlog))
        .bind(now);
    let rows = match tx.as_mut() {
        Some(tx) => query.fetch_all(&mut **tx).await,
        None => query.fetch_all(pool).await,
    }
    .map_err(sql)?;
    let mut answers = Vec::with_capacity(sends.len());
    let mut new_jobs = vec![];
    for ((row, send), job) in rows.iter().zip(sends).zip(jobs) {
        let backlog: i64 = row.try_get("backlog").map_err(sql)?;
        let nth: i64 = row.try_get("nth").map_err(sql)?;
        let fan: Option<i64> = row.try_get("fan").map_err(sql)?;
        let stored: Option<MessageId> = row.try_get("id").map_err(sql)?;
        let answer = match (limit, fan, stored) {
            (_, _, Some(_)) => {
                let message = Message::from_row(row).map_err(sql)?;
                new_jobs.push(job_of(job, send.user, message.id));
                Ok(Stored {
                    ahead: row.try_get("ahead").map_err(sql)?,
                    last_started: row.try_get("last_started").map_err(sql)?,
                    message,
                })
            }
            // As Backpressure::admit counts: a refused send adds nothing to the backlog the
            // next one finds.
            (Some(limit), _, None) if backlog + nth > limit.max_backlog => Err(limit
                .admit((backlog + nth - 1).min(backlog.max(limit.max_backlog)), 1)
                .expect_err("over the limit")),
            (_, None, None) => Err(SubmitError::NotFound("conversation")),
            (_, Some(_), None) => Err(SubmitError::NotFound("fan")),
        };
        answers.push(answer);
    }
    if let Some(tx) = tx {
        let mut tx = Tx::Postgres(tx);
        idempotency::record_many(
            &mut tx,
            &recorded(
                sends,
                answers.iter().map(|a| a.as_ref().ok().map(|s| &s.message)),
            ),
        )
        .await?;
        tx.commit().await.map_err(sql)?;
    }
    announce(
        db,
        backend,
        &new_jobs,
        answers.iter().flatten().map(|s| &s.message),
    )
    .await;
    Ok(answers)
}

//! Failed messages and the messages the sweeper looks after: the failed list, putting failed
//! messages back on their way, and the sweeper's transitions (a DLQ copy's outcome recorded,
//! a stuck message re-queued).

use chrono::{DateTime, Utc};
use sqlx::QueryBuilder;

use super::{Deliverable, MessageStatus};
use crate::{
    db::{Db, Listed, Page, StoreResult, Tx},
    domain::{CampaignId, ConversationId, FanId, MessageId, Timestamp, UserId},
    engine::JobId,
    on_db, on_tx,
    telemetry::{self, FailedBecause},
};

/// A failed outbound message, as the failed list shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FailedMessage {
    pub id: MessageId,
    pub user_id: UserId,
    pub fan_id: FanId,
    pub conversation_id: ConversationId,
    pub campaign_id: Option<CampaignId>,
    pub text: String,
    pub priority: i64,
    pub error: Option<String>,
    pub attempts: i64,
    pub created_at: DateTime<Utc>,
    pub failed_at: Option<DateTime<Utc>>,
}

/// Failed outbound messages, newest failure first: one creator's, or (`None`) everyone's.
pub async fn list_failed(
    db: &Db,
    creator: Option<UserId>,
    page: Page,
) -> StoreResult<Listed<FailedMessage>> {
    let scope = if creator.is_some() {
        "AND user_id = $1"
    } else {
        "AND $1 IS NULL"
    };
    let items_sql = format!(
        "SELECT id, user_id, fan_id, conversation_id, campaign_id, text, priority, error,
                attempts, created_at, failed_at
         FROM messages WHERE status = 'failed' AND direction = 'out' {scope}
         ORDER BY failed_at DESC, id DESC LIMIT $2 OFFSET $3"
    );
    let count_sql = format!(
        "SELECT COUNT(*) FROM messages WHERE status = 'failed' AND direction = 'out' {scope}"
    );
    on_db!(db, pool => {
        let items = sqlx::query_as::<_, FailedMessage>(sqlx::AssertSqlSafe(items_sql))
            .bind(creator)
            .bind(page.limit)
            .bind(page.offset)
            .fetch_all(pool)
            .await?;
        let (total,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(count_sql))
            .bind(creator)
            .fetch_one(pool)
            .await?;
        Ok(Listed { items, total })
    })
}

/// The state and campaign of one of `user`'s outbound messages, for a retry.
pub async fn status_of(
    tx: &mut Tx,
    user: UserId,
    id: MessageId,
) -> StoreResult<Option<(MessageStatus, Option<CampaignId>)>> {
    Ok(on_tx!(tx, conn => sqlx::query_as(
        "SELECT status, campaign_id FROM messages
         WHERE id = $1 AND user_id = $2 AND direction = 'out'",
    )
    .bind(id)
    .bind(user)
    .fetch_optional(&mut **conn)
    .await)?)
}

/// `failed` → `queued` under `job`, in `tx`: the message starts over (attempts, error and its
/// place on the queue cleared) and `job` puts it on the outbound queue again. Of `ids`, or of
/// every failed message of `campaign`; only failed ones move. Returns the ids that moved.
pub async fn requeue_failed(
    tx: &mut Tx,
    user: UserId,
    which: Requeue<'_>,
    job: &JobId,
) -> StoreResult<Vec<MessageId>> {
    let mut ids: Vec<(MessageId,)> = on_tx!(tx, conn => {
        let mut q = QueryBuilder::new(
            "UPDATE messages SET status = 'queued', error = NULL, attempts = 0, failed_at = NULL,
                 sent_at = NULL, enqueued_at = NULL, ready_at = NULL, next_attempt_at = NULL,
                 lease_until = NULL, redrives = 0,
                 key_generation = key_generation + CASE WHEN (
                     SELECT outcome FROM delivery_attempts d WHERE d.message_id = messages.id
                     ORDER BY d.id DESC LIMIT 1) = 'rejected' THEN 1 ELSE 0 END,
                 job_id = ",
        );
        q.push_bind(job)
            .push(" WHERE status = 'failed' AND direction = 'out' AND user_id = ")
            .push_bind(user);
        match which {
            Requeue::Messages(ids) => {
                q.push(" AND id IN (");
                crate::db::push_binds(&mut q, ids.iter().copied());
                q.push(")");
            }
            Requeue::Campaign(c) => {
                q.push(" AND campaign_id = ").push_bind(c);
            }
        }
        q.push(" RETURNING id");
        q.build_query_as().fetch_all(&mut **conn).await
    })?;
    ids.sort_unstable();
    Ok(ids.into_iter().map(|(id,)| id).collect())
}

/// Which failed messages [`requeue_failed`] moves.
#[derive(Debug, Clone, Copy)]
pub enum Requeue<'a> {
    Messages(&'a [MessageId]),
    Campaign(CampaignId),
}

/// What the sweeper needs to know of a message whose copy it found in the DLQ.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeadLettered {
    pub id: MessageId,
    pub status: MessageStatus,
    pub error: Option<String>,
    pub redrives: i64,
    pub campaign_id: Option<CampaignId>,
}

/// The messages of these ids (outbound ones), for the sweeper's decisions.
pub async fn dead_lettered(db: &Db, ids: &[MessageId]) -> StoreResult<Vec<DeadLettered>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    Ok(on_db!(db, pool => {
        let mut q = QueryBuilder::new(
            "SELECT id, status, error, redrives, campaign_id FROM messages
             WHERE direction = 'out' AND id IN (",
        );
        crate::db::push_binds(&mut q, ids.iter().copied());
        q.push(")");
        q.build_query_as().fetch_all(pool).await
    })?)
}

/// A failed message whose DLQ copy carries the reason the message row lacks: the row gets it.
/// `true` when something changed.
pub async fn record_dlq_reason(db: &Db, id: MessageId, reason: &str) -> StoreResult<bool> {
    let done = on_db!(db, pool => sqlx::query(
        "UPDATE messages SET error = $2, failed_at = COALESCE(failed_at, $3)
         WHERE id = $1 AND status = 'failed' AND error IS NULL",
    )
    .bind(id)
    .bind(reason)
    .bind(Timestamp::now())
    .execute(pool)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(done == 1)
}

/// Not yet final → `failed` with `reason` (the sweeper gave up on it). `true` when it moved.
pub async fn fail_unfinished(db: &Db, id: MessageId, reason: &str) -> StoreResult<bool> {
    let done = on_db!(db, pool => sqlx::query(
        "UPDATE messages SET status = 'failed', error = $2, failed_at = $3, lease_until = NULL,
             next_attempt_at = NULL
         WHERE id = $1 AND status IN ('queued', 'sending')",
    )
    .bind(id)
    .bind(reason)
    .bind(Timestamp::now())
    .execute(pool)
    .await
    .map(|r| r.rows_affected()))?;
    telemetry::messages_failed(FailedBecause::Swept, done);
    Ok(done == 1)
}

/// The sweeper put these messages on the outbound queue again: their time on the queue starts
/// over and the re-drive is counted.
pub async fn count_redrives(db: &Db, ids: &[MessageId]) -> StoreResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let now = Timestamp::now();
    on_db!(db, pool => {
        let mut q = QueryBuilder::new("UPDATE messages SET redrives = redrives + 1, enqueued_at = ");
        q.push_bind(now).push(" WHERE id IN (");
        crate::db::push_binds(&mut q, ids.iter().copied());
        q.push(")");
        q.build().execute(pool).await.map(|r| r.rows_affected())
    })
    .map(telemetry::messages_queued)?;
    Ok(())
}

/// Messages put on the outbound queue before `before` that no dispatcher took off it: lost
/// by the queue, or moved to a DLQ the sweeper has not read. At most `limit`, oldest first.
pub async fn stuck_on_queue(
    db: &Db,
    before: DateTime<Utc>,
    limit: i64,
) -> StoreResult<Vec<(Deliverable, i64)>> {
    let rows: Vec<StuckRow> = on_db!(db, pool => sqlx::query_as(
        "SELECT id, user_id, fan_id, text, attachments, priority, campaign_id, redrives
         FROM messages
         WHERE status = 'queued' AND direction = 'out' AND enqueued_at IS NOT NULL
           AND ready_at IS NULL AND enqueued_at < $1
         ORDER BY enqueued_at, id LIMIT $2",
    )
    .bind(Timestamp(before))
    .bind(limit)
    .fetch_all(pool)
    .await)?;
    Ok(rows.into_iter().map(|r| (r.message, r.redrives)).collect())
}

#[derive(sqlx::FromRow)]
struct StuckRow {
    #[sqlx(flatten)]
    message: Deliverable,
    redrives: i64,
}

/// `sending` under a lease that ran out before `before` (its dispatcher died and none took it
/// over) → back in its creator's schedule, due now. The next attempt carries the same
/// idempotency key, so a delivery that did reach the platform is not applied twice. Returns
/// how many moved.
pub async fn reclaim_expired(db: &Db, before: DateTime<Utc>) -> StoreResult<u64> {
    let now = Timestamp::now();
    let moved = on_db!(db, pool => sqlx::query(
        "UPDATE messages SET status = 'queued', lease_until = NULL, next_attempt_at = NULL,
             ready_at = COALESCE(ready_at, $2)
         WHERE status = 'sending' AND lease_until < $1",
    )
    .bind(Timestamp(before))
    .bind(now)
    .execute(pool)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(moved)
}

/// One creator's outbound messages by status: their delivery backlog and failures.
pub async fn counts_of_creator(db: &Db, user: UserId) -> StoreResult<super::StatusCounts> {
    let rows: Vec<(MessageStatus, i64)> = on_db!(db, pool => sqlx::query_as(
        "SELECT status, COUNT(*) FROM messages WHERE user_id = $1 AND direction = 'out'
         GROUP BY status",
    )
    .bind(user)
    .fetch_all(pool)
    .await)?;
    Ok(super::StatusCounts::of(rows))
}

/// When the oldest outbound message still waiting was queued, and the largest backlog one
/// creator has (what bounds how long the queue should take to drain).
pub async fn oldest_waiting(db: &Db) -> StoreResult<(Option<DateTime<Utc>>, i64)> {
    let (oldest, largest): (Option<DateTime<Utc>>, Option<i64>) = on_db!(db, pool => sqlx::query_as(
        "SELECT MIN(oldest), MAX(n) FROM (
             SELECT MIN(created_at) AS oldest, COUNT(*) AS n FROM messages
             WHERE direction = 'out' AND status IN ('queued', 'sending')
             GROUP BY user_id) AS backlogs",
    )
    .fetch_one(pool)
    .await)?;
    Ok((oldest, largest.unwrap_or(0)))
}

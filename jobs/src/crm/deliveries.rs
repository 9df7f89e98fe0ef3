//! Delivery attempts: one row per attempt to deliver a message to the platform, written in
//! the transactions that move the message (see [`messages`](super::messages)). The only
//! module that writes `delivery_attempts`. The log is what the delivery limiter is seeded from
//! when it has lost its state, and a message's delivery history.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::{
    db::{Db, StoreResult, Tx},
    delivery::limiter::PastDelivery,
    domain::{MessageId, Timestamp, UserId},
    on_db, on_tx, text_enum,
};

text_enum! {
    /// How an attempt ended.
    pub enum AttemptOutcome as "delivery outcome" {
        /// The platform has it.
        Delivered = "delivered",
        /// The platform asked to slow down; the attempt was not charged.
        RateLimited = "rate_limited",
        /// Failed (5xx, timeout, connection); another attempt follows.
        Retry = "retry",
        /// Refused for good by the platform (4xx).
        Rejected = "rejected",
        /// Failed, and the message's attempts are used up.
        Failed = "failed",
    }
}

/// Logs the start of attempt `attempt` of `message`; returns the row's id.
pub(super) async fn start(
    tx: &mut Tx,
    message: MessageId,
    user: UserId,
    attempt: i64,
    at: Timestamp,
) -> sqlx::Result<i64> {
    let (id,): (i64,) = on_tx!(tx, conn => sqlx::query_as(
        "INSERT INTO delivery_attempts (message_id, user_id, attempt, started_at)
         VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(message)
    .bind(user)
    .bind(attempt)
    .bind(at)
    .fetch_one(&mut **conn)
    .await)?;
    Ok(id)
}

/// Logs how attempt `id` ended.
pub(super) async fn finish(
    tx: &mut Tx,
    id: i64,
    outcome: AttemptOutcome,
    http_status: Option<u16>,
    error: Option<&str>,
    at: Timestamp,
) -> sqlx::Result<()> {
    on_tx!(tx, conn => sqlx::query(
        "UPDATE delivery_attempts SET finished_at = $2, outcome = $3, http_status = $4, error = $5
         WHERE id = $1",
    )
    .bind(id)
    .bind(at)
    .bind(outcome)
    .bind(http_status.map(i32::from))
    .bind(error)
    .execute(&mut **conn)
    .await
    .map(|_| ()))?;
    Ok(())
}

/// Drops the log row of attempt `id`, whose request was never sent (its claim was given
/// back): the platform never saw it, so the limiter must not count it.
pub(super) async fn discard(tx: &mut Tx, id: i64) -> sqlx::Result<()> {
    on_tx!(tx, conn => sqlx::query("DELETE FROM delivery_attempts WHERE id = $1")
        .bind(id)
        .execute(&mut **conn)
        .await
        .map(|_| ()))?;
    Ok(())
}

/// The creator's attempts started since `since`, for seeding the limiter.
pub async fn started_since(
    db: &Db,
    user: UserId,
    since: DateTime<Utc>,
) -> StoreResult<Vec<PastDelivery>> {
    let rows: Vec<(DateTime<Utc>, Option<DateTime<Utc>>)> = on_db!(db, pool => sqlx::query_as(
        "SELECT started_at, finished_at FROM delivery_attempts
         WHERE user_id = $1 AND started_at >= $2 ORDER BY started_at",
    )
    .bind(user)
    .bind(Timestamp(since))
    .fetch_all(pool)
    .await)?;
    Ok(rows
        .into_iter()
        .map(|(started, finished)| PastDelivery { started, finished })
        .collect())
}

/// When the creator's latest attempt started, if any did.
pub async fn last_started(db: &Db, user: UserId) -> StoreResult<Option<DateTime<Utc>>> {
    Ok(last_started_many(db, &[user]).await?.remove(&user))
}

/// [`last_started`] as a query of a larger statement, for the creator `user` (a column or a
/// parameter).
pub fn last_started_sql(user: &str) -> String {
    format!("SELECT MAX(started_at) FROM delivery_attempts WHERE user_id = {user}")
}

/// [`last_started`] for each of `users` that has delivered, in one query.
pub async fn last_started_many(
    db: &Db,
    users: &[UserId],
) -> StoreResult<HashMap<UserId, DateTime<Utc>>> {
    if users.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(UserId, DateTime<Utc>)> = on_db!(db, pool => {
        let mut q = sqlx::QueryBuilder::new(
            "SELECT user_id, MAX(started_at) FROM delivery_attempts WHERE user_id IN (",
        );
        crate::db::push_binds(&mut q, users.iter().copied());
        q.push(") GROUP BY user_id");
        q.build_query_as().fetch_all(pool).await
    })?;
    Ok(rows.into_iter().collect())
}

/// Deletes attempts started before `before` (the limiter reads only the last minute; the rest
/// is history past its retention), in batches until `deadline`. Returns how many went.
pub async fn prune(
    db: &Db,
    before: DateTime<Utc>,
    deadline: std::time::Instant,
) -> StoreResult<u64> {
    let delete = "DELETE FROM delivery_attempts WHERE id IN (
                      SELECT id FROM delivery_attempts WHERE started_at < $1 LIMIT $2)";
    Ok(crate::db::prune_older(db, deadline, before, delete).await?)
}

//! Safe retries: the first answer to a request made with an `Idempotency-Key`, kept per user
//! and key so that a repeat gets that answer again instead of doing the work twice (the IETF
//! draft "The Idempotency-Key HTTP Header Field"; Stripe's behaviour). The only module that
//! writes `idempotency_keys`.
//!
//! A key is claimed before the request runs and answered once it has: a repeat while it runs is
//! told so, a repeat with another request is refused, and a repeat after it is given the kept
//! answer. A claim whose request never answered (its process died) lapses after its lease, and
//! the next repeat runs the request again.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::{
    db::{Db, StoreResult},
    domain::{Timestamp, UserId},
    on_db,
};

/// How long a kept answer is given again; past it the key may be used afresh.
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);

/// An answer kept for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub status: u16,
    /// The headers worth giving again (content type, Retry-After, …), as a JSON object.
    pub headers: String,
    pub body: Vec<u8>,
}

/// What a request with a key should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is this request's: run it, then [`answer`] or [`release`].
    Run,
    /// The first request with this key is still running.
    Running,
    /// The key was used with another request (method, path or body).
    OtherRequest,
    /// The first request's answer, to give again.
    Answered(Kept),
}

#[derive(sqlx::FromRow)]
struct Row {
    fingerprint: String,
    status: Option<i64>,
    headers: Option<String>,
    body: Option<Vec<u8>>,
    locked_until: DateTime<Utc>,
    created_at: DateTime<Utc>,
}

/// Claims `key` of `user` for the request `fingerprint`, for at most `lease` (then it lapses).
pub async fn claim(
    db: &Db,
    user: UserId,
    key: &str,
    fingerprint: &str,
    lease: Duration,
) -> StoreResult<Claim> {
    let now = Timestamp::now();
    let until = Timestamp(now.0 + chrono::TimeDelta::from_std(lease).unwrap_or_default());
    let inserted = on_db!(db, pool => sqlx::query(
        "INSERT INTO idempotency_keys (user_id, key, fingerprint, locked_until, created_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, key) DO NOTHING",
    )
    .bind(user)
    .bind(key)
    .bind(fingerprint)
    .bind(until)
    .bind(now)
    .execute(pool)
    .await
    .map(|r| r.rows_affected()))?;
    if inserted == 1 {
        return Ok(Claim::Run);
    }
    let Some(row) = on_db!(db, pool => sqlx::query_as::<_, Row>(
        "SELECT fingerprint, status, headers, body, locked_until, created_at
         FROM idempotency_keys WHERE user_id = $1 AND key = $2",
    )
    .bind(user)
    .bind(key)
    .fetch_optional(pool)
    .await)?
    else {
        // Pruned between the two statements: claim it afresh.
        return Box::pin(claim(db, user, key, fingerprint, lease)).await;
    };
    let expired =
        row.created_at < now.0 - chrono::TimeDelta::from_std(RETENTION).unwrap_or_default();
    let lapsed = row.status.is_none() && row.locked_until <= now.0;
    if expired || (lapsed && row.fingerprint == fingerprint) {
        // Take the key over, unless another repeat just did.
        let taken = on_db!(db, pool => sqlx::query(
            "UPDATE idempotency_keys SET fingerprint = $3, status = NULL, headers = NULL,
                 body = NULL, locked_until = $4, created_at = $5
             WHERE user_id = $1 AND key = $2 AND created_at = $6 AND locked_until = $7",
        )
        .bind(user)
        .bind(key)
        .bind(fingerprint)
        .bind(until)
        .bind(now)
        .bind(Timestamp(row.created_at))
        .bind(Timestamp(row.locked_until))
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        return Ok(if taken == 1 {
            Claim::Run
        } else {
            Claim::Running
        });
    }
    if row.fingerprint != fingerprint {
        return Ok(Claim::OtherRequest);
    }
    Ok(match row.status {
        None => Claim::Running,
        Some(status) => Claim::Answered(Kept {
            status: u16::try_from(status).unwrap_or(500),
            headers: row.headers.unwrap_or_else(|| "{}".to_owned()),
            body: row.body.unwrap_or_default(),
        }),
    })
}

/// Keeps `answer` for the key this request claimed.
pub async fn answer(db: &Db, user: UserId, key: &str, answer: &Kept) -> StoreResult<()> {
    on_db!(db, pool => sqlx::query(
        "UPDATE idempotency_keys SET status = $3, headers = $4, body = $5
         WHERE user_id = $1 AND key = $2",
    )
    .bind(user)
    .bind(key)
    .bind(i64::from(answer.status))
    .bind(&answer.headers)
    .bind(&answer.body)
    .execute(pool)
    .await
    .map(|_| ()))?;
    Ok(())
}

/// Gives the key back without an answer (the request's outcome is not one to repeat: a server
/// fault, a quota): a repeat runs the request again.
pub async fn release(db: &Db, user: UserId, key: &str) -> StoreResult<()> {
    on_db!(db, pool => sqlx::query(
        "DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND status IS NULL",
    )
    .bind(user)
    .bind(key)
    .execute(pool)
    .await
    .map(|_| ()))?;
    Ok(())
}

/// Deletes keys claimed before `before` (past their retention). Returns how many went.
pub async fn prune(db: &Db, before: DateTime<Utc>) -> StoreResult<u64> {
    Ok(
        on_db!(db, pool => sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
        .bind(Timestamp(before))
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?,
    )
}

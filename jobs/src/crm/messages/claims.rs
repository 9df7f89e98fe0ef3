//! The delivery lifecycle of an outbound message: which creators are due, a dispatcher's claim
//! on the next message (a lease, fenced), how a claim settles (sent, retried, failed), is held
//! or given back.

use chrono::{DateTime, Utc};

use super::{Deliverable, MessageStatus};
use crate::{
    crm::deliveries::{self, AttemptOutcome},
    db::{Db, StoreResult, Tx},
    domain::{MessageId, Timestamp, UserId},
    on_db, on_tx,
    telemetry::{self, FailedBecause},
};

/// Creators with a message to deliver now: in the schedule and due, or `sending` under an
/// expired lease (its dispatcher died). At most `limit`.
pub async fn creators_due(db: &Db, limit: i64) -> StoreResult<Vec<UserId>> {
    let now = Timestamp::now();
    let rows: Vec<(UserId,)> = on_db!(db, pool => sqlx::query_as(
        "SELECT user_id FROM messages
         WHERE status = 'queued' AND ready_at IS NOT NULL
           AND (next_attempt_at IS NULL OR next_attempt_at <= $1)
         UNION
         SELECT user_id FROM messages WHERE status = 'sending' AND lease_until <= $1
         LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await)?;
    Ok(rows.into_iter().map(|(u,)| u).collect())
}

/// When the creator's earliest message in the schedule becomes due, or a lease of theirs
/// expires; `None` when they have nothing left to deliver.
pub async fn next_due(db: &Db, user: UserId) -> StoreResult<Option<DateTime<Utc>>> {
    let (scheduled, leased): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) = on_db!(db, pool => sqlx::query_as(
        "SELECT
           (SELECT MIN(COALESCE(next_attempt_at, ready_at)) FROM messages
             WHERE user_id = $1 AND status = 'queued' AND ready_at IS NOT NULL),
           (SELECT MIN(lease_until) FROM messages WHERE user_id = $1 AND status = 'sending')",
    )
    .bind(user)
    .fetch_one(pool)
    .await)?;
    Ok(match (scheduled, leased) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

/// A message taken for one delivery attempt.
#[derive(Debug, Clone)]
pub struct Claim {
    pub message: Deliverable,
    /// The attempt's number; the outcome is recorded only if no one took the message over.
    pub attempt: i64,
    attempt_id: i64,
    /// When the API accepted the message (the delivery latency starts there).
    accepted_at: DateTime<Utc>,
}

/// Schedule → `sending`: takes the creator's next message for one attempt, held until
/// `lease_until`: one whose dispatcher died first; then by lane (one-to-one messages, then
/// automations, then campaigns), within a lane the highest priority, then the earliest turn
/// (campaigns sending at once alternate), then the oldest.
/// The attempt is logged in the same transaction. `None` when nothing is due.
pub async fn claim_next(
    db: &Db,
    user: UserId,
    lease_until: DateTime<Utc>,
) -> StoreResult<Option<Claim>> {
    let now = Timestamp::now();
    let lease = Timestamp(lease_until);
    use sqlx::{FromRow, Row};
    let row = match db {
        // One statement (one round trip on the dispatcher's hot path): skip rows another
        // dispatcher is taking, take the message, log the attempt.
        Db::Postgres(pool) => sqlx::query(
            "WITH pick AS (
                 SELECT COALESCE(
                     (SELECT id FROM messages
                       WHERE user_id = $1 AND status = 'sending' AND lease_until <= $2
                       LIMIT 1 FOR UPDATE SKIP LOCKED),
                     (SELECT id FROM messages
                       WHERE user_id = $1 AND status = 'queued' AND ready_at IS NOT NULL
                         AND (next_attempt_at IS NULL OR next_attempt_at <= $2)
                       ORDER BY lane, priority DESC, turn, created_at, id
                       LIMIT 1 FOR UPDATE SKIP LOCKED)
                 ) AS id
             ), taken AS (
                 UPDATE messages SET status = 'sending', attempts = attempts + 1,
                     lease_until = $3, next_attempt_at = NULL
                 FROM pick WHERE messages.id = pick.id
                 RETURNING messages.id, messages.user_id, messages.fan_id, messages.text,
                     messages.attachments, messages.priority, messages.campaign_id,
                     messages.attempts, messages.key_generation, messages.created_at
             ), logged AS (
                 INSERT INTO delivery_attempts (message_id, user_id, attempt, started_at)
                 SELECT id, user_id, attempts, $2 FROM taken RETURNING id
             )
             SELECT taken.*, logged.id AS attempt_id FROM taken, logged",
        )
        .bind(user)
        .bind(now)
        .bind(lease)
        .fetch_optional(pool)
        .await?
        .map(|row| -> sqlx::Result<Claim> {
            Ok(Claim {
                message: Deliverable::from_row(&row)?,
                attempt: row.try_get("attempts")?,
                attempt_id: row.try_get("attempt_id")?,
                accepted_at: row.try_get("created_at")?,
            })
        })
        .transpose()?,
        // The transaction holds the write lock (Db::begin): one dispatcher claims at a time.
        Db::Sqlite(_) => {
            let mut tx = db.begin().await?;
            let Tx::Sqlite(conn) = &mut tx else {
                unreachable!("an SQLite transaction")
            };
            let mut id: Option<(MessageId,)> = None;
            for sql in [
                "SELECT id FROM messages WHERE user_id = $1 AND status = 'sending' AND lease_until <= $2
                 LIMIT 1",
                "SELECT id FROM messages WHERE user_id = $1 AND status = 'queued' AND ready_at IS NOT NULL
                   AND (next_attempt_at IS NULL OR next_attempt_at <= $2)
                 ORDER BY lane, priority DESC, turn, created_at, id LIMIT 1",
            ] {
                id = sqlx::query_as(sql)
                    .bind(user)
                    .bind(now)
                    .fetch_optional(&mut **conn)
                    .await?;
                if id.is_some() {
                    break;
                }
            }
            let Some((id,)) = id else {
                return Ok(None);
            };
            let row = sqlx::query(
                "UPDATE messages SET status = 'sending', attempts = attempts + 1, lease_until = $2,
                     next_attempt_at = NULL
                 WHERE id = $1
                 RETURNING id, user_id, fan_id, text, attachments, priority, campaign_id, attempts,
                     key_generation, created_at",
            )
            .bind(id)
            .bind(lease)
            .fetch_one(&mut **conn)
            .await?;
            let message = Deliverable::from_row(&row)?;
            let attempt: i64 = row.try_get("attempts")?;
            let accepted_at = row.try_get("created_at")?;
            let attempt_id = deliveries::start(&mut tx, id, user, attempt, now).await?;
            tx.commit().await?;
            Some(Claim {
                message,
                attempt,
                attempt_id,
                accepted_at,
            })
        }
    };
    Ok(row)
}

/// How the attempt of a [`Claim`] ended, as it is recorded.
#[derive(Debug, Clone)]
pub enum Settled<'a> {
    /// `sending` → `sent`, with the platform's id of the message when it gave one.
    Delivered {
        http_status: u16,
        platform_id: Option<&'a str>,
    },
    /// `sending` → back in the schedule, the attempt not charged (the platform said to wait).
    RateLimited { http_status: u16 },
    /// `sending` → back in the schedule, not before `next_attempt_at`.
    Retry {
        http_status: Option<u16>,
        reason: &'a str,
        next_attempt_at: DateTime<Utc>,
    },
    /// `sending` → `failed`: refused by the platform (`Rejected`) or out of attempts.
    Failed {
        outcome: AttemptOutcome,
        http_status: Option<u16>,
        reason: &'a str,
    },
}

/// The message's side of [`settle`], one statement for every outcome: `$3` the new status,
/// `$4` the time, `$5` 1 when the attempt is given back (not charged), `$6` whether the error
/// is rewritten with `$7`, `$8` the next attempt's earliest time, `$9` the platform's id of a
/// delivered message. Only the attempt that holds
/// the message (`attempts = $2`) moves it.
const SETTLE_MESSAGE: &str = "UPDATE messages SET
        status = $3,
        sent_at = CASE WHEN $3 = 'sent' THEN $4 ELSE sent_at END,
        failed_at = CASE WHEN $3 = 'failed' THEN $4 ELSE failed_at END,
        attempts = attempts - $5,
        lease_until = NULL,
        error = CASE WHEN $6 THEN $7 ELSE error END,
        next_attempt_at = $8,
        external_id = COALESCE($9, external_id)
    WHERE id = $1 AND status = 'sending' AND attempts = $2";

/// Records how a claimed attempt ended, with its log row, atomically. `false` when the message
/// was taken over meanwhile (its lease expired and another attempt claimed it): that attempt
/// records its own outcome.
pub async fn settle(db: &Db, claim: &Claim, settled: Settled<'_>) -> StoreResult<bool> {
    let now = Timestamp::now();
    let platform_id = match settled {
        Settled::Delivered { platform_id, .. } => platform_id,
        _ => None,
    };
    let (status, uncharge, error, next, outcome, http_status) = match settled {
        Settled::Delivered { http_status, .. } => (
            MessageStatus::Sent,
            0,
            Some(None),
            None,
            AttemptOutcome::Delivered,
            Some(http_status),
        ),
        Settled::RateLimited { http_status } => (
            MessageStatus::Queued,
            1,
            None,
            None,
            AttemptOutcome::RateLimited,
            Some(http_status),
        ),
        Settled::Retry {
            http_status,
            reason,
            next_attempt_at,
        } => (
            MessageStatus::Queued,
            0,
            Some(Some(reason)),
            Some(Timestamp(next_attempt_at)),
            AttemptOutcome::Retry,
            http_status,
        ),
        Settled::Failed {
            outcome,
            http_status,
            reason,
        } => (
            MessageStatus::Failed,
            0,
            Some(Some(reason)),
            None,
            outcome,
            http_status,
        ),
    };
    let logged_error = error.flatten();
    let (id, attempt) = (claim.message.id, claim.attempt);
    macro_rules! bind_message {
        ($q:expr) => {
            $q.bind(id)
                .bind(attempt)
                .bind(status)
                .bind(now)
                .bind(uncharge)
                .bind(error.is_some())
                .bind(logged_error)
                .bind(next)
                .bind(platform_id)
        };
    }
    let moved = match db {
        // One statement: the message and its attempt's log row.
        Db::Postgres(pool) => {
            let sql = format!(
                "WITH moved AS ({SETTLE_MESSAGE} RETURNING id), logged AS (
                     UPDATE delivery_attempts SET finished_at = $4, outcome = $10,
                         http_status = $11, error = $12
                     WHERE id = $13 RETURNING id
                 )
                 SELECT (SELECT COUNT(*) FROM moved), (SELECT COUNT(*) FROM logged)"
            );
            let (moved, _logged): (i64, i64) =
                bind_message!(sqlx::query_as(sqlx::AssertSqlSafe(sql)))
                    .bind(outcome)
                    .bind(http_status.map(i32::from))
                    .bind(logged_error)
                    .bind(claim.attempt_id)
                    .fetch_one(pool)
                    .await?;
            moved as u64
        }
        Db::Sqlite(_) => {
            let mut tx = db.begin().await?;
            let moved = on_tx!(&mut tx, conn => bind_message!(sqlx::query(SETTLE_MESSAGE))
                .execute(&mut **conn)
                .await
                .map(|r| r.rows_affected()))?;
            deliveries::finish(
                &mut tx,
                claim.attempt_id,
                outcome,
                http_status,
                logged_error,
                now,
            )
            .await?;
            tx.commit().await?;
            moved
        }
    };
    if moved == 1 {
        match status {
            MessageStatus::Sent => {
                telemetry::message_sent((now.0 - claim.accepted_at).to_std().unwrap_or_default())
            }
            MessageStatus::Failed if outcome == AttemptOutcome::Rejected => {
                telemetry::messages_failed(FailedBecause::Rejected, 1)
            }
            MessageStatus::Failed => {
                telemetry::messages_failed(FailedBecause::AttemptsExhausted, 1)
            }
            _ => {}
        }
    }
    Ok(moved == 1)
}

/// Whether the claim still holds for a request that may take until `until`: the message is
/// still `sending` under this attempt (no other dispatcher took it over) and its lease runs
/// past `until`, so no one can take it over while the request is out. Asked right before the
/// request; one read, by primary key.
pub async fn holds(db: &Db, claim: &Claim, until: DateTime<Utc>) -> StoreResult<bool> {
    let (held,): (i64,) = on_db!(db, pool => sqlx::query_as(
        "SELECT COUNT(*) FROM messages
         WHERE id = $1 AND status = 'sending' AND attempts = $2 AND lease_until > $3",
    )
    .bind(claim.message.id)
    .bind(claim.attempt)
    .bind(Timestamp(until))
    .fetch_one(pool)
    .await)?;
    Ok(held == 1)
}

/// `sending` → back in the schedule, due at once, for a claim whose request was never sent
/// (it no longer held, or its slot did not): the attempt is not charged and its log row goes,
/// since the platform never saw it. Fenced like [`settle`]: `false` (the message left as it
/// is) when another attempt holds it now. The log row goes either way.
pub async fn give_back(db: &Db, claim: &Claim) -> StoreResult<bool> {
    const GIVE_BACK: &str = "UPDATE messages SET status = 'queued', attempts = attempts - 1,
            lease_until = NULL, next_attempt_at = NULL
        WHERE id = $1 AND status = 'sending' AND attempts = $2";
    let (id, attempt) = (claim.message.id, claim.attempt);
    let moved = match db {
        Db::Postgres(pool) => {
            let sql = format!(
                "WITH moved AS ({GIVE_BACK} RETURNING id), dropped AS (
                     DELETE FROM delivery_attempts WHERE id = $3 RETURNING id
                 )
                 SELECT (SELECT COUNT(*) FROM moved), (SELECT COUNT(*) FROM dropped)"
            );
            let (moved, _dropped): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .bind(attempt)
                .bind(claim.attempt_id)
                .fetch_one(pool)
                .await?;
            moved as u64
        }
        Db::Sqlite(_) => {
            let mut tx = db.begin().await?;
            let moved = on_tx!(&mut tx, conn => sqlx::query(GIVE_BACK)
                .bind(id)
                .bind(attempt)
                .execute(&mut **conn)
                .await
                .map(|r| r.rows_affected()))?;
            deliveries::discard(&mut tx, claim.attempt_id).await?;
            tx.commit().await?;
            moved
        }
    };
    Ok(moved == 1)
}

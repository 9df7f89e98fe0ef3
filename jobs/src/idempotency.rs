//! Safe retries: the outcome of a request made with an `Idempotency-Key`, kept per user and
//! key so that a repeat gets that outcome again instead of doing the work twice (the IETF
//! draft "The Idempotency-Key HTTP Header Field"; Stripe's keys, which move with each atomic
//! phase). The only module that writes `idempotency_keys`.
//!
//! A key is claimed before the request runs, under a fresh attempt token ([`Guard`]). A
//! request that writes records its write ([`Effect`]) on the key **in the same transaction as
//! the write** ([`record`]), fenced on its token; its answer is kept afterwards ([`answer`]).
//! So a repeat after a crash anywhere finds one of three things:
//! - the kept answer: it is given again;
//! - a committed write without an answer (the process died between the commit and the
//!   answer): once the claim's lease lapses, the repeat answers for that write
//!   ([`Claim::Committed`]), naming the same message, campaign or job a first answer would
//!   have named (before that it is told the first attempt still runs, as for any repeat);
//! - nothing committed: once the claim's lease lapses, the repeat takes the key over under a
//!   new token and runs the request. The first attempt, if it is still alive, can then no
//!   longer record its write ([`RecordError::Superseded`]) and its transaction rolls back.
//!
//! Never both: the write and its record on the key commit together or not at all.

use std::{fmt, str::FromStr, time::Duration};

use chrono::{DateTime, Utc};

use crate::{
    db::{Db, StoreResult, Tx},
    domain::{
        AutomationId, CampaignId, FanId, MessageId, SegmentId, Timestamp, UnknownValue, UserId,
    },
    engine::JobId,
    on_db, on_tx,
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

/// The key a request holds while it runs: what its write is recorded under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    pub user: UserId,
    pub key: String,
    /// This attempt's token: a repeat that takes the key over gets another.
    token: String,
}

/// The one write a keyed request made, recorded on its key in the write's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A message stored (a send, a reply, an inbound message).
    Message(MessageId),
    /// A campaign created with its messages.
    Campaign(CampaignId),
    /// A job stored (an import).
    Job(JobId),
    /// A fan created.
    Fan(FanId),
    /// A segment saved.
    Segment(SegmentId),
    /// An automation created.
    Automation(AutomationId),
}

impl Effect {
    pub fn message(&self) -> Option<MessageId> {
        match self {
            Effect::Message(id) => Some(*id),
            _ => None,
        }
    }

    pub fn campaign(&self) -> Option<CampaignId> {
        match self {
            Effect::Campaign(id) => Some(*id),
            _ => None,
        }
    }

    pub fn job(&self) -> Option<JobId> {
        match self {
            Effect::Job(id) => Some(id.clone()),
            _ => None,
        }
    }

    pub fn fan(&self) -> Option<FanId> {
        match self {
            Effect::Fan(id) => Some(*id),
            _ => None,
        }
    }

    pub fn segment(&self) -> Option<SegmentId> {
        match self {
            Effect::Segment(id) => Some(*id),
            _ => None,
        }
    }

    pub fn automation(&self) -> Option<AutomationId> {
        match self {
            Effect::Automation(id) => Some(*id),
            _ => None,
        }
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Effect::Message(id) => write!(f, "message:{}", id.0),
            Effect::Campaign(id) => write!(f, "campaign:{}", id.0),
            Effect::Job(id) => write!(f, "job:{id}"),
            Effect::Fan(id) => write!(f, "fan:{}", id.0),
            Effect::Segment(id) => write!(f, "segment:{}", id.0),
            Effect::Automation(id) => write!(f, "automation:{}", id.0),
        }
    }
}

impl FromStr for Effect {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownValue {
            what: "idempotency effect",
            value: s.to_owned(),
            expected: "message:<id>, campaign:<id>, job:<id>, fan:<id> or segment:<id>".to_owned(),
        };
        let (kind, id) = s.split_once(':').ok_or_else(unknown)?;
        let number = || id.parse::<i64>().map_err(|_| unknown());
        Ok(match kind {
            "message" => Effect::Message(MessageId(number()?)),
            "campaign" => Effect::Campaign(CampaignId(number()?)),
            "fan" => Effect::Fan(FanId(number()?)),
            "segment" => Effect::Segment(SegmentId(number()?)),
            "automation" => Effect::Automation(AutomationId(number()?)),
            "job" => Effect::Job(JobId::parse(id).ok_or_else(unknown)?),
            _ => return Err(unknown()),
        })
    }
}

/// What a request with a key should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is this request's: run it (recording its write with the guard), then
    /// [`answer`] or [`release`].
    Run(Guard),
    /// An earlier attempt committed this write but its answer was not kept within its lease
    /// (its process died): answer for it, without writing again, then [`answer`].
    Committed(Guard, Effect),
    /// The first request with this key is still running.
    Running,
    /// The key was used with another request (method, path or body).
    OtherRequest,
    /// The first request's answer, to give again.
    Answered(Kept),
}

/// Why a write could not be recorded on its key.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A repeat took the key over after this attempt's lease lapsed, or already recorded a
    /// write: this attempt must not write.
    #[error("a newer attempt of this request holds its Idempotency-Key")]
    Superseded,
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

impl From<RecordError> for crate::db::StoreError {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::Superseded => crate::db::StoreError::Conflict(e.to_string()),
            RecordError::Sql(e) => crate::db::StoreError::Sql(e),
        }
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    fingerprint: String,
    status: Option<i64>,
    headers: Option<String>,
    body: Option<Vec<u8>>,
    token: String,
    effect: Option<String>,
    locked_until: DateTime<Utc>,
    created_at: DateTime<Utc>,
}

fn new_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Claims `key` of `user` for the request `fingerprint`; a claim with nothing committed may be
/// taken over by a repeat after `lease`.
pub async fn claim(
    db: &Db,
    user: UserId,
    key: &str,
    fingerprint: &str,
    lease: Duration,
) -> StoreResult<Claim> {
    let now = Timestamp::now();
    let until = Timestamp(now.0 + chrono::TimeDelta::from_std(lease).unwrap_or_default());
    let guard = |token: String| Guard {
        user,
        key: key.to_owned(),
        token,
    };
    let token = new_token();
    let inserted = on_db!(db, pool => sqlx::query(
        "INSERT INTO idempotency_keys (user_id, key, fingerprint, token, locked_until, created_at)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (user_id, key) DO NOTHING",
    )
    .bind(user)
    .bind(key)
    .bind(fingerprint)
    .bind(&token)
    .bind(until)
    .bind(now)
    .execute(pool)
    .await
    .map(|r| r.rows_affected()))?;
    if inserted == 1 {
        return Ok(Claim::Run(guard(token)));
    }
    let Some(row) = on_db!(db, pool => sqlx::query_as::<_, Row>(
        "SELECT fingerprint, status, headers, body, token, effect, locked_until, created_at
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
    let lapsed = row.status.is_none() && row.effect.is_none() && row.locked_until <= now.0;
    if expired || (lapsed && row.fingerprint == fingerprint) {
        // Take the key over under a new token, unless another attempt just recorded its write
        // or took it over itself.
        let taken = on_db!(db, pool => sqlx::query(
            "UPDATE idempotency_keys SET fingerprint = $3, status = NULL, headers = NULL,
                 body = NULL, effect = NULL, token = $4, locked_until = $5, created_at = $6
             WHERE user_id = $1 AND key = $2 AND token = $7
               AND (created_at < $8 OR (status IS NULL AND effect IS NULL))",
        )
        .bind(user)
        .bind(key)
        .bind(fingerprint)
        .bind(&token)
        .bind(until)
        .bind(now)
        .bind(&row.token)
        .bind(Timestamp(
            now.0 - chrono::TimeDelta::from_std(RETENTION).unwrap_or_default(),
        ))
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        if taken == 1 {
            return Ok(Claim::Run(guard(token)));
        }
        // Someone else moved first: see what they left.
        return Box::pin(claim(db, user, key, fingerprint, lease)).await;
    }
    if row.fingerprint != fingerprint {
        return Ok(Claim::OtherRequest);
    }
    if let Some(status) = row.status {
        return Ok(Claim::Answered(Kept {
            status: u16::try_from(status).unwrap_or(500),
            headers: row.headers.unwrap_or_else(|| "{}".to_owned()),
            body: row.body.unwrap_or_default(),
        }));
    }
    Ok(match row.effect {
        // Committed, but the first attempt may still be answering: as for any running
        // request, a repeat waits for its answer until its lease lapses.
        Some(_) if row.locked_until > now.0 => Claim::Running,
        Some(effect) => Claim::Committed(
            guard(row.token),
            effect
                .parse()
                .map_err(|e: UnknownValue| crate::db::StoreError::Conflict(e.to_string()))?,
        ),
        None => Claim::Running,
    })
}

/// Records `effect` as the write of the request holding `guard`, in `tx`, the transaction of
/// the write itself. `Err(Superseded)` when the key is no longer this attempt's: the caller
/// must roll the write back.
pub async fn record(tx: &mut Tx, guard: &Guard, effect: &Effect) -> Result<(), RecordError> {
    let recorded = on_tx!(tx, conn => sqlx::query(
        "UPDATE idempotency_keys SET effect = $4
         WHERE user_id = $1 AND key = $2 AND token = $3 AND effect IS NULL AND status IS NULL",
    )
    .bind(guard.user)
    .bind(&guard.key)
    .bind(&guard.token)
    .bind(effect.to_string())
    .execute(&mut **conn)
    .await?
    .rows_affected());
    if recorded == 1 {
        Ok(())
    } else {
        Err(RecordError::Superseded)
    }
}

/// [`record`] for several requests at once (sends stored together), in one statement on
/// PostgreSQL. `Err(Superseded)` if any key is no longer its attempt's.
pub async fn record_many(tx: &mut Tx, writes: &[(&Guard, Effect)]) -> Result<(), RecordError> {
    match tx {
        Tx::Postgres(conn) if writes.len() > 1 => {
            let recorded = sqlx::query(
                "UPDATE idempotency_keys k SET effect = v.effect
                 FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[])
                      AS v(user_id, key, token, effect)
                 WHERE k.user_id = v.user_id AND k.key = v.key AND k.token = v.token
                   AND k.effect IS NULL AND k.status IS NULL",
            )
            .bind(writes.iter().map(|(g, _)| g.user.0).collect::<Vec<i64>>())
            .bind(
                writes
                    .iter()
                    .map(|(g, _)| g.key.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                writes
                    .iter()
                    .map(|(g, _)| g.token.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                writes
                    .iter()
                    .map(|(_, e)| e.to_string())
                    .collect::<Vec<_>>(),
            )
            .execute(&mut **conn)
            .await?
            .rows_affected();
            if recorded == writes.len() as u64 {
                Ok(())
            } else {
                Err(RecordError::Superseded)
            }
        }
        _ => {
            for (guard, effect) in writes {
                record(tx, guard, effect).await?;
            }
            Ok(())
        }
    }
}

/// Keeps `answer` for the key `guard` holds (unless a newer attempt took it over).
pub async fn answer(db: &Db, guard: &Guard, answer: &Kept) -> StoreResult<()> {
    on_db!(db, pool => sqlx::query(
        "UPDATE idempotency_keys SET status = $4, headers = $5, body = $6
         WHERE user_id = $1 AND key = $2 AND token = $3",
    )
    .bind(guard.user)
    .bind(&guard.key)
    .bind(&guard.token)
    .bind(i64::from(answer.status))
    .bind(&answer.headers)
    .bind(&answer.body)
    .execute(pool)
    .await
    .map(|_| ()))?;
    Ok(())
}

/// Gives the key back without an answer (the request's outcome is not one to repeat: a server
/// fault, a quota): a repeat runs the request again. A key whose write was recorded stays.
pub async fn release(db: &Db, guard: &Guard) -> StoreResult<()> {
    on_db!(db, pool => sqlx::query(
        "DELETE FROM idempotency_keys
         WHERE user_id = $1 AND key = $2 AND token = $3 AND status IS NULL AND effect IS NULL",
    )
    .bind(guard.user)
    .bind(&guard.key)
    .bind(&guard.token)
    .execute(pool)
    .await
    .map(|_| ()))?;
    Ok(())
}

/// Deletes keys claimed before `before` (past their retention), in batches until `deadline`.
/// Returns how many went.
pub async fn prune(
    db: &Db,
    before: DateTime<Utc>,
    deadline: std::time::Instant,
) -> StoreResult<u64> {
    let delete = "DELETE FROM idempotency_keys WHERE (user_id, key) IN (
                      SELECT user_id, key FROM idempotency_keys WHERE created_at < $1 LIMIT $2)";
    Ok(crate::db::prune_older(db, deadline, before, delete).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_effect_reads_back_as_written() {
        for effect in [
            Effect::Message(MessageId(42)),
            Effect::Campaign(CampaignId(7)),
            Effect::Fan(FanId(3)),
            Effect::Automation(AutomationId(5)),
            Effect::Job(JobId::generate()),
        ] {
            assert_eq!(effect.to_string().parse::<Effect>().unwrap(), effect);
        }
        for bad in ["", "message", "message:x", "planet:1", "job:"] {
            assert!(bad.parse::<Effect>().is_err(), "{bad}");
        }
    }
}

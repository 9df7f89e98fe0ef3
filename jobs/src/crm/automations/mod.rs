//! Automations: a trigger, then steps (waits, sends, conditions) that each enrolled fan goes
//! through. The only module that writes `automations` and `automation_versions`; the
//! enrollments and the steps they went through are [`enrollments`]'.
//!
//! An edit stores a new version of the definition: running enrollments keep the version they
//! started with, new ones take the latest.

pub mod definition;
pub mod enrollments;
pub mod report;
pub mod triggers;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::types::Json;

pub use self::definition::{Audience, Definition, Step, Trigger};
use crate::{
    db::{Db, Listed, Page, StoreError, StoreResult, Tx},
    domain::{AutomationId, FanId, Line, Timestamp, UserId},
    idempotency::{self, Effect, Guard},
    on_db, on_tx, text_enum,
};

pub const NAME_MAX: usize = 200;

text_enum! {
    /// What a send over the daily cap (`MAX_AUTOMATED_PER_FAN_PER_DAY`) does.
    pub enum CapAction as "daily cap action" {
        /// It is skipped (counted `capped`) and the enrollment goes on.
        Skip = "skip",
        /// It waits for the next day (UTC).
        Wait = "wait",
    }
}

/// The creator-wide limit on automated and campaign messages to one fan a (UTC) day
/// (`MAX_AUTOMATED_PER_FAN_PER_DAY`): the automation clock holds or skips a send over it, a
/// campaign's feed excludes the fan (`daily_cap`).
#[derive(Debug, Clone, Copy)]
pub struct DailyCap {
    /// At most this many a day; 0: no cap.
    pub per_fan: u32,
    /// What an automation's send over the cap does.
    pub action: CapAction,
}

/// The daily cap's locks on PostgreSQL: one per bucket of fans, so that a transaction holds
/// at most this many whatever its number of fans (the server's lock table is shared and small).
const CAP_BUCKETS: i64 = 1_024;

/// The statement that takes the cap's locks of `$1`'s fans (in the array's order; `$2` buckets):
/// `try_` without waiting, returning the fans it holds.
fn cap_lock_sql(try_: bool) -> &'static str {
    if try_ {
        "SELECT f FROM unnest($1::bigint[]) AS f
         WHERE pg_try_advisory_xact_lock(hashtext('fanqueue: daily cap'), (f % $2)::int4)"
    } else {
        "SELECT f FROM unnest($1::bigint[]) AS f,
             LATERAL (SELECT pg_advisory_xact_lock(hashtext('fanqueue: daily cap'), (f % $2)::int4)) l"
    }
}

impl DailyCap {
    /// The start of `now`'s day, since which the cap counts.
    pub fn day_start(now: Timestamp) -> Timestamp {
        Timestamp(
            now.0
                .date_naive()
                .and_time(chrono::NaiveTime::MIN)
                .and_utc(),
        )
    }

    /// Takes, until `tx` ends, the cap's lock of each of `fans` that no other transaction
    /// holds, without waiting; returns the fans it holds. Whoever counts a fan's messages of
    /// the day and then sends holds it, so two schedulers (or a scheduler and a campaign's
    /// feed) never both count before either sends. On SQLite, one writer at a time: every fan.
    pub async fn try_hold(tx: &mut Tx, fans: &[FanId]) -> sqlx::Result<Vec<FanId>> {
        Self::locks(tx, fans, true).await
    }

    /// Like [`Self::try_hold`], waiting for each lock. The locks are taken in bucket order, so
    /// two waiting holders never wait for each other in a circle (a `try_hold` never waits).
    pub async fn hold(tx: &mut Tx, fans: &[FanId]) -> sqlx::Result<()> {
        Self::locks(tx, fans, false).await.map(|_| ())
    }

    async fn locks(tx: &mut Tx, fans: &[FanId], try_: bool) -> sqlx::Result<Vec<FanId>> {
        let Tx::Postgres(conn) = tx else {
            return Ok(fans.to_vec());
        };
        let mut ids: Vec<i64> = fans.iter().map(|f| f.0).collect();
        ids.sort_unstable_by_key(|f| (f.rem_euclid(CAP_BUCKETS), *f));
        ids.dedup();
        let held: Vec<(FanId,)> = sqlx::query_as(cap_lock_sql(try_))
            .bind(ids)
            .bind(CAP_BUCKETS)
            .fetch_all(&mut **conn)
            .await?;
        Ok(held.into_iter().map(|(f,)| f).collect())
    }
}

text_enum! {
    pub enum AutomationStatus as "automation status" {
        /// Triggers enroll fans and enrollments go on.
        Active = "active",
        /// Nothing new is enrolled and running enrollments wait where they are.
        Paused = "paused",
    }
}

/// An automation as stored, with its current version's definition.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Automation {
    pub id: AutomationId,
    pub user_id: UserId,
    pub name: String,
    pub status: AutomationStatus,
    pub trigger_type: String,
    pub version: i32,
    pub checked_on: Option<NaiveDate>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub definition: Json<Definition>,
}

/// The automation with its current definition (deleted ones are not found).
const SELECT: &str = "SELECT a.id, a.user_id, a.name, a.status, a.trigger_type, a.version,
        a.checked_on, a.created_at, a.updated_at, v.definition
    FROM automations a
    JOIN automation_versions v ON v.automation_id = a.id AND v.version = a.version
    WHERE a.deleted_at IS NULL";

/// Stores an automation (`active`) and its first version; a keyed request records it on its
/// key in the same transaction.
pub async fn create(
    db: &Db,
    user: UserId,
    name: Line,
    definition: Definition,
    key: Option<&Guard>,
) -> StoreResult<Automation> {
    let now = Timestamp::now();
    let mut tx = db.begin().await?;
    let (id,): (AutomationId,) = on_tx!(&mut tx, conn => sqlx::query_as(
        "INSERT INTO automations (user_id, name, status, trigger_type, version, created_at,
                                  updated_at)
         VALUES ($1, $2, 'active', $3, 1, $4, $4) RETURNING id",
    )
    .bind(user)
    .bind(name.as_str())
    .bind(definition.trigger.word())
    .bind(now)
    .fetch_one(&mut **conn)
    .await)?;
    add_version(&mut tx, id, 1, &definition, now).await?;
    if let Some(key) = key {
        idempotency::record(&mut tx, key, &Effect::Automation(id)).await?;
    }
    let stored = get_in(&mut tx, user, id).await?;
    tx.commit().await?;
    Ok(stored)
}

async fn add_version(
    tx: &mut Tx,
    id: AutomationId,
    version: i32,
    definition: &Definition,
    now: Timestamp,
) -> sqlx::Result<()> {
    on_tx!(tx, conn => sqlx::query(
        "INSERT INTO automation_versions (automation_id, version, definition, created_at)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(id)
    .bind(version)
    .bind(Json(definition))
    .bind(now)
    .execute(&mut **conn)
    .await
    .map(|_| ()))
}

pub async fn get(db: &Db, user: UserId, id: AutomationId) -> StoreResult<Automation> {
    on_db!(db, pool => sqlx::query_as::<_, Automation>(sqlx::AssertSqlSafe(format!(
        "{SELECT} AND a.id = $1 AND a.user_id = $2"
    )))
    .bind(id)
    .bind(user)
    .fetch_optional(pool)
    .await)?
    .ok_or(StoreError::NotFound("automation"))
}

async fn get_in(tx: &mut Tx, user: UserId, id: AutomationId) -> StoreResult<Automation> {
    on_tx!(tx, conn => sqlx::query_as::<_, Automation>(sqlx::AssertSqlSafe(format!(
        "{SELECT} AND a.id = $1 AND a.user_id = $2"
    )))
    .bind(id)
    .bind(user)
    .fetch_optional(&mut **conn)
    .await)?
    .ok_or(StoreError::NotFound("automation"))
}

/// One page of `user`'s automations, newest first.
pub async fn list(db: &Db, user: UserId, page: Page) -> StoreResult<Listed<Automation>> {
    on_db!(db, pool => {
        let items = sqlx::query_as::<_, Automation>(sqlx::AssertSqlSafe(format!(
            "{SELECT} AND a.user_id = $1 ORDER BY a.id DESC LIMIT $2 OFFSET $3"
        )))
        .bind(user)
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(pool)
        .await?;
        let (total,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM automations WHERE user_id = $1 AND deleted_at IS NULL",
        )
        .bind(user)
        .fetch_one(pool)
        .await?;
        Ok(Listed { items, total })
    })
}

/// Renames the automation and/or stores a new version of its definition (`None` leaves each
/// as it is). Running enrollments keep their version.
pub async fn update(
    db: &Db,
    user: UserId,
    id: AutomationId,
    name: Option<Line>,
    definition: Option<Definition>,
) -> StoreResult<Automation> {
    let now = Timestamp::now();
    let mut tx = db.begin().await?;
    let current = lock(&mut tx, user, id).await?;
    let version = match &definition {
        Some(d) => {
            let next = current.version + 1;
            add_version(&mut tx, id, next, d, now).await?;
            next
        }
        None => current.version,
    };
    on_tx!(&mut tx, conn => sqlx::query(
        "UPDATE automations SET name = COALESCE($2, name), version = $3,
             trigger_type = COALESCE($4, trigger_type), updated_at = $5
         WHERE id = $1",
    )
    .bind(id)
    .bind(name.as_ref().map(Line::as_str))
    .bind(version)
    .bind(definition.as_ref().map(|d| d.trigger.word()))
    .bind(now)
    .execute(&mut **conn)
    .await
    .map(|_| ()))?;
    let stored = get_in(&mut tx, user, id).await?;
    tx.commit().await?;
    Ok(stored)
}

/// The automation's row, locked until `tx` ends (on SQLite the transaction holds the write
/// lock already): edits, pause and resume and the daily checks take turns.
async fn lock(tx: &mut Tx, user: UserId, id: AutomationId) -> StoreResult<Automation> {
    let sql = match tx {
        Tx::Postgres(_) => format!("{SELECT} AND a.id = $1 AND a.user_id = $2 FOR UPDATE OF a"),
        Tx::Sqlite(_) => format!("{SELECT} AND a.id = $1 AND a.user_id = $2"),
    };
    on_tx!(tx, conn => sqlx::query_as::<_, Automation>(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(user)
        .fetch_optional(&mut **conn)
        .await)?
    .ok_or(StoreError::NotFound("automation"))
}

/// Pauses or resumes; the same state again changes nothing.
pub async fn set_status(
    db: &Db,
    user: UserId,
    id: AutomationId,
    status: AutomationStatus,
) -> StoreResult<Automation> {
    let mut tx = db.begin().await?;
    let current = lock(&mut tx, user, id).await?;
    if current.status != status {
        on_tx!(&mut tx, conn => sqlx::query(
            "UPDATE automations SET status = $2, updated_at = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(status)
        .bind(Timestamp::now())
        .execute(&mut **conn)
        .await
        .map(|_| ()))?;
    }
    let stored = get_in(&mut tx, user, id).await?;
    tx.commit().await?;
    Ok(stored)
}

/// Deletes the automation: it is no longer found, and its running enrollments end
/// (`exited: deleted`). Its enrollments, steps and messages stay (the fans' timelines and the
/// revenue they brought keep them).
pub async fn delete(db: &Db, user: UserId, id: AutomationId) -> StoreResult<()> {
    let now = Timestamp::now();
    let mut tx = db.begin().await?;
    lock(&mut tx, user, id).await?;
    on_tx!(&mut tx, conn => sqlx::query(
        "UPDATE automations SET deleted_at = $2, updated_at = $2 WHERE id = $1",
    )
    .bind(id)
    .bind(now)
    .execute(&mut **conn)
    .await
    .map(|_| ()))?;
    enrollments::end_all(&mut tx, id, "deleted", now).await?;
    tx.commit().await?;
    Ok(())
}

/// `user`'s active automations a trigger of this type may fire, with their current
/// definitions (what an event or a check enrolls fans into).
pub async fn armed(tx: &mut Tx, user: UserId, trigger: &str) -> sqlx::Result<Vec<Automation>> {
    on_tx!(tx, conn => sqlx::query_as::<_, Automation>(sqlx::AssertSqlSafe(format!(
        "{SELECT} AND a.user_id = $1 AND a.trigger_type = $2 AND a.status = 'active'
         ORDER BY a.id"
    )))
    .bind(user)
    .bind(trigger)
    .fetch_all(&mut **conn)
    .await)
}

/// Active automations with a daily trigger not yet checked on `day`, locked (skipping those
/// another scheduler holds): each is checked once a day however many schedulers look.
pub async fn due_checks(tx: &mut Tx, day: NaiveDate, limit: i64) -> sqlx::Result<Vec<Automation>> {
    let lock = match tx {
        Tx::Postgres(_) => " FOR UPDATE OF a SKIP LOCKED",
        Tx::Sqlite(_) => "",
    };
    on_tx!(tx, conn => sqlx::query_as::<_, Automation>(sqlx::AssertSqlSafe(format!(
        "{SELECT} AND a.status = 'active'
             AND a.trigger_type IN ('inactive', 'subscription_expiring')
             AND (a.checked_on IS NULL OR a.checked_on < $1)
         ORDER BY a.id LIMIT $2{lock}"
    )))
    .bind(day)
    .bind(limit)
    .fetch_all(&mut **conn)
    .await)
}

/// Whether any daily check is due on `day` (a read without a lock, as
/// [`enrollments::any_due`]).
pub async fn any_check_due(db: &Db, day: NaiveDate) -> sqlx::Result<bool> {
    let found: Option<(i32,)> = on_db!(db, pool => sqlx::query_as(
        "SELECT 1 FROM automations
         WHERE deleted_at IS NULL AND status = 'active'
           AND trigger_type IN ('inactive', 'subscription_expiring')
           AND (checked_on IS NULL OR checked_on < $1)
         LIMIT 1",
    )
    .bind(day)
    .fetch_optional(pool)
    .await)?;
    Ok(found.is_some())
}

/// Records that the automation's daily check ran on `day`.
pub async fn checked(tx: &mut Tx, id: AutomationId, day: NaiveDate) -> sqlx::Result<()> {
    on_tx!(tx, conn => sqlx::query("UPDATE automations SET checked_on = $2 WHERE id = $1")
        .bind(id)
        .bind(day)
        .execute(&mut **conn)
        .await
        .map(|_| ()))
}

/// The definition an enrollment runs: its automation's version `version`.
pub async fn version(
    tx: &mut Tx,
    id: AutomationId,
    version: i32,
) -> sqlx::Result<Option<Definition>> {
    let found: Option<(Json<Definition>,)> = on_tx!(tx, conn => sqlx::query_as(
        "SELECT definition FROM automation_versions WHERE automation_id = $1 AND version = $2",
    )
    .bind(id)
    .bind(version)
    .fetch_optional(&mut **conn)
    .await)?;
    Ok(found.map(|(d,)| d.0))
}

//! Enrollments: one fan going through one automation, and the steps it went through. The
//! only module that writes `automation_enrollments` and `automation_steps`.
//!
//! A step is done once: its row in `automation_steps` is keyed by (enrollment, step) and is
//! written in the transaction that does the step's effect (a send's message) and moves the
//! enrollment on. A waiting enrollment is a row with a due time, read back by
//! [`due`] when the time comes.

use chrono::{DateTime, TimeDelta, Utc};

use super::{
    Automation,
    definition::{Definition, Step, roll},
};
use crate::{
    crm::segments::{self, Condition, Dialect, Param, bind_condition},
    db::{Db, Listed, Page, StoreResult, Tx, push_binds},
    domain::{AutomationId, EnrollmentId, FanId, MessageId, Timestamp, UserId},
    on_db, on_tx, text_enum,
};

text_enum! {
    pub enum EnrollmentStatus as "enrollment status" {
        /// Waiting for its current step's time.
        Active = "active",
        /// Went through every step.
        Completed = "completed",
        /// Ended early (`exit_reason`).
        Exited = "exited",
    }
}

/// Why an enrollment ended early.
pub mod exit {
    /// The fan wrote in (`stopOnReply`).
    pub const REPLIED: &str = "replied";
    /// A condition step's filter did not hold and its `else` was `exit`.
    pub const CONDITION: &str = "condition";
    /// An exit step.
    pub const EXIT_STEP: &str = "exit_step";
    /// The automation was deleted.
    pub const DELETED: &str = "deleted";
    /// Its step could not run (a stored definition or message that does not read back).
    pub const FAILED: &str = "failed";
}

/// Why a send was put off, or what came of a step.
pub mod held {
    pub const QUIET_HOURS: &str = "quiet_hours";
    pub const DAILY_CAP: &str = "daily_cap";
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Enrollment {
    pub id: EnrollmentId,
    pub user_id: UserId,
    pub automation_id: AutomationId,
    pub version: i32,
    pub fan_id: FanId,
    pub trigger_key: String,
    pub status: EnrollmentStatus,
    pub exit_reason: Option<String>,
    pub step: i32,
    pub due_at: Option<DateTime<Utc>>,
    pub held_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// When step `step` of `definition` runs for an enrollment entering it at `now`: a wait ends
/// after its span (drawn from `seed`, the same every time), any other step runs now. `None`
/// past the last step.
pub fn entry(definition: &Definition, step: usize, seed: i64, now: Timestamp) -> Option<Timestamp> {
    match definition.steps.get(step)? {
        Step::Wait(w) => Some(Timestamp(now.0 + w.span(roll(seed, step as u64)))),
        _ => Some(now),
    }
}

/// A stable number for what enrolled a fan: the seed of its first wait (the enrollment has no
/// id yet). FNV-1a.
fn seed_of(key: &str) -> i64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    }) as i64
}

/// A fan a trigger may enroll, with what its key is made of.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Candidate {
    pub id: FanId,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub subscription_ends_at: Option<DateTime<Utc>>,
}

/// Enrolls into `automation` the fans of its creator that `only` matches (among `among`, when
/// given) and its audience and rules allow (`oncePerFan`, `cooldownHours`), each under the key
/// `key` gives it; a key the automation already has enrolls no one. Returns the new
/// enrollments' fans.
///
/// `among` is looked up fan by fan through the primary key, whatever the statistics say: an
/// import's batch enrolls its new fans while the table grows under it, and with statistics
/// from before the import PostgreSQL scanned every fan of the creator against the list (63 s
/// for 100,000 fans, `BENCHMARKS.md`).
pub async fn enroll(
    tx: &mut Tx,
    automation: &Automation,
    among: Option<&[FanId]>,
    only: Condition,
    key: impl Fn(&Candidate) -> String,
    now: Timestamp,
) -> StoreResult<Vec<FanId>> {
    let definition = &automation.definition.0;
    let dialect = segments::tx_dialect(tx);
    let mut condition = only;
    match &definition.audience {
        None => {}
        Some(super::Audience::Filter(f)) => condition = f.and_to(condition, dialect, now.0),
        Some(super::Audience::SegmentId(id)) => {
            match segments::filter_in(tx, automation.user_id, *id).await? {
                Some(f) => condition = f.and_to(condition, dialect, now.0),
                // A deleted segment: nobody is in it.
                None => return Ok(vec![]),
            }
        }
    }
    if definition.once_per_fan {
        let a = condition.bind(Param::Int(automation.id.0));
        condition.and(&format!(
            "NOT EXISTS (SELECT 1 FROM automation_enrollments e
                         WHERE e.automation_id = {a} AND e.fan_id = f.id)"
        ));
    }
    if let Some(hours) = definition.cooldown_hours {
        let a = condition.bind(Param::Int(automation.id.0));
        let since = condition.bind(Param::At(Timestamp(now.0 - TimeDelta::hours(hours.into()))));
        condition.and(&format!(
            "NOT EXISTS (SELECT 1 FROM automation_enrollments e
                         WHERE e.automation_id = {a} AND e.fan_id = f.id
                           AND e.created_at >= {since})"
        ));
    }
    let Condition { sql, params } = condition;
    let list = params.len() + 2;
    // `among` as one text parameter, an array literal in each dialect's own notation.
    let among = among.map(|fans| {
        let ids: Vec<String> = fans.iter().map(|f| f.0.to_string()).collect();
        match dialect {
            Dialect::Postgres => format!("{{{}}}", ids.join(",")),
            Dialect::Sqlite => format!("[{}]", ids.join(",")),
        }
    });
    let from = match (&among, dialect) {
        (None, _) => "fans f".to_owned(),
        (Some(_), Dialect::Postgres) => format!(
            "unnest(${list}::bigint[]) AS n(id)
             CROSS JOIN LATERAL (SELECT * FROM fans WHERE id = n.id OFFSET 0) f"
        ),
        (Some(_), Dialect::Sqlite) => {
            // CROSS JOIN: SQLite keeps the list outside, each fan a rowid lookup (as a JOIN
            // it scanned the creator's fans and the list for each: 133 rows/s).
            format!("json_each(${list}) n CROSS JOIN fans f ON f.id = n.value")
        }
    };
    let select = format!(
        "SELECT f.id, f.last_seen_at, f.created_at, f.subscription_ends_at FROM {from}
         WHERE f.user_id = $1 AND {sql} ORDER BY f.id"
    );
    let candidates: Vec<Candidate> = on_tx!(tx, conn => {
        let q = bind_condition!(
            sqlx::query_as::<_, Candidate>(sqlx::AssertSqlSafe(select)),
            automation.user_id,
            &params
        );
        match &among {
            Some(list) => q.bind(list.as_str()),
            None => q,
        }
        .fetch_all(&mut **conn)
        .await
    })?;
    let mut enrolled = Vec::with_capacity(candidates.len());
    for chunk in candidates.chunks(500) {
        let rows: Vec<(FanId, String, Timestamp)> = chunk
            .iter()
            .filter_map(|c| {
                let k = key(c);
                let due = entry(definition, 0, seed_of(&k), now)?;
                Some((c.id, k, due))
            })
            .collect();
        if rows.is_empty() {
            continue;
        }
        let fans: Vec<(FanId,)> = on_tx!(tx, conn => {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO automation_enrollments (user_id, automation_id, version, fan_id,
                     trigger_key, status, step, due_at, created_at) ",
            );
            q.push_values(&rows, |mut row, (fan, k, due)| {
                row.push_bind(automation.user_id)
                    .push_bind(automation.id)
                    .push_bind(automation.version)
                    .push_bind(*fan)
                    .push_bind(k.as_str())
                    .push_bind(EnrollmentStatus::Active)
                    .push_bind(0i32)
                    .push_bind(*due)
                    .push_bind(now);
            });
            q.push(" ON CONFLICT (automation_id, trigger_key) DO NOTHING RETURNING fan_id");
            q.build_query_as().fetch_all(&mut **conn).await
        })?;
        enrolled.extend(fans.into_iter().map(|(f,)| f));
    }
    Ok(enrolled)
}

/// Whether any active enrollment is due at `now` (a read without a lock: a look that finds
/// nothing takes no write lock, which on SQLite is the one there is).
pub async fn any_due(db: &Db, now: Timestamp) -> sqlx::Result<bool> {
    let found: Option<(i32,)> = on_db!(db, pool => sqlx::query_as(
        "SELECT 1 FROM automation_enrollments e JOIN automations a ON a.id = e.automation_id
         WHERE e.status = 'active' AND e.due_at <= $1
           AND a.status = 'active' AND a.deleted_at IS NULL
         LIMIT 1",
    )
    .bind(now)
    .fetch_optional(pool)
    .await)?;
    Ok(found.is_some())
}

/// Active enrollments due at `now` whose automation is active, oldest due first, locked
/// (skipping those another clock holds).
pub async fn due(tx: &mut Tx, now: Timestamp, limit: i64) -> sqlx::Result<Vec<Enrollment>> {
    let lock = match tx {
        Tx::Postgres(_) => " FOR UPDATE OF e SKIP LOCKED",
        Tx::Sqlite(_) => "",
    };
    on_tx!(tx, conn => sqlx::query_as::<_, Enrollment>(sqlx::AssertSqlSafe(format!(
        "SELECT e.* FROM automation_enrollments e JOIN automations a ON a.id = e.automation_id
         WHERE e.status = 'active' AND e.due_at <= $1
           AND a.status = 'active' AND a.deleted_at IS NULL
         ORDER BY e.due_at LIMIT $2{lock}"
    )))
    .bind(now)
    .bind(limit)
    .fetch_all(&mut **conn)
    .await)
}

/// What came of one step of an enrollment.
#[derive(Debug, Clone)]
pub struct StepDone {
    pub enrollment: EnrollmentId,
    pub step: i32,
    pub kind: &'static str,
    pub outcome: String,
    pub held_by: Option<String>,
    pub message: Option<MessageId>,
    pub variant: Option<String>,
}

/// Records steps as done, each once: recording one again is an error (its transaction, with
/// whatever the step did, is rolled back).
pub async fn record(
    tx: &mut Tx,
    steps: &[StepDone],
    now: Timestamp,
) -> sqlx::Result<Vec<(EnrollmentId, i32)>> {
    let mut done = Vec::with_capacity(steps.len());
    for chunk in steps.chunks(500) {
        let rows: Vec<(EnrollmentId, i32)> = on_tx!(tx, conn => {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO automation_steps (enrollment_id, step, kind, outcome, held_by,
                     message_id, variant, at) ",
            );
            q.push_values(chunk, |mut row, s| {
                row.push_bind(s.enrollment)
                    .push_bind(s.step)
                    .push_bind(s.kind)
                    .push_bind(s.outcome.as_str())
                    .push_bind(s.held_by.as_deref())
                    .push_bind(s.message)
                    .push_bind(s.variant.as_deref())
                    .push_bind(now);
            });
            // No `ON CONFLICT`: a step recorded twice aborts the transaction (and the send
            // stored with it) instead of passing unnoticed.
            q.push(" RETURNING enrollment_id, step");
            q.build_query_as().fetch_all(&mut **conn).await
        })?;
        done.extend(rows);
    }
    Ok(done)
}

/// Moves an active enrollment to `step`, due at `due`; `held_by` says why a send waits.
pub async fn move_to(
    tx: &mut Tx,
    id: EnrollmentId,
    step: i32,
    due: Timestamp,
    held_by: Option<&str>,
) -> sqlx::Result<()> {
    on_tx!(tx, conn => sqlx::query(
        "UPDATE automation_enrollments SET step = $2, due_at = $3, held_by = $4
         WHERE id = $1 AND status = 'active'",
    )
    .bind(id)
    .bind(step)
    .bind(due)
    .bind(held_by)
    .execute(&mut **conn)
    .await
    .map(|_| ()))
}

/// Ends an active enrollment at `step`: completed, or exited for `reason`.
pub async fn finish(
    tx: &mut Tx,
    id: EnrollmentId,
    step: i32,
    reason: Option<&str>,
    now: Timestamp,
) -> sqlx::Result<()> {
    let status = match reason {
        None => EnrollmentStatus::Completed,
        Some(_) => EnrollmentStatus::Exited,
    };
    on_tx!(tx, conn => sqlx::query(
        "UPDATE automation_enrollments
         SET status = $2, exit_reason = $3, step = $4, due_at = NULL, held_by = NULL,
             finished_at = $5
         WHERE id = $1 AND status = 'active'",
    )
    .bind(id)
    .bind(status)
    .bind(reason)
    .bind(step)
    .bind(now)
    .execute(&mut **conn)
    .await
    .map(|_| ()))
}

/// Ends every active enrollment of `automation` for `reason`.
pub async fn end_all(
    tx: &mut Tx,
    automation: AutomationId,
    reason: &str,
    now: Timestamp,
) -> sqlx::Result<u64> {
    on_tx!(tx, conn => sqlx::query(
        "UPDATE automation_enrollments
         SET status = 'exited', exit_reason = $2, due_at = NULL, held_by = NULL, finished_at = $3
         WHERE automation_id = $1 AND status = 'active'",
    )
    .bind(automation)
    .bind(reason)
    .bind(now)
    .execute(&mut **conn)
    .await
    .map(|done| done.rows_affected()))
}

/// The fan's active enrollments, locked (the fan wrote in: those that stop on a reply end).
pub async fn active_of_fan(tx: &mut Tx, fan: FanId) -> sqlx::Result<Vec<Enrollment>> {
    let lock = match tx {
        Tx::Postgres(_) => " FOR UPDATE",
        Tx::Sqlite(_) => "",
    };
    on_tx!(tx, conn => sqlx::query_as::<_, Enrollment>(sqlx::AssertSqlSafe(format!(
        "SELECT * FROM automation_enrollments WHERE fan_id = $1 AND status = 'active'
         ORDER BY id{lock}"
    )))
    .bind(fan)
    .fetch_all(&mut **conn)
    .await)
}

/// The messages the steps of these enrollments sent.
pub async fn messages_of(tx: &mut Tx, ids: &[EnrollmentId]) -> sqlx::Result<Vec<MessageId>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let rows: Vec<(MessageId,)> = on_tx!(tx, conn => {
        let mut q = sqlx::QueryBuilder::new(
            "SELECT message_id FROM automation_steps
             WHERE message_id IS NOT NULL AND enrollment_id IN (",
        );
        push_binds(&mut q, ids.iter().map(|e| e.0));
        q.push(")");
        q.build_query_as().fetch_all(&mut **conn).await
    })?;
    Ok(rows.into_iter().map(|(m,)| m).collect())
}

/// Marks the steps whose messages were withdrawn before they went out.
pub async fn withdrawn(tx: &mut Tx, messages: &[MessageId]) -> sqlx::Result<()> {
    if messages.is_empty() {
        return Ok(());
    }
    on_tx!(tx, conn => {
        let mut q = sqlx::QueryBuilder::new(
            "UPDATE automation_steps SET outcome = 'withdrawn' WHERE message_id IN (",
        );
        push_binds(&mut q, messages.iter().map(|m| m.0));
        q.push(")");
        q.build().execute(&mut **conn).await.map(|_| ())
    })
}

/// One page of an automation's enrollments, newest first.
pub async fn list(
    db: &Db,
    automation: AutomationId,
    status: Option<EnrollmentStatus>,
    page: Page,
) -> sqlx::Result<Listed<Enrollment>> {
    on_db!(db, pool => {
        let items = sqlx::query_as::<_, Enrollment>(
            "SELECT * FROM automation_enrollments
             WHERE automation_id = $1 AND ($2 IS NULL OR status = $2)
             ORDER BY id DESC LIMIT $3 OFFSET $4",
        )
        .bind(automation)
        .bind(status)
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(pool)
        .await?;
        let (total,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM automation_enrollments
             WHERE automation_id = $1 AND ($2 IS NULL OR status = $2)",
        )
        .bind(automation)
        .bind(status)
        .fetch_one(pool)
        .await?;
        Ok(Listed { items, total })
    })
}

/// A step an enrollment went through, with its message's fate for a send.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StepRow {
    pub enrollment_id: EnrollmentId,
    pub step: i32,
    pub kind: String,
    pub outcome: String,
    pub held_by: Option<String>,
    pub message_id: Option<MessageId>,
    pub variant: Option<String>,
    pub at: DateTime<Utc>,
    pub message_status: Option<String>,
}

/// The steps these enrollments went through, in order.
pub async fn steps_of(db: &Db, ids: &[EnrollmentId]) -> sqlx::Result<Vec<StepRow>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    on_db!(db, pool => {
        let mut q = sqlx::QueryBuilder::new(
            "SELECT s.*, m.status AS message_status FROM automation_steps s
             LEFT JOIN messages m ON m.id = s.message_id
             WHERE s.enrollment_id IN (",
        );
        push_binds(&mut q, ids.iter().map(|e| e.0));
        q.push(") ORDER BY s.enrollment_id, s.step");
        q.build_query_as().fetch_all(pool).await
    })
}

/// A fan's enrollments, newest first, with their automations' names.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FanEnrollment {
    #[sqlx(flatten)]
    pub enrollment: Enrollment,
    pub automation_name: String,
}

pub async fn of_fan(
    db: &Db,
    user: UserId,
    fan: FanId,
    page: Page,
) -> sqlx::Result<Listed<FanEnrollment>> {
    on_db!(db, pool => {
        let items = sqlx::query_as::<_, FanEnrollment>(
            "SELECT e.*, a.name AS automation_name FROM automation_enrollments e
             JOIN automations a ON a.id = e.automation_id
             WHERE e.fan_id = $1 AND e.user_id = $2
             ORDER BY e.id DESC LIMIT $3 OFFSET $4",
        )
        .bind(fan)
        .bind(user)
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(pool)
        .await?;
        let (total,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM automation_enrollments WHERE fan_id = $1 AND user_id = $2",
        )
        .bind(fan)
        .bind(user)
        .fetch_one(pool)
        .await?;
        Ok(Listed { items, total })
    })
}

/// Counts of an automation's enrollments by status and exit reason.
pub async fn counts(
    db: &Db,
    automation: AutomationId,
) -> sqlx::Result<Vec<(EnrollmentStatus, Option<String>, i64)>> {
    on_db!(db, pool => sqlx::query_as(
        "SELECT status, exit_reason, COUNT(*) FROM automation_enrollments
         WHERE automation_id = $1 GROUP BY status, exit_reason",
    )
    .bind(automation)
    .fetch_all(pool)
    .await)
}

/// Per step, variant and outcome of an automation: how many went through, and for sends what
/// their messages did.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StepTally {
    pub step: i32,
    pub variant: Option<String>,
    pub outcome: String,
    pub n: i64,
    pub sent: i64,
    pub delivered: i64,
    pub opened: i64,
    pub purchases: i64,
    pub revenue_cents: i64,
}

pub async fn tally(db: &Db, automation: AutomationId) -> sqlx::Result<Vec<StepTally>> {
    on_db!(db, pool => sqlx::query_as::<_, StepTally>(
        "SELECT s.step, s.variant, s.outcome, COUNT(*) AS n,
                COUNT(CASE WHEN m.status = 'sent' THEN 1 END) AS sent,
                COUNT(m.delivered_at) AS delivered, COUNT(m.opened_at) AS opened,
                COUNT(m.purchased_at) AS purchases,
                CAST(COALESCE(SUM(m.revenue_cents), 0) AS BIGINT) AS revenue_cents
         FROM automation_steps s
         JOIN automation_enrollments e ON e.id = s.enrollment_id
         LEFT JOIN messages m ON m.id = s.message_id
         WHERE e.automation_id = $1
         GROUP BY s.step, s.variant, s.outcome ORDER BY s.step, s.variant, s.outcome",
    )
    .bind(automation)
    .fetch_all(pool)
    .await)
}

/// How many active enrollments wait at each step of an automation.
pub async fn waiting(db: &Db, automation: AutomationId) -> sqlx::Result<Vec<(i32, i64)>> {
    on_db!(db, pool => sqlx::query_as(
        "SELECT step, COUNT(*) FROM automation_enrollments
         WHERE automation_id = $1 AND status = 'active' GROUP BY step ORDER BY step",
    )
    .bind(automation)
    .fetch_all(pool)
    .await)
}

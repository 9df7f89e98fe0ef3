//! Jobs as clients see them: one `job_records` row per job, whatever backend runs it. This
//! module is the only one that writes the table; each change is a named transition.
//!
//! apalis owns delivery (its queue tables or Redis keys, leases, heartbeats, re-enqueueing the
//! tasks of dead workers); a record owns what a job *is* for the API: kind, status, attempts,
//! progress, result, and the resume checkpoint that makes a re-run after a crash end with the
//! same result. The apalis task carries only the job id.

use std::{fmt, time::Duration};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::types::Json;

use crate::{
    db::{Db, Listed, Page, StoreError, StoreResult, Tx},
    domain::{Timestamp, UserId},
    on_db, on_tx, text_enum,
};

/// A job id: a ULID, also the id of the apalis task that carries it (or of the task of the
/// jobs it was stored with; see [`JobTask`](super::backend::JobTask)).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct JobId(pub String);

impl JobId {
    pub fn generate() -> Self {
        JobId(ulid::Ulid::generate().to_string())
    }

    /// Parses a client-supplied id; anything but a ULID is nobody's job.
    pub fn parse(raw: &str) -> Option<Self> {
        raw.parse::<ulid::Ulid>().ok().map(|u| JobId(u.to_string()))
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

text_enum! {
    /// Where a job is in its life. `queued → running → succeeded | failed | cancelled`; a run
    /// that fails and will be retried, or is stopped by a shutdown, goes back to `queued`.
    pub enum JobStatus as "job status" {
        Queued = "queued",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

impl JobStatus {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// A job as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRecord {
    pub id: JobId,
    pub user_id: UserId,
    /// The name of its kind ([`JobKind::NAME`](super::JobKind::NAME)); the worker runtime
    /// knows every kind.
    pub kind: String,
    pub status: JobStatus,
    pub attempts: i64,
    pub progress_done: i64,
    pub progress_total: Option<i64>,
    pub payload: Json<Value>,
    pub checkpoint: Option<Json<Value>>,
    pub result: Option<Json<Value>>,
    pub error: Option<String>,
    pub cancel_requested: bool,
    pub dispatched_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A job to enqueue, made for a kind by `NewJob::of` (beside the kind contract).
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: JobId,
    pub user: UserId,
    pub kind: &'static str,
    pub payload: Value,
    /// The progress total, when it is known at submission (a send knows its messages).
    pub total: Option<i64>,
}

impl NewJob {
    /// The job's progress total is known from the start: clients see `0 of n` while it waits.
    pub fn with_total(mut self, total: i64) -> Self {
        self.total = Some(total);
        self
    }
}

/// Filters of the job list.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub kind: Option<&'static str>,
    pub status: Option<JobStatus>,
}

/// Stores new `queued` records in `tx`, in one statement; `dispatched` when their tasks are
/// pushed in the same transaction (otherwise they are outbox rows for the relay).
pub(super) async fn insert_many(
    tx: &mut Tx,
    jobs: &[NewJob],
    dispatched: bool,
) -> sqlx::Result<()> {
    if jobs.is_empty() {
        return Ok(());
    }
    let now = Timestamp::now();
    on_tx!(tx, conn => {
        let mut q = sqlx::QueryBuilder::new(INSERT_RECORDS);
        q.push_values(jobs, |mut row, job| {
            row.push_bind(&job.id)
                .push_bind(job.user)
                .push_bind(job.kind)
                .push("'queued'")
                .push_bind(Json(&job.payload))
                .push_bind(now)
                .push_bind(dispatched.then_some(now))
                .push_bind(job.total);
        });
        q.build().execute(&mut **conn).await.map(|_| ())
    })
}

/// The insert of [`insert_many`] and [`insert_many_sql`] (columns in this order).
const INSERT_RECORDS: &str = "INSERT INTO job_records (id, user_id, kind, status, payload, \
     created_at, dispatched_at, progress_total) ";

/// [`insert_many`] as one part of a larger statement: a `queued` record of `kind`, stored and
/// dispatched at `at`, for each row of relation `from` (columns `id, user_id, payload` (jsonb)`,
/// total`).
pub(super) fn insert_many_sql(kind: &'static str, from: &str, at: &str) -> String {
    format!(
        "{INSERT_RECORDS}SELECT id, user_id, '{kind}', 'queued', payload, {at}, {at}, total \
         FROM {from}"
    )
}

/// Whose jobs a reader sees: a user's own, and with `system` also fanqueue's own (sweeps,
/// owned by [`UserId::SYSTEM`]), which operators see.
#[derive(Debug, Clone, Copy)]
pub struct Readers {
    pub user: UserId,
    pub system: bool,
}

impl From<UserId> for Readers {
    fn from(user: UserId) -> Self {
        Readers {
            user,
            system: false,
        }
    }
}

pub async fn get(db: &Db, readers: impl Into<Readers>, id: &JobId) -> StoreResult<JobRecord> {
    let r = readers.into();
    let system = r.system.then_some(UserId::SYSTEM);
    on_db!(db, pool => sqlx::query_as::<_, JobRecord>(
        "SELECT * FROM job_records WHERE id = $1 AND (user_id = $2 OR user_id = $3)",
    )
    .bind(id)
    .bind(r.user)
    .bind(system)
    .fetch_optional(pool)
    .await)?
    .ok_or(StoreError::NotFound("job"))
}

pub async fn list(
    db: &Db,
    readers: impl Into<Readers>,
    filter: &JobFilter,
    page: Page,
) -> StoreResult<Listed<JobRecord>> {
    let r = readers.into();
    let system = r.system.then_some(UserId::SYSTEM);
    let kind = filter.kind;
    let status = filter.status.map(JobStatus::as_str);
    let (rows_sql, count_sql) = match db {
        // PostgreSQL wants the type of a parameter that is only compared with NULL.
        Db::Postgres(_) => (
            "SELECT * FROM job_records WHERE (user_id = $1 OR user_id = $6) AND ($2::text IS NULL OR kind = $2)
               AND ($3::text IS NULL OR status = $3) ORDER BY created_at DESC, id DESC LIMIT $4 OFFSET $5",
            "SELECT COUNT(*) FROM job_records WHERE (user_id = $1 OR user_id = $4) AND ($2::text IS NULL OR kind = $2)
               AND ($3::text IS NULL OR status = $3)",
        ),
        Db::Sqlite(_) => (
            concat!(
                "SELECT * FROM job_records WHERE (user_id = $1 OR user_id = $6) AND ($2 IS NULL OR kind = $2) AND ($3 IS NULL OR status = $3)",
                " ORDER BY created_at DESC, id DESC LIMIT $4 OFFSET $5"
            ),
            "SELECT COUNT(*) FROM job_records WHERE (user_id = $1 OR user_id = $4) AND ($2 IS NULL OR kind = $2) AND ($3 IS NULL OR status = $3)",
        ),
    };
    on_db!(db, pool => {
        let items = sqlx::query_as::<_, JobRecord>(rows_sql)
            .bind(r.user)
            .bind(kind)
            .bind(status)
            .bind(page.limit)
            .bind(page.offset)
            .bind(system)
            .fetch_all(pool)
            .await?;
        let (total,): (i64,) = sqlx::query_as(count_sql)
            .bind(r.user)
            .bind(kind)
            .bind(status)
            .bind(system)
            .fetch_one(pool)
            .await?;
        Ok(Listed { items, total })
    })
}

/// Waits until the job is final or `timeout` passes; returns the record as last seen.
pub async fn wait_final(
    db: &Db,
    user: UserId,
    id: &JobId,
    timeout: Duration,
) -> StoreResult<JobRecord> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let record = get(db, user, id).await?;
        if record.status.is_final() || tokio::time::Instant::now() >= deadline {
            return Ok(record);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Why a cancel was refused.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("the job has already finished ({0})")]
    Finished(JobStatus),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Cancels a job: a queued one at once; a running one asks its worker to stop after the
/// batch in progress (committed batches stay, and the result says where it stopped).
pub async fn cancel(db: &Db, user: UserId, id: &JobId) -> Result<JobRecord, CancelError> {
    let now = Timestamp::now();
    let updated = on_db!(db, pool => sqlx::query_as::<_, JobRecord>(
        "UPDATE job_records SET
             cancel_requested = TRUE,
             status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END,
             error = CASE WHEN status = 'queued' THEN 'cancelled before it started' ELSE error END,
             finished_at = CASE WHEN status = 'queued' THEN $3 ELSE finished_at END
         WHERE id = $1 AND user_id = $2 AND status IN ('queued', 'running')
         RETURNING *",
    )
    .bind(id)
    .bind(user)
    .bind(now)
    .fetch_optional(pool)
    .await)
    .map_err(StoreError::from)?;
    match updated {
        Some(job) => Ok(job),
        None => {
            let job = get(db, user, id).await?;
            Err(CancelError::Finished(job.status))
        }
    }
}

/// `queued → running` for each of `ids` in one statement: a run starts (and counts as an
/// attempt). Jobs already final (a duplicate delivery, or cancelled while queued) are left out
/// of the answer: there is nothing to do for them.
pub async fn start_many(db: &Db, ids: &[JobId]) -> StoreResult<Vec<JobRecord>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let now = Timestamp::now();
    Ok(on_db!(db, pool => {
        let mut q = sqlx::QueryBuilder::new(
            "UPDATE job_records SET status = 'running', attempts = attempts + 1,
                 started_at = COALESCE(started_at, ",
        );
        q.push_bind(now)
            .push(") WHERE status IN ('queued', 'running') AND id IN (");
        crate::db::push_binds(&mut q, ids);
        q.push(") RETURNING *");
        q.build_query_as::<JobRecord>().fetch_all(pool).await
    })?)
}

/// Records how many units the job has in all (the progress total).
pub async fn set_total(db: &Db, id: &JobId, total: i64) -> StoreResult<()> {
    on_db!(db, pool => sqlx::query("UPDATE job_records SET progress_total = $2 WHERE id = $1")
        .bind(id)
        .bind(total)
        .execute(pool)
        .await
        .map(|_| ()))?;
    Ok(())
}

/// Records progress: `done` of `total` units.
pub async fn set_progress(db: &Db, id: &JobId, done: i64, total: i64) -> StoreResult<()> {
    on_db!(db, pool => sqlx::query("UPDATE job_records SET progress_done = $2, progress_total = $3 WHERE id = $1")
        .bind(id)
        .bind(done)
        .bind(total)
        .execute(pool)
        .await
        .map(|_| ()))?;
    Ok(())
}

/// Stores the resume checkpoint and progress in the transaction of the batch they describe,
/// so that work and checkpoint commit together. Returns whether a cancel was asked for (read
/// in the same transaction).
pub async fn save_checkpoint(
    tx: &mut Tx,
    id: &JobId,
    done: i64,
    checkpoint: &impl Serialize,
) -> sqlx::Result<bool> {
    let (cancel,): (bool,) = on_tx!(tx, conn => sqlx::query_as(
        "UPDATE job_records SET progress_done = $2, checkpoint = $3 WHERE id = $1
         RETURNING cancel_requested",
    )
    .bind(id)
    .bind(done)
    .bind(Json(checkpoint))
    .fetch_one(&mut **conn)
    .await)?;
    Ok(cancel)
}

/// How one run ended, to be recorded by [`finish_many`].
#[derive(Debug, Clone)]
pub struct Finished<'a> {
    pub id: &'a JobId,
    pub status: JobStatus,
    pub result: Option<&'a Value>,
    pub error: Option<&'a str>,
}

/// `running → succeeded | failed | cancelled`, with the result or the reason.
pub async fn finish(
    db: &Db,
    id: &JobId,
    status: JobStatus,
    result: Option<&Value>,
    error: Option<&str>,
) -> StoreResult<()> {
    finish_many(
        db,
        &[Finished {
            id,
            status,
            result,
            error,
        }],
    )
    .await
}

/// Records the end of several runs in one statement. A job that succeeded has done all it
/// had to: its progress reaches its total, when it has one.
pub async fn finish_many(db: &Db, runs: &[Finished<'_>]) -> StoreResult<()> {
    if runs.is_empty() {
        return Ok(());
    }
    debug_assert!(runs.iter().all(|r| r.status.is_final()));
    let now = Timestamp::now();
    let ids: Vec<&str> = runs.iter().map(|r| r.id.0.as_str()).collect();
    let statuses: Vec<&str> = runs.iter().map(|r| r.status.as_str()).collect();
    let results: Vec<Option<String>> = runs
        .iter()
        .map(|r| r.result.map(Value::to_string))
        .collect();
    let errors: Vec<Option<&str>> = runs.iter().map(|r| r.error).collect();
    match db {
        // Arrays, not JSON: the planner counts a few rows and looks each up by its key, even
        // while the table's statistics still describe it empty (a fresh deployment).
        Db::Postgres(pool) => sqlx::query(
            "UPDATE job_records j SET status = e.status, result = e.result::jsonb, error = e.error,
                 finished_at = $5,
                 progress_done = CASE WHEN e.status = 'succeeded'
                     THEN COALESCE(j.progress_total, j.progress_done) ELSE j.progress_done END
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[])
                  AS e(id, status, result, error)
             WHERE j.id = e.id",
        )
        .bind(&ids)
        .bind(&statuses)
        .bind(&results)
        .bind(&errors)
        .bind(now)
        .execute(pool)
        .await
        .map(|_| ())?,
        // The runs travel as one JSON array, read back as rows.
        Db::Sqlite(pool) => {
            let ends = Value::Array(
                runs.iter()
                    .zip(&results)
                    .map(|(r, result)| {
                        serde_json::json!({
                            "id": r.id,
                            "status": r.status.as_str(),
                            "result": result,
                            "error": r.error,
                        })
                    })
                    .collect(),
            );
            sqlx::query(
                "UPDATE job_records SET status = e.status, result = e.result, error = e.error,
                     finished_at = $2,
                     progress_done = CASE WHEN e.status = 'succeeded'
                         THEN COALESCE(job_records.progress_total, job_records.progress_done)
                         ELSE job_records.progress_done END
                 FROM (SELECT value ->> 'id' AS id, value ->> 'status' AS status,
                              value ->> 'result' AS result, value ->> 'error' AS error
                       FROM json_each($1)) AS e
                 WHERE job_records.id = e.id",
            )
            .bind(Json(&ends))
            .bind(now)
            .execute(pool)
            .await
            .map(|_| ())?
        }
    }
    Ok(())
}

/// `running → queued`: the run failed and another will follow; the reason stays visible.
pub async fn will_retry(db: &Db, id: &JobId, error: &str) -> StoreResult<()> {
    on_db!(db, pool => sqlx::query(
        "UPDATE job_records SET status = 'queued', error = $2 WHERE id = $1 AND status = 'running'",
    )
    .bind(id)
    .bind(error)
    .execute(pool)
    .await
    .map(|_| ()))?;
    Ok(())
}

/// `running → queued`: the run stopped at a safe point because its worker is shutting down.
/// It resumes from its checkpoint on the next worker, and does not count as an attempt (a
/// deploy must not use up a job's retries).
pub async fn release(db: &Db, id: &JobId) -> StoreResult<()> {
    on_db!(db, pool => sqlx::query(
        "UPDATE job_records SET status = 'queued', attempts = attempts - 1
         WHERE id = $1 AND status = 'running'",
    )
    .bind(id)
    .execute(pool)
    .await
    .map(|_| ()))?;
    Ok(())
}

/// The outbox rows older than `cutoff` that no push has reached yet: `(id, kind)`.
pub(super) async fn undispatched(
    db: &Db,
    cutoff: Timestamp,
    limit: i64,
) -> StoreResult<Vec<(JobId, String)>> {
    Ok(on_db!(db, pool => sqlx::query_as(
        "SELECT id, kind FROM job_records WHERE dispatched_at IS NULL AND created_at < $1
         ORDER BY created_at LIMIT $2",
    )
    .bind(cutoff)
    .bind(limit)
    .fetch_all(pool)
    .await)?)
}

/// The job's task is in the job backend (the outbox row is done).
pub(super) async fn mark_dispatched(db: &Db, id: &JobId) -> StoreResult<()> {
    let now = Timestamp::now();
    on_db!(db, pool => sqlx::query("UPDATE job_records SET dispatched_at = $2 WHERE id = $1")
        .bind(id)
        .bind(now)
        .execute(pool)
        .await
        .map(|_| ()))?;
    Ok(())
}

/// Deletes final records (and Redis outbox rows, which are records) that ended before
/// `before`, in batches until `deadline`. Returns how many went.
pub async fn prune_final(
    db: &Db,
    before: DateTime<Utc>,
    deadline: std::time::Instant,
) -> StoreResult<u64> {
    let delete = "DELETE FROM job_records WHERE id IN (
                      SELECT id FROM job_records
                      WHERE status IN ('succeeded', 'failed', 'cancelled') AND finished_at < $1
                      LIMIT $2)";
    Ok(crate::db::prune_older(db, deadline, before, delete).await?)
}

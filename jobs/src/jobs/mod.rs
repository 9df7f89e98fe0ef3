//! Jobs as clients see them: one `job_records` row per job, whatever backend runs it.
//!
//! apalis owns delivery (its queue tables or Redis keys, leases, heartbeats, re-enqueueing the
//! tasks of dead workers); this module owns what a job *is* for the API: kind, status,
//! attempts, progress, result, and the resume checkpoint that makes a re-run after a crash
//! end with the same result. The apalis task carries only the job id.

pub mod queue;

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::types::Json;

use crate::{
    db::{Db, Listed, Page, StoreError, StoreResult},
    domain::{Timestamp, UserId},
    on_db,
};

pub use queue::{JobQueue, JobTx, Workers};

/// A job id: the ULID of its apalis task.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
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

/// The kinds of job, each with its own apalis queue (named here, never after a Rust type,
/// so renaming code cannot orphan queued jobs) and its own retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    ImportCsv,
    /// Put one message on the outbound queue.
    SendMessage,
    /// Put a campaign's messages on the outbound queue, 10 a batch.
    BulkSend,
}

impl JobKind {
    pub const ALL: [JobKind; 3] = [JobKind::ImportCsv, JobKind::SendMessage, JobKind::BulkSend];

    /// Stable name: the API's `kind` and the apalis queue name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::ImportCsv => "import_csv",
            JobKind::SendMessage => "send_message",
            JobKind::BulkSend => "bulk_send",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == raw)
    }

    pub fn retry(self) -> RetryPolicy {
        match self {
            JobKind::ImportCsv => crate::imports::RETRY,
            JobKind::SendMessage | JobKind::BulkSend => crate::sends::RETRY,
        }
    }
}

/// How often a job runs before it is failed, and how long it waits between runs.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Runs in all, the first included. A run cut short by a crash counts as one.
    pub max_attempts: u32,
    /// Wait before the second run; doubles for each later one, up to `max_backoff`.
    pub first_backoff: std::time::Duration,
    pub max_backoff: std::time::Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

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
    pub id: String,
    pub user_id: UserId,
    pub kind: String,
    pub status: String,
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

impl JobRecord {
    pub fn status(&self) -> JobStatus {
        JobStatus::parse(&self.status).unwrap_or(JobStatus::Failed)
    }
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: JobId,
    pub user: UserId,
    pub kind: JobKind,
    pub payload: Value,
}

/// Filters of the job list.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub kind: Option<JobKind>,
    pub status: Option<JobStatus>,
}

pub async fn get(db: &Db, user: UserId, id: &JobId) -> StoreResult<JobRecord> {
    on_db!(db, pool => sqlx::query_as::<_, JobRecord>(
        "SELECT * FROM job_records WHERE id = $1 AND user_id = $2",
    )
    .bind(&id.0)
    .bind(user)
    .fetch_optional(pool)
    .await)?
    .ok_or(StoreError::NotFound("job"))
}

pub async fn list(
    db: &Db,
    user: UserId,
    filter: &JobFilter,
    page: Page,
) -> StoreResult<Listed<JobRecord>> {
    let kind = filter.kind.map(JobKind::as_str);
    let status = filter.status.map(JobStatus::as_str);
    let (rows_sql, count_sql) = match db {
        // PostgreSQL wants the type of a parameter that is only compared with NULL.
        Db::Postgres(_) => (
            "SELECT * FROM job_records WHERE user_id = $1 AND ($2::text IS NULL OR kind = $2)
               AND ($3::text IS NULL OR status = $3) ORDER BY created_at DESC, id DESC LIMIT $4 OFFSET $5",
            "SELECT COUNT(*) FROM job_records WHERE user_id = $1 AND ($2::text IS NULL OR kind = $2)
               AND ($3::text IS NULL OR status = $3)",
        ),
        Db::Sqlite(_) => (
            concat!(
                "SELECT * FROM job_records WHERE user_id = $1 AND ($2 IS NULL OR kind = $2) AND ($3 IS NULL OR status = $3)",
                " ORDER BY created_at DESC, id DESC LIMIT $4 OFFSET $5"
            ),
            "SELECT COUNT(*) FROM job_records WHERE user_id = $1 AND ($2 IS NULL OR kind = $2) AND ($3 IS NULL OR status = $3)",
        ),
    };
    on_db!(db, pool => {
        let items = sqlx::query_as::<_, JobRecord>(rows_sql)
            .bind(user)
            .bind(kind)
            .bind(status)
            .bind(page.limit)
            .bind(page.offset)
            .fetch_all(pool)
            .await?;
        let (total,): (i64,) = sqlx::query_as(count_sql)
            .bind(user)
            .bind(kind)
            .bind(status)
            .fetch_one(pool)
            .await?;
        Ok(Listed { items, total })
    })
}

/// Why a cancel was refused.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("the job has already finished ({0})")]
    Finished(String),
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
    .bind(&id.0)
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

/// Marks a run as started. `None` when the job is already final (a duplicate delivery, or a
/// job cancelled while queued): the worker then has nothing to do.
pub async fn start_run(db: &Db, id: &JobId) -> StoreResult<Option<JobRecord>> {
    let now = Timestamp::now();
    Ok(on_db!(db, pool => sqlx::query_as::<_, JobRecord>(
        "UPDATE job_records SET status = 'running', attempts = attempts + 1,
             started_at = COALESCE(started_at, $2)
         WHERE id = $1 AND status IN ('queued', 'running')
         RETURNING *",
    )
    .bind(&id.0)
    .bind(now)
    .fetch_optional(pool)
    .await)?)
}

/// Records the final outcome of a job.
pub async fn finish(
    db: &Db,
    id: &JobId,
    status: JobStatus,
    result: Option<&Value>,
    error: Option<&str>,
) -> StoreResult<()> {
    debug_assert!(status.is_final());
    let now = Timestamp::now();
    on_db!(db, pool => sqlx::query(
        "UPDATE job_records SET status = $2, result = $3, error = $4, finished_at = $5
         WHERE id = $1",
    )
    .bind(&id.0)
    .bind(status.as_str())
    .bind(result.map(Json))
    .bind(error)
    .bind(now)
    .execute(pool)
    .await
    .map(|_| ()))?;
    Ok(())
}

/// A run failed and another will follow: back to `queued`, with the reason kept visible.
pub async fn will_retry(db: &Db, id: &JobId, error: &str) -> StoreResult<()> {
    on_db!(db, pool => sqlx::query(
        "UPDATE job_records SET status = 'queued', error = $2 WHERE id = $1 AND status = 'running'",
    )
    .bind(&id.0)
    .bind(error)
    .execute(pool)
    .await
    .map(|_| ()))?;
    Ok(())
}

/// Records progress: `done` of `total` units.
pub async fn set_progress(db: &Db, id: &JobId, done: i64, total: i64) -> StoreResult<()> {
    on_db!(db, pool => sqlx::query("UPDATE job_records SET progress_done = $2, progress_total = $3 WHERE id = $1")
        .bind(&id.0)
        .bind(done)
        .bind(total)
        .execute(pool)
        .await
        .map(|_| ()))?;
    Ok(())
}

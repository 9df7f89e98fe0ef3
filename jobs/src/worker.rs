//! What a worker does with a task: find its job record, run the job's kind, record the
//! outcome. Retries are decided here, from the kind's [`RetryPolicy`], so every backend
//! (whose own retry rules differ) ends a job the same way.

use std::time::Duration;

use apalis::prelude::{AbortError, BoxDynError, Data};
use serde_json::Value;
use tracing::Instrument;

use crate::{
    blobs::BlobStore,
    db::Db,
    imports,
    jobs::{self, JobId, JobKind, JobRecord, JobStatus, queue::JobTask},
    outbound::Outbound,
    sends,
};

/// What job handlers need. Cloned into every worker.
#[derive(Clone)]
pub struct Deps {
    pub db: Db,
    pub blobs: BlobStore,
    /// Rows per import transaction: bigger is faster, smaller loses less work to a crash.
    pub import_batch_rows: usize,
    /// Where send jobs put messages for the dispatcher.
    pub outbound: Outbound,
    /// `false`: messages skip the queue, are logged and marked sent.
    pub rate_limiter_enabled: bool,
}

/// How a run ended, as the kind's code reports it.
pub enum Outcome {
    Succeeded(Value),
    /// Stopped on request; committed work stays and the result says where it stopped.
    Cancelled(Value),
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Running again cannot help (a file with no usable header): fail at once.
    #[error("{0}")]
    Permanent(String),
    /// Worth another run (a database or storage hiccup).
    #[error(transparent)]
    Transient(#[from] anyhow::Error),
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        JobError::Transient(anyhow::Error::new(e).context("database"))
    }
}

impl From<crate::db::StoreError> for JobError {
    fn from(e: crate::db::StoreError) -> Self {
        JobError::Transient(anyhow::Error::new(e))
    }
}

/// Tasks of one kind a worker process runs at once.
pub fn concurrency(kind: JobKind) -> usize {
    match kind {
        JobKind::ImportCsv => 2,
        JobKind::SendMessage | JobKind::BulkSend => 4,
    }
}

/// The handler every worker is built with: the job record says which kind runs.
pub async fn handle(task: JobTask, deps: Data<Deps>) -> Result<(), BoxDynError> {
    let id = JobId(task.job_id);
    let span = tracing::info_span!("job", job_id = %id, kind = tracing::field::Empty, user_id = tracing::field::Empty);
    async move {
        let Some(record) = jobs::start_run(&deps.db, &id).await? else {
            tracing::info!("job already final; nothing to do");
            return Ok(());
        };
        let span = tracing::Span::current();
        span.record("kind", record.kind.as_str());
        span.record("user_id", record.user_id.0);
        let Some(kind) = JobKind::parse(&record.kind) else {
            jobs::finish(
                &deps.db,
                &id,
                JobStatus::Failed,
                None,
                Some("unknown job kind"),
            )
            .await?;
            return Err(AbortError::new(std::io::Error::other("unknown job kind")).into());
        };
        let policy = kind.retry();
        tracing::info!(
            attempt = record.attempts,
            max_attempts = policy.max_attempts,
            "job started"
        );
        let outcome = match kind {
            JobKind::ImportCsv => imports::run(&deps, &record).await,
            JobKind::SendMessage | JobKind::BulkSend => sends::run(&deps, &record).await,
        };
        match outcome {
            Ok(Outcome::Succeeded(result)) => {
                jobs::finish(&deps.db, &id, JobStatus::Succeeded, Some(&result), None).await?;
                tracing::info!("job succeeded");
                after_final(&deps, kind, &record).await;
                Ok(())
            }
            Ok(Outcome::Cancelled(result)) => {
                jobs::finish(
                    &deps.db,
                    &id,
                    JobStatus::Cancelled,
                    Some(&result),
                    Some("cancelled on request"),
                )
                .await?;
                tracing::info!("job cancelled");
                after_final(&deps, kind, &record).await;
                Ok(())
            }
            Err(JobError::Permanent(reason)) => {
                give_up(&deps, kind, &record, &reason).await;
                jobs::finish(&deps.db, &id, JobStatus::Failed, None, Some(&reason)).await?;
                tracing::warn!(%reason, "job failed permanently");
                after_final(&deps, kind, &record).await;
                Err(AbortError::new(std::io::Error::other(reason)).into())
            }
            Err(JobError::Transient(e)) if record.attempts >= i64::from(policy.max_attempts) => {
                let reason = format!("gave up after {} attempts: {e:#}", record.attempts);
                give_up(&deps, kind, &record, &reason).await;
                jobs::finish(&deps.db, &id, JobStatus::Failed, None, Some(&reason)).await?;
                tracing::error!(%reason, "job failed");
                after_final(&deps, kind, &record).await;
                // Recorded as failed: the backend must not run it again.
                Ok(())
            }
            Err(JobError::Transient(e)) => {
                let reason = format!("attempt {} failed, will retry: {e:#}", record.attempts);
                jobs::will_retry(&deps.db, &id, &reason).await?;
                tracing::warn!(%reason, "job will retry");
                Err(e.into())
            }
        }
    }
    .instrument(span)
    .await
}

/// Cleanup once a job is final: an import's uploaded file is no longer needed.
async fn after_final(deps: &Deps, kind: JobKind, record: &JobRecord) {
    match kind {
        JobKind::ImportCsv => imports::cleanup(deps, record).await,
        JobKind::SendMessage | JobKind::BulkSend => {}
    }
}

/// A job failed for good: what it was doing must not stay pending (a send job's messages
/// that never reached the queue are failed with the reason).
async fn give_up(deps: &Deps, kind: JobKind, record: &JobRecord, reason: &str) {
    match kind {
        JobKind::ImportCsv => {}
        JobKind::SendMessage | JobKind::BulkSend => sends::give_up(deps, record, reason).await,
    }
}

/// Waits until the job is final or `timeout` passes; returns the record as last seen.
pub async fn wait_final(
    db: &Db,
    user: crate::domain::UserId,
    id: &JobId,
    timeout: Duration,
) -> anyhow::Result<JobRecord> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let record = jobs::get(db, user, id).await?;
        if record.status().is_final() || tokio::time::Instant::now() >= deadline {
            return Ok(record);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

//! Running one job of a kind: start its record, run the kind, record the outcome. Retries are
//! decided here, from the kind's [`RetryPolicy`](super::RetryPolicy), so every backend (whose
//! own retry rules differ) ends a job the same way.

use apalis::prelude::{AbortError, BoxDynError};
use tracing::Instrument;

use super::{
    kind::{JobError, JobKind, Outcome, RunContext},
    record::{self, JobId, JobStatus},
};
use crate::{db::Db, telemetry};

/// Runs job `id` as a `K`. What apalis gets back decides what it does with the task:
/// `Ok` (done, including a failure recorded as final), an [`AbortError`] (never again), or
/// another error (run it again: after a backoff, or on the next worker when this one is
/// shutting down).
pub async fn execute<K: JobKind>(
    kind: &K,
    db: &Db,
    id: JobId,
    ctx: &RunContext,
) -> Result<(), BoxDynError> {
    let span =
        tracing::info_span!("job", job_id = %id, kind = K::NAME, user_id = tracing::field::Empty);
    async move {
        // Taken while shutting down: leave it untouched for the next worker.
        ctx.check_shutdown()?;
        let Some(job) = record::start(db, &id).await? else {
            tracing::info!("job already final; nothing to do");
            return Ok(());
        };
        tracing::Span::current().record("user_id", job.user_id.0);
        if job.kind != K::NAME {
            let reason = format!("a {} job reached the {} queue", job.kind, K::NAME);
            record::finish(db, &id, JobStatus::Failed, None, Some(&reason)).await?;
            return Err(AbortError::new(std::io::Error::other(reason)).into());
        }
        let policy = K::RETRY;
        telemetry::job(K::NAME, "running");
        let started = std::time::Instant::now();
        tracing::info!(
            attempt = job.attempts,
            max_attempts = policy.max_attempts,
            "job started"
        );
        match kind.run(&job, ctx).await {
            Ok(Outcome::Succeeded(result)) => {
                record::finish(db, &id, JobStatus::Succeeded, Some(&result), None).await?;
                telemetry::job_run(K::NAME, "succeeded", started.elapsed());
                tracing::info!("job succeeded");
                kind.after_final(&job).await;
                Ok(())
            }
            Ok(Outcome::Cancelled(result)) => {
                record::finish(
                    db,
                    &id,
                    JobStatus::Cancelled,
                    Some(&result),
                    Some("cancelled on request"),
                )
                .await?;
                telemetry::job_run(K::NAME, "cancelled", started.elapsed());
                tracing::info!("job cancelled");
                kind.after_final(&job).await;
                Ok(())
            }
            Err(JobError::Permanent(reason)) => {
                kind.give_up(&job, &reason).await;
                record::finish(db, &id, JobStatus::Failed, None, Some(&reason)).await?;
                telemetry::job_run(K::NAME, "failed", started.elapsed());
                tracing::warn!(%reason, "job failed permanently");
                kind.after_final(&job).await;
                Err(AbortError::new(std::io::Error::other(reason)).into())
            }
            Err(JobError::Transient(e)) if job.attempts >= i64::from(policy.max_attempts) => {
                let reason = format!("gave up after {} attempts: {e:#}", job.attempts);
                kind.give_up(&job, &reason).await;
                record::finish(db, &id, JobStatus::Failed, None, Some(&reason)).await?;
                telemetry::job_run(K::NAME, "failed", started.elapsed());
                tracing::error!(%reason, "job failed");
                kind.after_final(&job).await;
                // Recorded as failed: the backend must not run it again.
                Ok(())
            }
            Err(JobError::Transient(e)) => {
                let reason = format!("attempt {} failed, will retry: {e:#}", job.attempts);
                record::will_retry(db, &id, &reason).await?;
                telemetry::job_run(K::NAME, "queued", started.elapsed());
                tracing::warn!(%reason, "job will retry");
                Err(e.into())
            }
            Err(JobError::Interrupted) => {
                record::release(db, &id).await?;
                telemetry::job_run(K::NAME, "queued", started.elapsed());
                tracing::info!("job interrupted by shutdown; it resumes on the next worker");
                Err(JobError::Interrupted.into())
            }
        }
    }
    .instrument(span)
    .await
}

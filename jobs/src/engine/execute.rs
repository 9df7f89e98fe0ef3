//! Running jobs of a kind: start their records, run the kind, record the outcomes. Retries are
//! decided here, from the kind's [`RetryPolicy`](super::RetryPolicy), so every backend (whose
//! own retry rules differ) ends a job the same way.
//!
//! Jobs run in groups ([`JobKind::BATCH`]): a group's records start in one statement and the
//! runs that ended well are recorded in one more, whatever the group's size. A kind that runs
//! its jobs alone goes through the same path with groups of one.

use std::{collections::HashMap, time::Instant};

use apalis::prelude::{AbortError, BoxDynError};
use tracing::Instrument;

use super::{
    kind::{JobError, JobKind, Outcome, RunContext},
    record::{self, Finished, JobId, JobRecord, JobStatus},
};
use crate::{db::Db, telemetry};

/// What apalis gets back for a task: `Ok` (done, including a failure recorded as final), an
/// [`AbortError`] (never again), or another error (run it again: after a backoff, or on the
/// next worker when this one is shutting down).
pub type TaskAnswer = Result<(), BoxDynError>;

/// Runs job `id` as a `K`.
pub async fn execute<K: JobKind>(kind: &K, db: &Db, id: JobId, ctx: &RunContext) -> TaskAnswer {
    execute_many(kind, db, std::slice::from_ref(&id), ctx)
        .await
        .pop()
        .unwrap_or(Ok(()))
}

/// Runs jobs `ids` as `K`s, together; one answer per id, in order.
pub async fn execute_many<K: JobKind>(
    kind: &K,
    db: &Db,
    ids: &[JobId],
    ctx: &RunContext,
) -> Vec<TaskAnswer> {
    // Taken while shutting down: leave them untouched for the next worker.
    if ctx.shutdown.is_cancelled() {
        return ids
            .iter()
            .map(|_| Err(JobError::Interrupted.into()))
            .collect();
    }
    let started = match record::start_many(db, ids).await {
        Ok(started) => started,
        Err(e) => {
            let reason = format!("{:#}", anyhow::Error::new(e).context("starting the jobs"));
            tracing::warn!(kind = K::NAME, jobs = ids.len(), %reason, "jobs not started; they will run again");
            return ids.iter().map(|_| Err(reason.clone().into())).collect();
        }
    };
    let mut answers: HashMap<JobId, TaskAnswer> = HashMap::with_capacity(ids.len());
    let mut jobs = Vec::with_capacity(started.len());
    for job in started {
        if job.kind == K::NAME {
            telemetry::job(K::NAME, "running");
            span(&job).in_scope(|| {
                tracing::info!(
                    attempt = job.attempts,
                    max_attempts = K::RETRY.max_attempts,
                    "job started"
                )
            });
            jobs.push(job);
        } else {
            let reason = format!("a {} job reached the {} queue", job.kind, K::NAME);
            let answer =
                match record::finish(db, &job.id, JobStatus::Failed, None, Some(&reason)).await {
                    Ok(()) => Err(AbortError::new(std::io::Error::other(reason)).into()),
                    Err(e) => Err(e.into()),
                };
            answers.insert(job.id, answer);
        }
    }
    let clock = Instant::now();
    let outcomes = if jobs.is_empty() {
        vec![]
    } else {
        kind.run_batch(&jobs, ctx).await
    };
    debug_assert_eq!(outcomes.len(), jobs.len(), "one outcome per job");

    // The runs that ended well are recorded together; the others one by one.
    let mut ended: Vec<(&JobRecord, JobStatus, serde_json::Value)> = vec![];
    for (job, outcome) in jobs.iter().zip(outcomes) {
        match outcome {
            Ok(Outcome::Succeeded(result)) => ended.push((job, JobStatus::Succeeded, result)),
            Ok(Outcome::Cancelled(result)) => ended.push((job, JobStatus::Cancelled, result)),
            Err(e) => {
                let answer = settle_error(kind, db, job, e, clock)
                    .instrument(span(job))
                    .await;
                answers.insert(job.id.clone(), answer);
            }
        }
    }
    let runs: Vec<Finished> = ended
        .iter()
        .map(|(job, status, result)| Finished {
            id: &job.id,
            status: *status,
            result: Some(result),
            error: (*status == JobStatus::Cancelled).then_some("cancelled on request"),
        })
        .collect();
    match record::finish_many(db, &runs).await {
        Ok(()) => {
            for (job, status, _) in &ended {
                telemetry::job_run(K::NAME, status.as_str(), clock.elapsed());
                span(job).in_scope(|| match status {
                    JobStatus::Cancelled => tracing::info!("job cancelled"),
                    _ => tracing::info!("job succeeded"),
                });
                kind.after_final(job).instrument(span(job)).await;
                answers.insert(job.id.clone(), Ok(()));
            }
        }
        Err(e) => {
            // The work is done but not recorded: the jobs run again, and a kind's run is
            // idempotent (it resumes from what is committed).
            let reason = format!(
                "{:#}",
                anyhow::Error::new(e).context("recording the jobs' end")
            );
            tracing::warn!(kind = K::NAME, jobs = ended.len(), %reason, "jobs will run again");
            for (job, ..) in &ended {
                answers.insert(job.id.clone(), Err(reason.clone().into()));
            }
        }
    }
    ids.iter()
        .map(|id| answers.remove(id).unwrap_or(Ok(())))
        .collect()
}

/// The span every log line about `job` is in.
fn span(job: &JobRecord) -> tracing::Span {
    tracing::info_span!("job", job_id = %job.id, kind = %job.kind, user_id = job.user_id.0)
}

/// Records a run that did not end well: failed for good, to retry, or interrupted.
async fn settle_error<K: JobKind>(
    kind: &K,
    db: &Db,
    job: &JobRecord,
    error: JobError,
    clock: Instant,
) -> TaskAnswer {
    let policy = K::RETRY;
    match error {
        JobError::Permanent(reason) => {
            kind.give_up(job, &reason).await;
            record::finish(db, &job.id, JobStatus::Failed, None, Some(&reason)).await?;
            telemetry::job_run(K::NAME, "failed", clock.elapsed());
            tracing::warn!(%reason, "job failed permanently");
            kind.after_final(job).await;
            Err(AbortError::new(std::io::Error::other(reason)).into())
        }
        JobError::Transient(e) if job.attempts >= i64::from(policy.max_attempts) => {
            let reason = format!("gave up after {} attempts: {e:#}", job.attempts);
            kind.give_up(job, &reason).await;
            record::finish(db, &job.id, JobStatus::Failed, None, Some(&reason)).await?;
            telemetry::job_run(K::NAME, "failed", clock.elapsed());
            tracing::error!(%reason, "job failed");
            kind.after_final(job).await;
            // Recorded as failed: the backend must not run it again.
            Ok(())
        }
        JobError::Transient(e) => {
            let reason = format!("attempt {} failed, will retry: {e:#}", job.attempts);
            record::will_retry(db, &job.id, &reason).await?;
            telemetry::job_run(K::NAME, "queued", clock.elapsed());
            tracing::warn!(%reason, "job will retry");
            Err(e.into())
        }
        JobError::Interrupted => {
            record::release(db, &job.id).await?;
            telemetry::job_run(K::NAME, "queued", clock.elapsed());
            tracing::info!("job interrupted by shutdown; it resumes on the next worker");
            Err(JobError::Interrupted.into())
        }
    }
}

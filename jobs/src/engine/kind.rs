//! The contract a job kind implements. Everything that makes a kind what it is (its stable
//! name, its retry policy, how many run at once, how it runs, what happens when it gives up or
//! ends) is declared once, in the kind's own file; the engine runs any kind through this
//! trait and knows none of them.

use std::{future::Future, time::Duration};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::record::{JobId, JobRecord, NewJob};
use crate::{db::StoreError, domain::UserId};

/// One kind of job. A kind is a value holding what its runs need (pools, stores, settings),
/// cloned into its worker.
pub trait JobKind: Clone + Send + Sync + 'static {
    /// Stable name: the API's `kind`, the record's `kind` and the name of the kind's apalis
    /// queue. Never rename it: queued jobs would be orphaned.
    const NAME: &'static str;
    /// How often a job runs before it is failed, and the wait between runs.
    const RETRY: RetryPolicy;
    /// Jobs of this kind one worker process runs at once.
    const CONCURRENCY: usize;
    /// Jobs one run may take together. 1: each job runs alone. A kind whose jobs are many and
    /// small (a send) takes them in groups, so that a thousand jobs cost a few statements
    /// instead of a few thousand; its [`run_batch`](JobKind::run_batch) does the group's
    /// work at once.
    const BATCH: usize = 1;
    /// Who stores jobs of this kind, and so which role runs them: clients (the `worker` role)
    /// or the sweeper's schedule (the `sweep` role).
    const STORED_BY: StoredBy = StoredBy::Clients;

    /// Runs (or resumes, from the record's checkpoint) one job.
    fn run(
        &self,
        job: &JobRecord,
        ctx: &RunContext,
    ) -> impl Future<Output = Result<Outcome, JobError>> + Send;

    /// Runs a group of jobs (at most [`BATCH`](JobKind::BATCH)); one outcome per job, in
    /// order. By default each job runs alone, one after the other.
    fn run_batch(
        &self,
        jobs: &[JobRecord],
        ctx: &RunContext,
    ) -> impl Future<Output = Vec<Result<Outcome, JobError>>> + Send {
        async move {
            let mut outcomes = Vec::with_capacity(jobs.len());
            for job in jobs {
                outcomes.push(self.run(job, ctx).await);
            }
            outcomes
        }
    }

    /// The job failed for good: what it was doing must not stay pending. Runs before the
    /// record is marked failed.
    fn give_up(&self, job: &JobRecord, reason: &str) -> impl Future<Output = ()> + Send {
        let _ = (job, reason);
        async {}
    }

    /// The job is final (succeeded, failed or cancelled): release what it held.
    fn after_final(&self, job: &JobRecord) -> impl Future<Output = ()> + Send {
        let _ = job;
        async {}
    }
}

impl NewJob {
    /// A job of kind `K`: only a kind's own name can be stored.
    pub fn of<K: JobKind>(id: JobId, user: UserId, payload: Value) -> Self {
        NewJob {
            id,
            user,
            kind: K::NAME,
            payload,
            total: None,
        }
    }
}

/// Who stores a kind's jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredBy {
    /// The API, for a client: the `worker` role runs them.
    Clients,
    /// The sweeper, on its schedule: the `sweep` role runs them, beside the sweeper.
    Schedule,
}

/// How often a job runs before it is failed, and how long it waits between runs.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Runs in all, the first included. A run cut short by a crash counts as one.
    pub max_attempts: u32,
    /// Wait before the second run; doubles for each later one, up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

/// What a run is given besides its record.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// Cancelled when the worker is shutting down: a long run stops at its next safe point
    /// (after a committed batch) and returns [`JobError::Interrupted`], to resume elsewhere.
    pub shutdown: CancellationToken,
}

impl RunContext {
    /// `Err(Interrupted)` once the worker is shutting down; call it between batches.
    pub fn check_shutdown(&self) -> Result<(), JobError> {
        if self.shutdown.is_cancelled() {
            Err(JobError::Interrupted)
        } else {
            Ok(())
        }
    }
}

/// How a run ended, as the kind reports it.
#[derive(Debug)]
pub enum Outcome {
    Succeeded(Value),
    /// Stopped on the client's request; committed work stays and the result says where it
    /// stopped.
    Cancelled(Value),
}

/// Why a run did not end.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Running again cannot help (a file with no usable header): fail at once.
    #[error("{0}")]
    Permanent(String),
    /// Worth another run (a database or storage hiccup).
    #[error(transparent)]
    Transient(#[from] anyhow::Error),
    /// Stopped at a safe point because the worker is shutting down; resumes on another run.
    #[error("interrupted by a shutdown; the job resumes from its checkpoint")]
    Interrupted,
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        JobError::Transient(anyhow::Error::new(e).context("database"))
    }
}

impl From<StoreError> for JobError {
    fn from(e: StoreError) -> Self {
        JobError::Transient(anyhow::Error::new(e))
    }
}

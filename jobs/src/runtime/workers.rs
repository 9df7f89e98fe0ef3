//! The workers service: one apalis worker per job kind, each supervised. A worker whose job
//! backend fails (a database outage, pool timeouts, a lost Redis connection) is built again
//! after a backoff, so a transient error never ends job processing; only cancellation does.
//!
//! apalis hands a worker one task at a time. For a kind that runs its jobs in groups
//! ([`JobKind::BATCH`]), each task's handler hands its job to the worker's [`Grouped`] and
//! waits for its answer; whatever jobs are waiting run together.

use std::time::{Duration, Instant};

use anyhow::Context;
use apalis::{
    layers::retry::{
        HasherRng, RetryPolicy as ApalisRetry,
        backoff::{ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff},
    },
    prelude::*,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Kind;
use crate::{
    db::Db,
    engine::{
        JobBackend, JobId, JobKind, RetryPolicy, RunContext,
        backend::{JobTask, Store},
        execute::{TaskAnswer, execute, execute_many},
        group::{Grouped, Limits},
        processes,
    },
    kinds::Deps,
    with_storage,
};

/// First wait before a failed worker is built again; doubles up to [`RESTART_MAX`].
const RESTART_FIRST: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(30);
/// A worker that ran this long before failing starts its backoff over.
const RESTART_RESET: Duration = Duration::from_secs(60);
/// Groups of a batching kind one worker runs at once: while one group waits on the database
/// or the queue, the next is being read.
const PARALLEL_GROUPS: usize = 2;
/// A batching kind's groups start at most this often. Under a steady stream of jobs each group
/// then carries what arrived in the span, and the group's statements (and apalis's
/// acknowledgement of its tasks) are paid once for all of them: fewer, fuller groups
/// (BENCHMARKS.md, the load bench). A job that finds no group started this recently runs at
/// once.
const GROUP_SPACING: Duration = Duration::from_millis(20);

pub struct Workers {
    backend: JobBackend,
    deps: Deps,
    /// The kinds this process runs.
    kinds: Vec<Kind>,
}

/// What a worker's handler gets: the kind, the database, the run context, and for a kind
/// that runs in groups, where its groups take jobs.
#[derive(Clone)]
struct KindRunner<K> {
    kind: K,
    db: Db,
    ctx: RunContext,
    groups: Option<Grouped<JobId, TaskAnswer>>,
}

/// The handler every worker of kind `K` is built with: runs the task's jobs (together with
/// other tasks' jobs, for a kind that runs in groups).
async fn run_task<K: JobKind>(task: JobTask, runner: Data<KindRunner<K>>) -> TaskAnswer {
    let jobs = task.jobs();
    match &runner.groups {
        None if jobs.len() == 1 => {
            let id = jobs.into_iter().next().expect("one job");
            execute(&runner.kind, &runner.db, id, &runner.ctx).await
        }
        None => one_answer(execute_many(&runner.kind, &runner.db, &jobs, &runner.ctx).await),
        Some(groups) => {
            let answers =
                futures::future::join_all(jobs.into_iter().map(|id| groups.call(id))).await;
            one_answer(
                answers
                    .into_iter()
                    .map(|a| a.map_err(BoxDynError::from).and_then(|a| a))
                    .collect(),
            )
        }
    }
}

/// What apalis is told of a task from its jobs' answers: run it again if any job is to run
/// again (the jobs already final are skipped then); never again if none ended well and one
/// must never run again; done otherwise (the records say how each job ended).
fn one_answer(answers: Vec<TaskAnswer>) -> TaskAnswer {
    let mut abort = None;
    let mut any_ok = false;
    for answer in answers {
        match answer {
            Ok(()) => any_ok = true,
            Err(e) if e.is::<AbortError>() => abort = Some(e),
            Err(e) => return Err(e),
        }
    }
    match abort {
        Some(e) if !any_ok => Err(e),
        _ => Ok(()),
    }
}

/// Runs the jobs its handlers hand in, in groups of at most `K::BATCH`.
fn groups<K: JobKind>(runner: &KindRunner<K>) -> Grouped<JobId, TaskAnswer> {
    let runner = runner.clone();
    let limits = Limits {
        max: K::BATCH,
        parallel: PARALLEL_GROUPS,
        waiting: K::CONCURRENCY,
        spacing: GROUP_SPACING,
    };
    Grouped::start(limits, move |ids: Vec<JobId>| {
        let runner = runner.clone();
        async move { execute_many(&runner.kind, &runner.db, &ids, &runner.ctx).await }
    })
}

/// A name unique to this process and start: apalis refuses two live workers of one name.
fn worker_name(kind: &str) -> String {
    let host = processes::host();
    let start = &ulid::Ulid::generate().to_string()[20..];
    format!("{kind}-{host}-{}-{start}", std::process::id())
}

fn backoff(policy: RetryPolicy) -> anyhow::Result<ExponentialBackoff<HasherRng>> {
    Ok(ExponentialBackoffMaker::new(
        policy.first_backoff,
        policy.max_backoff,
        0.2,
        HasherRng::default(),
    )
    .context("building the retry backoff")?
    .make_backoff())
}

impl Workers {
    /// Workers of `kinds` (the `worker` role runs the clients' kinds, the `sweep` role the
    /// sweeps, `all` every kind).
    pub fn new(backend: JobBackend, deps: Deps, kinds: &[Kind]) -> Self {
        Workers {
            backend,
            deps,
            kinds: kinds.to_vec(),
        }
    }

    pub(super) fn runs(&self, kind: Kind) -> bool {
        self.kinds.contains(&kind)
    }

    pub(super) fn deps(&self) -> &Deps {
        &self.deps
    }

    /// Runs every kind's worker until `cancel`, then lets in-flight jobs reach a safe point
    /// (a job cut short resumes from its checkpoint on the next worker). Returns an error only
    /// when a worker cannot be built at all.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut set = JoinSet::new();
        self.start_all(&mut set, &cancel);
        if let Store::Postgres(pool) = &self.backend.store {
            let wakeups = self.backend.wakeups.clone();
            let (pool, cancel) = (pool.clone(), cancel.clone());
            set.spawn(async move {
                wakeups.listen(pool, cancel).await;
                Ok(())
            });
        }
        tracing::info!(
            backend = self.backend.name(),
            kinds = ?self.kinds.iter().map(|k| k.name()).collect::<Vec<_>>(),
            "workers running"
        );
        while let Some(done) = set.join_next().await {
            done.context("a worker panicked")??;
        }
        Ok(())
    }

    /// Starts the supervised worker of `kind`; `cancel` is also its jobs' shutdown signal
    /// (running jobs stop at their next safe point).
    pub(super) fn start<K: JobKind>(
        &self,
        set: &mut JoinSet<anyhow::Result<()>>,
        kind: K,
        cancel: &CancellationToken,
    ) {
        let runner = KindRunner {
            kind,
            db: self.deps.db.clone(),
            ctx: RunContext {
                shutdown: cancel.clone(),
            },
            groups: None,
        };
        set.spawn(supervise(runner, self.backend.clone()));
    }
}

/// Runs the worker of `K`, building it again after a backoff whenever it ends before the
/// shutdown.
async fn supervise<K: JobKind>(runner: KindRunner<K>, backend: JobBackend) -> anyhow::Result<()> {
    let cancel = runner.ctx.shutdown.clone();
    let retries = K::RETRY.max_attempts.saturating_sub(1) as usize;
    let mut wait = RESTART_FIRST;
    // A batching kind fetches a group's worth of tasks at a time, the others what they run.
    let fetch = if K::BATCH > 1 {
        K::BATCH
    } else {
        K::CONCURRENCY
    };
    loop {
        let started = Instant::now();
        let retry = ApalisRetry::retries(retries).with_backoff(backoff(K::RETRY)?);
        let stop = cancel.clone();
        let mut runner = runner.clone();
        // The groups end by themselves once the worker (and so every handler) is gone.
        runner.groups = (K::BATCH > 1).then(|| groups(&runner));
        let ended = with_storage!(&backend, K::NAME, fetch, storage => {
            let closer = storage.closer();
            WorkerBuilder::new(worker_name(K::NAME))
                .backend(storage)
                // Concurrency first: a retry then reuses its job's slot.
                .concurrency(K::CONCURRENCY)
                .retry(retry)
                .data(runner)
                .build(run_task::<K>)
                .run_until(async move {
                    stop.cancelled().await;
                    // The jobs under way see the same token; what the backend has under
                    // way is settled before apalis stops polling it, so that those jobs can
                    // still commit (see `closing`).
                    closer.close().await;
                    Ok::<(), std::io::Error>(())
                })
                .await
        });
        if cancel.is_cancelled() {
            return Ok(());
        }
        if started.elapsed() >= RESTART_RESET {
            wait = RESTART_FIRST;
        }
        let error = match ended {
            Ok(()) => "it stopped by itself".to_owned(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(kind = K::NAME, %error, retry_in = ?wait, "worker lost its job backend; building it again");
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(RESTART_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn abort() -> TaskAnswer {
        Err(AbortError::new(std::io::Error::other("bad payload")).into())
    }

    fn retry() -> TaskAnswer {
        Err("the queue is down".into())
    }

    #[test]
    fn a_task_runs_again_while_one_of_its_jobs_is_to_run_again() {
        assert!(one_answer(vec![Ok(()), retry(), abort()]).is_err_and(|e| !e.is::<AbortError>()));
        assert!(
            one_answer(vec![Ok(()), abort()]).is_ok(),
            "the failure is recorded"
        );
        assert!(one_answer(vec![abort()]).is_err_and(|e| e.is::<AbortError>()));
        assert!(one_answer(vec![Ok(()), Ok(())]).is_ok());
    }
}

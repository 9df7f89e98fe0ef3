//! The job backend: apalis on PostgreSQL, SQLite or Redis.
//!
//! Guarantees differ by backend, and this is where they are made:
//! - PostgreSQL and SQLite: the job record, the apalis task and the business rows commit in
//!   one transaction ([`JobTx::enqueue`]): a job exists if and only if its write committed.
//! - Redis cannot join an SQL transaction, so the record is an outbox row: it commits with the
//!   business rows (`dispatched_at` NULL), is pushed to Redis right after the commit, and
//!   [`JobQueue::relay`] re-pushes any row a crash left behind. Pushes carry the job id as
//!   apalis's idempotency key and workers skip final jobs, so a double push runs once.

use std::{future::Future, time::Duration};

use anyhow::Context;
use apalis::{
    layers::retry::{
        HasherRng, RetryPolicy as ApalisRetry,
        backoff::{ExponentialBackoffMaker, MakeBackoff},
    },
    prelude::*,
};
use apalis_postgres::PostgresStorage;
use apalis_redis::RedisStorage;
use apalis_sqlite::SqliteStorage;
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres, Sqlite, SqlitePool};

use super::{JobId, JobKind, NewJob};
use crate::{
    db::Db,
    domain::Timestamp,
    on_db,
    worker::{Deps, handle},
};

/// What an apalis task carries: the job id. Everything else is in `job_records`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobTask {
    pub job_id: String,
}

/// Which apalis storage runs the jobs.
#[derive(Clone)]
pub enum JobQueue {
    Postgres(PgPool),
    Sqlite(SqlitePool),
    /// Queues are named `{prefix}:{kind}`: deployments (or test runs) sharing one Redis
    /// never take each other's tasks.
    Redis {
        conn: apalis_redis::ConnectionManager,
        prefix: String,
    },
}

/// How often an idle worker looks for new tasks.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// A worker heartbeats this often; after [`MISSED_HEARTBEATS`] silent beats its tasks are
/// handed to another worker. 10 s × 3 rescues a killed worker's job within 30-40 s.
const HEARTBEAT: Duration = Duration::from_secs(10);
const MISSED_HEARTBEATS: usize = 3;
/// Outbox rows younger than this are left to the API's own push after commit.
const RELAY_GRACE: chrono::TimeDelta = chrono::TimeDelta::seconds(2);

impl JobQueue {
    /// Picks the backend: `JOB_BACKEND` when given, else the one the database implies.
    pub async fn connect(
        backend: Option<&str>,
        db: &Db,
        redis_url: Option<&str>,
        redis_prefix: &str,
    ) -> anyhow::Result<Self> {
        let queue = match (backend, db) {
            (None | Some("postgres"), Db::Postgres(pool)) => JobQueue::Postgres(pool.clone()),
            (None | Some("sqlite"), Db::Sqlite(pool)) => JobQueue::Sqlite(pool.clone()),
            (Some("redis"), _) => {
                let url = redis_url.context("JOB_BACKEND=redis needs REDIS_URL")?;
                let conn = apalis_redis::connect(url)
                    .await
                    .with_context(|| format!("connecting the job backend to Redis at {url}"))?;
                JobQueue::Redis {
                    conn,
                    prefix: redis_prefix.to_owned(),
                }
            }
            (Some(other), db) => anyhow::bail!(
                "JOB_BACKEND={other} does not work with a {} DATABASE_URL (use {}, or redis)",
                db.backend_name(),
                db.backend_name()
            ),
        };
        Ok(queue)
    }

    pub fn name(&self) -> &'static str {
        match self {
            JobQueue::Postgres(_) => "postgres",
            JobQueue::Sqlite(_) => "sqlite",
            JobQueue::Redis { .. } => "redis",
        }
    }

    /// Applies apalis's own migrations beside ours. On PostgreSQL they live in schema
    /// `apalis` with their own history table; on SQLite they share `_sqlx_migrations` with
    /// ours, so each migrator is told to ignore the other's versions. apalis-sqlite's
    /// `setup()` is not used: it would turn `synchronous` off, and a 202 must survive a crash.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        match self {
            JobQueue::Postgres(pool) => PostgresStorage::<()>::setup(pool)
                .await
                .context("applying apalis-postgres migrations")?,
            JobQueue::Sqlite(pool) => {
                let mut migrator = SqliteStorage::<()>::migrations();
                migrator.set_ignore_missing(true);
                migrator
                    .run(pool)
                    .await
                    .context("applying apalis-sqlite migrations")?;
            }
            JobQueue::Redis { .. } => {}
        }
        Ok(())
    }

    /// Right after the transaction that stored `job` committed: for Redis, push it now rather
    /// than waiting for the relay. A failure here loses nothing (the outbox row stays).
    pub async fn after_commit(&self, db: &Db, job: &NewJob) {
        if let JobQueue::Redis { conn, prefix } = self
            && let Err(e) = push_redis(conn.clone(), prefix, db, &job.id, job.kind).await
        {
            tracing::warn!(job_id = %job.id, error = format!("{e:#}"), "push to Redis failed; the relay will retry");
        }
    }

    /// Pushes outbox rows that a crash between commit and push left undispatched.
    pub async fn relay(&self, db: &Db) -> anyhow::Result<usize> {
        let JobQueue::Redis { conn, prefix } = self else {
            return Ok(0);
        };
        let cutoff = Timestamp(chrono::Utc::now() - RELAY_GRACE);
        let rows: Vec<(String, String)> = on_db!(db, pool => sqlx::query_as(
            "SELECT id, kind FROM job_records WHERE dispatched_at IS NULL AND created_at < $1
             ORDER BY created_at LIMIT 500",
        )
        .bind(cutoff)
        .fetch_all(pool)
        .await)?;
        let mut pushed = 0;
        for (id, kind) in rows {
            let Some(kind) = JobKind::parse(&kind) else {
                continue;
            };
            push_redis(conn.clone(), prefix, db, &JobId(id), kind).await?;
            pushed += 1;
        }
        Ok(pushed)
    }
}

fn task(job: &JobId) -> anyhow::Result<Task<Vec<u8>>> {
    let ulid: ulid::Ulid = job.0.parse().context("job ids are ULIDs")?;
    let args = serde_json::to_vec(&JobTask {
        job_id: job.0.clone(),
    })?;
    Ok(TaskBuilder::new(args)
        .task_id(TaskId::from_ulid(ulid))
        .idempotency_key(&job.0)
        // A backstop only: our handler records the final failure itself after
        // `RetryPolicy::max_attempts` runs and then stops the task.
        .max_attempts(50)
        .build())
}

async fn push_redis(
    conn: apalis_redis::ConnectionManager,
    prefix: &str,
    db: &Db,
    job: &JobId,
    kind: JobKind,
) -> anyhow::Result<()> {
    let mut conn = conn;
    let config = redis_config(prefix, kind);
    apalis_redis::queries::push_tasks(&mut conn, &config, &[task(job)?])
        .await
        .with_context(|| format!("pushing job {job} to Redis"))?;
    let now = Timestamp::now();
    on_db!(db, pool => sqlx::query("UPDATE job_records SET dispatched_at = $2 WHERE id = $1")
        .bind(&job.0)
        .bind(now)
        .execute(pool)
        .await
        .map(|_| ()))?;
    Ok(())
}

fn redis_config(prefix: &str, kind: JobKind) -> apalis_redis::Config {
    apalis_redis::Config::default()
        .queue(format!("{prefix}:{}", kind.as_str()))
        .heartbeat_interval(HEARTBEAT)
        .missed_heartbeats(MISSED_HEARTBEATS)
}

/// Why a job could not be enqueued.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// The row the job is about is not the user's (nothing was stored).
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    #[error("job backend: {0:#}")]
    Backend(anyhow::Error),
}

/// A transaction (PostgreSQL or SQLite) in which a job can be enqueued beside the rows it is
/// about. Call [`JobQueue::after_commit`] once the transaction committed.
pub trait JobTx {
    fn enqueue(
        &mut self,
        queue: &JobQueue,
        job: &NewJob,
    ) -> impl Future<Output = Result<(), EnqueueError>> + Send;
}

/// The body of [`JobTx::enqueue`] for one SQL backend: insert the record; if the job backend
/// is this same database (`$own`), push the apalis task with `$push` in the transaction; if it
/// is Redis, leave the record as an outbox row for `after_commit` and the relay.
macro_rules! enqueue_in_tx {
    ($tx:ident, $queue:expr, $job:expr, $own:pat, |$task:ident| $push:expr) => {{
        let (queue, job): (&JobQueue, &NewJob) = ($queue, $job);
        let now = Timestamp::now();
        let shared = matches!(queue, $own);
        sqlx::query(
            "INSERT INTO job_records (id, user_id, kind, status, payload, created_at, dispatched_at)
             VALUES ($1, $2, $3, 'queued', $4, $5, $6)",
        )
        .bind(&job.id.0)
        .bind(job.user)
        .bind(job.kind.as_str())
        .bind(sqlx::types::Json(&job.payload))
        .bind(now)
        .bind(shared.then_some(now))
        .execute(&mut **$tx)
        .await?;
        match queue {
            $own => {
                let $task = task(&job.id).map_err(EnqueueError::Backend)?;
                $push.await.map_err(|e| EnqueueError::Backend(anyhow::Error::new(e)))?;
                Ok(())
            }
            JobQueue::Redis { .. } => Ok(()),
            other => Err(EnqueueError::Backend(anyhow::anyhow!(
                "a {} job backend cannot take jobs from a {} transaction",
                other.name(),
                stringify!($own)
            ))),
        }
    }};
}

impl JobTx for sqlx::Transaction<'_, Postgres> {
    async fn enqueue(&mut self, queue: &JobQueue, job: &NewJob) -> Result<(), EnqueueError> {
        enqueue_in_tx!(self, queue, job, JobQueue::Postgres(_), |task| {
            apalis_postgres::queries::push_tasks(&mut **self, job.kind.as_str(), vec![task])
        })
    }
}

impl JobTx for sqlx::Transaction<'_, Sqlite> {
    async fn enqueue(&mut self, queue: &JobQueue, job: &NewJob) -> Result<(), EnqueueError> {
        enqueue_in_tx!(self, queue, job, JobQueue::Sqlite(_), |task| {
            apalis_sqlite::queries::push_tasks(
                &mut **self,
                job.kind.as_str(),
                std::slice::from_ref(&task),
            )
        })
    }
}

/// The worker role: one apalis worker per job kind, plus the outbox relay for Redis.
pub struct Workers;

/// A name unique to this process and boot: apalis refuses two live workers of one name.
fn worker_name(kind: JobKind) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let boot = &ulid::Ulid::generate().to_string()[20..];
    format!("{}-{host}-{}-{boot}", kind.as_str(), std::process::id())
}

fn backoff(
    kind: JobKind,
) -> anyhow::Result<apalis::layers::retry::backoff::ExponentialBackoff<HasherRng>> {
    let policy = kind.retry();
    Ok(ExponentialBackoffMaker::new(
        policy.first_backoff,
        policy.max_backoff,
        0.2,
        HasherRng::default(),
    )
    .context("building the retry backoff")?
    .make_backoff())
}

/// Builds the worker of `$kind` on `$backend`: the kind's retry policy (the handler decides
/// when a run is the last, so apalis retries only what may be retried), its concurrency, and
/// the shared dependencies.
macro_rules! worker {
    ($kind:expr, $backend:expr, $deps:expr, $backoff:expr) => {{
        let kind: JobKind = $kind;
        let retries = kind.retry().max_attempts.saturating_sub(1) as usize;
        WorkerBuilder::new(worker_name(kind))
            .backend($backend)
            .retry(ApalisRetry::retries(retries).with_backoff($backoff))
            .concurrency(crate::worker::concurrency(kind))
            .data($deps)
            .build(handle)
    }};
}

impl Workers {
    /// Runs every job kind's worker until `shutdown` resolves, then lets in-flight jobs finish
    /// their current batch (a job cut short resumes from its checkpoint elsewhere).
    pub async fn run(
        queue: JobQueue,
        deps: Deps,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let mut monitor = Monitor::new().shutdown_timeout(Duration::from_secs(30));
        for kind in JobKind::ALL {
            let deps = deps.clone();
            let backoff = backoff(kind)?;
            monitor = match &queue {
                JobQueue::Postgres(pool) => {
                    let storage = PostgresStorage::<JobTask>::new(pool)
                        .with_config(
                            apalis_postgres::Config::default()
                                .queue(kind.as_str())
                                .heartbeat_interval(HEARTBEAT)
                                .missed_heartbeats(MISSED_HEARTBEATS),
                        )
                        .poll_with_interval(POLL_INTERVAL);
                    monitor.register(move |_| {
                        worker!(kind, storage.clone(), deps.clone(), backoff.clone())
                    })
                }
                JobQueue::Sqlite(pool) => {
                    let storage = SqliteStorage::<JobTask>::new(pool)
                        .with_config(
                            apalis_sqlite::Config::default()
                                .queue(kind.as_str())
                                .heartbeat_interval(HEARTBEAT)
                                .missed_heartbeats(MISSED_HEARTBEATS),
                        )
                        .poll_with_interval(POLL_INTERVAL);
                    monitor.register(move |_| {
                        worker!(kind, storage.clone(), deps.clone(), backoff.clone())
                    })
                }
                JobQueue::Redis { conn, prefix } => {
                    let storage = RedisStorage::<JobTask>::new(conn.clone())
                        .with_config(redis_config(prefix, kind))
                        .poll_with_interval(POLL_INTERVAL);
                    monitor.register(move |_| {
                        worker!(kind, storage.clone(), deps.clone(), backoff.clone())
                    })
                }
            };
        }
        tracing::info!(backend = queue.name(), kinds = ?JobKind::ALL.map(JobKind::as_str), "workers running");
        let relay = {
            let (queue, db) = (queue.clone(), deps.db.clone());
            tokio::spawn(async move {
                loop {
                    match queue.relay(&db).await {
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::info!(pushed = n, "outbox relay pushed undispatched jobs")
                        }
                        Err(e) => tracing::warn!(error = format!("{e:#}"), "outbox relay failed"),
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            })
        };
        let result = monitor
            .run_with_signal(async move {
                shutdown.await;
                Ok(())
            })
            .await;
        relay.abort();
        result.context("running the job workers")
    }
}

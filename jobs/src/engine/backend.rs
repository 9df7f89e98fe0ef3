//! The job backend: apalis on PostgreSQL, SQLite or Redis (`JOB_BACKEND`).
//!
//! Guarantees differ by backend, and this is where they are made:
//! - PostgreSQL and SQLite: the job record, the apalis task and the business rows commit in
//!   one transaction ([`JobBackend::enqueue`]): a job exists if and only if its write committed.
//!   Jobs of one kind stored in one transaction share a task ([`JobTask`]).
//! - Redis cannot join an SQL transaction, so the record is an outbox row: it commits with the
//!   business rows (`dispatched_at` NULL), is pushed to Redis right after the commit
//!   ([`JobBackend::after_commit`]), and the outbox relay re-pushes any row a crash left
//!   behind. Pushes carry the job id as apalis's idempotency key and runs skip final jobs, so
//!   a double push runs once.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use apalis::prelude::{TaskBuilder, TaskId};
use apalis_postgres::PostgresStorage;
use apalis_sqlite::SqliteStorage;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, SqlitePool};

use super::{
    record::{self, JobId, NewJob},
    wake::{self, Wakeups},
};
use crate::{
    db::{Db, Tx, keyed_pool},
    telemetry,
};

/// What an apalis task carries: the ids of its jobs. Everything else is in `job_records`.
///
/// Jobs stored together (concurrent sends, stored in one transaction) travel as one task:
/// apalis's own bookkeeping (the insert, the fetch, the acknowledgement, each writing a row
/// with its indexes) is paid once for them, and their worker runs them together anyway. Each
/// job keeps its own record, status and result; a task whose jobs did not all end runs again,
/// and the jobs already final are skipped then.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobTask {
    /// The first job; the task's id is this job's.
    pub job_id: String,
    /// The other jobs stored with it (none for a job stored alone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub with: Vec<String>,
}

impl JobTask {
    /// Every job of the task.
    pub fn jobs(self) -> Vec<JobId> {
        std::iter::once(self.job_id)
            .chain(self.with)
            .map(JobId)
            .collect()
    }
}

/// The apalis storage that runs the jobs, and the process's wake-ups of its workers.
#[derive(Clone)]
pub struct JobBackend {
    pub store: Store,
    /// Wakes this process's workers when a job is stored (see [`Wakeups`]).
    pub wakeups: Arc<Wakeups>,
}

/// Which apalis storage runs the jobs.
#[derive(Clone)]
pub enum Store {
    /// apalis's statements on its tasks all read by key (the fetch index, a task's id, a
    /// held task's worker), so they run on a [`keyed_pool`]; [`JobBackend::migrate`]
    /// indexes only held tasks by worker.
    Postgres(PgPool),
    Sqlite(SqlitePool),
    /// Queues are named `{prefix}:{kind}`: deployments (or test runs) sharing one Redis
    /// never take each other's tasks.
    Redis {
        conn: apalis_redis::ConnectionManager,
        prefix: String,
    },
}

/// The most connections apalis's storage opens in a worker process (the API stores its tasks
/// in its own transactions, and opens one to announce them): each kind's fetch and
/// acknowledgement, the heartbeats and the listener that wakes the workers.
const TASK_CONNECTIONS: u32 = 20;

/// apalis indexes every task's `lock_by` (twice: `lidx` and `idx_apalis_jobs_lock_by`),
/// finished or not, and its acknowledgement then reads every task its worker ever held
/// (growing until the sweep prunes them; BENCHMARKS.md, the load bench). Indexing only held
/// tasks keeps that index for the rescue of a dead worker's tasks (which asks for exactly
/// these) and leaves the acknowledgement its tasks' ids. Run at every start after apalis's
/// migrations; replicas starting together take turns, and the table is locked only the first
/// time.
const HELD_TASKS_INDEX: &str = "
DO $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('fanqueue: apalis held tasks index'));
    IF to_regclass('apalis.jobs_held_by_worker') IS NULL THEN
        CREATE INDEX jobs_held_by_worker ON apalis.jobs (lock_by)
            WHERE status = 'Running' OR status = 'Queued';
    END IF;
    DROP INDEX IF EXISTS apalis.idx_apalis_jobs_lock_by, apalis.lidx;
END $$";

/// apalis's fetch with its plan kept per connection (see the file).
const GET_JOBS: &str = include_str!("get_jobs.sql");

/// apalis's insert trigger, quiet for the tasks a process announces itself (see the file).
const NOTIFY_NEW_JOBS: &str = include_str!("notify_new_jobs.sql");

/// apalis's own attempt count on every task. It never decides: the kind's `RetryPolicy` does
/// (`execute.rs` records the final failure after its last run and stops the task). Only a
/// task that would otherwise run forever meets it.
const ATTEMPTS_BACKSTOP: usize = 50;

/// A worker heartbeats this often; after [`MISSED_HEARTBEATS`] silent beats its tasks are
/// handed to another worker. 10 s × 3 rescues a killed worker's job within 30-40 s.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
pub const MISSED_HEARTBEATS: usize = 3;

/// Why a job could not be enqueued (nothing was stored).
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    #[error("job backend: {0:#}")]
    Backend(anyhow::Error),
}

impl JobBackend {
    /// Picks the backend: `JOB_BACKEND` when given, else the one the database implies.
    pub async fn connect(
        backend: Option<&str>,
        db: &Db,
        redis_url: Option<&str>,
        redis_prefix: &str,
    ) -> anyhow::Result<Self> {
        let store = match (backend, db) {
            (None | Some("postgres"), Db::Postgres(pool)) => {
                Store::Postgres(keyed_pool(pool, TASK_CONNECTIONS))
            }
            (None | Some("sqlite"), Db::Sqlite(pool)) => Store::Sqlite(pool.clone()),
            (Some("redis"), _) => {
                let url = redis_url.context("JOB_BACKEND=redis needs REDIS_URL")?;
                let conn = apalis_redis::connect(url)
                    .await
                    .with_context(|| format!("connecting the job backend to Redis at {url}"))?;
                Store::Redis {
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
        Ok(JobBackend {
            store,
            wakeups: Arc::default(),
        })
    }

    pub fn name(&self) -> &'static str {
        match self.store {
            Store::Postgres(_) => "postgres",
            Store::Sqlite(_) => "sqlite",
            Store::Redis { .. } => "redis",
        }
    }

    /// Whether jobs pass through the outbox (and so need the relay running somewhere).
    pub fn uses_outbox(&self) -> bool {
        matches!(self.store, Store::Redis { .. })
    }

    /// Applies apalis's own migrations beside ours. On PostgreSQL they live in schema
    /// `apalis` with their own history table; on SQLite they share `_sqlx_migrations` with
    /// ours, so each migrator is told to ignore the other's versions. apalis-sqlite's
    /// `setup()` is not used: it would turn `synchronous` off, and a 202 must survive a crash.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        match &self.store {
            Store::Postgres(pool) => {
                PostgresStorage::<()>::setup(pool)
                    .await
                    .context("applying apalis-postgres migrations")?;
                sqlx::query(HELD_TASKS_INDEX)
                    .execute(pool)
                    .await
                    .context("indexing apalis's held tasks")?;
                sqlx::query(GET_JOBS)
                    .execute(pool)
                    .await
                    .context("installing apalis's fetch as PL/pgSQL")?;
                sqlx::query(NOTIFY_NEW_JOBS)
                    .execute(pool)
                    .await
                    .context("installing apalis's insert notification")?;
            }
            Store::Sqlite(pool) => {
                let mut migrator = SqliteStorage::<()>::migrations();
                migrator.set_ignore_missing(true);
                migrator
                    .run(pool)
                    .await
                    .context("applying apalis-sqlite migrations")?;
            }
            Store::Redis { .. } => {}
        }
        Ok(())
    }

    /// Stores `job` in `tx`, beside the rows it is about: its record, and its apalis task when
    /// the backend is this same database. Call [`JobBackend::after_commit`] once `tx`
    /// committed.
    pub async fn enqueue(&self, tx: &mut Tx, job: &NewJob) -> Result<(), EnqueueError> {
        self.enqueue_many(tx, std::slice::from_ref(job)).await
    }

    /// [`JobBackend::enqueue`] for several jobs: one statement for the records and one per
    /// kind for the tasks.
    pub async fn enqueue_many(&self, tx: &mut Tx, jobs: &[NewJob]) -> Result<(), EnqueueError> {
        let shared = matches!(
            (&self.store, &*tx),
            (Store::Postgres(_), Tx::Postgres(_)) | (Store::Sqlite(_), Tx::Sqlite(_))
        );
        if !shared && !self.uses_outbox() {
            return Err(EnqueueError::Backend(anyhow::anyhow!(
                "a {} job backend cannot take jobs from another database's transaction",
                self.name()
            )));
        }
        record::insert_many(tx, jobs, shared).await?;
        if !shared {
            // Redis: the records are the outbox rows.
            return Ok(());
        }
        if let Tx::Postgres(conn) = &mut *tx
            && !jobs.is_empty()
        {
            // Once for the transaction: apalis's trigger stays quiet for its tasks, which
            // after_commit_many announces (Wakeups::announce).
            sqlx::query("SELECT set_config($1, 'on', true)")
                .bind(wake::ANNOUNCED)
                .execute(&mut **conn)
                .await?;
        }
        // One task for the jobs of each kind.
        for kind in kinds_of(jobs) {
            let ids: Vec<&JobId> = jobs
                .iter()
                .filter(|j| j.kind == kind)
                .map(|j| &j.id)
                .collect();
            let tasks = vec![task(&ids).map_err(EnqueueError::Backend)?];
            let pushed = match tx {
                Tx::Postgres(conn) => {
                    apalis_postgres::queries::push_tasks(&mut **conn, kind, tasks)
                        .await
                        .map_err(anyhow::Error::new)
                }
                Tx::Sqlite(conn) => apalis_sqlite::queries::push_tasks(&mut **conn, kind, &tasks)
                    .await
                    .map_err(anyhow::Error::new),
            };
            pushed.map_err(EnqueueError::Backend)?;
        }
        Ok(())
    }

    /// [`JobBackend::enqueue_many`] on PostgreSQL as parts of one statement, for a writer that
    /// stores its rows and their jobs in one round trip (the PostgreSQL send path): common
    /// table expressions to list in its `WITH` (named `engine_*`) that store a record of kind
    /// `kind` for each row of relation `from` (columns `id, user_id, payload` (jsonb)`, total,
    /// ord`), at `at`, and one apalis task for them all named after the first in `ord` order
    /// (apalis-postgres's `push_tasks`, as [`task`] builds it). Call
    /// [`JobBackend::after_commit_many`] once the statement committed, as after `enqueue_many`.
    pub fn enqueue_sql(kind: &'static str, from: &str, at: &str) -> String {
        let records = record::insert_many_sql(kind, from, at);
        let announced = wake::ANNOUNCED;
        format!(
            "engine_records AS ({records}),
             engine_quiet AS (SELECT set_config('{announced}', 'on', true)),
             engine_jobs AS (SELECT (array_agg(id ORDER BY ord))[1] AS first,
                                    (array_agg(id ORDER BY ord))[2:] AS rest FROM {from}),
             engine_task AS (
                 INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts,
                                          run_at, priority, metadata, idempotency_key)
                 SELECT first, '{kind}',
                        convert_to(json_build_object('job_id', first, 'with', rest)::text, 'UTF8'),
                        'Pending', 0, {ATTEMPTS_BACKSTOP}, date_trunc('second', {at}::timestamptz),
                        0, ''::hstore, first
                 FROM engine_jobs, engine_quiet WHERE first IS NOT NULL)"
        )
    }

    /// Right after the transaction that stored `job` committed: this process's worker of its
    /// kind looks now; on PostgreSQL, the workers of every process are told
    /// ([`Wakeups::announce`]); for Redis, the job is pushed now rather than waiting for the
    /// relay. A failure here loses nothing (the outbox row stays).
    pub async fn after_commit(&self, db: &Db, job: &NewJob) {
        self.after_commit_many(db, std::slice::from_ref(job)).await
    }

    /// [`JobBackend::after_commit`] for several jobs.
    pub async fn after_commit_many(&self, db: &Db, jobs: &[NewJob]) {
        for job in jobs {
            telemetry::job(job.kind, "queued");
        }
        for kind in kinds_of(jobs) {
            self.wakeups.job_stored(kind);
            if let Store::Postgres(pool) = &self.store {
                self.wakeups.announce(pool, kind);
            }
        }
        if !self.uses_outbox() {
            return;
        }
        for job in jobs {
            if let Err(e) = self.push_outbox_row(db, &job.id, job.kind).await {
                tracing::warn!(job_id = %job.id, error = format!("{e:#}"), "push to Redis failed; the relay will retry");
            }
        }
    }

    /// Pushes an outbox row's task to Redis and marks the row dispatched.
    pub(super) async fn push_outbox_row(
        &self,
        db: &Db,
        job: &JobId,
        kind: &str,
    ) -> anyhow::Result<()> {
        let Store::Redis { conn, prefix } = &self.store else {
            anyhow::bail!("only a Redis job backend has an outbox");
        };
        let mut conn = conn.clone();
        apalis_redis::queries::push_tasks(&mut conn, &redis_config(prefix, kind), &[task(&[job])?])
            .await
            .with_context(|| format!("pushing job {job} to Redis"))?;
        record::mark_dispatched(db, job).await?;
        Ok(())
    }

    /// Deletes the apalis tasks that finished (`Done`, or `Killed` once the engine recorded
    /// their final failure) before `before`, in batches until `deadline`; the sweep calls it.
    /// Returns how many. apalis keeps every task it ran, and the job records (what
    /// `GET /api/jobs` shows) outlive their tasks, so without this the task table only grew.
    pub async fn prune_finished(
        &self,
        before: DateTime<Utc>,
        deadline: std::time::Instant,
    ) -> sqlx::Result<u64> {
        match &self.store {
            Store::Postgres(pool) => {
                crate::db::prune_in_batches(deadline, |limit| async move {
                    // The one statement on tasks that reads them all: scans are its best plan.
                    let mut tx = pool.begin().await?;
                    sqlx::query("SET LOCAL enable_seqscan = on")
                        .execute(&mut *tx)
                        .await?;
                    let done = sqlx::query(
                        "DELETE FROM apalis.jobs WHERE id IN (
                             SELECT id FROM apalis.jobs
                             WHERE status IN ('Done', 'Killed') AND done_at < $1 LIMIT $2)",
                    )
                    .bind(before)
                    .bind(limit)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    tx.commit().await?;
                    Ok(done)
                })
                .await
            }
            Store::Sqlite(pool) => {
                crate::db::prune_in_batches(deadline, |limit| async move {
                    Ok(sqlx::query(
                        "DELETE FROM Jobs WHERE id IN (
                             SELECT id FROM Jobs
                             WHERE status IN ('Done', 'Killed') AND done_at < ?1 LIMIT ?2)",
                    )
                    .bind(before.timestamp())
                    .bind(limit)
                    .execute(pool)
                    .await?
                    .rows_affected())
                })
                .await
            }
            Store::Redis { .. } => Ok(0),
        }
    }
}

/// The kinds among `jobs`, each once, in order of appearance.
fn kinds_of(jobs: &[NewJob]) -> Vec<&'static str> {
    let mut kinds: Vec<&'static str> = vec![];
    for job in jobs {
        if !kinds.contains(&job.kind) {
            kinds.push(job.kind);
        }
    }
    kinds
}

/// The task of `jobs` (at least one), named after the first.
fn task(jobs: &[&JobId]) -> anyhow::Result<apalis::prelude::Task<Vec<u8>>> {
    let (job, with) = jobs.split_first().context("a task has a job")?;
    let ulid: ulid::Ulid = job.0.parse().context("job ids are ULIDs")?;
    let args = serde_json::to_vec(&JobTask {
        job_id: job.0.clone(),
        with: with.iter().map(|j| j.0.clone()).collect(),
    })?;
    Ok(TaskBuilder::new(args)
        .task_id(TaskId::from_ulid(ulid))
        .idempotency_key(&job.0)
        .max_attempts(ATTEMPTS_BACKSTOP)
        .build())
}

/// The apalis-redis configuration of the queue of `kind`.
pub fn redis_config(prefix: &str, kind: &str) -> apalis_redis::Config {
    apalis_redis::Config::default()
        .queue(format!("{prefix}:{kind}"))
        .heartbeat_interval(HEARTBEAT)
        .missed_heartbeats(MISSED_HEARTBEATS)
}

/// Evaluates `$body` with `$storage` bound to the apalis storage of queue `$queue` on the
/// backend `$backend` holds, fetching up to `$fetch` tasks at a time and polling when the
/// queue is woken (see [`Wakeups`]); on PostgreSQL fetches are paced
/// ([`PacedStorage`](crate::engine::paced::PacedStorage)). Tasks are not marked running one by one (`lock_tasks`):
/// a fetched task is already held by its worker (rescued if the worker dies), and our own
/// record says when its run started. The storage is wrapped in a
/// [`Closing`](crate::engine::closing::Closing): its closer settles what is under way when the
/// worker is to stop. The body is compiled once per storage type, so generic
/// apalis code (a worker built on the storage) is written once for all three backends.
#[macro_export]
macro_rules! with_storage {
    ($backend:expr, $queue:expr, $fetch:expr, $storage:ident => $body:expr) => {{
        use ::apalis::prelude::BackendExt as _;
        use $crate::engine::backend::{HEARTBEAT, JobTask, MISSED_HEARTBEATS, Store};
        let queue: &str = $queue;
        let backend: &$crate::engine::JobBackend = $backend;
        let polls = backend.wakeups.strategy(queue);
        match &backend.store {
            Store::Postgres(pool) => {
                let $storage = $crate::engine::paced::PacedStorage::new(
                    pool,
                    ::apalis_postgres::Config::default()
                        .queue(queue)
                        .batch_size($fetch)
                        .lock_tasks(false)
                        .heartbeat_interval(HEARTBEAT)
                        .missed_heartbeats(MISSED_HEARTBEATS),
                )
                .poll_with_strategy(polls);
                let $storage = $crate::engine::closing::Closing::new($storage);
                $body
            }
            Store::Sqlite(pool) => {
                let $storage = ::apalis_sqlite::SqliteStorage::<JobTask>::new(pool)
                    .with_config(
                        ::apalis_sqlite::Config::default()
                            .queue(queue)
                            .batch_size($fetch)
                            .lock_tasks(false)
                            .heartbeat_interval(HEARTBEAT)
                            .missed_heartbeats(MISSED_HEARTBEATS),
                    )
                    .poll_with_strategy(polls);
                let $storage = $crate::engine::closing::Closing::new($storage);
                $body
            }
            Store::Redis { conn, prefix } => {
                let $storage = ::apalis_redis::RedisStorage::<JobTask>::new(conn.clone())
                    .with_config(
                        $crate::engine::backend::redis_config(prefix, queue).batch_size($fetch),
                    )
                    .poll_with_strategy(polls);
                let $storage = $crate::engine::closing::Closing::new($storage);
                $body
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words of `text` between `from` and the first `to` after it.
    fn words_between(text: &str, from: &str, to: &str) -> String {
        let start = text.find(from).expect("the start marker") + from.len();
        let end = start + text[start..].find(to).expect("the end marker");
        text[start..end]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn our_get_jobs_runs_the_body_of_apalis_latest_one() {
        let migrator = PostgresStorage::<()>::migrations();
        let latest = migrator
            .iter()
            .rfind(|m| m.sql.as_str().contains("FUNCTION apalis.get_jobs"))
            .expect("apalis defines get_jobs");
        let theirs = words_between(latest.sql.as_str(), "AS $$", "$$;");
        let ours = words_between(GET_JOBS, "RETURN QUERY", "$body$;");
        let ours = ours.strip_suffix(" END").expect("the PL/pgSQL block's end");
        assert_eq!(
            ours, theirs,
            "apalis-postgres changed its fetch (migration {}): mirror it in get_jobs.sql",
            latest.description
        );
    }

    #[test]
    fn our_insert_trigger_notifies_as_apalis_latest_one_does() {
        let migrator = PostgresStorage::<()>::migrations();
        let latest = migrator
            .iter()
            .rfind(|m| m.sql.as_str().contains("FUNCTION apalis.notify_new_jobs"))
            .expect("apalis defines notify_new_jobs");
        let notify = |sql: &str| words_between(sql, "PERFORM pg_notify(", "RETURN NEW;");
        assert_eq!(
            notify(NOTIFY_NEW_JOBS),
            notify(latest.sql.as_str()),
            "apalis-postgres changed its notification (migration {}): mirror it in \
             notify_new_jobs.sql",
            latest.description
        );
        let when = |sql: &str| words_between(sql, "IF NEW.", "THEN");
        assert!(
            when(NOTIFY_NEW_JOBS).starts_with(&when(latest.sql.as_str())),
            "apalis-postgres changed when it notifies (migration {}): mirror it in \
             notify_new_jobs.sql",
            latest.description
        );
    }
}

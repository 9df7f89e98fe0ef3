//! apalis's PostgreSQL storage with its fetches paced.
//!
//! apalis 1.0 fetches again as soon as the tasks of its last fetch are handed out, and parks
//! only after a fetch that found nothing. Under a steady stream a worker therefore fetches back
//! to back, each fetch finding the one or two tasks stored since the one before, every one a
//! transaction of three round trips (BENCHMARKS.md, the load bench). [`PacedStorage`] is apalis's
//! storage (its queries, its `Persisted` state machine) with two differences:
//! - a fetch starts at least `WAKE_SPACING` (`wake.rs`) after the previous one, unless that one
//!   came back full (a backlog is drained at full speed);
//! - the fetch and the acknowledgement are one statement each, without the transaction apalis
//!   wraps around them (a single statement is atomic; the `BEGIN` and `COMMIT` were two more
//!   round trips).
//!
//! apalis-postgres is pinned (`jobs/Cargo.toml`): an upgrade re-reads its `persistence.rs`.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{SystemTime, UNIX_EPOCH},
};

use apalis::prelude::{Backend, WorkerContext};
use apalis_codec::json::JsonCodec;
use apalis_core::backend::{
    BackendConfig, WireFormatBackend,
    finalize::Durable,
    persistence::{Persisted, Persistence, TaskEvent, TaskPersistLayer},
};
use apalis_postgres::{Config, Error, PgTask, queries};
use serde_json::Value;
use sqlx::PgPool;
use tokio::time::Instant;
use ulid::Ulid;

use super::{backend::JobTask, wake::WAKE_SPACING};
use crate::telemetry;

/// When the next fetch may start, given how the last one went.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FetchSpacing {
    /// When the last fetch started, and whether it came back full.
    last: Option<(Instant, bool)>,
}

impl FetchSpacing {
    /// The earliest start of the next fetch; `None`: at once.
    pub(crate) fn next_fetch(&self) -> Option<Instant> {
        match self.last {
            Some((started, false)) => Some(started + WAKE_SPACING),
            _ => None,
        }
    }

    /// A fetch that started at `started` found `found` tasks of at most `batch`.
    pub(crate) fn fetched(&mut self, started: Instant, found: usize, batch: usize) {
        self.last = Some((started, found >= batch));
    }
}

/// apalis's `SqlxPersistence`, with a `FetchSpacing` (shared by the clones `Persisted` makes of it for
/// each of its futures).
#[derive(Debug, Clone)]
pub struct Provider {
    pool: PgPool,
    config: Config,
    pace: Arc<Mutex<FetchSpacing>>,
}

impl Provider {
    fn pace(&self) -> std::sync::MutexGuard<'_, FetchSpacing> {
        // A panic while holding it leaves a valid `FetchSpacing` behind.
        self.pace.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Persistence for Provider {
    type Compact = Vec<u8>;
    type Error = Error;
    type Response = Value;

    async fn register(&mut self, worker: &WorkerContext) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        let queue = self.config.queue.as_ref();
        queries::reenqueue_orphaned(&mut *tx, queue, self.config.orphaned_duration().as_secs())
            .await?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()) as i64;
        queries::register_worker(&mut *tx, queue, worker, &now.into(), "PgStorage").await?;
        tx.commit().await?;
        Ok(())
    }

    async fn heartbeat(&mut self, worker: &WorkerContext) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        let queue = self.config.queue.as_ref();
        queries::keep_alive(&mut *tx, queue, worker).await?;
        queries::reenqueue_orphaned(&mut *tx, queue, self.config.orphaned_duration().as_secs())
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn fetch_next(&mut self, worker: &WorkerContext) -> Result<Vec<PgTask>, Error> {
        let due = self.pace().next_fetch();
        if let Some(due) = due {
            // Dropped with the fetch when the worker closes: nothing is held meanwhile.
            tokio::time::sleep_until(due).await;
        }
        let started = Instant::now();
        let mut conn = self.pool.acquire().await?;
        let tasks = queries::fetch_next(&mut *conn, &self.config, worker).await?;
        self.pace()
            .fetched(started, tasks.len(), self.config.batch_size);
        telemetry::fetched(self.config.queue.as_ref(), tasks.len());
        Ok(tasks)
    }

    async fn handle_events(
        &mut self,
        events: Vec<TaskEvent<Value>>,
        worker: &WorkerContext,
    ) -> Result<(), Error> {
        let acks: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                TaskEvent::Complete(payload) => Some(payload),
                _ => None,
            })
            .collect();
        let acked: HashSet<String> = acks.iter().map(|a| a.task_id().to_string()).collect();
        let locks: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                TaskEvent::Lock { task_id, .. } => Some(task_id.to_string()),
                _ => None,
            })
            .filter(|id| !acked.contains(id))
            .collect();
        match (acks.is_empty(), locks.is_empty()) {
            (true, true) => {}
            // The workers' case (`lock_tasks(false)`): acknowledgements only, one statement.
            (false, true) => {
                let mut conn = self.pool.acquire().await?;
                queries::handle_results(&mut *conn, &acks, worker.name()).await?;
            }
            _ => {
                let mut tx = self.pool.begin().await?;
                if !acks.is_empty() {
                    queries::handle_results(&mut *tx, &acks, worker.name()).await?;
                }
                queries::lock_tasks(&mut *tx, &locks, worker.name()).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    async fn reenqueue_abandoned(
        &mut self,
        tasks: Vec<PgTask>,
        worker: &WorkerContext,
    ) -> Result<u64, Error> {
        let ids: Vec<String> = tasks
            .iter()
            .filter_map(|t| t.task_id().map(|id| id.to_string()))
            .collect();
        let mut conn = self.pool.acquire().await?;
        let count = queries::reenqueue_abandoned(
            &mut *conn,
            self.config.queue.as_ref(),
            worker.name(),
            &ids,
        )
        .await?;
        if count as usize != tasks.len() {
            return Err(Error::ReenqueueMismatch {
                queued: tasks.len(),
                abandoned: count as usize,
            });
        }
        Ok(count)
    }

    async fn push_tasks(&mut self, tasks: Vec<PgTask>) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        queries::push_tasks(&mut *tx, self.config.queue.as_ref(), tasks).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The storage of one queue's worker: apalis's `PostgresStorage<JobTask>` with paced fetches.
pub struct PacedStorage {
    persistence: Persisted<Provider>,
    codec: JsonCodec,
}

impl PacedStorage {
    pub fn new(pool: &PgPool, config: Config) -> Self {
        PacedStorage {
            persistence: Persisted::new(Provider {
                pool: pool.clone(),
                config,
                pace: Arc::default(),
            }),
            codec: JsonCodec::default(),
        }
    }
}

impl Backend for PacedStorage {
    type Task = PgTask;
    type Error = Error;

    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Error>> {
        let heartbeat = self.persistence.config.heartbeat_interval;
        self.persistence.poll_ready(cx, worker, heartbeat)
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<PgTask, Error>>> {
        self.persistence.poll_next(cx, worker)
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Error>> {
        self.persistence.poll_close(cx, worker)
    }
}

impl BackendConfig for PacedStorage {
    type Args = JobTask;
    type Kind = Durable;
    type Id = Ulid;
    type Config = Config;
    type Layer = TaskPersistLayer<JsonCodec<Value>, Value>;

    fn config(&self) -> &Config {
        &self.persistence.config
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Self::Layer {
        let (batch, persist, lock) = (
            self.persistence.config.batch_size,
            self.persistence.config.persist_results,
            self.persistence.config.lock_tasks,
        );
        self.persistence
            .layer(JsonCodec::<Value>::default(), batch)
            .persist_results(persist)
            .lock_tasks(lock)
    }
}

impl WireFormatBackend for PacedStorage {
    type Codec = JsonCodec;
    type Compact = Vec<u8>;

    fn codec(&self) -> &JsonCodec {
        &self.codec
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_fetch_waits_for_the_rest_of_gather_unless_the_last_came_back_full() {
        let mut pace = FetchSpacing::default();
        assert_eq!(pace.next_fetch(), None, "the first fetch starts at once");

        let t0 = Instant::now();
        pace.fetched(t0, 3, 256);
        assert_eq!(pace.next_fetch(), Some(t0 + WAKE_SPACING));

        tokio::time::advance(Duration::from_millis(5)).await;
        pace.fetched(Instant::now(), 256, 256);
        assert_eq!(pace.next_fetch(), None, "a full fetch: more may be waiting");

        pace.fetched(Instant::now(), 0, 256);
        assert_eq!(
            pace.next_fetch(),
            Some(t0 + Duration::from_millis(5) + WAKE_SPACING)
        );
    }
}

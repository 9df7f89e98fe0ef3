//! The processes seen alive: every role beats a row of `processes` (the only module that
//! writes it), which the monitoring route shows and the sweeper asks before deciding that a
//! message on the queue is stuck rather than waiting for a dispatcher to start.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::{
    db::{Db, StoreResult},
    domain::Timestamp,
    on_db,
};

/// How often a process beats; one not seen for [`ALIVE_WITHIN`] is taken for dead.
pub const BEAT: Duration = Duration::from_secs(5);
pub const ALIVE_WITHIN: Duration = Duration::from_secs(20);

/// A process seen alive.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Process {
    pub id: String,
    pub role: String,
    pub host: String,
    pub pid: i64,
    pub started_at: DateTime<Utc>,
    pub seen_at: DateTime<Utc>,
}

/// This process's row, beaten until cancelled and removed on a clean stop.
pub struct Heartbeat {
    db: Db,
    id: String,
    roles: Vec<&'static str>,
    host: String,
    started_at: Timestamp,
}

/// This machine's name (containers set `HOSTNAME`): in heartbeats and worker names.
pub fn host() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}

impl Heartbeat {
    /// `roles`: what this process runs (`serve`, `worker`, `dispatch`, `sweep`).
    pub fn new(db: Db, roles: Vec<&'static str>) -> Self {
        Heartbeat {
            db,
            id: ulid::Ulid::generate().to_string(),
            roles,
            host: host(),
            started_at: Timestamp::now(),
        }
    }

    /// One beat: this process's rows are written (or refreshed) now.
    pub async fn run_once(&self) -> StoreResult<()> {
        let now = Timestamp::now();
        let pid = i64::from(std::process::id());
        for role in &self.roles {
            on_db!(&self.db, pool => sqlx::query(
                "INSERT INTO processes (id, role, host, pid, started_at, seen_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (id) DO UPDATE SET seen_at = EXCLUDED.seen_at",
            )
            .bind(format!("{}-{role}", self.id))
            .bind(role)
            .bind(&self.host)
            .bind(pid)
            .bind(self.started_at)
            .bind(now)
            .execute(pool)
            .await
            .map(|_| ()))?;
        }
        Ok(())
    }

    /// Beats every [`BEAT`] until `cancel`, then removes this process's rows. A failed beat is
    /// logged; the next one tries again.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        loop {
            if let Err(e) = self.run_once().await {
                tracing::warn!(error = format!("{e:#}"), "heartbeat failed");
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(BEAT) => {}
            }
        }
        let id = format!("{}-%", self.id);
        let _ = on_db!(&self.db, pool => sqlx::query("DELETE FROM processes WHERE id LIKE $1")
            .bind(id)
            .execute(pool)
            .await
            .map(|_| ()));
        Ok(())
    }
}

/// The processes seen within [`ALIVE_WITHIN`], by role then start.
pub async fn alive(db: &Db) -> StoreResult<Vec<Process>> {
    let since = Timestamp(Utc::now() - ALIVE_WITHIN);
    Ok(on_db!(db, pool => sqlx::query_as::<_, Process>(
        "SELECT * FROM processes WHERE seen_at >= $1 ORDER BY role, started_at, id",
    )
    .bind(since)
    .fetch_all(pool)
    .await)?)
}

/// Whether a dispatcher has been alive all the time since `since`: then a message on the
/// queue since before it should have been taken off by now.
pub async fn dispatcher_running_since(db: &Db, since: DateTime<Utc>) -> StoreResult<bool> {
    let alive = Timestamp(Utc::now() - ALIVE_WITHIN);
    let (yes,): (bool,) = on_db!(db, pool => sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM processes
                         WHERE role = 'dispatch' AND started_at <= $1 AND seen_at >= $2)",
    )
    .bind(Timestamp(since))
    .bind(alive)
    .fetch_one(pool)
    .await)?;
    Ok(yes)
}

/// Forgets processes not seen since `before`, in batches until `deadline`.
pub async fn prune(
    db: &Db,
    before: DateTime<Utc>,
    deadline: std::time::Instant,
) -> StoreResult<u64> {
    let delete = "DELETE FROM processes WHERE id IN (
                      SELECT id FROM processes WHERE seen_at < $1 LIMIT $2)";
    Ok(crate::db::prune_older(db, deadline, before, delete).await?)
}

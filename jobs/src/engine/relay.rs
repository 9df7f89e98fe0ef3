//! The outbox relay, a service of the Redis job backend: pushes the jobs whose records a crash
//! left undispatched (committed, but never pushed to Redis). The API pushes right after each
//! commit; this catches what that push missed.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{backend::JobBackend, record};
use crate::{db::Db, domain::Timestamp};

/// Outbox rows younger than this are left to the API's own push after commit.
const GRACE: chrono::TimeDelta = chrono::TimeDelta::seconds(2);
/// Rows pushed per step.
const BATCH: i64 = 500;

pub struct OutboxRelay {
    backend: JobBackend,
    db: Db,
    /// The wait between steps that found nothing to do.
    every: Duration,
}

impl OutboxRelay {
    pub fn new(backend: JobBackend, db: Db) -> Self {
        OutboxRelay {
            backend,
            db,
            every: Duration::from_secs(2),
        }
    }

    /// Relays until `cancel`. A failing step (Redis or the database unreachable) is logged and
    /// tried again on the next tick: the rows wait in the outbox meanwhile.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(backend = self.backend.name(), "outbox relay running");
        loop {
            let wait = match self.run_once().await {
                Ok(0) => self.every,
                Ok(n) => {
                    tracing::info!(pushed = n, "outbox relay pushed undispatched jobs");
                    Duration::ZERO
                }
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "outbox relay step failed");
                    self.every
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One step: pushes up to a batch of undispatched rows; returns how many.
    pub async fn run_once(&self) -> anyhow::Result<usize> {
        let cutoff = Timestamp(chrono::Utc::now() - GRACE);
        let rows = record::undispatched(&self.db, cutoff, BATCH).await?;
        for (id, kind) in &rows {
            self.backend.push_outbox_row(&self.db, id, kind).await?;
        }
        Ok(rows.len())
    }
}

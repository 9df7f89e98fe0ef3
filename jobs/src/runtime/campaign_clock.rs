//! The campaign clock: starts scheduled campaigns when their time comes, and each tick of a
//! recurring one. Every replica of the `sweep` role runs one; a start happens once however
//! many look at it (it locks the campaign's row, and a run is unique per campaign and tick).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{
    crm::campaigns,
    db::{Db, StoreResult},
    domain::Timestamp,
    engine::JobBackend,
    kinds::campaign_feed,
};

/// How often the clock looks: a campaign starts within this of its time.
pub const EVERY: Duration = Duration::from_millis(500);
/// Campaigns started per look, at most (the next look takes the rest).
const PER_LOOK: i64 = 100;

pub struct CampaignClock {
    db: Db,
    backend: JobBackend,
}

impl CampaignClock {
    pub fn new(db: Db, backend: JobBackend) -> Self {
        CampaignClock { db, backend }
    }

    /// Looks every [`EVERY`] until `cancel`. A failing look (the database away) is logged and
    /// the next one tries again: a start is one transaction, so nothing is half done.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(
            every_ms = EVERY.as_millis() as u64,
            "campaign clock running"
        );
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(EVERY) => {}
            }
            if let Err(e) = self.run_once().await {
                tracing::warn!(error = %e, "the campaign clock could not look; it tries again");
            }
        }
    }

    /// One look now. Returns how many campaigns this call started (or ticked).
    pub async fn run_once(&self) -> StoreResult<usize> {
        self.run_at(Timestamp::now()).await
    }

    /// One look as if the time were `now`: starts the campaigns due then (tests step through
    /// a recurring campaign's ticks with it).
    pub async fn run_at(&self, now: Timestamp) -> StoreResult<usize> {
        let mut started = 0;
        for c in campaigns::due(&self.db, now, PER_LOOK).await? {
            if campaign_feed::start_due(&self.db, &self.backend, c.user_id, c.id, now).await? {
                started += 1;
            }
        }
        Ok(started)
    }
}

//! The job kinds, one file (or folder) each: the kind's contract ([`JobKind`]: name, queue,
//! retries, concurrency, how it runs) and how a job of it is submitted.
//!
//! - [`import_csv`] — a CSV fan export, streamed and upserted in resumable batches.
//! - [`send_message`] — one message to the outbound queue.
//! - [`bulk_send`] — a campaign's messages to the outbound queue.
//! - [`campaign_feed`] — a campaign to an audience: its run's next messages, a few at a time.
//! - [`sweep`] — the scheduled reconciliation of the DLQ, stuck messages and old records.
//! - [`outbound_batches`] — what both send kinds do: batches of 10 to the outbound queue.
//!
//! [`JobKind`]: crate::engine::JobKind

pub mod bulk_send;
pub mod campaign_feed;
pub mod import_csv;
pub mod outbound_batches;
pub mod send_message;
pub mod sweep;

use std::time::Duration;

use crate::{
    blobs::BlobStore,
    db::Db,
    domain::FanId,
    engine::{EnqueueError, JobBackend},
    outbound::Outbound,
};

/// What job kinds are built from. Each kind keeps the parts it needs.
#[derive(Clone)]
pub struct Deps {
    pub db: Db,
    /// The job backend (the sweep prunes its finished tasks).
    pub jobs: JobBackend,
    pub blobs: BlobStore,
    /// Rows per import transaction.
    pub import_batch_rows: usize,
    /// Where send jobs put messages for the dispatcher.
    pub outbound: Outbound,
    /// `false`: messages skip the queue, are logged and marked sent.
    pub rate_limiter_enabled: bool,
    /// A running campaign's messages kept queued ahead of delivery (see `campaign_feed`).
    pub campaign_ahead: i64,
    /// Automated and campaign messages one fan may be sent a (UTC) day; 0: no cap. A
    /// campaign's feed excludes the fans at it (`daily_cap`).
    pub daily_cap_per_fan: u32,
    /// How sweeps decide.
    pub sweep: SweepConfig,
}

/// How the sweeper decides.
#[derive(Debug, Clone, Copy)]
pub struct SweepConfig {
    /// Times one message is put back on the queue (from the DLQ or stuck) before it is failed.
    pub max_redrives: i64,
    /// A message on the queue (or a lease run out) this long is stuck.
    pub stuck_after: Duration,
    /// Final job records and delivery attempts are kept this long.
    pub retention: Duration,
}

impl Default for SweepConfig {
    fn default() -> Self {
        SweepConfig {
            max_redrives: 3,
            stuck_after: Duration::from_secs(15 * 60),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_backlog_says_when_enough_will_have_drained() {
        let limit = Backpressure {
            max_backlog: 1000,
            per_minute: 10,
        };
        assert!(limit.admit(999, 1).is_ok());
        match limit.admit(1000, 1) {
            Err(SubmitError::BacklogFull {
                backlog,
                retry_after,
                ..
            }) => assert_eq!((backlog, retry_after.as_secs()), (1000, 6)),
            other => panic!("{other:?}"),
        }
        // A campaign of 100 on a backlog of 950 waits for 50 slots: 5 minutes at 10 a minute.
        match limit.admit(950, 100) {
            Err(SubmitError::BacklogFull { retry_after, .. }) => {
                assert_eq!(retry_after.as_secs(), 300)
            }
            other => panic!("{other:?}"),
        }
    }
}

/// Backpressure (the seeds' "Queue Depth Too High"): a creator's undelivered messages may not
/// pass `max_backlog`; past it a send or a campaign stores nothing and the client is told when
/// enough will have drained at the creator's delivery rate.
#[derive(Debug, Clone, Copy)]
pub struct Backpressure {
    pub max_backlog: i64,
    /// Deliveries per creator per minute (the drain rate).
    pub per_minute: u32,
}

impl Backpressure {
    /// `Err(BacklogFull)` when `adding` messages to a backlog of `backlog` passes the limit.
    pub fn admit(&self, backlog: i64, adding: i64) -> Result<(), SubmitError> {
        let over = backlog + adding - self.max_backlog;
        if over <= 0 {
            return Ok(());
        }
        let slot = std::time::Duration::from_secs_f64(60.0 / f64::from(self.per_minute.max(1)));
        Err(SubmitError::BacklogFull {
            backlog,
            max: self.max_backlog,
            retry_after: slot * u32::try_from(over).unwrap_or(u32::MAX),
        })
    }
}

/// Why a submission stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The row the job is about is not the caller's.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Recipients that are not the caller's fans.
    #[error("recipients not found among your fans: {0:?}")]
    NotOwned(Vec<FanId>),
    /// The creator's undelivered backlog would pass the limit.
    #[error(
        "{backlog} messages are waiting for delivery (at most {max}); retry in {retry_after:?}"
    )]
    BacklogFull {
        backlog: i64,
        max: i64,
        /// When enough will have drained for this submission.
        retry_after: std::time::Duration,
    },
    /// A repeat of the request took its `Idempotency-Key` over (this attempt outlived its
    /// lease): nothing was stored by this attempt.
    #[error("a newer attempt of this request holds its Idempotency-Key")]
    Superseded,
    #[error(transparent)]
    Enqueue(#[from] EnqueueError),
}

impl From<crate::idempotency::RecordError> for SubmitError {
    fn from(e: crate::idempotency::RecordError) -> Self {
        match e {
            crate::idempotency::RecordError::Superseded => SubmitError::Superseded,
            crate::idempotency::RecordError::Sql(e) => SubmitError::Enqueue(EnqueueError::Sql(e)),
        }
    }
}

impl From<crate::db::StoreError> for SubmitError {
    fn from(e: crate::db::StoreError) -> Self {
        match e {
            crate::db::StoreError::NotFound(what) => SubmitError::NotFound(what),
            crate::db::StoreError::Sql(e) => SubmitError::Enqueue(EnqueueError::Sql(e)),
            crate::db::StoreError::Conflict(msg) => {
                SubmitError::Enqueue(EnqueueError::Backend(anyhow::anyhow!(msg)))
            }
        }
    }
}

impl From<sqlx::Error> for SubmitError {
    fn from(e: sqlx::Error) -> Self {
        SubmitError::Enqueue(EnqueueError::Sql(e))
    }
}

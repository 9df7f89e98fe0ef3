//! The job kinds, one file (or folder) each: the kind's contract ([`JobKind`]: name, queue,
//! retries, concurrency, how it runs) and how a job of it is submitted.
//!
//! - [`import_csv`] — a CSV fan export, streamed and upserted in resumable batches.
//! - [`send_message`] — one message to the outbound queue.
//! - [`bulk_send`] — a campaign's messages to the outbound queue.
//! - [`sweep`] — the scheduled reconciliation of the DLQ, stuck messages and old records.
//! - [`fan_out`] — what both send kinds do: batches of 10 to the outbound queue.
//!
//! [`JobKind`]: crate::engine::JobKind

pub mod bulk_send;
pub mod fan_out;
pub mod import_csv;
pub mod send_message;
pub mod sweep;

use crate::{blobs::BlobStore, db::Db, domain::FanId, engine::EnqueueError, outbound::Outbound};

/// What job kinds are built from. Each kind keeps the parts it needs.
#[derive(Clone)]
pub struct Deps {
    pub db: Db,
    pub blobs: BlobStore,
    /// Rows per import transaction.
    pub import_batch_rows: usize,
    /// Where send jobs put messages for the dispatcher.
    pub outbound: Outbound,
    /// `false`: messages skip the queue, are logged and marked sent.
    pub rate_limiter_enabled: bool,
    /// How sweeps decide.
    pub sweep: sweep::SweepConfig,
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
    #[error(transparent)]
    Enqueue(#[from] EnqueueError),
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

//! The job engine: what a job is and how any job runs, knowing no particular kind.
//!
//! - [`record`] — `job_records`, what clients poll: ids, statuses, progress, checkpoints;
//!   the only module that writes that table.
//! - [`backend`] — apalis on PostgreSQL, SQLite or Redis; enqueueing inside a transaction.
//! - [`relay`] — the Redis backend's outbox relay service.
//! - [`kind`] — the contract a job kind implements ([`JobKind`]).
//! - [`execute`] — one job's run: start, run the kind, record the outcome, retry or give up.
//! - [`processes`] — the processes seen alive (every role beats a row).

pub mod backend;
pub mod execute;
pub mod kind;
pub mod processes;
pub mod record;
pub mod relay;

pub use backend::{EnqueueError, JobBackend};
pub use kind::{JobError, JobKind, Outcome, RetryPolicy, RunContext};
pub use record::{JobFilter, JobId, JobRecord, JobStatus, NewJob};

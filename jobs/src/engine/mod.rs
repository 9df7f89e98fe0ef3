//! The job engine: what a job is and how any job runs, knowing no particular kind.
//!
//! - [`record`] — `job_records`, what clients poll: ids, statuses, progress, checkpoints;
//!   the only module that writes that table.
//! - [`backend`] — apalis on PostgreSQL, SQLite or Redis; enqueueing inside a transaction.
//! - [`relay`] — the Redis backend's outbox relay service.
//! - [`paced`] — apalis's PostgreSQL storage with its fetches paced (at most one per
//!   [`wake`]'s gathering time while the last was not full).
//! - [`closing`] — settles a worker's fetch, heartbeat or acknowledgement under way when it
//!   is asked to stop, so that its running jobs can still commit.
//! - [`kind`] — the contract a job kind implements ([`JobKind`]).
//! - [`execute`] — runs of a kind, alone or in groups: start, run, record, retry or give up.
//! - [`wake`] — wakes a kind's idle worker when one of its jobs is stored.
//! - [`group`] — runs items handed in by concurrent callers together (jobs, sends).
//! - [`processes`] — the processes seen alive (every role beats a row).

pub mod backend;
pub mod closing;
pub mod execute;
pub mod group;
pub mod kind;
pub mod paced;
pub mod processes;
pub mod record;
pub mod relay;
pub mod wake;

pub use backend::{EnqueueError, JobBackend};
pub use kind::{JobError, JobKind, Outcome, RetryPolicy, RunContext, StoredBy};
pub use record::{JobFilter, JobId, JobRecord, JobStatus, NewJob};

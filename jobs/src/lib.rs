//! The engine behind fanqueue's API: everything that is not HTTP.
//!
//! # Layout
//! - [`domain`] — ids, handles, emails, money and text, parsed once at the edge.
//! - [`db`] — the SQL backend (PostgreSQL or an embedded SQLite file) and its migrations.
//! - [`fans`], [`conversations`], [`messages`] — one module per aggregate, each owning its SQL.
//! - [`limits`] — per-user quotas, in-process or shared through Redis.
//! - [`jobs`] — job records (what clients poll) and the apalis job backend (SQLite,
//!   PostgreSQL or Redis), enqueueing inside business transactions.
//! - [`worker`] — running a job: dispatch by kind, retries, final outcome.
//! - [`imports`] — the CSV fan import: parsing messy exports, batched resumable upserts.
//! - [`blobs`] — where uploaded files wait for their job: a directory or S3.
//! - [`campaigns`] — bulk campaigns: many recipients, one job, live metrics.
//! - [`outbound`] — the queue to the dispatcher: SQS, or an SQL table with SQS's semantics.
//! - [`sends`] — the jobs that put messages on the outbound queue, 10 a batch.

pub mod blobs;
pub mod campaigns;
pub mod conversations;
pub mod db;
pub mod domain;
pub mod fans;
pub mod imports;
pub mod jobs;
pub mod limits;
pub mod messages;
pub mod outbound;
pub mod sends;
pub mod worker;

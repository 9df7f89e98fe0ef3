//! The engine behind fanqueue's API: everything that is not HTTP.
//!
//! Why "jobs": every write the API cannot finish in a row update becomes a durable job, and
//! this crate is everything those jobs touch, so it holds the job engine and also the tables
//! and values the API reads directly (fans, conversations): one crate, one owner per table.
//!
//! # Layout, in layers (a module imports only from its own layer or those above it here)
//! 1. Foundations:
//!    - [`domain`] — ids, handles, emails, money, text and stored words, parsed once at the edge.
//!    - [`db`] — the SQL backend (PostgreSQL or an embedded SQLite file), transactions, migrations.
//!    - [`blobs`] — where uploaded files wait for their job: a directory or S3.
//!    - [`outbound`] — the queue to the dispatcher: SQS, or an SQL table with SQS's semantics.
//!    - [`delivery`] — the per-creator delivery limiter and the platform's HTTP adapter.
//!    - [`telemetry`] — the metrics every layer records, each named once.
//! 2. [`engine`] — the job engine: job ids and records, the apalis backend, the outbox relay,
//!    the contract a job kind implements, and running one job. Knows no kind.
//! 3. [`crm`] — the aggregates (fans, conversations, messages, campaigns), one owner per table;
//!    [`idempotency`] — the keys of safe retries: the write each request made with an
//!    `Idempotency-Key` (recorded in that write's own transaction) and its answer.
//! 4. [`kinds`] — the job kinds (CSV import, single send, bulk send), one file each.
//! 5. [`runtime`] — the services: the workers (and the one list of kinds they run), and the
//!    dispatcher that delivers messages at each creator's rate.
//!
//! The `fanqueue` crate (API, CLI, process roles) sits on top and may use any layer.

pub mod blobs;
pub mod crm;
pub mod db;
pub mod delivery;
pub mod domain;
pub mod engine;
pub mod idempotency;
pub mod kinds;
pub mod outbound;
pub mod runtime;
pub mod telemetry;

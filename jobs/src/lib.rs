//! The engine behind fanqueue's API: everything that is not HTTP.
//!
//! Why "jobs": every write the API cannot finish in a row update becomes a durable job, and
//! this crate is everything those jobs touch, so it holds the job engine and also the tables
//! and values the API reads directly (fans, conversations): one crate, one owner per table.
//!
//! The crate is in five layers, a module importing only from its own layer or lower ones; the
//! one map of them, with what each module holds, is README's "Layout".
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

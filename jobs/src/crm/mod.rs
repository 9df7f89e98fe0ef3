//! The creator's data, one module per table, each the only writer of its table: reads, and
//! writes as named transitions (some taking the caller's [`Tx`](crate::db::Tx), so that rows of
//! several tables and a job can commit together).
//!
//! - [`fans`] — subscribers, and the batched upsert of a CSV import.
//! - [`conversations`] — one thread per fan; unread counts and last-message times.
//! - [`messages`] — inbound and outbound messages and their delivery states.
//! - [`deliveries`] — the log of delivery attempts (written with the message's transitions).
//! - [`campaigns`] — bulk campaigns and their metrics.
//! - [`segments`] — saved audiences, and the fans a filter matches.
//! - [`automations`] — triggers, steps and rules; the fans enrolled and each step they went
//!   through (the triggers fire in the transactions of the events, messages and fans above).
//! - [`events`] — what a platform sync reports (deliveries, opens, revenue), applied once.
//! - [`analytics`] — the creator's figures, read across the tables above.

pub mod analytics;
pub mod automations;
pub mod campaigns;
pub mod conversations;
pub mod deliveries;
pub mod events;
pub mod fans;
pub mod messages;
pub mod segments;

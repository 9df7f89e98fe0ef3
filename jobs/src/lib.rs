//! The engine behind fanqueue's API: everything that is not HTTP.
//!
//! # Layout
//! - [`domain`] — ids, handles, emails, money and text, parsed once at the edge.
//! - [`db`] — the SQL backend (PostgreSQL or an embedded SQLite file) and its migrations.
//! - [`fans`], [`conversations`], [`messages`] — one module per aggregate, each owning its SQL.
//! - [`limits`] — per-user quotas, in-process or shared through Redis.

pub mod conversations;
pub mod db;
pub mod domain;
pub mod fans;
pub mod limits;
pub mod messages;

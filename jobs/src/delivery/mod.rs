//! What delivering to the platform needs, below the dispatcher that uses it.
//!
//! - [`limiter`] — the per-creator limiter, shared through Redis or in process.
//! - [`platform`] — the HTTP adapter: one attempt, classified.

pub mod limiter;
pub mod platform;

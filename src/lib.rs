//! fanqueue: the front door (HTTP API, CLI, process roles) of a durable job system for
//! creator CRMs. The work itself lives in the `fanqueue_jobs` crate.
//!
//! # Layout
//! - [`settings`] — defaults file, optional config file, environment variables; [`origins`],
//!   the CORS origins setting, parsed once.
//! - [`auth`] — HS256 bearer tokens.
//! - [`api`] — poem-openapi resources, one file each, and the one API error type.
//! - [`quotas`] — per-user request quotas, in-process or shared through Redis.
//! - [`startup`] — opening the services and starting each role's services.
//! - [`supervisor`] — running a process's services together; SIGTERM drains them.
//! - [`cli`] — the `import` command, a client of the API.
//! - [`platform_sim`] — a stand-in for the platform's messaging API (tests, benchmarks).
//! - [`telemetry`] — logging.
//! - [`web`] — the web app under `/app`, built into the binary.

pub mod api;
pub mod auth;
pub mod cli;
pub mod origins;
pub mod platform_sim;
pub mod quotas;
pub mod settings;
pub mod startup;
pub mod supervisor;
pub mod telemetry;
pub mod web;

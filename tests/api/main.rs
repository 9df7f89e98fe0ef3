//! End-to-end tests over HTTP against real databases (SQLite files and PostgreSQL) and Redis.

mod auth;
mod bad_input;
mod concurrency;
mod conversations;
mod delivery;
mod dispatch;
mod docs;
mod fans;
mod helpers;
mod imports;
mod isolation;
mod jobs;
mod limits;
mod messages;
mod migrations;
mod monitoring;
mod operations;
mod outage;
mod outbound;
mod platform_sim;
mod processes;
mod shutdown;
mod sweeps;
mod workers;

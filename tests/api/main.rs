//! End-to-end tests over HTTP against real databases (SQLite files and PostgreSQL) and Redis.

/// Runs each `async fn(Backend)` on SQLite and on PostgreSQL.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::helpers::Backend::Postgres).await
                }
            )*
        }
    };
}

mod analytics;
mod app;
mod auth;
mod backpressure;
mod bad_input;
mod compose;
mod concurrency;
mod conversations;
mod cors;
mod delivery;
mod dispatch;
mod dispatcher_shutdown;
mod docs;
mod end_to_end;
mod events;
mod fans;
mod helpers;
mod idempotency;
mod import_bookkeeping;
mod imports;
mod isolation;
mod jobs;
mod kinds;
mod limits;
mod messages;
mod metrics;
mod migrations;
mod monitoring;
mod operations;
mod outage;
mod outbound;
mod overload;
mod platform_sim;
mod processes;
mod safe_retries;
mod seeds;
mod shutdown;
mod sweeps;
mod workers;

//! The SQL backend: PostgreSQL for the distributed deployment, a SQLite file for the embedded
//! default. Queries are written once in the subset both understand (`$N` placeholders work in
//! both through sqlx); where the dialects differ, the aggregate module matches on [`Db`].

use std::{path::Path, str::FromStr, time::Duration};

use anyhow::Context;
use sqlx::{
    PgPool, Postgres, Sqlite, SqlitePool, Transaction,
    postgres::PgPoolOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

/// A connection pool on one of the two SQL backends.
#[derive(Clone, Debug)]
pub enum Db {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// A Redis connection for a limiter (the API's quotas, the delivery limiter). It connects on
/// first use and again after a lost connection, so a process starts while Redis is
/// unreachable; each call then fails within about two seconds instead of hanging or waiting
/// through a long reconnect schedule, and the caller decides what a failure means (the
/// quotas let the call through, the delivery limiter gives no slot).
pub fn redis_connection(url: &str) -> anyhow::Result<redis::aio::ConnectionManager> {
    let client = redis::Client::open(url).context("reading REDIS_URL")?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(200));
    redis::aio::ConnectionManager::new_lazy_with_config(client, config)
        .with_context(|| format!("setting up Redis at {}", redact(url)))
}

/// Runs the same expression against whichever pool `$db` holds. The body is compiled once per
/// backend, so generic sqlx calls (`query_as`, `fetch_one`) type-check for each.
#[macro_export]
macro_rules! on_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Postgres($pool) => $body,
            $crate::db::Db::Sqlite($pool) => $body,
        }
    };
}

/// A transaction on either backend, begun by [`Db::begin`]. Modules that own a table offer
/// functions taking `&mut Tx`, so one transaction can span several owners (a message, its
/// conversation and its job commit together).
pub enum Tx {
    Postgres(Transaction<'static, Postgres>),
    Sqlite(Transaction<'static, Sqlite>),
}

/// Runs the same expression against whichever transaction `$tx` holds; `$conn` is a
/// `&mut Transaction` of that backend (use `&mut **$conn` as the executor).
#[macro_export]
macro_rules! on_tx {
    ($tx:expr, $conn:ident => $body:expr) => {
        match $tx {
            $crate::db::Tx::Postgres($conn) => $body,
            $crate::db::Tx::Sqlite($conn) => $body,
        }
    };
}

impl Tx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Postgres(tx) => tx.commit().await,
            Tx::Sqlite(tx) => tx.commit().await,
        }
    }
}

/// The SQL driver's error, for callers above this crate (the API maps it to a status).
pub use sqlx::Error as SqlError;

/// True when `err` says the database could not be reached or every connection stayed busy
/// past the wait (nothing was done; trying again later may work), not that a query was wrong.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        // Connection exceptions (class 08), the server shutting down or starting (57P0x),
        // out of connections (53300).
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P0") || c == "53300"),
        _ => false,
    }
}

/// Errors of the aggregate modules, in terms the API maps to status codes.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl Db {
    /// Opens a pool for `url`: `postgres://…` or `sqlite://path` / `sqlite:path`.
    pub async fn connect(url: &str) -> anyhow::Result<Db> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // A request that cannot get a connection within the acquire timeout is answered
            // 503 (the database is down or saturated) rather than left waiting.
            let pool = PgPoolOptions::new()
                .max_connections(20)
                .acquire_timeout(Duration::from_secs(3))
                .connect(url)
                .await
                .with_context(|| format!("connecting to PostgreSQL at {}", redact(url)))?;
            Ok(Db::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .with_context(|| format!("reading the SQLite URL {url}"))?
                .create_if_missing(true)
                .foreign_keys(true)
                // WAL lets readers run beside the one writer; a busy handler (busy_timeout
                // while connecting, then `wait_for_the_writer`) makes writers queue (up to
                // this bound) instead of failing with SQLITE_BUSY when API and workers write
                // at once. Write transactions begin IMMEDIATE ([`Db::begin`]) so that the
                // wait applies to them too.
                // FULL: a commit (a 202's job) is on disk before the answer, power cut or not.
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(SQLITE_BUSY_WAIT);
            if let Some(dir) = opts.get_filename().parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating the data directory {}", dir.display()))?;
            }
            // SQLite has one writer. A connection more than one writing and one reading only
            // adds a writer that waits for the lock, and sends reached the outbound queue
            // seconds later the more there were (BENCHMARKS.md, the load bench). The wait
            // itself is `wait_for_the_writer`.
            let pool = SqlitePoolOptions::new()
                .max_connections(2)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        let mut handle = conn.lock_handle().await?;
                        // SAFETY: the handle is this open connection's, locked for us, and the
                        // handler is a plain function that keeps no pointer.
                        let rc = unsafe {
                            libsqlite3_sys::sqlite3_busy_handler(
                                handle.as_raw_handle().as_ptr(),
                                Some(wait_for_the_writer),
                                std::ptr::null_mut(),
                            )
                        };
                        if rc != libsqlite3_sys::SQLITE_OK {
                            return Err(sqlx::Error::Protocol(format!(
                                "setting SQLite's busy handler failed ({rc})"
                            )));
                        }
                        Ok(())
                    })
                })
                .connect_with(opts)
                .await
                .with_context(|| format!("opening the SQLite database {url}"))?;
            Ok(Db::Sqlite(pool))
        } else {
            anyhow::bail!(
                "DATABASE_URL must start with postgres:// or sqlite: (got {})",
                redact(url)
            )
        }
    }

    /// A small pool of its own (PostgreSQL; SQLite shares this one) whose connections always
    /// run a prepared statement on its generic plan, made once per connection for an average
    /// value of each parameter rather than for the values at hand, with [`keyed_pool`]'s
    /// settings (no scans, no hash or merge joins). For indexed point statements whose custom plan turns
    /// on a guess that can go badly wrong (`fans::list`) or costs more to make than to run
    /// (the send path's one statement, `kinds/send_message/one_statement.rs`), and only those.
    pub fn generic_plans(&self, connections: u32) -> Db {
        match self {
            Db::Postgres(pool) => Db::Postgres(pool_with(
                pool,
                connections,
                &[KEYED, &[("plan_cache_mode", "force_generic_plan")]].concat(),
            )),
            Db::Sqlite(_) => self.clone(),
        }
    }

    /// Begins a write transaction. On SQLite it takes the write lock at once (`BEGIN
    /// IMMEDIATE`): a deferred transaction that reads and then writes cannot wait for another
    /// writer (SQLite answers "database is locked" at once to keep its snapshot consistent),
    /// whereas an immediate one waits in line, within the busy timeout.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Db::Postgres(pool) => Tx::Postgres(pool.begin().await?),
            Db::Sqlite(pool) => Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
        })
    }

    /// The SQLite URL of the embedded default inside `data_dir`.
    pub fn embedded_url(data_dir: &Path) -> String {
        format!("sqlite://{}", data_dir.join("fanqueue.db").display())
    }

    /// Applies our migrations for this backend. Idempotent. The job backend's migrations
    /// are applied beside these by `JobBackend::migrate`: on PostgreSQL apalis keeps its own
    /// history table in schema `apalis`; on SQLite both histories share `_sqlx_migrations`
    /// (apalis's versions are timestamps, ours 0001…), so each migrator ignores the other's.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        match self {
            Db::Postgres(pool) => sqlx::migrate!("../migrations/postgres").run(pool).await,
            Db::Sqlite(pool) => {
                let mut migrator = sqlx::migrate!("../migrations/sqlite");
                migrator.set_ignore_missing(true);
                migrator.run(pool).await
            }
        }
        .context("applying migrations")
    }

    /// One round trip: whether the database answers.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        on_db!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))
    }

    /// The SQLite database's file, `None` on PostgreSQL.
    pub fn sqlite_file(&self) -> Option<std::path::PathBuf> {
        match self {
            Db::Postgres(_) => None,
            Db::Sqlite(pool) => Some(pool.connect_options().get_filename().to_owned()),
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Db::Postgres(_) => "postgres",
            Db::Sqlite(_) => "sqlite",
        }
    }

    pub async fn close(&self) {
        on_db!(self, pool => pool.close().await)
    }
}

/// Hides the password of a database URL for logs and error messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Limit and offset of a list request, already bounded by the API.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
}

/// One page of rows plus the count of all rows that matched.
#[derive(Debug, Clone)]
pub struct Listed<T> {
    pub items: Vec<T>,
    pub total: i64,
}

/// Appends `values` to `q` as bound parameters separated by commas: the inside of an `IN (…)`.
pub fn push_binds<'t, DB, T>(q: &mut sqlx::QueryBuilder<DB>, values: impl IntoIterator<Item = T>)
where
    DB: sqlx::Database,
    T: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    let mut list = q.separated(", ");
    for v in values {
        list.push_bind(v);
    }
}

/// True when `err` is a unique-constraint violation (both backends).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// How long a SQLite writer waits for another to finish before it gives up (`SQLITE_BUSY`).
const SQLITE_BUSY_WAIT: Duration = Duration::from_secs(30);
/// How long it sleeps between two looks at the lock.
const SQLITE_BUSY_STEP: Duration = Duration::from_micros(200);

thread_local! {
    /// When this thread's connection began to wait for the lock (sqlx runs each SQLite
    /// connection on a thread of its own).
    static BUSY_SINCE: std::cell::Cell<Option<std::time::Instant>> =
        const { std::cell::Cell::new(None) };
}

/// SQLite's busy handler, in place of the one `busy_timeout` installs: that one sleeps 1, 2,
/// 5, 10, 15, 20, 25, 25, 25, 50, 50 then 100 ms between looks, so a writer queued behind
/// another that held the lock for a millisecond could sleep on for up to 100 ms more
/// (BENCHMARKS.md, the load bench's 202 → queue on SQLite). This one looks every 0.2 ms, for
/// up to [`SQLITE_BUSY_WAIT`]. `tries` is 0 at a wait's first call.
extern "C" fn wait_for_the_writer(
    _: *mut std::ffi::c_void,
    tries: std::ffi::c_int,
) -> std::ffi::c_int {
    let now = std::time::Instant::now();
    let since = BUSY_SINCE.with(|since| {
        if tries == 0 || since.get().is_none() {
            since.set(Some(now));
        }
        since.get().unwrap_or(now)
    });
    if now.duration_since(since) >= SQLITE_BUSY_WAIT {
        return 0;
    }
    std::thread::sleep(SQLITE_BUSY_STEP);
    1
}

/// A pool of its own over `pool`'s database for statements that only ever read rows by key:
/// its connections price out sequential scans, hash joins and merge joins, which leaves
/// nested loops over index lookups. PostgreSQL plans a statement it has prepared for the
/// table sizes it sees then, and guesses 100 rows for a list passed as a parameter; a plan
/// made while a table was small (a fresh install, a benchmark's first second) reads the
/// whole table on every run once it has grown, until the table is next analyzed: the sends'
/// statement and apalis's acknowledgement slowed as their tables grew (BENCHMARKS.md, the
/// load bench).
pub fn keyed_pool(pool: &PgPool, connections: u32) -> PgPool {
    pool_with(pool, connections, KEYED)
}

/// A pool of `connections` of its own on `pool`'s database, for work that commits a long
/// series of batches, each with the checkpoint it resumes from (an import):
/// - its own connections keep the batch statements prepared, where the shared pool hands its
///   idle connections out in turn, so each batch met a connection that had not prepared its
///   statement yet (or had to open one), which cost about as much as the batch itself
///   (BENCHMARKS.md, the import);
/// - its commits do not wait for the disk (`synchronous_commit = off`): a batch a database
///   crash loses goes with its checkpoint and is written again from the one before. The job's
///   final state is committed through the shared pool, which flushes every batch before it.
pub fn batch_pool(pool: &PgPool, connections: u32) -> PgPool {
    pool_with(pool, connections, BATCHES)
}

const BATCHES: &[(&str, &str)] = &[("synchronous_commit", "off")];

const KEYED: &[(&str, &str)] = &[
    ("enable_seqscan", "off"),
    ("enable_hashjoin", "off"),
    ("enable_mergejoin", "off"),
];

fn pool_with(pool: &PgPool, connections: u32, settings: &[(&str, &str)]) -> PgPool {
    let opts = (*pool.connect_options())
        .clone()
        .options(settings.iter().copied());
    PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(pool.options().get_acquire_timeout())
        .connect_lazy_with(opts)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Db, Tx, redact};

    /// A writer that finds SQLite's lock taken waits in `wait_for_the_writer` and writes once
    /// the holder committed, instead of failing with "database is locked".
    #[tokio::test]
    async fn a_sqlite_writer_waits_for_the_one_holding_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&Db::embedded_url(dir.path())).await.unwrap();
        let Db::Sqlite(pool) = &db else {
            panic!("an embedded URL opens SQLite")
        };
        sqlx::query("CREATE TABLE t (n INTEGER)")
            .execute(pool)
            .await
            .unwrap();
        let Tx::Sqlite(mut first) = db.begin().await.unwrap() else {
            panic!("SQLite begins SQLite transactions")
        };
        sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&mut *first)
            .await
            .unwrap();
        let (began, beginning) = tokio::sync::oneshot::channel();
        let second = tokio::spawn({
            let db = db.clone();
            async move {
                began.send(()).unwrap();
                // BEGIN IMMEDIATE: waits here for the first writer.
                let Tx::Sqlite(mut tx) = db.begin().await? else {
                    panic!("SQLite begins SQLite transactions")
                };
                let seen: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t")
                    .fetch_one(&mut *tx)
                    .await?;
                sqlx::query("INSERT INTO t VALUES (2)")
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok::<_, sqlx::Error>(seen)
            }
        });
        beginning.await.unwrap();
        // The lock is held well past the second writer's first try.
        tokio::time::sleep(Duration::from_millis(300)).await;
        first.commit().await.unwrap();
        let seen = second
            .await
            .unwrap()
            .expect("the second writer waited, then wrote");
        assert_eq!(seen, 1, "it wrote after the first writer's commit");
    }

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/fq"),
            "postgres://app:***@db:5432/fq"
        );
        assert_eq!(redact("postgres://app@db/fq"), "postgres://app@db/fq");
        assert_eq!(
            redact("sqlite://data/fanqueue.db"),
            "sqlite://data/fanqueue.db"
        );
    }
}

/// Rows one prune statement deletes at most: a sweep holds a table's row locks (on SQLite, the
/// one write lock) for one batch at a time, whatever built up since the last sweep.
pub const PRUNE_BATCH: i64 = 5_000;

/// Runs a table owner's `delete` statement, which deletes at most `$2` rows older than `$1`
/// (`before`), in batches until `deadline` ([`prune_in_batches`]). Returns how many went.
pub async fn prune_older(
    db: &Db,
    deadline: std::time::Instant,
    before: chrono::DateTime<chrono::Utc>,
    delete: &'static str,
) -> sqlx::Result<u64> {
    prune_in_batches(deadline, |limit| async move {
        on_db!(db, pool => sqlx::query(delete)
            .bind(crate::domain::Timestamp(before))
            .bind(limit)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
    })
    .await
}

/// Runs `delete(limit)`, one statement deleting at most `limit` rows, until one deletes fewer
/// or `deadline` has passed (what is left goes at the next sweep). Returns how many went.
pub async fn prune_in_batches<E, F, Fut>(
    deadline: std::time::Instant,
    mut delete: F,
) -> Result<u64, E>
where
    F: FnMut(i64) -> Fut,
    Fut: std::future::Future<Output = Result<u64, E>>,
{
    let mut total = 0;
    loop {
        let deleted = delete(PRUNE_BATCH).await?;
        total += deleted;
        if deleted < PRUNE_BATCH as u64 || std::time::Instant::now() >= deadline {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod prune_tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// `rows` to delete, a batch a call: how many calls it took and what they deleted.
    async fn prune(rows: u64, deadline: Instant) -> (u64, u64) {
        let mut left = rows;
        let mut calls = 0;
        let total = prune_in_batches(deadline, |limit| {
            calls += 1;
            let deleted = left.min(limit as u64);
            left -= deleted;
            async move { Ok::<_, std::convert::Infallible>(deleted) }
        })
        .await
        .unwrap();
        (calls, total)
    }

    #[tokio::test]
    async fn a_prune_deletes_a_batch_a_statement_until_one_comes_back_short() {
        let later = Instant::now() + Duration::from_secs(60);
        let batch = PRUNE_BATCH as u64;
        assert_eq!(prune(0, later).await, (1, 0));
        assert_eq!(prune(2 * batch + 1, later).await, (3, 2 * batch + 1));
        assert_eq!(
            prune(2 * batch, later).await,
            (3, 2 * batch),
            "an empty last one"
        );
    }

    #[tokio::test]
    async fn past_its_deadline_a_prune_leaves_the_rest_for_the_next_sweep() {
        let batch = PRUNE_BATCH as u64;
        assert_eq!(prune(5 * batch, Instant::now()).await, (1, batch));
    }
}

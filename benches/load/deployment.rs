//! One deployment of the load benchmark: its database and seed data, its processes, and what
//! it reads back (queue times, drain figures, CPU time).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use fanqueue_jobs::{db::Db, domain::Timestamp, on_db};

use fanqueue::startup::Services;
use fanqueue_jobs::runtime::{Sweeper, schedule};

use crate::helpers::{AppProcess, Backend, JWT_SECRET, TestDb, run_fanqueue, test_settings};

/// The creator whose fans are listed, and how many fans it has.
pub(crate) const LISTED: i64 = 1;
pub(crate) const LISTED_FANS: i64 = 100_000;
/// The creators that send, from user 2 on, and their fans each.
pub(crate) const SENDERS: i64 = 1_000;
pub(crate) const SENDER_FANS: i64 = 100;

pub(crate) fn ms(d: chrono::TimeDelta) -> f64 {
    d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e3
}

/// What the generator needs of a deployment (also from a spawned task).
pub(crate) trait Target: Send + Sync {
    fn api(&self) -> &str;
    fn first_fan(&self, creator: i64) -> i64;
}

/// The API's address and the fans' ids, shared with load tasks.
#[derive(Clone)]
pub(crate) struct Handle {
    api: String,
    first_fans: Arc<HashMap<i64, i64>>,
}

impl Target for Handle {
    fn api(&self) -> &str {
        &self.api
    }
    fn first_fan(&self, creator: i64) -> i64 {
        self.first_fans[&creator]
    }
}

impl Target for Deployment {
    fn api(&self) -> &str {
        &self.handle.api
    }
    fn first_fan(&self, creator: i64) -> i64 {
        self.handle.first_fans[&creator]
    }
}

/// One deployment: its database, its processes, and a pool of its own to read figures.
pub(crate) struct Deployment {
    backend: Backend,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
    db: Db,
    /// PostgreSQL: `serve` and `worker`; SQLite: `all` (the API and the workers).
    api: Option<AppProcess>,
    worker: Option<AppProcess>,
    handle: Handle,
    /// The database, as the processes reach it.
    url: String,
    _testdb: Option<TestDb>,
}

/// See [`Deployment::pressure`].
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Pressure {
    pub(crate) checkpoints: i64,
    pub(crate) autovacuums: i64,
    pub(crate) autoanalyzes: i64,
    pub(crate) waiting: i64,
}

pub(crate) struct DrainFigures {
    pub(crate) backlog: usize,
    pub(crate) seconds: f64,
    pub(crate) backlog_rate: f64,
    pub(crate) all_rate: f64,
}

impl Deployment {
    pub(crate) async fn prepare(backend: Backend, sslmode: Option<&str>) -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let mut env: Vec<(String, String)> = vec![
            ("JWT_SECRET".into(), JWT_SECRET.into()),
            ("WRITE_LIMIT_PER_MINUTE".into(), "1000000000".into()),
            ("CAMPAIGNS_PER_HOUR".into(), "1000000".into()),
            // No dispatcher drains the backlogs here: the bench measures storing, not delivery.
            ("MAX_BACKLOG_PER_CREATOR".into(), "1000000000".into()),
            // The bench reads only the lines saying a process is ready.
            (
                "RUST_LOG".into(),
                "warn,fanqueue::startup=info,fanqueue_jobs::runtime=info".into(),
            ),
            (
                "DATA_DIR".into(),
                dir.path().join("data").display().to_string(),
            ),
        ];
        let (testdb, url) = match backend {
            Backend::Postgres => {
                let (db, url) = TestDb::create(Backend::Postgres).await;
                let served = match sslmode {
                    Some(mode) if url.contains('?') => format!("{url}&sslmode={mode}"),
                    Some(mode) => format!("{url}?sslmode={mode}"),
                    None => url.clone(),
                };
                env.push(("DATABASE_URL".into(), served));
                (Some(db), url)
            }
            Backend::Sqlite => (None, Db::embedded_url(&dir.path().join("data"))),
        };
        let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut with_path = refs.clone();
        let path = std::env::var("PATH").unwrap_or_default();
        with_path.push(("PATH", &path));
        let out = run_fanqueue(dir.path(), &["migrate"], &with_path);
        assert!(out.status.success(), "fanqueue migrate: {out:?}");
        let db = Db::connect(&url).await.unwrap();
        let started = Instant::now();
        seed(&db).await;
        let first_fans: Vec<(i64, i64)> = on_db!(&db, pool => sqlx::query_as(
            "SELECT user_id, MIN(id) FROM fans GROUP BY user_id"
        )
        .fetch_all(pool)
        .await
        .unwrap());
        eprintln!(
            "seeded {} fans of {} creators in {:.1} s",
            LISTED_FANS + SENDERS * SENDER_FANS,
            first_fans.len(),
            started.elapsed().as_secs_f64()
        );
        Deployment {
            backend,
            env,
            dir,
            db,
            api: None,
            worker: None,
            handle: Handle {
                api: String::new(),
                first_fans: Arc::new(first_fans.into_iter().collect()),
            },
            url,
            _testdb: testdb,
        }
    }

    /// A sweeper of this deployment, run from the bench (`Sweeper::run_once`), that prunes
    /// everything final however recent: a sweep after a load then has its whole trail to
    /// delete, as a sweep a retention after a day of it would.
    pub(crate) async fn sweeper(&self) -> Sweeper {
        let settings = test_settings(&self.url, &self.dir.path().join("data"));
        let services = Services::open(&settings).await.unwrap();
        let mut deps = fanqueue::startup::deps(&settings, &services);
        deps.sweep.retention = Duration::ZERO;
        Sweeper::new(
            services.db.clone(),
            services.jobs.clone(),
            &deps,
            schedule(&settings.sweep.sweep_cron).unwrap(),
        )
    }

    pub(crate) fn name(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => "PostgreSQL",
            Backend::Sqlite => "SQLite (the embedded default)",
        }
    }

    pub(crate) fn shape(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => {
                "`fanqueue serve` + `fanqueue worker` on PostgreSQL, embedded outbound queue"
            }
            Backend::Sqlite => "`fanqueue all` on an SQLite file, embedded outbound queue",
        }
    }

    pub(crate) fn handle(&self) -> Handle {
        self.handle.clone()
    }

    fn spawn(&self, args: &[&str], ready: &str) -> AppProcess {
        let refs: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        AppProcess::spawn_until(args, &refs, self.dir.path(), ready)
    }

    /// Starts the processes that serve and work.
    pub(crate) fn start(&mut self) {
        match self.backend {
            Backend::Postgres => {
                let api = self.spawn(&["serve"], "API listening; docs at /docs");
                self.handle.api = api.address.clone();
                self.api = Some(api);
                self.worker = Some(self.spawn(&["worker"], "workers running"));
            }
            Backend::Sqlite => {
                let all = self.spawn(&["all"], "API listening; docs at /docs");
                self.handle.api = all.address.clone();
                self.api = Some(all);
            }
        }
    }

    /// Starts the workers (SQLite: `all` in place of an API-only `serve`); returns when it
    /// was asked to: every job stored before is the backlog.
    pub(crate) async fn start_worker(&mut self) -> DateTime<Utc> {
        let at = Utc::now();
        match self.backend {
            Backend::Postgres => {
                self.worker = Some(self.spawn(&["worker"], "workers running"));
            }
            Backend::Sqlite => {
                if let Some(mut serve) = self.api.take() {
                    serve.terminate(Duration::from_secs(40)).await;
                }
                let all = self.spawn(&["all"], "API listening; docs at /docs");
                self.handle.api = all.address.clone();
                self.api = Some(all);
            }
        }
        at
    }

    /// Stops the workers and leaves an API running without them.
    pub(crate) async fn stop_worker(&mut self) {
        match self.backend {
            Backend::Postgres => {
                if let Some(mut w) = self.worker.take() {
                    w.terminate(Duration::from_secs(40)).await;
                }
            }
            Backend::Sqlite => {
                if let Some(mut a) = self.api.take() {
                    a.terminate(Duration::from_secs(40)).await;
                }
                let api = self.spawn(&["serve"], "API listening; docs at /docs");
                self.handle.api = api.address.clone();
                self.api = Some(api);
            }
        }
    }

    pub(crate) async fn stop(&mut self) {
        for p in [self.worker.take(), self.api.take()].into_iter().flatten() {
            let mut p = p;
            p.terminate(Duration::from_secs(40)).await;
        }
    }

    fn pids(&self) -> Vec<(String, u32)> {
        let mut out = vec![];
        if let Some(a) = &self.api {
            let name = match self.backend {
                Backend::Postgres => "serve",
                Backend::Sqlite => "app",
            };
            out.push((name.to_owned(), a.child.id()));
        }
        if let Some(w) = &self.worker {
            out.push(("worker".to_owned(), w.child.id()));
        }
        out
    }

    pub(crate) fn cpu_names(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => "serve, worker, postgres, bench",
            Backend::Sqlite => "app, bench",
        }
    }

    /// Waits (at most two minutes) until no send job is waiting or running.
    pub(crate) async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (n,): (i64,) = on_db!(&self.db, pool => sqlx::query_as(
                "SELECT COUNT(*) FROM job_records
                 WHERE kind IN ('send_message', 'bulk_send') AND status IN ('queued', 'running')"
            )
            .fetch_one(pool)
            .await
            .unwrap());
            if n == 0 {
                break;
            }
            if Instant::now() > deadline {
                eprintln!("still {n} send jobs pending after two minutes; going on");
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // Requests the generator gave up on may still be running in the server and the
        // database: wait until they are done too.
        loop {
            let active = match &self.db {
                Db::Postgres(pool) => {
                    sqlx::query_as::<_, (i64,)>(
                        "SELECT COUNT(*) FROM pg_stat_activity
                         WHERE datname = current_database() AND state = 'active'
                           AND pid <> pg_backend_pid()",
                    )
                    .fetch_one(pool)
                    .await
                    .unwrap()
                    .0
                }
                Db::Sqlite(_) => 0,
            };
            let before: f64 = self.pids().iter().filter_map(|(_, p)| cpu_of(*p)).sum();
            tokio::time::sleep(Duration::from_millis(500)).await;
            let after: f64 = self.pids().iter().filter_map(|(_, p)| cpu_of(*p)).sum();
            if active == 0 && after - before < 0.05 {
                break;
            }
            if Instant::now() > deadline {
                eprintln!("the deployment is still busy after two minutes; going on");
                break;
            }
        }
        // Each step starts with its WAL budget whole: PostgreSQL's requested checkpoints
        // (past max_wal_size) otherwise land in whichever step the writes before it led up
        // to, and that step's p99 measures the checkpoint rather than the route.
        if let Db::Postgres(pool) = &self.db {
            sqlx::query("CHECKPOINT").execute(pool).await.unwrap();
        }
    }

    /// apalis tasks of the `send_message` queue stored so far.
    pub(crate) async fn send_tasks(&self) -> i64 {
        let sql = match self.db {
            Db::Postgres(_) => "SELECT COUNT(*) FROM apalis.jobs WHERE job_type = 'send_message'",
            Db::Sqlite(_) => "SELECT COUNT(*) FROM Jobs WHERE job_type = 'send_message'",
        };
        let (n,): (i64,) = on_db!(&self.db, pool => sqlx::query_as(sql)
            .fetch_one(pool)
            .await
            .unwrap());
        n
    }

    /// What else PostgreSQL is doing, as counters to take differences of: checkpoints (the
    /// cluster's), autovacuum and autoanalyze runs on this database's tables, and the
    /// creators' waiting messages. Zeros on SQLite.
    pub(crate) async fn pressure(&self) -> Pressure {
        let Db::Postgres(pool) = &self.db else {
            return Pressure::default();
        };
        let (checkpoints,): (i64,) =
            sqlx::query_as("SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter")
                .fetch_one(pool)
                .await
                .unwrap();
        let (autovacuums, autoanalyzes): (i64, i64) = sqlx::query_as(
            "SELECT COALESCE(SUM(autovacuum_count), 0)::bigint,
                    COALESCE(SUM(autoanalyze_count), 0)::bigint
             FROM pg_stat_all_tables WHERE schemaname IN ('public', 'apalis')",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        let (waiting,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM messages WHERE direction = 'out' AND status = 'queued'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        Pressure {
            checkpoints,
            autovacuums,
            autoanalyzes,
            waiting,
        }
    }

    /// A warning when this PostgreSQL runs without autovacuum (a CI configuration may turn it
    /// off): minutes of load then leave dead rows and stale statistics no deployment would
    /// have, and the figures say so.
    pub(crate) async fn autovacuum_off(&self) -> Option<String> {
        let Db::Postgres(pool) = &self.db else {
            return None;
        };
        let (setting, file): (String, Option<String>) =
            sqlx::query_as("SELECT setting, sourcefile FROM pg_settings WHERE name = 'autovacuum'")
                .fetch_one(pool)
                .await
                .unwrap();
        (setting == "off").then(|| {
            format!(
                "**autovacuum is off on this PostgreSQL** ({}): no table is vacuumed or \
                 analyzed during the build-up.",
                file.unwrap_or_else(|| "set at start".into())
            )
        })
    }

    /// Refreshes PostgreSQL's statistics. A fresh database's describe the job tables as
    /// empty (they were analyzed when seeded); in a running deployment autovacuum keeps them
    /// current within a minute of the load, and the steps should run with the plans it has.
    pub(crate) async fn analyze(&self) {
        if let Db::Postgres(pool) = &self.db {
            sqlx::query("ANALYZE").execute(pool).await.unwrap();
        }
    }

    /// When each of `accepted`'s messages reached the outbound queue; waits up to 60 s for all.
    pub(crate) async fn wait_on_queue(
        &self,
        accepted: &[(i64, DateTime<Utc>)],
    ) -> HashMap<i64, DateTime<Utc>> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let min = accepted.iter().map(|(id, _)| *id).min().unwrap_or(0);
        loop {
            let rows: Vec<(String, DateTime<Utc>)> = on_db!(&self.db, pool => sqlx::query_as(
                "SELECT q.dedup_key, q.created_at FROM outbound_queue q
                 JOIN messages m ON q.dedup_key = CAST(m.id AS TEXT) WHERE m.id >= $1"
            )
            .bind(min)
            .fetch_all(pool)
            .await
            .unwrap());
            let got: HashMap<i64, DateTime<Utc>> = rows
                .into_iter()
                .filter_map(|(k, at)| Some((k.parse().ok()?, at)))
                .collect();
            if accepted.iter().all(|(id, _)| got.contains_key(id)) || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Per campaign: its first and last message's time on the queue, and how many are there.
    pub(crate) async fn campaigns_on_queue(
        &self,
    ) -> HashMap<i64, (DateTime<Utc>, DateTime<Utc>, i64)> {
        let rows: Vec<(i64, DateTime<Utc>, DateTime<Utc>, i64)> = on_db!(&self.db, pool => sqlx::query_as(
            "SELECT m.campaign_id, MIN(q.created_at), MAX(q.created_at), COUNT(*) FROM outbound_queue q
             JOIN messages m ON q.dedup_key = CAST(m.id AS TEXT)
             WHERE m.campaign_id IS NOT NULL GROUP BY m.campaign_id"
        )
        .fetch_all(pool)
        .await
        .unwrap());
        rows.into_iter()
            .map(|(c, f, l, n)| (c, (f, l, n)))
            .collect()
    }

    /// Waits (at most ten minutes) until the `n` send jobs stored before `started` are done.
    pub(crate) async fn wait_drained(&self, started: DateTime<Utc>, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let (left,): (i64,) = on_db!(&self.db, pool => sqlx::query_as(
                "SELECT COUNT(*) FROM job_records
                 WHERE kind = 'send_message' AND created_at < $1 AND status IN ('queued', 'running')"
            )
            .bind(Timestamp(started))
            .fetch_one(pool)
            .await
            .unwrap());
            if left == 0 {
                return;
            }
            if Instant::now() > deadline {
                eprintln!("the backlog did not drain within ten minutes ({left} of {n} left)");
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The drain's figures: the backlog (send jobs stored from `stored_from` until the worker
    /// was started at `started`) from its first job's start to its last job's end, and every
    /// send job that ended in that time (the backlog and the API load's).
    pub(crate) async fn drain_figures(
        &self,
        stored_from: DateTime<Utc>,
        started: DateTime<Utc>,
    ) -> DrainFigures {
        let rows: Vec<(DateTime<Utc>, DateTime<Utc>, DateTime<Utc>)> = on_db!(&self.db, pool => sqlx::query_as(
            "SELECT created_at, started_at, finished_at FROM job_records
             WHERE kind = 'send_message' AND finished_at >= $1"
        )
        .bind(Timestamp(started))
        .fetch_all(pool)
        .await
        .unwrap());
        let backlog: Vec<_> = rows
            .iter()
            .filter(|(c, ..)| *c >= stored_from && *c < started)
            .collect();
        let first = backlog.iter().map(|(_, s, _)| *s).min().unwrap_or(started);
        let last = backlog.iter().map(|(.., f)| *f).max().unwrap_or(started);
        let seconds = ms(last - first) / 1e3;
        let all = rows.iter().filter(|(.., f)| *f <= last).count();
        DrainFigures {
            backlog: backlog.len(),
            seconds,
            backlog_rate: backlog.len() as f64 / seconds,
            all_rate: all as f64 / seconds,
        }
    }
}

/// Creator 1's 100,000 fans and the sending creators' 100 each, one statement each.
async fn seed(db: &Db) {
    let now = Timestamp::now();
    let sql = "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < $1)
               INSERT INTO fans (user_id, platform, handle, value_cents, created_at, updated_at)
               SELECT $2 + (i - 1) / $3, 'onlyfans', '@fan' || i, i % 1000, $4, $4 FROM s";
    for (n, first_user, per_user) in [
        (LISTED_FANS, LISTED, LISTED_FANS),
        (SENDERS * SENDER_FANS, 2, SENDER_FANS),
    ] {
        on_db!(db, pool => sqlx::query(sql)
            .bind(n)
            .bind(first_user)
            .bind(per_user)
            .bind(now)
            .execute(pool)
            .await
            .map(|_| ())
            .unwrap());
    }
    // Written around the fans module: its page index is built from what is there.
    fanqueue_jobs::crm::fans::blocks::rebuild(db).await.unwrap();
    if let Db::Postgres(pool) = db {
        sqlx::query("ANALYZE").execute(pool).await.unwrap();
    }
}

/// CPU time of the deployment's processes, PostgreSQL's and the bench's over one step.
pub(crate) struct Cpu {
    at: Instant,
    before: Vec<f64>,
}

impl Cpu {
    fn sample(d: &Deployment) -> Vec<f64> {
        let mut v: Vec<f64> = d
            .pids()
            .iter()
            .map(|(_, pid)| cpu_of(*pid).unwrap_or(0.0))
            .collect();
        if d.backend == Backend::Postgres {
            v.push(postgres_cpu());
        }
        v.push(cpu_of(std::process::id()).unwrap_or(0.0));
        v
    }

    pub(crate) fn start(d: &Deployment) -> Cpu {
        Cpu {
            at: Instant::now(),
            before: Cpu::sample(d),
        }
    }

    /// Each one's share of one core, in per cent.
    pub(crate) fn finish(self, d: &Deployment) -> String {
        let wall = self.at.elapsed().as_secs_f64();
        let now = Cpu::sample(d);
        if now.len() != self.before.len() {
            return "–".into();
        }
        now.iter()
            .zip(&self.before)
            .map(|(n, b)| format!("{:.0} %", 100.0 * (n - b) / wall))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// PostgreSQL's CPU seconds: the server's processes still running (the postmaster and each
/// backend) plus those that have ended, which the kernel adds to the postmaster's children's
/// time when it reaps them. A backend that exits between two samples moves from one part to
/// the other, so the figure only grows. (Summing the live processes alone lost the time of
/// backends that ended between samples and could go negative.)
fn postgres_cpu() -> f64 {
    let mut procs: Vec<(u32, u32)> = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "postgres"
            && let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1)?.parse().ok())
        {
            procs.push((pid, ppid));
        }
    }
    let servers: Vec<u32> = procs
        .iter()
        .filter(|(_, ppid)| !procs.iter().any(|(p, _)| p == ppid))
        .map(|(pid, _)| *pid)
        .collect();
    let ended: f64 = servers
        .iter()
        .filter_map(|pid| {
            let f = stat_fields(*pid)?;
            Some((f.get(13)?.parse::<f64>().ok()? + f.get(14)?.parse::<f64>().ok()?) / 100.0)
        })
        .sum();
    let live: f64 = procs.iter().filter_map(|(pid, _)| cpu_of(*pid)).sum();
    live + ended
}

/// The fields of `/proc/<pid>/stat` after the command name (state is field 0).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    Some(after_name.split_whitespace().map(str::to_owned).collect())
}

/// utime + stime of `pid`, in seconds.
fn cpu_of(pid: u32) -> Option<f64> {
    let fields = stat_fields(pid)?;
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

//! The load benchmark; `benches/load.sh` runs it and BENCHMARKS.md keeps the figures.
//!
//! One deployment per SQL backend, driven over HTTP on loopback by an open-loop load
//! generator: requests leave on a fixed schedule whatever the server does, and each latency is
//! measured from the request's scheduled time, so time spent queueing (in the server, or
//! because the server fell behind the schedule) is counted.
//!
//! - PostgreSQL: a `fanqueue serve` and a `fanqueue worker` process on a fresh database.
//! - SQLite: the embedded default, `fanqueue all` on a fresh data directory (no
//!   `DATABASE_URL`), without a dispatcher.
//!
//! The data: creator 1 has 100,000 fans (the fans list's pages); creators 2 to 1,001 have 100
//! fans each and make the sends (one creator sending a thousand a second is not a load the
//! platform's 10 a minute per creator allows). Seeded with one SQL statement each.
//!
//! What it measures, in order:
//! 1. **API**: the fans list (first page, a deep page at offset 99,950 and the middle page),
//!    then the send route, each at fixed rates: p50, p99, max and errors at each rate.
//! 2. **202 → queue**: single sends at a steady rate; for each, the time from its 202 to its
//!    row on the embedded outbound queue (`outbound_queue.created_at`, on the same clock).
//! 3. **Bulks**: 50 campaigns of 100 posted at once; their first and last message on the
//!    queue after the 202.
//! 4. **Drain**: a backlog of send jobs stored with no worker running, then a worker started:
//!    send jobs finished per second, alone and while the API takes a load of sends.
//!
//! Between steps the bench waits until the send jobs of the previous one are done, so that
//! one step's backlog does not slow the next.

#[allow(dead_code)]
#[path = "../tests/api/helpers.rs"]
mod helpers;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use fanqueue::auth::JwtKeys;
use fanqueue_jobs::{
    db::Db,
    domain::{Timestamp, UserId},
    on_db,
};
use helpers::{AppProcess, Backend, JWT_SECRET, TestDb, run_fanqueue};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The creator whose fans are listed, and how many fans it has.
const LISTED: i64 = 1;
const LISTED_FANS: i64 = 100_000;
/// The creators that send, from user 2 on, and their fans each.
const SENDERS: i64 = 1_000;
const SENDER_FANS: i64 = 100;
/// A request that has not answered after this long counts as an error.
const TIMEOUT: Duration = Duration::from_secs(10);

struct Opts {
    backends: Vec<Backend>,
    rates: Vec<f64>,
    seconds: f64,
    latency_rate: f64,
    latency_seconds: f64,
    backlog: Option<usize>,
    load_rate: Option<f64>,
    overload_rate: f64,
    only: Option<String>,
    /// The API step's routes (`fans`, `send`); all when not given.
    routes: Option<Vec<String>>,
    /// `sslmode` of the processes' PostgreSQL connections; none given, sqlx's default
    /// (`prefer`: TLS, even on loopback, when the server offers it).
    db_sslmode: Option<String>,
}

#[tokio::main]
async fn main() {
    let all: Vec<String> = std::env::args().skip(1).collect();
    if !all.iter().any(|a| a == "--bench") {
        // `cargo test --all-targets` builds and runs benches without `--bench`: building it
        // is the check; the figures take minutes and a quiet machine.
        println!("load benchmark: run it with benches/load.sh");
        return;
    }
    let args: Vec<String> = all.into_iter().filter(|a| a != "--bench").collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if args.iter().any(|a| a == "--help" || a == "-h") {
        eprintln!(
            "usage: load [--backend postgres|sqlite|both] [--rates 200,500,1000] [--seconds 10]\n\
             \x20           [--latency-rate 200] [--latency-seconds 20] [--backlog N] [--load-rate R]\n\
             \x20           [--overload-rate 8000] [--only api|overload|latency|bulks|drain]\n\
             \x20           [--routes fans,send] [--db-sslmode disable|prefer|require]"
        );
        std::process::exit(2);
    }
    let opts = Opts {
        backends: match opt("--backend").as_deref() {
            Some("postgres") => vec![Backend::Postgres],
            Some("sqlite") => vec![Backend::Sqlite],
            _ => vec![Backend::Postgres, Backend::Sqlite],
        },
        rates: opt("--rates")
            .unwrap_or_else(|| "200,500,1000".into())
            .split(',')
            .map(|r| r.parse().expect("rates are numbers"))
            .collect(),
        seconds: opt("--seconds").map_or(10.0, |v| v.parse().unwrap()),
        latency_rate: opt("--latency-rate").map_or(200.0, |v| v.parse().unwrap()),
        latency_seconds: opt("--latency-seconds").map_or(20.0, |v| v.parse().unwrap()),
        backlog: opt("--backlog").map(|v| v.parse().unwrap()),
        load_rate: opt("--load-rate").map(|v| v.parse().unwrap()),
        overload_rate: opt("--overload-rate").map_or(8000.0, |v| v.parse().unwrap()),
        only: opt("--only"),
        routes: opt("--routes").map(|r| r.split(',').map(str::to_owned).collect()),
        db_sslmode: opt("--db-sslmode"),
    };
    for backend in opts.backends.clone() {
        run(backend, &opts).await;
    }
}

fn wants(opts: &Opts, step: &str) -> bool {
    opts.only.as_deref().is_none_or(|o| o == step)
}

async fn run(backend: Backend, opts: &Opts) {
    let mut d = Deployment::prepare(backend, opts.db_sslmode.as_deref()).await;
    let name = d.name();
    println!("\n# {name}\n");
    d.start();
    let lg = Gen::new();
    lg.check(&d).await;
    // A warm-up before any step: connections (the generator's and the pools'), caches,
    // prepared statements, and job tables that hold something, then fresh statistics.
    lg.open_loop(&d, Route::Fans(0), 1000.0, Duration::from_secs(2), None)
        .await;
    lg.open_loop(&d, Route::Send, 500.0, Duration::from_secs(4), None)
        .await;
    d.settle().await;
    d.analyze().await;

    if wants(opts, "api") {
        println!(
            "## API, open loop, {} s per rate ({})\n",
            opts.seconds,
            d.shape()
        );
        println!(
            "| route | rate /s | sent | p50 ms | p99 ms | max ms | errors | CPU: {} |",
            d.cpu_names()
        );
        println!("|---|---:|---:|---:|---:|---:|---|---|");
        let routes: [(&str, Route); 4] = [
            ("fans, first page", Route::Fans(0)),
            ("fans, deep page (offset 99,950)", Route::Fans(99_950)),
            ("fans, middle page (offset 50,000)", Route::Fans(50_000)),
            ("send", Route::Send),
        ];
        let chosen = |route: &Route| {
            let name = match route {
                Route::Fans(_) => "fans",
                Route::Send => "send",
            };
            opts.routes
                .as_ref()
                .is_none_or(|r| r.iter().any(|n| n == name))
        };
        for (label, route) in routes.into_iter().filter(|(_, r)| chosen(r)) {
            for &rate in &opts.rates {
                d.settle().await;
                let cpu = Cpu::start(&d);
                let s = lg
                    .open_loop(&d, route, rate, Duration::from_secs_f64(opts.seconds), None)
                    .await;
                let cpu = cpu.finish(&d);
                println!(
                    "| {label} | {rate:.0} | {} | {:.1} | {:.1} | {:.1} | {} | {cpu} |",
                    s.sent,
                    s.pct(0.5),
                    s.pct(0.99),
                    s.pct(1.0),
                    s.errors()
                );
            }
        }
        println!();
    }

    if wants(opts, "overload") {
        d.settle().await;
        let rate = opts.overload_rate;
        println!(
            "## Overload: sends at {rate:.0}/s for {} s, past what the deployment takes\n",
            opts.seconds
        );
        println!("| answer | count | p50 ms | p99 ms | max ms |");
        println!("|---|---:|---:|---:|---:|");
        let s = lg
            .open_loop(
                &d,
                Route::Send,
                rate,
                Duration::from_secs_f64(opts.seconds),
                None,
            )
            .await;
        for (status, lat) in &s.by_status {
            println!(
                "| {status} | {} | {:.1} | {:.1} | {:.1} |",
                lat.len(),
                pick(lat, 0.5),
                pick(lat, 0.99),
                pick(lat, 1.0)
            );
        }
        let alive = lg.client.get(format!("{}/healthz", d.api())).send().await;
        println!(
            "\nafter the overload: /healthz {}\n",
            alive.map_or_else(|e| e.to_string(), |r| r.status().to_string())
        );
    }

    if wants(opts, "latency") {
        d.settle().await;
        let rate = opts.latency_rate;
        let cpu = Cpu::start(&d);
        let s = lg
            .open_loop(
                &d,
                Route::Send,
                rate,
                Duration::from_secs_f64(opts.latency_seconds),
                None,
            )
            .await;
        let cpu = cpu.finish(&d);
        let accepted: Vec<(i64, DateTime<Utc>)> = s.notes.clone();
        let on_queue = d.wait_on_queue(&accepted).await;
        let mut lat: Vec<f64> = accepted
            .iter()
            .filter_map(|(id, at)| on_queue.get(id).map(|q| ms(*q - *at)))
            .collect();
        lat.sort_by(f64::total_cmp);
        let missing = accepted.len() - lat.len();
        println!(
            "## 202 → on the outbound queue, single sends at {rate:.0}/s for {} s\n",
            opts.latency_seconds
        );
        println!(
            "| sends | 202s | p50 ms | p99 ms | max ms | not on the queue after 60 s | send p99 ms | CPU: {} |",
            d.cpu_names()
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---|");
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {missing} | {:.1} | {cpu} |\n",
            s.sent,
            accepted.len(),
            pick(&lat, 0.5),
            pick(&lat, 0.99),
            pick(&lat, 1.0),
            s.pct(0.99),
        );
    }

    if wants(opts, "bulks") {
        d.settle().await;
        let (first, last) = lg.bulks(&d, 50).await;
        println!(
            "## 50 bulk campaigns of 100 posted at once: their messages on the queue after the 202\n"
        );
        println!(
            "| campaigns | first message p50 s | first message max s | all 100 p50 s | all 100 max s |"
        );
        println!("|---:|---:|---:|---:|---:|");
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
            first.len(),
            pick(&first, 0.5) / 1e3,
            pick(&first, 1.0) / 1e3,
            pick(&last, 0.5) / 1e3,
            pick(&last, 1.0) / 1e3,
        );
    }

    if wants(opts, "drain") {
        d.settle().await;
        let backlog = opts.backlog.unwrap_or(match backend {
            Backend::Postgres => 20_000,
            Backend::Sqlite => 10_000,
        });
        let load_rate = opts.load_rate.unwrap_or(match backend {
            Backend::Postgres => 450.0,
            Backend::Sqlite => 150.0,
        });
        println!("## Send jobs drained: a backlog stored with no worker running, then a worker\n");
        println!(
            "| stored by | API load while draining | backlog jobs | apalis tasks | drained in s | backlog jobs/s | all send jobs/s | API p50 ms | API p99 ms | API errors | CPU: {} |",
            d.cpu_names()
        );
        println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|");
        // 32 clients at once: concurrent sends are stored together, several jobs to a task.
        // One client: each send alone, one job a task (a quarter of the backlog: it is slow
        // to store).
        for (clients, loaded) in [(32, false), (32, true), (1, false)] {
            let backlog = if clients == 1 { backlog / 4 } else { backlog };
            d.settle().await;
            d.stop_worker().await;
            let tasks_before = d.send_tasks().await;
            let stored_from = Utc::now();
            lg.prefill(&d, backlog, clients).await;
            let tasks = d.send_tasks().await - tasks_before;
            let started = d.start_worker().await;
            let cpu = Cpu::start(&d);
            let stop = CancellationToken::new();
            let load = loaded.then(|| {
                let lg = lg.clone();
                let d = d.handle();
                let stop = stop.clone();
                tokio::spawn(async move {
                    lg.open_loop(
                        &d,
                        Route::Send,
                        load_rate,
                        Duration::from_secs(3600),
                        Some(stop),
                    )
                    .await
                })
            });
            d.wait_drained(started, backlog).await;
            stop.cancel();
            let api = match load {
                Some(h) => Some(h.await.unwrap()),
                None => None,
            };
            let cpu = cpu.finish(&d);
            let f = d.drain_figures(stored_from, started).await;
            let (label, p50, p99, errors) = match &api {
                Some(s) => (
                    format!("sends at {load_rate:.0}/s"),
                    format!("{:.1}", s.pct(0.5)),
                    format!("{:.1}", s.pct(0.99)),
                    s.errors(),
                ),
                None => ("none".into(), "–".into(), "–".into(), "–".into()),
            };
            println!(
                "| {clients} client{} | {label} | {} | {tasks} | {:.1} | {:.0} | {:.0} | {p50} | {p99} | {errors} | {cpu} |",
                if clients == 1 { "" } else { "s" },
                f.backlog,
                f.seconds,
                f.backlog_rate,
                f.all_rate
            );
        }
        println!();
    }
    d.stop().await;
}

fn ms(d: chrono::TimeDelta) -> f64 {
    d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e3
}

/// The `q` quantile of sorted values (nearest rank).
fn pick(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// What the generator asks.
#[derive(Debug, Clone, Copy)]
enum Route {
    /// `GET /api/crm/fans?offset=N` as the listed creator.
    Fans(i64),
    /// `POST /api/onlyfans/messages/send` to one fan of one of the sending creators.
    Send,
}

/// The outcome of one request: its status (none: no answer in time, or a transport error),
/// and for an accepted send its message id and when the 202 arrived.
struct Outcome {
    status: Option<u16>,
    note: Option<(i64, DateTime<Utc>)>,
}

#[derive(Default)]
struct Stats {
    sent: usize,
    /// Milliseconds from each request's scheduled time to its answer (or its failure).
    lat: Vec<f64>,
    statuses: BTreeMap<String, usize>,
    /// The latencies of each answer's status, sorted.
    by_status: BTreeMap<String, Vec<f64>>,
    notes: Vec<(i64, DateTime<Utc>)>,
    expected: u16,
}

impl Stats {
    fn pct(&self, q: f64) -> f64 {
        pick(&self.lat, q)
    }

    fn errors(&self) -> String {
        let bad: Vec<String> = self
            .statuses
            .iter()
            .filter(|(k, _)| **k != self.expected.to_string())
            .map(|(k, n)| format!("{n} × {k}"))
            .collect();
        if bad.is_empty() {
            "0".into()
        } else {
            bad.join(", ")
        }
    }
}

/// The load generator: one HTTP client, every sending creator's token.
#[derive(Clone)]
struct Gen {
    client: reqwest::Client,
    tokens: Arc<HashMap<i64, String>>,
}

impl Gen {
    fn new() -> Self {
        let keys = JwtKeys::new(&SecretString::from(JWT_SECRET));
        let tokens = (LISTED..=1 + SENDERS)
            .map(|u| (u, keys.issue(UserId(u), Duration::from_secs(24 * 3600))))
            .collect();
        Gen {
            client: reqwest::Client::builder()
                .timeout(TIMEOUT)
                .pool_max_idle_per_host(4096)
                .tcp_nodelay(true)
                .build()
                .unwrap(),
            tokens: Arc::new(tokens),
        }
    }

    /// Checks the seeded data reads back as the bench expects.
    async fn check(&self, d: &impl Target) {
        let page: Value = self
            .client
            .get(format!("{}/api/crm/fans?offset=99950", d.api()))
            .bearer_auth(&self.tokens[&LISTED])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(page["total"], LISTED_FANS, "{page}");
        assert_eq!(
            page["items"].as_array().unwrap().len(),
            50,
            "the deep page is full"
        );
    }

    /// The `i`-th request of `route`.
    fn request(&self, d: &impl Target, route: Route, i: u64) -> reqwest::RequestBuilder {
        match route {
            Route::Fans(offset) => self
                .client
                .get(format!("{}/api/crm/fans?offset={offset}", d.api()))
                .bearer_auth(&self.tokens[&LISTED]),
            Route::Send => {
                let i = i as i64;
                let creator = 2 + i % SENDERS;
                let fan = d.first_fan(creator) + (i / SENDERS) % SENDER_FANS;
                self.client
                    .post(format!("{}/api/onlyfans/messages/send", d.api()))
                    .bearer_auth(&self.tokens[&creator])
                    .json(&json!({ "recipientId": fan, "content": format!("hello {i}") }))
            }
        }
    }

    async fn call(req: reqwest::RequestBuilder, send: bool) -> Outcome {
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let at = Utc::now();
                let body = resp.bytes().await;
                let note = match (send, status, &body) {
                    (true, 202, Ok(bytes)) => serde_json::from_slice::<Value>(bytes)
                        .ok()
                        .and_then(|v| v["messageId"].as_i64())
                        .map(|id| (id, at)),
                    _ => None,
                };
                Outcome {
                    status: body.is_ok().then_some(status),
                    note,
                }
            }
            Err(_) => Outcome {
                status: None,
                note: None,
            },
        }
    }

    /// Requests of `route` at `rate` a second for `length` (or until `stop`), each sent at its
    /// scheduled time whether or not earlier ones have answered.
    async fn open_loop(
        &self,
        d: &impl Target,
        route: Route,
        rate: f64,
        length: Duration,
        stop: Option<CancellationToken>,
    ) -> Stats {
        let send = matches!(route, Route::Send);
        let mut stats = Stats {
            expected: if send { 202 } else { 200 },
            ..Stats::default()
        };
        let mut set: JoinSet<(Outcome, f64)> = JoinSet::new();
        let start = tokio::time::Instant::now();
        let record = |stats: &mut Stats, (o, lat): (Outcome, f64)| {
            stats.lat.push(lat);
            let key = o.status.map_or("no answer".into(), |s| s.to_string());
            *stats.statuses.entry(key.clone()).or_default() += 1;
            stats.by_status.entry(key).or_default().push(lat);
            if let Some(n) = o.note {
                stats.notes.push(n);
            }
        };
        for i in 0u64.. {
            let at = start + Duration::from_secs_f64(i as f64 / rate);
            if at - start >= length || stop.as_ref().is_some_and(|s| s.is_cancelled()) {
                break;
            }
            tokio::time::sleep_until(at).await;
            let req = self.request(d, route, i);
            set.spawn(async move {
                let o = Gen::call(req, send).await;
                (o, at.elapsed().as_secs_f64() * 1e3)
            });
            stats.sent += 1;
            while let Some(done) = set.try_join_next() {
                record(&mut stats, done.unwrap());
            }
        }
        while let Some(done) = set.join_next().await {
            record(&mut stats, done.unwrap());
        }
        stats.lat.sort_by(f64::total_cmp);
        for lat in stats.by_status.values_mut() {
            lat.sort_by(f64::total_cmp);
        }
        stats
    }

    /// Stores `n` sends as fast as the API takes them (32 at a time).
    async fn prefill(&self, d: &impl Target, n: usize, clients: usize) {
        use futures::StreamExt;
        let started = Instant::now();
        let failed = futures::stream::iter(0..n as u64)
            .map(|i| Gen::call(self.request(d, Route::Send, i), true))
            .buffer_unordered(clients)
            .filter(|o| std::future::ready(o.status != Some(202)))
            .count()
            .await;
        assert_eq!(failed, 0, "every send of the backlog is accepted");
        eprintln!(
            "stored a backlog of {n} sends from {clients} clients in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }

    /// Posts `n` campaigns of 100 at once (creators 2…): per campaign, milliseconds from its
    /// 202 to its first and to its last message on the queue (each sorted).
    async fn bulks(&self, d: &Deployment, n: i64) -> (Vec<f64>, Vec<f64>) {
        let posted = futures::future::join_all((0..n).map(|k| {
            let creator = 2 + k;
            let first = d.first_fan(creator);
            let req = self
                .client
                .post(format!("{}/api/messages/bulk", d.api()))
                .bearer_auth(&self.tokens[&creator])
                .json(&json!({
                    "recipientIds": (first..first + SENDER_FANS).collect::<Vec<_>>(),
                    "content": "offer",
                    "campaignName": format!("bench {k}"),
                }));
            async move {
                let resp = req.send().await.unwrap();
                let at = Utc::now();
                assert_eq!(resp.status(), StatusCode::ACCEPTED);
                let body: Value = resp.json().await.unwrap();
                (body["campaignId"].as_i64().unwrap(), at)
            }
        }))
        .await;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let rows = d.campaigns_on_queue().await;
            let done = posted
                .iter()
                .all(|(c, _)| rows.get(c).is_some_and(|r| r.2 >= SENDER_FANS));
            if done || Instant::now() > deadline {
                let mut first: Vec<f64> = vec![];
                let mut last: Vec<f64> = vec![];
                for (c, at) in &posted {
                    if let Some((f, l, count)) = rows.get(c) {
                        first.push(ms(*f - *at));
                        if *count >= SENDER_FANS {
                            last.push(ms(*l - *at));
                        }
                    }
                }
                first.sort_by(f64::total_cmp);
                last.sort_by(f64::total_cmp);
                return (first, last);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// What the generator needs of a deployment (also from a spawned task).
trait Target: Send + Sync {
    fn api(&self) -> &str;
    fn first_fan(&self, creator: i64) -> i64;
}

/// The API's address and the fans' ids, shared with load tasks.
#[derive(Clone)]
struct Handle {
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
struct Deployment {
    backend: Backend,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
    db: Db,
    /// PostgreSQL: `serve` and `worker`; SQLite: `all` (the API and the workers).
    api: Option<AppProcess>,
    worker: Option<AppProcess>,
    handle: Handle,
    _testdb: Option<TestDb>,
}

struct DrainFigures {
    backlog: usize,
    seconds: f64,
    backlog_rate: f64,
    all_rate: f64,
}

impl Deployment {
    async fn prepare(backend: Backend, sslmode: Option<&str>) -> Deployment {
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
            _testdb: testdb,
        }
    }

    fn name(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => "PostgreSQL",
            Backend::Sqlite => "SQLite (the embedded default)",
        }
    }

    fn shape(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => {
                "`fanqueue serve` + `fanqueue worker` on PostgreSQL, embedded outbound queue"
            }
            Backend::Sqlite => "`fanqueue all` on an SQLite file, embedded outbound queue",
        }
    }

    fn handle(&self) -> Handle {
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
    fn start(&mut self) {
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
    async fn start_worker(&mut self) -> DateTime<Utc> {
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
    async fn stop_worker(&mut self) {
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

    async fn stop(&mut self) {
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

    fn cpu_names(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => "serve, worker, postgres, bench",
            Backend::Sqlite => "app, bench",
        }
    }

    /// Waits (at most two minutes) until no send job is waiting or running.
    async fn settle(&self) {
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
                return;
            }
            if Instant::now() > deadline {
                eprintln!("the deployment is still busy after two minutes; going on");
                return;
            }
        }
    }

    /// apalis tasks of the `send_message` queue stored so far.
    async fn send_tasks(&self) -> i64 {
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

    /// Refreshes PostgreSQL's statistics. A fresh database's describe the job tables as
    /// empty (they were analyzed when seeded); in a running deployment autovacuum keeps them
    /// current within a minute of the load, and the steps should run with the plans it has.
    async fn analyze(&self) {
        if let Db::Postgres(pool) = &self.db {
            sqlx::query("ANALYZE").execute(pool).await.unwrap();
        }
    }

    /// When each of `accepted`'s messages reached the outbound queue; waits up to 60 s for all.
    async fn wait_on_queue(
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
    async fn campaigns_on_queue(&self) -> HashMap<i64, (DateTime<Utc>, DateTime<Utc>, i64)> {
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
    async fn wait_drained(&self, started: DateTime<Utc>, n: usize) {
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
    async fn drain_figures(
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
struct Cpu {
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

    fn start(d: &Deployment) -> Cpu {
        Cpu {
            at: Instant::now(),
            before: Cpu::sample(d),
        }
    }

    /// Each one's share of one core, in per cent.
    fn finish(self, d: &Deployment) -> String {
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

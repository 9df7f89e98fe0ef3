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
//! 5. **Sweep** (only with `--only sweep`, it takes minutes): sends at 1,000/s for 10 minutes,
//!    then a sweep that prunes their whole trail while the sends go on; the send route's p99
//!    before, during and after it.
//!
//! Between steps the bench waits until the send jobs of the previous one are done, so that
//! one step's backlog does not slow the next.

#[allow(dead_code)]
#[path = "../../tests/api/helpers/mod.rs"]
mod helpers;

mod deployment;
mod generator;
#[path = "../common/quantile.rs"]
mod quantile;

use std::time::Duration;

use chrono::{DateTime, Utc};
use helpers::Backend;
use tokio_util::sync::CancellationToken;

use deployment::{Cpu, Deployment, Target, ms};
use generator::{Gen, Route};
use quantile::pick;

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
    /// The sweep step (only with `--only sweep`): minutes of sends at `sweep_rate` before it.
    sweep_minutes: f64,
    sweep_rate: f64,
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
             \x20           [--overload-rate 8000] [--only api|overload|latency|bulks|drain|sweep]\n\
             \x20           [--routes fans,send] [--db-sslmode disable|prefer|require]\n\
             \x20           [--sweep-minutes 10] [--sweep-rate 1000]"
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
        sweep_minutes: opt("--sweep-minutes").map_or(10.0, |v| v.parse().unwrap()),
        sweep_rate: opt("--sweep-rate").map_or(1000.0, |v| v.parse().unwrap()),
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

    // Minutes of load: only when asked for.
    if opts.only.as_deref() == Some("sweep") {
        sweep_step(&d, &lg, opts).await;
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

/// Sends at `sweep_rate` for `sweep_minutes`, then a sweep that prunes their whole trail (job
/// records and apalis tasks, however recent) while the sends go on: the send route's p99 in
/// the last 30 s before the sweep, while it runs, and in the 30 s after.
async fn sweep_step(d: &Deployment, lg: &Gen, opts: &Opts) {
    d.settle().await;
    let rate = opts.sweep_rate;
    let window = Duration::from_secs(30);
    let sweeper = d.sweeper().await;
    // The build-up a minute at a time, with what PostgreSQL did in each: where the route's
    // p99 goes as the tables grow, and beside what.
    println!(
        "## {:.0} minutes of sends at {rate:.0}/s before a sweep ({}), minute by minute\n",
        opts.sweep_minutes,
        d.shape()
    );
    if let Some(off) = d.autovacuum_off().await {
        println!("{off}\n");
    }
    println!(
        "| minute | sends | p50 ms | p99 ms | errors | checkpoints | autovacuums | autoanalyzes | queued messages at its end |"
    );
    println!("|---:|---:|---:|---:|---|---:|---:|---:|---:|");
    let mut left = Duration::from_secs_f64(opts.sweep_minutes * 60.0);
    let (mut minute, mut sent) = (0, 0);
    while !left.is_zero() {
        let chunk = left.min(Duration::from_secs(60));
        left -= chunk;
        minute += 1;
        let start = d.pressure().await;
        let run = lg.open_loop(d, Route::Send, rate, chunk, None).await;
        let end = d.pressure().await;
        sent += run.sent;
        println!(
            "| {minute} | {} | {:.1} | {:.1} | {} | {} | {} | {} | {} |",
            run.sent,
            run.pct(0.5),
            run.pct(0.99),
            run.errors(),
            end.checkpoints - start.checkpoints,
            end.autovacuums - start.autovacuums,
            end.autoanalyzes - start.autoanalyzes,
            end.waiting
        );
    }
    println!();
    let before = lg.open_loop(d, Route::Send, rate, window, None).await;
    let stop = CancellationToken::new();
    let during = {
        let (lg, h, stop) = (lg.clone(), d.handle(), stop.clone());
        tokio::spawn(async move {
            lg.open_loop(&h, Route::Send, rate, Duration::from_secs(3600), Some(stop))
                .await
        })
    };
    let started = std::time::Instant::now();
    let report = sweeper.run_once().await.expect("the sweep");
    let took = started.elapsed().as_secs_f64();
    stop.cancel();
    let during = during.await.unwrap();
    let after = lg.open_loop(d, Route::Send, rate, window, None).await;
    println!(
        "## A sweep after {:.0} minutes of sends at {rate:.0}/s ({}), everything final pruned\n",
        opts.sweep_minutes,
        d.shape()
    );
    println!(
        "| sends before | job records pruned | apalis tasks pruned | sweep s | send p99 ms: 30 s before | during the sweep | 30 s after | errors during |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---|");
    println!(
        "| {} | {} | {} | {took:.1} | {:.1} | {:.1} | {:.1} | {} |\n",
        sent + before.sent,
        report.pruned_jobs,
        report.pruned_tasks,
        before.pct(0.99),
        during.pct(0.99),
        after.pct(0.99),
        during.errors()
    );
}

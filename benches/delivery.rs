//! Delivery benchmarks; `benches/delivery.sh` runs them and BENCHMARKS.md keeps the figures.
//!
//! - `accuracy`: `fanqueue platform-sim` enforcing 60 a minute, three `fanqueue dispatch`
//!   processes on PostgreSQL + Redis + SQS (the emulator), 20 creators with 60 queued messages
//!   each at `DELIVERY_RATE_PER_MINUTE=60`. Per creator: the most arrivals at the platform in
//!   any 60-second window, and the utilisation; then SQS receives per delivered message.
//! - `scale`: 1,000 creators, per-creator rates rising until utilisation drops under 95 %, on
//!   the embedded queue over PostgreSQL and on SQS; deliveries per second, window violations,
//!   and the CPU each process used during the drain (where the bottleneck is).
//!
//! Each run is a deployment of its own (a fresh database, queue and Redis prefix; the API and
//! a worker process queue the backlog through the routes a client uses), then the dispatchers
//! start and the platform stand-in's record of arrivals is what is judged.
//!
//! Definitions: a creator's *span* runs from its first arrival at the platform to its last;
//! its utilisation is delivered ÷ the slots the rate allows in that span (span ÷ spacing,
//! plus the slot at its start). The wait before a creator's first delivery is shown beside it.
//! A run's *sustained* rate is its deliveries per second while every creator had work (from
//! the last creator's first delivery to the first creator's last), and its utilisation that
//! rate ÷ creators × the per-creator rate.

#[allow(dead_code)]
#[path = "../tests/api/helpers/mod.rs"]
mod helpers;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use chrono::{DateTime, TimeDelta, Utc};
use futures::StreamExt;
use helpers::{AppProcess, Deployment, Queue, instant, redis_url};
use serde_json::Value;

#[tokio::main]
async fn main() {
    let all: Vec<String> = std::env::args().skip(1).collect();
    if !all.iter().any(|a| a == "--bench") {
        // `cargo test --all-targets` builds and runs benches without `--bench`: building it
        // is the check; the figures take minutes and a quiet machine.
        println!("delivery benchmarks: run them with benches/delivery.sh");
        return;
    }
    let args: Vec<String> = all.into_iter().filter(|a| a != "--bench").collect();
    let what = args.first().map(String::as_str).unwrap_or("help");
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    match what {
        "accuracy" => accuracy().await,
        "scale" => {
            let creators = opt("--creators").map_or(1_000, |v| v.parse().unwrap());
            let seconds = opt("--seconds").map_or(30, |v| v.parse().unwrap());
            let dispatchers = opt("--dispatchers").map_or(2, |v| v.parse().unwrap());
            let rates: Vec<u32> = opt("--rates")
                .unwrap_or_else(|| "15,30,60,120".into())
                .split(',')
                .map(|r| r.parse().unwrap())
                .collect();
            let queues = match opt("--queue").as_deref() {
                Some("sqs") => vec![Queue::Sqs],
                Some("embedded") => vec![Queue::Embedded],
                _ => vec![Queue::Embedded, Queue::Sqs],
            };
            for queue in queues {
                scale(queue, creators, seconds, dispatchers, &rates).await;
            }
        }
        _ => {
            eprintln!(
                "usage: delivery accuracy\n       delivery scale [--creators 1000] [--seconds 30] \
                 [--dispatchers 2] [--rates 15,30,60,120] [--queue embedded|sqs]"
            );
            std::process::exit(2);
        }
    }
}

async fn accuracy() {
    let rate = 60;
    // The dispatchers run while the backlog is queued, as in production: a message waits on
    // SQS only until a dispatcher parks it (the emulator slows down as its queue grows).
    let mut run = Run::prepare(Queue::Sqs, rate).await;
    run.start_dispatchers(3);
    run.queue_backlog(20, 60).await;
    let figures = run.judge().await;
    println!(
        "\n## accuracy: 20 creators x 60 messages at {rate}/min, 3 dispatchers, PostgreSQL + Redis + SQS (emulator)\n"
    );
    println!(
        "| creator | delivered | most in any 60 s | first delivery after its 202 (s) | span (s) | utilisation |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for c in &figures.creators {
        println!(
            "| {} | {} | {} | {:.2} | {:.1} | {:.1} % |",
            c.user,
            c.delivered,
            c.busiest_minute,
            c.first_after_start,
            c.span,
            100.0 * c.utilisation
        );
    }
    figures.summary(rate);
}

async fn scale(queue: Queue, creators: usize, seconds: u64, dispatchers: usize, rates: &[u32]) {
    println!(
        "\n## scale: {creators} creators, {dispatchers} dispatchers, {} queue over PostgreSQL, Redis limiter\n",
        match queue {
            Queue::Sqs => "SQS (emulator)",
            Queue::Embedded => "embedded",
        }
    );
    let mut rows = vec![];
    for &rate in rates {
        let per_creator = (rate as u64 * seconds / 60).max(2) as usize;
        let mut run = Run::prepare(queue, rate).await;
        if queue == Queue::Embedded {
            // The whole backlog first, then the drain alone is timed.
            run.queue_backlog(creators, per_creator).await;
            run.start_dispatchers(dispatchers);
        } else {
            // The emulator's receives slow down with the length of its queue (it scans every
            // message it holds): dispatchers take messages off as they are queued.
            run.start_dispatchers(dispatchers);
            run.queue_backlog(creators, per_creator).await;
        }
        let f = run.judge().await;
        f.summary(rate);
        let asked = creators as f64 * rate as f64 / 60.0;
        let sustained = f.steady.unwrap_or(f.throughput);
        let util = sustained / asked;
        rows.push(format!(
            "| {rate} | {asked:.0} | {} | {:.0} | {sustained:.0} | {:.1} % | {:.1} % | {} | {} | {:.2} | {} |",
            f.delivered,
            f.throughput,
            100.0 * util,
            100.0 * f.min_utilisation(),
            f.worst_minute(),
            f.violations,
            f.receives_per_delivery,
            f.cpu_line(),
        ));
        if util < 0.95 {
            break;
        }
    }
    println!(
        "\n| per creator /min | asked /s | delivered | first to last /s | sustained /s | utilisation | worst creator | most in 60 s | platform 429s for the limit | receives per delivery | CPU during the drain |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        println!("{r}");
    }
}

/// One deployment: the platform stand-in, the API and a worker; dispatchers and backlog are
/// added by the caller.
struct Run {
    rate: u32,
    per_creator: usize,
    total: usize,
    sim: AppProcess,
    deployment: Deployment,
    dispatchers: Vec<AppProcess>,
    /// When the dispatchers started, and CPU counters then.
    started: Option<(DateTime<Utc>, Cpu)>,
    /// When each creator's campaign was accepted.
    accepted: BTreeMap<i64, DateTime<Utc>>,
    _dir: tempfile::TempDir,
}

impl Run {
    async fn prepare(queue: Queue, rate: u32) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let sim = AppProcess::spawn_until(
            &[
                "platform-sim",
                "--listen",
                "127.0.0.1:0",
                "--rate-per-minute",
                &rate.to_string(),
            ],
            &[],
            dir.path(),
            "platform-sim listening",
        );
        let extra = [
            // Production's attempt timeout and a quiet log (the bench reads only a few lines).
            ("PLATFORM_TIMEOUT_MS", "10000"),
            (
                "RUST_LOG",
                "warn,fanqueue::startup=info,fanqueue_jobs::runtime=info",
            ),
        ];
        let deployment = Deployment::with(
            &format!("{}/messages", sim.address),
            rate,
            &redis_url(),
            queue,
            &extra,
        )
        .await;
        Run {
            rate,
            per_creator: 0,
            total: 0,
            sim,
            deployment,
            dispatchers: vec![],
            started: None,
            accepted: BTreeMap::new(),
            _dir: dir,
        }
    }

    /// Queues `per_creator` messages for each of `creators` creators through the API (one
    /// bulk campaign per 100), waiting until their jobs have put them on the outbound queue.
    async fn queue_backlog(&mut self, creators: usize, per_creator: usize) {
        let started = Instant::now();
        let d = &self.deployment;
        self.accepted = futures::stream::iter(1..=creators as i64)
            .map(|user| async move { (user, d.campaign_accepted_at(user, per_creator).await) })
            .buffer_unordered(16)
            .collect()
            .await;
        self.per_creator = per_creator;
        self.total = creators * per_creator;
        eprintln!(
            "queued {} messages for {creators} creators in {:.1} s",
            self.total,
            started.elapsed().as_secs_f64()
        );
    }

    fn start_dispatchers(&mut self, n: usize) {
        let before = Cpu::sample(&[]);
        let at = Utc::now();
        self.dispatchers = (0..n).map(|_| self.deployment.dispatcher()).collect();
        let ours = Cpu::sample(&self.pids()).ours;
        self.started = Some((at, Cpu { ours, ..before }));
    }

    fn pids(&self) -> Vec<(String, u32)> {
        self.dispatchers
            .iter()
            .enumerate()
            .map(|(i, d)| (format!("dispatcher {}", i + 1), d.child.id()))
            .chain([("platform-sim".to_owned(), self.sim.child.id())])
            .collect()
    }

    /// Waits until the platform has every message, stops the dispatchers and judges what the
    /// platform saw.
    async fn judge(mut self) -> Figures {
        let client = reqwest::Client::new();
        let sim = self.sim.address.clone();
        let spacing = 60.0 / self.rate as f64;
        let (start, cpu_before) = self.started.take().expect("dispatchers started");
        let ideal = Duration::from_secs_f64(spacing * self.per_creator as f64);
        let deadline = Instant::now() + ideal * 3 + Duration::from_secs(120);
        loop {
            let stats: Value = get(&client, &format!("{sim}/stats")).await;
            if stats["deliveries"].as_u64().unwrap_or(0) as usize >= self.total {
                break;
            }
            if Instant::now() > deadline {
                eprintln!(
                    "gave up waiting: the platform's {stats}; the database's {:?}",
                    self.deployment.statuses().await
                );
                let mut conn =
                    <sqlx::PgConnection as sqlx::Connection>::connect(&self.deployment.url)
                        .await
                        .unwrap();
                let rows: Vec<(i64, i64, String, bool, bool, i64)> = sqlx::query_as(
                    "SELECT id, user_id, status, enqueued_at IS NOT NULL, ready_at IS NOT NULL, attempts
                     FROM messages WHERE status <> 'sent' ORDER BY id LIMIT 20",
                )
                .fetch_all(&mut conn)
                .await
                .unwrap();
                eprintln!("not sent (id, user, status, enqueued, parked, attempts): {rows:?}");
                if !self.deployment.dlq.is_empty() {
                    eprintln!(
                        "SQS (visible, in flight): queue {:?}, DLQ {:?}",
                        sqs_depth(self.deployment.queue_url()).await,
                        sqs_depth(&self.deployment.dlq).await
                    );
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let end = Utc::now();
        let cpu = Cpu::sample(&self.pids()).since(&cpu_before);
        let mut received = 0;
        let mut delivered_logged = 0;
        for d in &mut self.dispatchers {
            d.terminate(Duration::from_secs(40)).await;
            let failed = d.logged("taking messages off the outbound queue failed");
            if let Some(first) = failed.first() {
                eprintln!(
                    "a dispatcher's intake failed {} times; the first: {}",
                    failed.len(),
                    first["fields"]["error"]
                );
            }
            let stopped = d.logged("dispatcher stopped");
            let line = stopped.first().expect("each dispatcher logs its totals");
            received += line["fields"]["received"].as_u64().unwrap();
            delivered_logged += line["fields"]["delivered"].as_u64().unwrap();
        }
        let stats: Value = get(&client, &format!("{sim}/stats")).await;
        let deliveries: Value = get(&client, &format!("{sim}/deliveries")).await;
        let mut by_user: BTreeMap<i64, Vec<DateTime<Utc>>> = BTreeMap::new();
        for d in deliveries["items"].as_array().unwrap() {
            let user: i64 = d["userId"].as_str().unwrap().parse().unwrap();
            by_user
                .entry(user)
                .or_default()
                .push(instant(&d["arrivedAt"]));
        }
        let mut firsts = vec![];
        let mut lasts = vec![];
        let creators = by_user
            .into_iter()
            .map(|(user, mut at)| {
                at.sort();
                firsts.push(at[0]);
                lasts.push(*at.last().unwrap());
                let span = secs(*at.last().unwrap() - at[0]);
                Creator {
                    user,
                    delivered: at.len(),
                    busiest_minute: busiest_minute(&at),
                    // From the later of its campaign's 202 and the dispatchers' start.
                    first_after_start: secs(
                        at[0] - self.accepted.get(&user).map_or(start, |a| (*a).max(start)),
                    ),
                    span,
                    utilisation: at.len() as f64 / (span / spacing + 1.0),
                }
            })
            .collect::<Vec<_>>();
        let arrivals: Vec<DateTime<Utc>> = deliveries["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| instant(&d["arrivedAt"]))
            .collect();
        let first = arrivals.iter().min().copied().unwrap_or(start);
        let last = arrivals.iter().max().copied().unwrap_or(end);
        // Steady state: while every creator has work (from the last creator's first delivery to
        // the first creator's last one).
        let all_busy_from = firsts.iter().max().copied().unwrap_or(first);
        let all_busy_to = lasts.iter().min().copied().unwrap_or(last);
        let steady = if all_busy_to > all_busy_from + TimeDelta::seconds(5) {
            let n = arrivals
                .iter()
                .filter(|t| **t >= all_busy_from && **t <= all_busy_to)
                .count();
            Some(n as f64 / secs(all_busy_to - all_busy_from))
        } else {
            None
        };
        let delivered = stats["deliveries"].as_u64().unwrap() as usize;
        Figures {
            expected: self.total,
            delivered,
            duplicates: stats["duplicatesReplayed"].as_u64().unwrap_or(0),
            violations: stats["totalViolations"].as_u64().unwrap_or(0),
            throughput: delivered as f64 / secs(last - first).max(f64::EPSILON),
            steady,
            receives_per_delivery: received as f64 / delivered_logged.max(1) as f64,
            creators,
            cpu,
            drain: secs(end - start),
        }
    }
}

struct Creator {
    user: i64,
    delivered: usize,
    busiest_minute: usize,
    first_after_start: f64,
    span: f64,
    utilisation: f64,
}

struct Figures {
    expected: usize,
    delivered: usize,
    duplicates: u64,
    violations: u64,
    /// Deliveries per second from the first arrival to the last.
    throughput: f64,
    /// Deliveries per second while every creator had work.
    steady: Option<f64>,
    receives_per_delivery: f64,
    creators: Vec<Creator>,
    cpu: Vec<(String, f64)>,
    drain: f64,
}

impl Figures {
    fn min_utilisation(&self) -> f64 {
        self.creators
            .iter()
            .map(|c| c.utilisation)
            .fold(f64::INFINITY, f64::min)
    }

    fn worst_minute(&self) -> usize {
        self.creators
            .iter()
            .map(|c| c.busiest_minute)
            .max()
            .unwrap_or(0)
    }

    fn cpu_line(&self) -> String {
        self.cpu
            .iter()
            .map(|(name, share)| format!("{name} {:.0} %", 100.0 * share))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn summary(&self, rate: u32) {
        let mut waits: Vec<f64> = self.creators.iter().map(|c| c.first_after_start).collect();
        waits.sort_by(f64::total_cmp);
        let pick = |q: f64| {
            waits
                .get(((waits.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or(0.0)
        };
        println!(
            "first delivery of a creator after its campaign's 202 (or the dispatchers' start): \
             p50 {:.2} s, p95 {:.2} s, max {:.2} s",
            pick(0.5),
            pick(0.95),
            pick(1.0)
        );
        let mean = self.creators.iter().map(|c| c.utilisation).sum::<f64>()
            / self.creators.len().max(1) as f64;
        println!(
            "\ndelivered {} of {} (platform replays of a repeated key: {}); drain {:.1} s; \
             {:.0} deliveries/s first to last ({} while every creator had work); most in any 60 s for one creator: {} (limit {rate}); platform \
             429s for the limit: {}; utilisation: mean {:.1} %, worst creator {:.1} %; SQS \
             receives per delivered message: {:.2}\nCPU during the drain (share of one core): {}",
            self.delivered,
            self.expected,
            self.duplicates,
            self.drain,
            self.throughput,
            self.steady.map_or("n/a".into(), |s| format!("{s:.0}")),
            self.worst_minute(),
            self.violations,
            100.0 * mean,
            100.0 * self.min_utilisation(),
            self.receives_per_delivery,
            self.cpu_line()
        );
    }
}

fn secs(d: TimeDelta) -> f64 {
    d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}

/// The most arrivals inside any 60-second window (two arrivals 60 s apart or more are not in
/// one window); `at` is sorted.
fn busiest_minute(at: &[DateTime<Utc>]) -> usize {
    let mut best = 0;
    let mut first = 0;
    for (last, t) in at.iter().enumerate() {
        while *t - at[first] >= TimeDelta::seconds(60) {
            first += 1;
        }
        best = best.max(last - first + 1);
    }
    best
}

/// An SQS queue's (visible, in flight) counts.
async fn sqs_depth(queue: &str) -> (String, String) {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let got = helpers::sqs_client()
        .await
        .get_queue_attributes()
        .queue_url(queue)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap();
    let attrs = got.attributes().unwrap();
    (
        attrs[&A::ApproximateNumberOfMessages].clone(),
        attrs[&A::ApproximateNumberOfMessagesNotVisible].clone(),
    )
}

async fn get(client: &reqwest::Client, url: &str) -> Value {
    client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap()
}

/// CPU seconds used so far: by named processes of ours, and by every process of the services
/// (PostgreSQL's backends, Redis, moto).
struct Cpu {
    at: Instant,
    ours: Vec<(String, f64)>,
    services: Vec<(String, f64)>,
}

impl Cpu {
    fn sample(ours: &[(String, u32)]) -> Cpu {
        let ours = ours
            .iter()
            .map(|(name, pid)| (name.clone(), cpu_of(*pid).unwrap_or(0.0)))
            .collect();
        let mut services: BTreeMap<&str, f64> = BTreeMap::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmdline =
                std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let name = if comm.trim() == "postgres" {
                "postgres"
            } else if comm.trim() == "redis-server" && cmdline.contains("6379") {
                "redis"
            } else if cmdline.contains("moto_server") {
                "moto"
            } else {
                continue;
            };
            *services.entry(name).or_default() += cpu_of(pid).unwrap_or(0.0);
        }
        Cpu {
            at: Instant::now(),
            ours,
            services: services
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        }
    }

    /// Each process's share of one core between `before` and this sample.
    fn since(&self, before: &Cpu) -> Vec<(String, f64)> {
        let wall = (self.at - before.at).as_secs_f64();
        let diff = |now: &[(String, f64)], then: &[(String, f64)]| {
            now.iter()
                .map(|(name, v)| {
                    let was = then
                        .iter()
                        .find(|(n, _)| n == name)
                        .map_or(0.0, |(_, v)| *v);
                    (name.clone(), (v - was) / wall)
                })
                .collect::<Vec<_>>()
        };
        let mut out = diff(&self.ours, &before.ours);
        out.extend(diff(&self.services, &before.services));
        out
    }
}

/// utime + stime of `pid`, in seconds.
fn cpu_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

//! The automations benchmark (issue 28); `benches/automations.sh` runs it and BENCHMARKS.md
//! keeps the figures.
//!
//! Two `fan_created` automations are armed, then one import brings 100,000 new fans, who
//! enroll with their batches: 90,000 (tier `Later`) wait a day before a send, 10,000 (tier
//! `Soon`) wait 60 to 120 s, so that their timers come due within the same minute. Printed:
//! - the import's time, with the enrollments it wrote;
//! - the database's size per waiting enrollment (`automation_enrollments` with its indexes,
//!   over the 100,000);
//! - for the 10,000, the time from each timer's due time (read before it came due) to its send
//!   being queued (its message stored): p50, p99, max, and when the last one was queued;
//! - the send route's latency (`POST /api/onlyfans/messages/send`, 50 a second, each on its own
//!   task) from 5 s before the first timer to 5 s after the last.
//!
//! On PostgreSQL the API (`serve`), the worker and the clock (`sweep`) are processes of their
//! own; on SQLite one `fanqueue all` runs them.

#[allow(dead_code)]
#[path = "../tests/api/helpers/mod.rs"]
mod helpers;
#[path = "common/quantile.rs"]
mod quantile;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fanqueue_jobs::{db::Db, on_db};
use helpers::{ApiClient, AppProcess, Backend, JWT_SECRET, TestDb, run_fanqueue};
use quantile::pick;
use reqwest::StatusCode;
use serde_json::json;

const LATER: usize = 90_000;
const SOON: usize = 10_000;
/// The send route's pace while the timers come due.
const SENDS_PER_SECOND: u64 = 50;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("automations benchmark: run it with benches/automations.sh");
        return;
    }
    let backends = match args
        .iter()
        .position(|a| a == "--backend")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
    {
        Some("sqlite") => vec![Backend::Sqlite],
        Some("both") => vec![Backend::Postgres, Backend::Sqlite],
        _ => vec![Backend::Postgres],
    };
    for backend in backends {
        run(backend).await;
    }
}

async fn run(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let mut env: Vec<(String, String)> = vec![
        ("JWT_SECRET".into(), JWT_SECRET.into()),
        (
            "RUST_LOG".into(),
            "warn,fanqueue::startup=info,fanqueue_jobs::runtime::workers=info,fanqueue_jobs::runtime::automation_clock=info".into(),
        ),
        (
            "DATA_DIR".into(),
            dir.path().join("data").display().to_string(),
        ),
        ("WRITE_LIMIT_PER_MINUTE".into(), "1000000".into()),
        ("MAX_BACKLOG_PER_CREATOR".into(), "1000000".into()),
    ];
    let (_testdb, url, name) = match backend {
        Backend::Postgres => {
            let (db, url) = TestDb::create(Backend::Postgres).await;
            env.push(("DATABASE_URL".into(), url.clone()));
            (Some(db), url, "PostgreSQL")
        }
        Backend::Sqlite => (
            None,
            Db::embedded_url(&dir.path().join("data")),
            "SQLite (embedded default)",
        ),
    };
    let path = std::env::var("PATH").unwrap_or_default();
    let mut refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    refs.push(("PATH", &path));
    let out = run_fanqueue(dir.path(), &["migrate"], &refs);
    assert!(out.status.success(), "fanqueue migrate: {out:?}");
    let db = Db::connect(&url).await.unwrap();
    let mut processes = match backend {
        Backend::Postgres => vec![
            AppProcess::spawn(&["serve"], &refs, dir.path()),
            AppProcess::spawn_until(&["worker"], &refs, dir.path(), "workers running"),
            AppProcess::spawn_until(&["sweep"], &refs, dir.path(), "automation clock running"),
        ],
        Backend::Sqlite => vec![AppProcess::spawn(&["all"], &refs, dir.path())],
    };
    let address = processes[0].address.clone();
    let me = ApiClient::new(&address, 1);
    let automation = |name: &str, tier: &str, wait: serde_json::Value| {
        json!({
            "name": name,
            "trigger": { "type": "fan_created" },
            "audience": { "filter": { "tagsAll": [tier] } },
            "steps": [{ "wait": wait }, { "send": { "content": "Welcome!" } }]
        })
    };
    me.post_json(
        "/api/crm/automations",
        &automation("Later", "later", json!({ "seconds": 86_400 })),
        StatusCode::CREATED,
    )
    .await;
    let soon = me
        .post_json(
            "/api/crm/automations",
            &automation(
                "Soon",
                "soon",
                json!({ "minSeconds": 60, "maxSeconds": 120 }),
            ),
            StatusCode::CREATED,
        )
        .await["id"]
        .as_i64()
        .unwrap();

    let mut csv =
        String::from("Username,Display Name,Email,Subscription Tier,Total Spent,Last Seen\n");
    for i in 0..LATER + SOON {
        let tier = if i % 10 == 0 { "Soon" } else { "Later" };
        csv.push_str(&format!(
            "fan{i:06},Fan {i},f{i}@example.com,{tier},$1.00,2025-01-01\n"
        ));
    }
    let t = Instant::now();
    let job = me.import("fans.csv", csv.into_bytes()).await;
    // Polled as a client does: a 503 (SQLite busy with the import's writes) is retried after
    // its Retry-After, and counted.
    let mut busy = 0;
    let done = loop {
        let resp = me.get(&format!("/api/jobs/{job}")).await;
        if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
            busy += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        assert_eq!(resp.status(), StatusCode::OK);
        let job: serde_json::Value = resp.json().await.unwrap();
        if job["status"] != "queued" && job["status"] != "running" {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let import_s = t.elapsed().as_secs_f64();
    assert_eq!(done["status"], "succeeded", "{done}");

    let (waiting,): (i64,) = on_db!(&db, pool => sqlx::query_as(
        "SELECT COUNT(*) FROM automation_enrollments WHERE status = 'active' AND due_at IS NOT NULL",
    )
    .fetch_one(pool)
    .await
    .unwrap());
    println!("\n# {name}\n");
    println!(
        "import of {} new fans, enrolled with their batches: {import_s:.1} s ({:.0} rows/s; {busy} polls answered 503)",
        LATER + SOON,
        (LATER + SOON) as f64 / import_s
    );
    assert_eq!(waiting as usize, LATER + SOON, "every new fan waits");
    let bytes = enrollment_bytes(&db).await;
    match bytes {
        Some(b) => println!(
            "{waiting} waiting enrollments: automation_enrollments with its indexes {:.1} MiB, {:.0} bytes per waiting enrollment",
            b as f64 / 1_048_576.0,
            b as f64 / waiting as f64
        ),
        None => println!("{waiting} waiting enrollments (this SQLite has no dbstat: no size)"),
    }

    // The 10,000 timers, read before they come due.
    let due: Vec<(i64, DateTime<Utc>)> = on_db!(&db, pool => sqlx::query_as(
        "SELECT id, due_at FROM automation_enrollments WHERE automation_id = $1 ORDER BY id",
    )
    .bind(soon)
    .fetch_all(pool)
    .await
    .unwrap());
    assert_eq!(due.len(), SOON);
    let first = due.iter().map(|(_, d)| *d).min().unwrap();
    let last = due.iter().map(|(_, d)| *d).max().unwrap();
    let until = |at: DateTime<Utc>| (at - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(until(first - chrono::TimeDelta::seconds(5))).await;

    // The send route, paced, from 5 s before the first timer to 5 s after the last.
    let end = last + chrono::TimeDelta::seconds(5);
    let mut tasks = vec![];
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / SENDS_PER_SECOND));
    let http = reqwest::Client::new();
    while Utc::now() < end {
        tick.tick().await;
        let http = http.clone();
        let (address, token) = (address.clone(), me.token.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let resp = http
                .post(format!("{address}/api/onlyfans/messages/send"))
                .bearer_auth(token)
                .json(&json!({ "recipientId": 1, "content": "hi" }))
                .send()
                .await
                .unwrap();
            (resp.status(), t.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut send_ms = vec![];
    let mut refused = 0;
    for t in tasks {
        let (status, ms) = t.await.unwrap();
        if status == StatusCode::ACCEPTED {
            send_ms.push(ms);
        } else {
            refused += 1;
        }
    }
    send_ms.sort_by(f64::total_cmp);

    // Every timer's send queued: its message stored, when.
    let deadline = Instant::now() + Duration::from_secs(300);
    let queued: Vec<(i64, DateTime<Utc>)> = loop {
        let rows: Vec<(i64, DateTime<Utc>)> = on_db!(&db, pool => sqlx::query_as(
            "SELECT s.enrollment_id, m.created_at FROM automation_steps s
             JOIN automation_enrollments e ON e.id = s.enrollment_id
             JOIN messages m ON m.id = s.message_id
             WHERE e.automation_id = $1 AND s.step = 1",
        )
        .bind(soon)
        .fetch_all(pool)
        .await
        .unwrap());
        if rows.len() >= SOON || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(queued.len(), SOON, "every timer's send queued");
    let due_of: std::collections::HashMap<i64, DateTime<Utc>> = due.into_iter().collect();
    let mut lag_ms: Vec<f64> = queued
        .iter()
        .map(|(e, at)| (*at - due_of[e]).num_microseconds().unwrap() as f64 / 1000.0)
        .collect();
    lag_ms.sort_by(f64::total_cmp);
    let last_queued = queued.iter().map(|(_, at)| *at).max().unwrap();
    println!(
        "{SOON} timers due from {} to {} ({:.1} s): due → queued p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (earliest {:.0} ms); the last queued {:.1} s after the last due",
        first.format("%H:%M:%S%.3f"),
        last.format("%H:%M:%S%.3f"),
        (last - first).num_milliseconds() as f64 / 1000.0,
        pick(&lag_ms, 0.5),
        pick(&lag_ms, 0.99),
        pick(&lag_ms, 1.0),
        lag_ms[0],
        (last_queued - last).num_milliseconds() as f64 / 1000.0,
    );
    println!(
        "send route meanwhile ({} at {SENDS_PER_SECOND}/s, {refused} refused): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        send_ms.len(),
        pick(&send_ms, 0.5),
        pick(&send_ms, 0.99),
        pick(&send_ms, 1.0),
    );
    for p in &mut processes {
        p.terminate(Duration::from_secs(20)).await;
    }
}

/// `automation_enrollments` with its indexes, in bytes (`None` on a SQLite without `dbstat`).
async fn enrollment_bytes(db: &Db) -> Option<i64> {
    match db {
        Db::Postgres(pool) => {
            let (b,): (i64,) =
                sqlx::query_as("SELECT pg_total_relation_size('automation_enrollments')")
                    .fetch_one(pool)
                    .await
                    .unwrap();
            Some(b)
        }
        Db::Sqlite(pool) => sqlx::query_as::<_, (i64,)>(
            "SELECT SUM(pgsize) FROM dbstat WHERE name = 'automation_enrollments'
                OR name IN (SELECT name FROM sqlite_master WHERE tbl_name = 'automation_enrollments')",
        )
        .fetch_one(pool)
        .await
        .ok()
        .map(|(b,)| b),
    }
}

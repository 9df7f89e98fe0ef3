//! The analytics benchmark; `benches/analytics.sh` runs it and BENCHMARKS.md keeps the figures.
//!
//! Creator 1 has 100,000 fans (values, last-seen times over four months), 1,000,000 value
//! changes over the last year, 100,000 outbound messages sent or failed over the year and 50
//! campaigns. `GET /api/crm/analytics` is asked over HTTP on loopback, one request at a time,
//! for a month by day, a quarter by week and a year by month: p50, p99 and max of each.
//! The target (issue 10): under 200 ms on PostgreSQL.
//!
//! Then the segment previews (issue 27): the fans get tags, subscriptions, inbound messages,
//! unread conversations and unlocked campaign messages, and `POST /api/crm/segments/preview`
//! is asked for each filter field and a combination: p50, p95 and max (targets: p95 under
//! 100 ms on PostgreSQL, under 200 ms on SQLite).
//!
//! Last, starting a campaign to all 100,000 fans (issue 27): the time to the 201, the time
//! until its audience is resolved and its first messages queued, the peak memory (VmHWM) of
//! the process that runs the feed (`fanqueue worker` on PostgreSQL, `fanqueue all` on SQLite),
//! and the send route's latency (p50, p99, max) while that happens. Target: the 201 in under a
//! second.
//!
//! The value changes are inserted in one statement and the per-day revenue rolled up from them
//! with the same aggregate as the migration's backfill; through the API the trigger on `fans`
//! writes both, one change at a time.

#[allow(dead_code)]
#[path = "../tests/api/helpers/mod.rs"]
mod helpers;
#[path = "common/quantile.rs"]
mod quantile;

use std::time::{Duration, Instant};

use fanqueue::auth::JwtKeys;
use fanqueue_jobs::{
    db::Db,
    domain::{Timestamp, UserId},
    on_db,
};
use helpers::{AppProcess, Backend, JWT_SECRET, TestDb, run_fanqueue};
use quantile::pick;
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::Value;

const FANS: i64 = 100_000;
const CHANGES: i64 = 1_000_000;
const MESSAGES: i64 = 100_000;
const CAMPAIGNS: i64 = 50;
const REQUESTS: usize = 50;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("analytics benchmark: run it with benches/analytics.sh");
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
        ("RUST_LOG".into(), "warn,fanqueue::startup=info".into()),
        (
            "DATA_DIR".into(),
            dir.path().join("data").display().to_string(),
        ),
        ("WRITE_LIMIT_PER_MINUTE".into(), "1000000".into()),
        ("CAMPAIGNS_PER_HOUR".into(), "1000".into()),
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
    let started = Instant::now();
    seed(&db).await;
    let counts: (i64, i64, i64) = on_db!(&db, pool => sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM fans), (SELECT COUNT(*) FROM fan_value_changes),
                (SELECT COUNT(*) FROM messages)"
    )
    .fetch_one(pool)
    .await
    .unwrap());
    println!(
        "\n# {name}\n\nseeded {} fans, {} value changes, {} messages in {:.1} s\n",
        counts.0,
        counts.1,
        counts.2,
        started.elapsed().as_secs_f64()
    );
    let role = match backend {
        Backend::Postgres => "serve",
        Backend::Sqlite => "all",
    };
    let mut app = AppProcess::spawn(&[role], &refs, dir.path());
    let keys = JwtKeys::new(&SecretString::from(JWT_SECRET.to_owned()));
    let token = keys.issue(UserId(1), Duration::from_secs(3600));
    let client = reqwest::Client::new();
    println!("| query | first (cold) | p50 | p99 | max | figures |");
    println!("|---|---|---|---|---|---|");
    let today = chrono::Utc::now().date_naive();
    for (label, query) in [
        (
            "a month by day",
            format!("period=day&from={}", today - chrono::Duration::days(29)),
        ),
        (
            "a quarter by week",
            format!("period=week&from={}", today - chrono::Duration::weeks(12)),
        ),
        (
            "a year by month",
            format!("period=month&from={}", today - chrono::Duration::days(364)),
        ),
    ] {
        let url = format!("{}/api/crm/analytics?{query}", app.address);
        let run = timed(REQUESTS, || async {
            let resp = client.get(&url).bearer_auth(&token).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            resp.json::<Value>().await.unwrap()
        })
        .await;
        let (times, last) = (&run.sorted_ms, &run.last);
        println!(
            "| {label} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {} fans, {} active, {} periods, {} campaigns |",
            run.first_ms,
            pick(times, 0.5),
            pick(times, 0.99),
            pick(times, 1.0),
            last["totalFans"],
            last["activeFans"],
            last["periods"].as_array().map_or(0, Vec::len),
            last["campaigns"].as_array().map_or(0, Vec::len),
        );
    }
    previews(&db, &client, &app.address, &token).await;
    // The process that runs the campaign's feed.
    let mut worker_env = refs.clone();
    worker_env.push(("RUST_LOG", "warn,fanqueue_jobs::runtime=info"));
    let worker = match backend {
        Backend::Postgres => Some(AppProcess::spawn_until(
            &["worker"],
            &worker_env,
            dir.path(),
            "workers running",
        )),
        Backend::Sqlite => None,
    };
    let feeder = worker.as_ref().unwrap_or(&app);
    campaign_start(&client, &app.address, &token, feeder).await;
    app.terminate(Duration::from_secs(20)).await;
}

/// A process's resident memory now and at its peak (VmRSS, VmHWM), in MiB.
fn memory(p: &AppProcess) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.child.id())).unwrap();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

/// Starts a campaign to every fan; times the 201, the feed's first round, and single sends
/// made meanwhile.
async fn campaign_start(client: &reqwest::Client, address: &str, token: &str, feeder: &AppProcess) {
    let (rss_before, peak_before) = memory(feeder);
    let t = Instant::now();
    let resp = client
        .post(format!("{address}/api/crm/campaigns"))
        .bearer_auth(token)
        .json(&serde_json::json!({
            "name": "Everyone",
            "content": "Hello",
            "audience": { "filter": {} },
        }))
        .send()
        .await
        .unwrap();
    let to_201 = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let id = resp.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    // Single sends while the feed resolves the audience and queues the first messages.
    let sends = async {
        let mut ms = vec![];
        for _ in 0..200 {
            let t = Instant::now();
            let resp = client
                .post(format!("{address}/api/onlyfans/messages/send"))
                .bearer_auth(token)
                .json(&serde_json::json!({ "recipientId": 1, "content": "hi" }))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::ACCEPTED);
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        ms
    };
    let get = |path: String| async move {
        let resp = client
            .get(format!("{address}{path}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        resp.json::<Value>().await.unwrap()
    };
    let fed = async {
        loop {
            let run = get(format!("/api/crm/campaigns/{id}/runs")).await;
            let item = &run["items"][0];
            if item["audience"].is_i64() && item["remaining"].as_i64() > Some(0) {
                let c = get(format!("/api/crm/campaigns/{id}")).await;
                if c["metrics"]["queued"].as_i64() > Some(0) {
                    return (t.elapsed().as_secs_f64(), item["audience"].clone());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (ms, (fed_s, audience)) = tokio::join!(sends, fed);
    let (rss_after, peak_after) = memory(feeder);
    println!("\n## Starting a campaign to every fan\n");
    println!(
        "| time to 201 | audience resolved and first messages queued | feeder RSS before → after | feeder peak (VmHWM) before → after | send route during: p50 / p99 / max |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {to_201:.0} ms | {fed_s:.2} s ({audience} fans) | {rss_before:.0} → {rss_after:.0} MiB | {peak_before:.0} → {peak_after:.0} MiB | {:.1} / {:.1} / {:.1} ms |",
        pick(&ms, 0.5),
        pick(&ms, 0.99),
        pick(&ms, 1.0),
    );
}

/// One question asked `1 + requests` times: the first answer's time (it reads the pages
/// from disk into the caches), the others' sorted, and the last answer.
struct Timed {
    first_ms: f64,
    sorted_ms: Vec<f64>,
    last: Value,
}

async fn timed<F, Fut>(requests: usize, mut ask: F) -> Timed
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Value>,
{
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    let mut last = ask().await;
    let first_ms = ms(t);
    let mut sorted_ms = vec![];
    for _ in 0..requests {
        let t = Instant::now();
        last = ask().await;
        sorted_ms.push(ms(t));
    }
    sorted_ms.sort_by(f64::total_cmp);
    Timed {
        first_ms,
        sorted_ms,
        last,
    }
}

/// Segment previews over the same creator, once the audience columns are seeded.
async fn previews(db: &Db, client: &reqwest::Client, address: &str, token: &str) {
    let started = Instant::now();
    seed_audiences(db).await;
    let (campaign, message): (i64, i64) = on_db!(db, pool => sqlx::query_as(
        "SELECT campaign_id, id FROM messages WHERE purchased_at IS NOT NULL ORDER BY id LIMIT 1",
    )
    .fetch_one(pool)
    .await
    .unwrap());
    println!(
        "\nseeded tags, subscriptions, inbound messages, unread conversations and unlocks in {:.1} s\n",
        started.elapsed().as_secs_f64()
    );
    let ago = |days: i64| (chrono::Utc::now() - chrono::Duration::days(days)).to_rfc3339();
    let filters = [
        ("tagsAny", serde_json::json!({ "tagsAny": ["t1", "t3"] })),
        (
            "tagsAll + tagsNone",
            serde_json::json!({ "tagsAll": ["t1", "g2"], "tagsNone": ["g3"] }),
        ),
        ("platform", serde_json::json!({ "platform": "onlyfans" })),
        (
            "value range",
            serde_json::json!({ "minValueCents": 500, "maxValueCents": 900 }),
        ),
        (
            "spent $10 in 30 days",
            serde_json::json!({ "spentCentsInLastDays": { "cents": 1000, "days": 30 } }),
        ),
        (
            "lastSeenBefore",
            serde_json::json!({ "lastSeenBefore": ago(30) }),
        ),
        (
            "lastSeenAfter",
            serde_json::json!({ "lastSeenAfter": ago(7) }),
        ),
        ("inactiveDays", serde_json::json!({ "inactiveDays": 60 })),
        ("subscribed", serde_json::json!({ "subscribed": true })),
        ("not subscribed", serde_json::json!({ "subscribed": false })),
        (
            "wrote within a week",
            serde_json::json!({ "lastInboundWithinHours": 168 }),
        ),
        (
            "messaged within a week",
            serde_json::json!({ "lastOutboundWithinHours": 168 }),
        ),
        ("unread", serde_json::json!({ "unreadInbound": true })),
        (
            "nothing unread",
            serde_json::json!({ "unreadInbound": false }),
        ),
        (
            "bought a message",
            serde_json::json!({ "boughtMessageId": message }),
        ),
        (
            "bought from a campaign",
            serde_json::json!({ "boughtCampaignId": campaign }),
        ),
        (
            "bought nothing of it",
            serde_json::json!({ "notBoughtCampaignId": campaign }),
        ),
        (
            "win-back: whales, gone 14 days, expired, not bought",
            serde_json::json!({ "tagsAny": ["t1", "t2"], "minValueCents": 100, "inactiveDays": 14,
                                "subscribed": false, "notBoughtCampaignId": campaign }),
        ),
    ];
    println!("| segment preview | fans | p50 | p95 | max |");
    println!("|---|---:|---:|---:|---:|");
    let url = format!("{address}/api/crm/segments/preview");
    for (label, filter) in filters {
        let body = serde_json::json!({ "filter": filter });
        let run = timed(REQUESTS, || async {
            let resp = client
                .post(&url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{label}");
            resp.json::<Value>().await.unwrap()
        })
        .await;
        println!(
            "| {label} | {} | {:.1} ms | {:.1} ms | {:.1} ms |",
            run.last["count"],
            pick(&run.sorted_ms, 0.5),
            pick(&run.sorted_ms, 0.95),
            pick(&run.sorted_ms, 1.0)
        );
    }
}

/// What segments read beyond the analytics data: two tags a fan, a third of the fans
/// subscribed and a third expired, 50,000 inbound messages over the year, a fifth of the
/// conversations unread, and every tenth outbound message a campaign's (one in five of those
/// unlocked).
async fn seed_audiences(db: &Db) {
    let now = Timestamp::now();
    let tags = match db {
        Db::Postgres(_) => "jsonb_build_array('t' || (id % 10), 'g' || (id % 7))",
        Db::Sqlite(_) => "json_array('t' || (id % 10), 'g' || (id % 7))",
    };
    let at = match db {
        Db::Postgres(_) => {
            "$1::timestamptz - (id % 365) * INTERVAL '1 day' - (id % 1440) * INTERVAL '1 minute'"
        }
        Db::Sqlite(_) => {
            "strftime('%Y-%m-%dT%H:%M:%fZ', $1, '-' || (id % 365) || ' days', '-' || (id % 1440) || ' minutes')"
        }
    };
    let statements = [
        format!(
            "UPDATE fans SET tags = {tags},
                 subscription = CASE id % 3 WHEN 0 THEN 'active' WHEN 1 THEN 'expired' END,
                 subscription_at = CASE WHEN id % 3 < 2 THEN $1 END"
        ),
        format!(
            "INSERT INTO messages (user_id, conversation_id, fan_id, direction, text, status,
                                   created_at, sent_at)
             SELECT user_id, id, fan_id, 'in', 'hi', 'sent', {at}, {at}
             FROM conversations WHERE id % 2 = 0"
        ),
        "UPDATE conversations SET unread_count = 1 WHERE id % 5 = 0".to_owned(),
        "UPDATE messages SET campaign_id = (SELECT MIN(id) FROM campaigns) + id % 50,
             purchased_at = CASE WHEN id % 50 = 0 THEN created_at END
         WHERE direction = 'out' AND id % 10 = 0"
            .to_owned(),
    ];
    for sql in statements {
        // Only the statements that name the time take it (PostgreSQL refuses a spare bind).
        on_db!(db, pool => {
            let q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
            let q = if sql.contains("$1") { q.bind(now) } else { q };
            q.execute(pool)
                .await
                .map(|_| ())
                .unwrap_or_else(|e| panic!("{e}: {sql}"))
        });
    }
    if let Db::Postgres(pool) = db {
        sqlx::query("VACUUM ANALYZE").execute(pool).await.unwrap();
    } else if let Db::Sqlite(pool) = db {
        sqlx::query("ANALYZE").execute(pool).await.unwrap();
    }
}

/// Creator 1's data, each table in one statement (a recursive CTE: both dialects).
async fn seed(db: &Db) {
    let now = Timestamp::now();
    let series = "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < $1) ";
    let (seen, at, day) = match db {
        Db::Postgres(_) => (
            "$2::timestamptz - (i % 120) * INTERVAL '1 day'",
            "$2::timestamptz - (i % 365) * INTERVAL '1 day' - (i % 1440) * INTERVAL '1 minute'",
            "(at AT TIME ZONE 'UTC')::date",
        ),
        Db::Sqlite(_) => (
            "strftime('%Y-%m-%dT%H:%M:%fZ', $2, '-' || (i % 120) || ' days')",
            "strftime('%Y-%m-%dT%H:%M:%fZ', $2, '-' || (i % 365) || ' days', '-' || (i % 1440) || ' minutes')",
            "date(at)",
        ),
    };
    // (statement, rows of its series): a series statement binds its length and the time.
    let statements: Vec<(String, Option<i64>)> = vec![
        // The fans' values as they are created: the trigger records each as a change.
        (
            format!(
                "{series} INSERT INTO fans (user_id, platform, handle, value_cents, last_seen_at,
                                           created_at, updated_at)
                 SELECT 1, 'onlyfans', '@fan' || i, i % 1000, {seen}, $2, $2 FROM s"
            ),
            Some(FANS),
        ),
        (
            format!(
                "{series} INSERT INTO fan_value_changes (user_id, fan_id, at, value_cents, delta_cents, source)
                 SELECT 1, (SELECT MIN(id) FROM fans) + i % {FANS}, {at}, 0, 1 + i % 500, 'tip' FROM s"
            ),
            Some(CHANGES - FANS),
        ),
        ("DELETE FROM revenue_days".to_owned(), None),
        (
            format!(
                "INSERT INTO revenue_days (user_id, day, revenue_cents)
                 SELECT user_id, {day}, SUM(delta_cents) FROM fan_value_changes GROUP BY 1, 2"
            ),
            None,
        ),
        (
            "INSERT INTO conversations (user_id, fan_id, platform, created_at)
             SELECT user_id, id, platform, created_at FROM fans"
                .to_owned(),
            None,
        ),
        (
            format!(
                "{series} INSERT INTO campaigns (user_id, name, type, status, template, target_audience,
                                                metrics, created_at)
                 SELECT 1, 'campaign ' || i, 'bulk_message', 'completed', '{{}}',
                        '{{\"recipientIds\": [1, 2, 3]}}',
                        '{{\"sent\": 2, \"failed\": 1, \"delivered\": 2, \"opened\": 1, \"revenueCents\": 500}}',
                        {at} FROM s"
            ),
            Some(CAMPAIGNS),
        ),
        (
            format!(
                "{series} INSERT INTO messages (user_id, conversation_id, fan_id, direction, text,
                                               status, created_at, sent_at, failed_at)
                 SELECT 1, c.id, c.fan_id, 'out', 'hello',
                        CASE WHEN i % 10 = 0 THEN 'failed' ELSE 'sent' END, {at},
                        CASE WHEN i % 10 = 0 THEN NULL ELSE {at} END,
                        CASE WHEN i % 10 = 0 THEN {at} ELSE NULL END
                 FROM s JOIN conversations c ON c.id = (SELECT MIN(id) FROM conversations) + i % {FANS}"
            ),
            Some(MESSAGES),
        ),
    ];
    for (sql, rows) in statements {
        let t = Instant::now();
        on_db!(db, pool => {
            let q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
            let q = match rows {
                Some(n) => q.bind(n).bind(now),
                None => q,
            };
            q.execute(pool)
                .await
                .map(|_| ())
                .unwrap_or_else(|e| panic!("{e}: {sql}"))
        });
        eprintln!(
            "{:.1} s: {}",
            t.elapsed().as_secs_f64(),
            sql.split_whitespace()
                .skip_while(|w| *w != "INSERT" && *w != "DELETE")
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    fanqueue_jobs::crm::fans::blocks::rebuild(db).await.unwrap();
    if let Db::Postgres(pool) = db {
        sqlx::query("VACUUM ANALYZE").execute(pool).await.unwrap();
    } else if let Db::Sqlite(pool) = db {
        sqlx::query("ANALYZE").execute(pool).await.unwrap();
    }
}

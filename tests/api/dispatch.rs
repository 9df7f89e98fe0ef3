//! Dispatchers as operators run them: `fanqueue all` on the embedded default, and several
//! `fanqueue dispatch` processes sharing PostgreSQL, Redis and SQS, against the platform
//! stand-in. What the platform saw is judged from the stand-in's own record of arrivals.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{ApiClient, AppProcess, Sim, instant};

/// The arrival times at the platform of `user`'s deliveries, in order.
fn arrivals(deliveries: &[Value], user: i64) -> Vec<DateTime<Utc>> {
    deliveries
        .iter()
        .filter(|d| d["userId"] == user.to_string())
        .map(|d| instant(&d["arrivedAt"]))
        .collect()
}

/// The most arrivals inside any 60-second window.
pub fn busiest_minute(arrivals: &[DateTime<Utc>]) -> usize {
    let mut sorted = arrivals.to_vec();
    sorted.sort();
    let mut best = 0;
    let mut first = 0;
    for (last, at) in sorted.iter().enumerate() {
        while *at - sorted[first] >= chrono::TimeDelta::seconds(60) {
            first += 1;
        }
        best = best.max(last - first + 1);
    }
    best
}

/// Waits until the stand-in has `n` deliveries (at most `timeout`).
async fn delivered(sim: &Sim, n: usize, timeout: Duration) -> Vec<Value> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let d = sim.deliveries().await;
        if d.len() >= n {
            return d;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} deliveries within {timeout:?}",
            d.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_delivers_at_ten_a_minute_per_creator_as_estimated() {
    let sim = Sim::start(10).await;
    let dir = tempfile::tempdir().unwrap();
    let url = sim.messages_url();
    let env = [("PLATFORM_API_URL", url.as_str())];
    let app = AppProcess::spawn(&["all"], &env, dir.path());
    app.wait_for_log("dispatcher running", Duration::from_secs(10))
        .await;
    // Tokens as a user gets them: from the command, signed with the secret in ./data.
    let token = |user: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fanqueue"))
            .args(["token", "--user-id", user])
            .current_dir(dir.path())
            .env_clear()
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let mut one = ApiClient::new(&app.address, 1);
    one.token = token("1");
    let mut two = ApiClient::new(&app.address, 2);
    two.token = token("2");

    let fan = one
        .post(
            "/api/crm/fans",
            &json!({ "handle": "@fan" }),
            StatusCode::CREATED,
        )
        .await;
    let mut estimates = vec![];
    for i in 0..3 {
        let sent = one
            .post(
                "/api/onlyfans/messages/send",
                &json!({ "recipientId": fan["id"], "content": format!("hello {i}") }),
                StatusCode::ACCEPTED,
            )
            .await;
        estimates.push(instant(&sent["estimatedSendTime"]));
    }
    // Another creator's message, sent last, does not wait behind the first creator's.
    let other = two
        .post(
            "/api/crm/fans",
            &json!({ "handle": "@other" }),
            StatusCode::CREATED,
        )
        .await;
    let sent = two
        .post(
            "/api/onlyfans/messages/send",
            &json!({ "recipientId": other["id"], "content": "hi" }),
            StatusCode::ACCEPTED,
        )
        .await;
    let other_queued = instant(&sent["queuedAt"]);

    let all = delivered(&sim, 4, Duration::from_secs(60)).await;
    let first = arrivals(&all, 1);
    assert_eq!(first.len(), 3);
    for pair in first.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= chrono::TimeDelta::milliseconds(5_900),
            "10 a minute: a slot every 6 s, got {gap:?}"
        );
    }
    let slot = chrono::TimeDelta::seconds(6);
    for (estimate, arrived) in estimates.iter().zip(&first) {
        assert!(
            (*arrived - *estimate).abs() <= slot,
            "estimated {estimate}, arrived {arrived}: within one slot"
        );
    }
    let second = arrivals(&all, 2);
    assert!(
        second[0] - other_queued < slot,
        "creator 2's message went out within a slot ({:?})",
        second[0] - other_queued
    );
    assert_eq!(sim.stats().await["totalViolations"], 0);
}

/// A distributed deployment: PostgreSQL, SQS on the emulator, a Redis (the test run's, or one
/// of the test's own), an API and a worker process; dispatchers are started by each test.
struct Deployment {
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
    url: String,
    dlq: String,
    _db: crate::helpers::TestDb,
    _api: AppProcess,
    _worker: AppProcess,
    api: String,
}

impl Deployment {
    async fn start(sim: &Sim, per_minute: u32, redis_url: &str) -> Deployment {
        let (db, url) = crate::helpers::TestDb::create(crate::helpers::Backend::Postgres).await;
        let (queue, dlq) = crate::helpers::sqs_queues(false, 5).await;
        let mut env: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), url.clone()),
            ("JWT_SECRET".into(), crate::helpers::JWT_SECRET.into()),
            ("REDIS_URL".into(), redis_url.into()),
            (
                "REDIS_PREFIX".into(),
                format!("fqtest-{}", uuid::Uuid::new_v4().simple()),
            ),
            ("SQS_QUEUE_URL".into(), queue),
            ("SQS_DLQ_URL".into(), dlq.clone()),
            ("AWS_ENDPOINT_URL".into(), crate::helpers::aws_endpoint()),
            ("PLATFORM_API_URL".into(), sim.messages_url()),
            ("DELIVERY_RATE_PER_MINUTE".into(), per_minute.to_string()),
            // Short attempts, so that a dead dispatcher's lease (timeout + 5 s) runs out soon.
            ("PLATFORM_TIMEOUT_MS".into(), "1000".into()),
            ("WRITE_LIMIT_PER_MINUTE".into(), "10000".into()),
            ("CAMPAIGNS_PER_HOUR".into(), "1000".into()),
        ];
        for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"] {
            let value = std::env::var(key)
                .unwrap_or_else(|_| panic!("{key} must be set (scripts/test sets it)"));
            env.push((key.into(), value));
        }
        let dir = tempfile::tempdir().unwrap();
        let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let api = AppProcess::spawn(&["serve"], &refs, dir.path());
        let worker = AppProcess::spawn_until(&["worker"], &refs, dir.path(), "workers running");
        Deployment {
            api: api.address.clone(),
            env,
            dir,
            url,
            dlq,
            _db: db,
            _api: api,
            _worker: worker,
        }
    }

    fn dispatcher(&self) -> AppProcess {
        let refs: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        AppProcess::spawn_until(&["dispatch"], &refs, self.dir.path(), "dispatcher running")
    }

    /// `n` fans of `user` and one campaign to all of them; returns the message count.
    async fn campaign(&self, user: i64, n: usize) -> usize {
        let client = ApiClient::new(&self.api, user);
        let mut fans = vec![];
        for i in 0..n {
            let fan = json!({ "handle": format!("u{user}f{i}") });
            fans.push(
                client
                    .post("/api/crm/fans", &fan, StatusCode::CREATED)
                    .await["id"]
                    .clone(),
            );
        }
        let bulk = json!({ "recipientIds": fans, "content": "hello", "campaignName": "c" });
        client
            .post("/api/messages/bulk", &bulk, StatusCode::ACCEPTED)
            .await;
        let jobs = client.get("/api/jobs?kind=bulk_send").await;
        for job in jobs["items"].as_array().unwrap() {
            let job = client
                .wait_job(job["id"].as_str().unwrap(), Duration::from_secs(60))
                .await;
            assert_eq!(job["status"], "succeeded", "{job}");
        }
        n
    }

    /// Message counts by status, from the database.
    async fn statuses(&self) -> std::collections::BTreeMap<String, i64> {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&self.url)
            .await
            .unwrap();
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, COUNT(*) FROM messages WHERE direction = 'out' GROUP BY status",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        rows.into_iter().collect()
    }

    /// Waits until all `n` outbound messages are sent (at most `timeout`).
    async fn all_sent(&self, n: usize, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let s = self.statuses().await;
            if s.get("sent").copied() == Some(n as i64) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not all {n} sent within {timeout:?}: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Every message delivered exactly once: as many deliveries as messages, no key twice.
fn exactly_once(deliveries: &[Value], n: usize) {
    let keys: std::collections::HashSet<&str> = deliveries
        .iter()
        .map(|d| d["key"].as_str().unwrap())
        .collect();
    assert_eq!(deliveries.len(), n, "one delivery per message");
    assert_eq!(keys.len(), n, "no message delivered twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatchers_killed_mid_delivery_ten_times_deliver_every_message_exactly_once() {
    let sim = Sim::start(100_000).await;
    // Each request takes 150 ms at the platform: kills land while requests are out.
    sim.faults(json!({ "latencyMs": 150 })).await;
    let d = Deployment::start(&sim, 600, &crate::helpers::redis_url()).await;
    let mut n = 0;
    for user in 1..=3 {
        n += d.campaign(user, 40).await;
    }
    for round in 0..10 {
        let mut dispatcher = d.dispatcher();
        let before = sim.deliveries().await.len();
        delivered(&sim, (before + 3).min(n), Duration::from_secs(60)).await;
        dispatcher.child.kill().expect("SIGKILL the dispatcher");
        dispatcher.child.wait().unwrap();
        assert!(
            sim.deliveries().await.len() < n,
            "round {round}: work left to interrupt"
        );
    }
    let _last = d.dispatcher();
    d.all_sent(n, Duration::from_secs(120)).await;
    let deliveries = sim.deliveries().await;
    exactly_once(&deliveries, n);
    let s = d.statuses().await;
    assert_eq!(
        s.get("sent").copied(),
        Some(n as i64),
        "the database agrees: {s:?}"
    );
    assert_eq!(sim.stats().await["totalViolations"], 0);
}

/// The attempts the database logged with `outcome`: (message id, start).
async fn attempts_with(url: &str, outcome: &str) -> Vec<(i64, DateTime<Utc>)> {
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
        .await
        .unwrap();
    sqlx::query_as("SELECT message_id, started_at FROM delivery_attempts WHERE outcome = $1")
        .bind(outcome)
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_holds_its_creator_on_every_replica_for_retry_after_then_the_backlog_resumes() {
    let sim = Sim::start(100_000).await;
    let d = Deployment::start(&sim, 600, &crate::helpers::redis_url()).await;
    let n = d.campaign(1, 30).await + d.campaign(2, 30).await;
    let _a = d.dispatcher();
    let _b = d.dispatcher();
    // Once creator 1 is under way, the platform answers its next request with a 429.
    loop {
        if arrivals(&sim.deliveries().await, 1).len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sim.faults(json!({ "userId": "1", "fail429": 1, "retryAfterSecs": 5 }))
        .await;
    d.all_sent(n, Duration::from_secs(60)).await;

    let limited = attempts_with(&d.url, "rate_limited").await;
    assert_eq!(limited.len(), 1, "{limited:?}");
    let (message, at) = limited[0];
    let deliveries = sim.deliveries().await;
    exactly_once(&deliveries, n);
    // A request already out when the 429 came back may still land; after that, nothing for
    // creator 1 from either replica until Retry-After has passed.
    let held = arrivals(&deliveries, 1)
        .into_iter()
        .filter(|t| *t > at + chrono::TimeDelta::milliseconds(500))
        .filter(|t| *t < at + chrono::TimeDelta::seconds(5))
        .count();
    assert_eq!(held, 0, "no delivery for creator 1 during the pause");
    let resumed = arrivals(&deliveries, 1)
        .into_iter()
        .filter(|t| *t >= at + chrono::TimeDelta::seconds(5))
        .count();
    assert!(resumed > 0, "the backlog resumed after the pause");
    let others = arrivals(&deliveries, 2)
        .into_iter()
        .filter(|t| {
            *t > at + chrono::TimeDelta::seconds(1) && *t < at + chrono::TimeDelta::seconds(5)
        })
        .count();
    assert!(
        others > 0
            || arrivals(&deliveries, 2)
                .iter()
                .all(|t| *t < at + chrono::TimeDelta::seconds(1)),
        "creator 2 was not held by creator 1's pause"
    );
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&d.url)
        .await
        .unwrap();
    let (attempts,): (i64,) = sqlx::query_as("SELECT attempts FROM messages WHERE id = $1")
        .bind(message)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(attempts, 1, "the rate-limited attempt was not charged");
}

/// A Redis server of the test's own on a free port, which the test can stop and start.
struct OwnRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = OwnRedis { port, child: None };
        redis.restart();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (empty: it keeps nothing on disk) and waits until it answers.
    fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_for_30_s_nothing_is_delivered_or_lost_and_the_rate_holds_after() {
    let mut redis = OwnRedis::start();
    // The platform enforces the same limit and counts any breach.
    let sim = Sim::start(60).await;
    let d = Deployment::start(&sim, 60, &redis.url()).await;
    let n = d.campaign(1, 45).await + d.campaign(2, 45).await;
    let _a = d.dispatcher();
    let _b = d.dispatcher();
    delivered(&sim, 16, Duration::from_secs(60)).await;

    redis.stop();
    let stopped = Utc::now();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let restarted = Utc::now();
    redis.restart();
    d.all_sent(n, Duration::from_secs(180)).await;

    let deliveries = sim.deliveries().await;
    exactly_once(&deliveries, n);
    for user in [1, 2] {
        let at = arrivals(&deliveries, user);
        let during = at
            .iter()
            .filter(|t| **t > stopped + chrono::TimeDelta::seconds(2) && **t < restarted)
            .count();
        assert_eq!(
            during, 0,
            "creator {user}: no delivery while Redis was down"
        );
        assert!(
            busiest_minute(&at) <= 60,
            "creator {user}: at most 60 in any minute, got {}",
            busiest_minute(&at)
        );
    }
    assert_eq!(sim.stats().await["totalViolations"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqs_a_message_out_of_attempts_is_failed_and_in_the_dlq_with_its_last_error() {
    let sim = Sim::start(100_000).await;
    sim.faults(json!({ "fail500": 1_000 })).await;
    let d = Deployment::start(&sim, 600, &crate::helpers::redis_url()).await;
    let n = d.campaign(1, 2).await;
    let _a = d.dispatcher();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while d.statuses().await.get("failed").copied() != Some(n as i64) {
        assert!(
            std::time::Instant::now() < deadline,
            "not failed within 60 s: {:?}",
            d.statuses().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Five attempts each (the default), every one answered 500, none delivered.
    let stats = sim.stats().await;
    assert_eq!(stats["rejected"]["500"], 5 * n as u64, "{stats}");
    assert_eq!(stats["deliveries"], 0);

    let sqs = crate::helpers::sqs_client().await;
    let got = sqs
        .receive_message()
        .queue_url(&d.dlq)
        .max_number_of_messages(10)
        .wait_time_seconds(2)
        .message_attribute_names("All")
        .send()
        .await
        .unwrap();
    let dead = got.messages();
    assert_eq!(dead.len(), n, "every failed message is in the DLQ");
    for m in dead {
        let body: Value = serde_json::from_str(m.body().unwrap()).unwrap();
        assert_eq!(body["userId"], "1");
        let error = m.message_attributes().unwrap()["error"]
            .string_value()
            .unwrap();
        assert!(
            error.contains("500"),
            "the last error travels with it: {error}"
        );
    }
}

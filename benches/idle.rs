//! The idle benchmark; `benches/idle.sh` runs it and BENCHMARKS.md keeps the figures.
//!
//! A `fanqueue serve` and a `fanqueue worker` on a fresh PostgreSQL database. The worker
//! reaches PostgreSQL through a proxy in this process that counts what it asks: every simple
//! `Query` and every extended-protocol `Execute` is one statement, named by the text it was
//! prepared from.
//! 1. **Idle**: nothing is stored for `--seconds` (60): the worker's statements per second,
//!    and the statements it sent most.
//! 2. **Wake-up**: then single sends, one every `--gap-ms` (250), `--sends` (200) of them: for
//!    each, the time from its 202 to its row on the outbound queue (p50, p99, max). A quiet
//!    worker must still start a stored job at once.

#[allow(dead_code)]
#[path = "../tests/api/helpers/mod.rs"]
mod helpers;
#[path = "common/quantile.rs"]
mod quantile;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use fanqueue::auth::JwtKeys;
use fanqueue_jobs::{db::Db, domain::UserId};
use helpers::{AppProcess, Backend, JWT_SECRET, TestDb, run_fanqueue};
use quantile::pick;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// The sending creator.
const CREATOR: i64 = 1;

#[tokio::main]
async fn main() {
    let all: Vec<String> = std::env::args().skip(1).collect();
    if !all.iter().any(|a| a == "--bench") {
        // `cargo test --all-targets` builds and runs benches without `--bench`: building it
        // is the check; the figures take a minute and a quiet machine.
        println!("idle benchmark: run it with benches/idle.sh");
        return;
    }
    let opt = |name: &str, default: u64| {
        all.iter()
            .position(|a| a == name)
            .and_then(|i| all.get(i + 1))
            .map_or(default, |v| v.parse().expect("options are numbers"))
    };
    let seconds = opt("--seconds", 60);
    let gap = Duration::from_millis(opt("--gap-ms", 250));
    let sends = opt("--sends", 200);

    let (_db, url) = TestDb::create(Backend::Postgres).await;
    let counts = Counts::default();
    let proxied = counts.proxy(&url).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let env = |url: &str| -> Vec<(String, String)> {
        vec![
            ("JWT_SECRET".into(), JWT_SECRET.into()),
            ("DATABASE_URL".into(), url.into()),
            ("DATA_DIR".into(), data.clone()),
            ("WRITE_LIMIT_PER_MINUTE".into(), "1000000".into()),
            ("MAX_BACKLOG_PER_CREATOR".into(), "1000000".into()),
            (
                "RUST_LOG".into(),
                "warn,fanqueue::startup=info,fanqueue_jobs::runtime=info".into(),
            ),
        ]
    };
    let direct = env(&url);
    let through = env(&proxied);
    let mut migrate = pairs(&direct);
    let path = std::env::var("PATH").unwrap_or_default();
    migrate.push(("PATH", &path));
    let out = run_fanqueue(dir.path(), &["migrate"], &migrate);
    assert!(out.status.success(), "fanqueue migrate: {out:?}");

    let api = AppProcess::spawn_until(
        &["serve"],
        &pairs(&direct),
        dir.path(),
        "API listening; docs at /docs",
    );
    let mut worker =
        AppProcess::spawn_until(&["worker"], &pairs(&through), dir.path(), "workers running");
    let client = reqwest::Client::new();
    let token = JwtKeys::new(&SecretString::from(JWT_SECRET))
        .issue(UserId(CREATOR), Duration::from_secs(3600));
    let fan: Value = client
        .post(format!("{}/api/crm/fans", api.address))
        .bearer_auth(&token)
        .json(&json!({ "platform": "onlyfans", "handle": "@idle_bench" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fan = fan["id"].as_i64().unwrap_or_else(|| panic!("a fan: {fan}"));

    // The worker's start (registering, first fetches, its first heartbeats) is not idling.
    tokio::time::sleep(Duration::from_secs(15)).await;
    println!("\n# An idle `fanqueue worker` on PostgreSQL\n");
    let before = counts.snapshot();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let took = started.elapsed().as_secs_f64();
    let idle = since(&counts.snapshot(), &before);
    let total: u64 = idle.values().sum();
    println!(
        "{total} statements in {took:.0} s: **{:.2} statements/s**\n",
        total as f64 / took
    );
    println!("| statement | count | per s |");
    println!("|---|---:|---:|");
    let mut top: Vec<(&String, &u64)> = idle.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (sql, n) in top.iter().take(8) {
        println!("| `{sql}` | {n} | {:.2} |", **n as f64 / took);
    }

    let db = Db::connect(&url).await.unwrap();
    let mut accepted: Vec<(i64, DateTime<Utc>)> = vec![];
    let mut next = Instant::now();
    for i in 0..sends {
        tokio::time::sleep_until(next.into()).await;
        next += gap;
        let resp = client
            .post(format!("{}/api/onlyfans/messages/send", api.address))
            .bearer_auth(&token)
            .json(&json!({ "recipientId": fan, "content": format!("wake up {i}") }))
            .send()
            .await
            .unwrap();
        let at = Utc::now();
        let body: Value = resp.json().await.unwrap();
        let id = body["messageId"]
            .as_i64()
            .unwrap_or_else(|| panic!("a 202: {body}"));
        accepted.push((id, at));
    }
    let on_queue = wait_on_queue(&db, &accepted).await;
    let mut lat: Vec<f64> = accepted
        .iter()
        .filter_map(|(id, at)| on_queue.get(id).map(|q| (*q - *at).as_seconds_f64() * 1e3))
        .collect();
    lat.sort_by(f64::total_cmp);
    println!(
        "\n## 202 → on the outbound queue, one send every {} ms after the idle spell\n",
        gap.as_millis()
    );
    println!("| sends | on the queue | p50 ms | p99 ms | max ms |");
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {:.1} | {:.1} | {:.1} |\n",
        accepted.len(),
        lat.len(),
        pick(&lat, 0.5),
        pick(&lat, 0.99),
        pick(&lat, 1.0)
    );
    worker.terminate(Duration::from_secs(30)).await;
    let mut api = api;
    api.terminate(Duration::from_secs(30)).await;
}

fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// When each of `accepted`'s messages reached the outbound queue; waits up to 60 s for all.
async fn wait_on_queue(db: &Db, accepted: &[(i64, DateTime<Utc>)]) -> HashMap<i64, DateTime<Utc>> {
    let Db::Postgres(pool) = db else {
        unreachable!("the bench runs on PostgreSQL")
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows: Vec<(String, DateTime<Utc>)> =
            sqlx::query_as("SELECT dedup_key, created_at FROM outbound_queue")
                .fetch_all(pool)
                .await
                .unwrap();
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

/// Statements seen by the proxy, by their text.
#[derive(Clone, Default)]
struct Counts(Arc<Mutex<HashMap<String, u64>>>);

impl Counts {
    fn add(&self, sql: &str) {
        let key: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
        let key: String = key.chars().take(70).collect();
        *self.0.lock().unwrap().entry(key).or_default() += 1;
    }

    fn snapshot(&self) -> HashMap<String, u64> {
        self.0.lock().unwrap().clone()
    }

    /// Listens on a port of its own and forwards every connection to `url`'s server; answers
    /// the URL to connect through (TLS off: the proxy reads the protocol).
    async fn proxy(&self, url: &str) -> String {
        let target = url::Url::parse(url).unwrap();
        let upstream = format!(
            "{}:{}",
            target.host_str().unwrap_or("127.0.0.1"),
            target.port().unwrap_or(5432)
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let counts = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let server = TcpStream::connect(&upstream).await.unwrap();
                let counts = counts.clone();
                tokio::spawn(async move {
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    });
                    let _ = counts.forward(&mut cr, &mut sw).await;
                });
            }
        });
        let mut through = target.clone();
        through.set_host(Some("127.0.0.1")).unwrap();
        through.set_port(Some(port)).unwrap();
        through.query_pairs_mut().append_pair("sslmode", "disable");
        through.to_string()
    }

    /// Copies a client's messages to the server, counting its statements.
    async fn forward(
        &self,
        from: &mut (impl AsyncReadExt + Unpin),
        to: &mut (impl AsyncWriteExt + Unpin),
    ) -> std::io::Result<()> {
        // The startup message has no type byte.
        let len = from.read_i32().await?;
        let mut body = vec![0; len as usize - 4];
        from.read_exact(&mut body).await?;
        to.write_i32(len).await?;
        to.write_all(&body).await?;
        // Prepared statements by name, and the statement each portal was bound to.
        let mut prepared: HashMap<String, String> = HashMap::new();
        let mut portals: HashMap<String, String> = HashMap::new();
        loop {
            let kind = from.read_u8().await?;
            let len = from.read_i32().await?;
            let mut body = vec![0; len as usize - 4];
            from.read_exact(&mut body).await?;
            let strings = |b: &[u8]| -> Vec<String> {
                b.split(|c| *c == 0)
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            };
            match kind {
                b'Q' => self.add(&strings(&body)[0]),
                b'P' => {
                    let s = strings(&body);
                    prepared.insert(s[0].clone(), s[1].clone());
                }
                b'B' => {
                    let s = strings(&body);
                    let sql = prepared.get(&s[1]).cloned().unwrap_or_default();
                    portals.insert(s[0].clone(), sql);
                }
                b'E' => {
                    let portal = strings(&body).remove(0);
                    self.add(portals.get(&portal).map_or("?", String::as_str));
                }
                _ => {}
            }
            let mut message = Vec::with_capacity(body.len() + 5);
            message.push(kind);
            message.extend_from_slice(&len.to_be_bytes());
            message.extend_from_slice(&body);
            to.write_all(&message).await?;
        }
    }
}

/// The statements counted after `before` was taken.
fn since(now: &HashMap<String, u64>, before: &HashMap<String, u64>) -> HashMap<String, u64> {
    now.iter()
        .map(|(k, n)| (k.clone(), n - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

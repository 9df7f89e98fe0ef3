//! Safe retries across crashes: clients send keyed requests (single sends, replies in
//! conversations, bulk campaigns, CSV imports) and retry each until it is answered, while the
//! API process is killed with SIGKILL at random points and started again. Every key ends with
//! exactly one stored write, and every answer to it names that write. On PostgreSQL with
//! `serve`, and on the embedded default with `all`.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use fanqueue_jobs::{db::Db, on_db};
use rand::Rng;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{ApiClient, AppProcess, Backend, JWT_SECRET, TestDb};

/// Clients sending at once.
const CLIENTS: usize = 8;
/// The clients send until both are reached: requests answered, and kills of the API.
const ANSWERED: usize = 2_000;
const KILLS: usize = 30;
/// The API process is killed after a random uptime in this range (ms).
const UPTIME_MS: std::ops::Range<u64> = 1_000..2_500;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keyed_requests_retried_across_kills_of_serve_on_postgresql_store_one_write_each() {
    let (_db, url) = TestDb::create(Backend::Postgres).await;
    run(&["serve"], vec![("DATABASE_URL".into(), url.clone())], &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keyed_requests_retried_across_kills_of_all_on_the_embedded_default_store_one_write_each() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/fanqueue.db", dir.path().display());
    let env = vec![("DATA_DIR".into(), dir.path().display().to_string())];
    run(&["all"], env, &url).await;
    drop(dir);
}

/// What a client asked for under one key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    Send,
    Reply,
    Bulk,
    Import,
}

/// One keyed request: its key (also written into the request, so its stored write can be
/// found), who sends it, and what.
#[derive(Clone, Debug)]
struct Keyed {
    key: String,
    user: i64,
    kind: Kind,
}

/// A creator's fans and their conversations, made before the kills.
#[derive(Clone, Default)]
struct Creator {
    fans: Vec<i64>,
    conversations: Vec<i64>,
}

async fn run(role: &'static [&'static str], mut env: Vec<(String, String)>, url: &str) {
    let work = tempfile::tempdir().unwrap();
    for (k, v) in [
        ("JWT_SECRET", JWT_SECRET),
        ("WRITE_LIMIT_PER_MINUTE", "1000000"),
        ("IMPORTS_PER_HOUR", "1000000"),
        ("CAMPAIGNS_PER_HOUR", "1000000"),
        ("MAX_BACKLOG_PER_CREATOR", "1000000"),
        // A claim with nothing committed is taken over soon after a kill.
        ("IDEMPOTENCY_LEASE_SECS", "1"),
    ] {
        env.push((k.into(), v.into()));
    }
    let env = Arc::new(env);
    let refs = |env: &[(String, String)]| -> Vec<(String, String)> { env.to_vec() };
    let spawn = {
        let env = env.clone();
        let dir = work.path().to_owned();
        move || {
            let env = refs(&env);
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            AppProcess::spawn(role, &env, &dir)
        }
    };
    let first = tokio::task::spawn_blocking(spawn.clone()).await.unwrap();
    let address = Arc::new(RwLock::new(first.address.clone()));

    // Two creators, each with 10 fans and a conversation with each.
    let users = [1_i64, 2];
    let mut creators: HashMap<i64, Creator> = HashMap::new();
    for user in users {
        let api = first.user(user);
        let mut c = Creator::default();
        for i in 0..10 {
            let fan = api
                .post_json(
                    "/api/crm/fans",
                    &json!({ "handle": format!("fan{i}") }),
                    StatusCode::CREATED,
                )
                .await;
            let fan = fan["id"].as_i64().unwrap();
            let conversation = api
                .post_json(
                    "/api/crm/conversations",
                    &json!({ "fanId": fan }),
                    StatusCode::CREATED,
                )
                .await;
            c.fans.push(fan);
            c.conversations.push(conversation["id"].as_i64().unwrap());
        }
        creators.insert(user, c);
    }
    let creators = Arc::new(creators);

    // The killer: SIGKILL after a random uptime, start again, until the clients are done.
    let done = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (done, kills, address) = (done.clone(), kills.clone(), address.clone());
        tokio::spawn(async move {
            let mut process = first;
            while !done.load(Ordering::SeqCst) {
                let uptime = rand::rng().random_range(UPTIME_MS);
                tokio::time::sleep(Duration::from_millis(uptime)).await;
                if done.load(Ordering::SeqCst) {
                    break;
                }
                process.child.kill().expect("SIGKILL the API process");
                process.child.wait().unwrap();
                kills.fetch_add(1, Ordering::SeqCst);
                process = tokio::task::spawn_blocking(spawn.clone()).await.unwrap();
                *address.write().unwrap() = process.address.clone();
            }
            process
        })
    };

    // The clients: each request retried with its key until it is answered, new requests
    // until enough were answered across enough kills.
    let count = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let (address, creators) = (address.clone(), creators.clone());
        let (count, kills) = (count.clone(), kills.clone());
        clients.spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let mut answered = vec![];
            for n in 0.. {
                if count.load(Ordering::SeqCst) >= ANSWERED && kills.load(Ordering::SeqCst) >= KILLS
                {
                    break;
                }
                let user = users[n % users.len()];
                let kind = [Kind::Send, Kind::Reply, Kind::Bulk, Kind::Import][(n / 2) % 4];
                let keyed = Keyed {
                    key: format!("c{client}-r{n}"),
                    user,
                    kind,
                };
                let (answer, tries) = until_answered(&http, &address, &creators, &keyed).await;
                answered.push((keyed, answer, tries));
                count.fetch_add(1, Ordering::SeqCst);
            }
            answered
        });
    }
    let mut answered = vec![];
    while let Some(done) = clients.join_next().await {
        answered.extend(done.unwrap());
    }
    done.store(true, Ordering::SeqCst);
    let last = killer.await.unwrap();
    let kills = kills.load(Ordering::SeqCst);
    let retried = answered.iter().filter(|(_, _, tries)| *tries > 1).count();
    eprintln!(
        "{} keyed requests, {kills} kills of {role:?}, {retried} answered after a retry",
        answered.len()
    );
    assert!(
        retried > 0,
        "no request needed a retry: the kills missed the requests"
    );

    // Each key's stored write, read from the database.
    let writes = stored_writes(url).await;
    let mut seen: HashMap<Kind, HashSet<String>> = HashMap::new();
    for (keyed, answer, _) in &answered {
        let found = writes.get(&keyed.key).cloned().unwrap_or_default();
        assert_eq!(
            found.len(),
            1,
            "{keyed:?} must have exactly one stored write, found {found:?} (answered {answer})"
        );
        let (kind, id) = &found[0];
        assert_eq!(*kind, keyed.kind, "{keyed:?}");
        assert_eq!(
            &named(&keyed.kind, answer),
            id,
            "the answer to {keyed:?} names its stored write: {answer}"
        );
        seen.entry(keyed.kind)
            .or_default()
            .insert(keyed.key.clone());
    }
    assert_eq!(
        writes.len(),
        answered.len(),
        "no write without a key's request"
    );
    for kind in [Kind::Send, Kind::Reply, Kind::Bulk, Kind::Import] {
        assert!(
            seen.get(&kind).is_some_and(|s| !s.is_empty()),
            "{kind:?} was exercised"
        );
    }

    // Every key repeated once more (the process no longer killed) answers the same write.
    let http = reqwest::Client::new();
    let address = Arc::new(RwLock::new(last.address.clone()));
    for (keyed, answer, _) in &answered {
        let (again, _) = until_answered(&http, &address, &creators, keyed).await;
        assert_eq!(
            named(&keyed.kind, &again),
            named(&keyed.kind, answer),
            "a repeat of {keyed:?} names the same write"
        );
    }
    assert_eq!(
        stored_writes(url).await.len(),
        answered.len(),
        "the repeats wrote nothing"
    );
    drop(last);
}

/// Sends `keyed` with its key until it is answered (a connection error, a 5xx, a 409 while the
/// key is held, a 503 are retried); returns the answer's body and how many tries it took.
async fn until_answered(
    http: &reqwest::Client,
    address: &RwLock<String>,
    creators: &HashMap<i64, Creator>,
    keyed: &Keyed,
) -> (Value, usize) {
    let creator = &creators[&keyed.user];
    let token = ApiClient::new("", keyed.user).token;
    // The request is the same on every try (its recipients picked from its key).
    let pick = keyed.key.bytes().map(usize::from).sum::<usize>();
    let content = format!("k-{}", keyed.key);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut tries = 0;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "{keyed:?} was not answered within 120 s"
        );
        tries += 1;
        let base = address.read().unwrap().clone();
        let req = match keyed.kind {
            Kind::Send => http
                .post(format!("{base}/api/onlyfans/messages/send"))
                .json(&json!({
                    "recipientId": creator.fans[pick % creator.fans.len()],
                    "content": content,
                })),
            Kind::Reply => http
                .post(format!(
                    "{base}/api/crm/conversations/{}/messages",
                    creator.conversations[pick % creator.conversations.len()]
                ))
                .json(&json!({ "text": content })),
            Kind::Bulk => http.post(format!("{base}/api/messages/bulk")).json(&json!({
                "recipientIds": [creator.fans[pick % 10], creator.fans[(pick + 3) % 10]],
                "content": content,
                "campaignName": content,
            })),
            Kind::Import => {
                let csv = format!("Username\n{}\n", keyed.key.replace('-', "_"));
                let part = reqwest::multipart::Part::bytes(csv.into_bytes())
                    .file_name(format!("{content}.csv"))
                    .mime_str("text/csv")
                    .unwrap();
                http.post(format!("{base}/api/onlyfans/import/csv"))
                    .multipart(reqwest::multipart::Form::new().part("file", part))
            }
        };
        let resp = req
            .bearer_auth(&token)
            .header("Idempotency-Key", &keyed.key)
            .send()
            .await;
        let resp = match resp {
            Ok(resp) => resp,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let status = resp.status();
        let body = resp.bytes().await;
        match (status, body) {
            (StatusCode::ACCEPTED, Ok(body)) => {
                return (serde_json::from_slice(&body).expect("a JSON answer"), tries);
            }
            (s, _)
                if s.is_server_error()
                    || s == StatusCode::CONFLICT
                    || s == StatusCode::TOO_MANY_REQUESTS =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // The connection died mid-answer.
            (StatusCode::ACCEPTED, Err(_)) => {}
            (s, body) => panic!(
                "{keyed:?} was answered {s}: {}",
                body.map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default()
            ),
        }
    }
}

/// The id of the write an answer names.
fn named(kind: &Kind, answer: &Value) -> String {
    let id = match kind {
        Kind::Send | Kind::Reply => &answer["messageId"],
        Kind::Bulk => &answer["campaignId"],
        Kind::Import => &answer["jobId"],
    };
    match id {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => panic!("the answer names no write ({other}): {answer}"),
    }
}

/// Every stored write of the run, by the key written into it: single sends and replies are
/// messages (to a fan without a campaign) whose text is `k-<key>`, campaigns are named
/// `k-<key>`, imports are jobs of a file named `k-<key>.csv`.
async fn stored_writes(url: &str) -> HashMap<String, Vec<(Kind, String)>> {
    let db = Db::connect(url).await.expect("reading the test's database");
    let texts: Vec<(String, String)> = on_db!(&db, pool => sqlx::query_as(
        "SELECT CAST(id AS TEXT), text FROM messages WHERE campaign_id IS NULL AND direction = 'out'",
    )
    .fetch_all(pool)
    .await)
    .expect("reading messages");
    let names: Vec<(String, String)> =
        on_db!(&db, pool => sqlx::query_as("SELECT CAST(id AS TEXT), name FROM campaigns")
            .fetch_all(pool)
            .await)
        .expect("reading campaigns");
    let imports: Vec<(String, String)> = on_db!(&db, pool => sqlx::query_as(
        "SELECT id, CAST(payload AS TEXT) FROM job_records WHERE kind = 'import_csv'",
    )
    .fetch_all(pool)
    .await)
    .expect("reading jobs");
    let mut writes: HashMap<String, Vec<(Kind, String)>> = HashMap::new();
    for (id, text) in texts {
        if let Some(key) = text.strip_prefix("k-") {
            // A send and a reply are told apart by their key's kind (checked by the caller).
            writes
                .entry(key.to_owned())
                .or_default()
                .push((kind_of_key(key), id));
        }
    }
    for (id, name) in names {
        if let Some(key) = name.strip_prefix("k-") {
            writes
                .entry(key.to_owned())
                .or_default()
                .push((Kind::Bulk, id));
        }
    }
    for (id, payload) in imports {
        let payload: Value = serde_json::from_str(&payload).unwrap();
        let file = payload["fileName"].as_str().unwrap_or_default();
        if let Some(key) = file.strip_prefix("k-").and_then(|f| f.strip_suffix(".csv")) {
            writes
                .entry(key.to_owned())
                .or_default()
                .push((Kind::Import, id));
        }
    }
    writes
}

/// The kind a key was sent as: the clients choose it from the request's number.
fn kind_of_key(key: &str) -> Kind {
    let n: usize = key
        .rsplit_once("-r")
        .and_then(|(_, n)| n.parse().ok())
        .expect("a key c<client>-r<n>");
    [Kind::Send, Kind::Reply, Kind::Bulk, Kind::Import][(n / 2) % 4]
}

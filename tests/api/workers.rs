//! Worker processes as operators run them: several on one PostgreSQL, one killed with SIGKILL
//! in the middle of a job, one under a steady stream of sends (how often it fetches), and how
//! an API tells them about the tasks it stores.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use sqlx::Connection;

use crate::helpers::{
    ApiClient, AppProcess, Backend, JWT_SECRET, TestDb, aws_endpoint, eventually, free_port,
    generated_csv, samples,
};

/// The environment of a distributed deployment on `database_url`, with uploads on the S3
/// emulator (the AWS credentials of the test run are passed through).
fn deployment_env(database_url: &str, bucket: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), database_url.into()),
        ("JWT_SECRET".into(), JWT_SECRET.into()),
        ("S3_BUCKET".into(), bucket.into()),
        ("AWS_ENDPOINT_URL".into(), aws_endpoint()),
    ];
    for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"] {
        let value = std::env::var(key).unwrap_or_else(|_| {
            panic!("{key} must be set for the S3 emulator (scripts/test sets it)")
        });
        env.push((key.into(), value));
    }
    env
}

fn as_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Waits until the job's `progress.done` reaches `at_least`, then SIGKILLs `worker`; returns
/// the progress seen at the kill. Fails if the job finishes first.
async fn kill_once_progressed(
    api: &ApiClient,
    id: &str,
    at_least: u64,
    worker: &mut AppProcess,
) -> u64 {
    let done = api.wait_progress(id, at_least).await;
    worker.child.kill().expect("SIGKILL the worker");
    worker.child.wait().unwrap();
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_import_is_replaced_and_every_row_lands_exactly_once() {
    const ROWS: usize = 100_000;
    let (_db, url) = TestDb::create(Backend::Postgres).await;
    let bucket = format!("fq-test-{}", uuid::Uuid::new_v4().simple());
    let mut env = deployment_env(&url, &bucket);
    // Small batches: many commits, so the kill lands between two of them mid-file.
    env.push(("IMPORT_BATCH_ROWS".into(), "100".into()));
    let env = as_refs(&env);
    let dir = tempfile::tempdir().unwrap();
    let api = AppProcess::spawn(&["serve"], &env, dir.path());
    let mut first = AppProcess::spawn_until(&["worker"], &env, dir.path(), "workers running");

    let user = api.user(1);
    let id = user.import("big.csv", generated_csv(ROWS)).await;

    let done_at_kill = kill_once_progressed(&user, &id, 1, &mut first).await;
    assert!(
        done_at_kill < ROWS as u64,
        "killed mid-file (at {done_at_kill} rows)"
    );

    let _second = AppProcess::spawn_until(&["worker"], &env, dir.path(), "workers running");
    let job = user.wait_job_within(&id, Duration::from_secs(120)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        job["attempts"], 2,
        "the killed run and the one that finished: {job}"
    );
    let s = &job["result"]["summary"];
    assert_eq!(s["totalRows"], ROWS);
    assert_eq!(
        s["successfulInserts"], ROWS,
        "the summary is that of an uninterrupted run: {s}"
    );
    assert_eq!(s["updated"], 0);
    assert_eq!(s["skipped"], 0);
    assert_eq!(s["errorCount"], 0);

    assert_eq!(
        crate::helpers::pg_fan_rows(&url, 1).await,
        (ROWS as i64, ROWS as i64),
        "every row present exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_one_postgres_share_the_queue_and_run_each_job_once() {
    let (_db, url) = TestDb::create(Backend::Postgres).await;
    let bucket = format!("fq-test-{}", uuid::Uuid::new_v4().simple());
    let env = deployment_env(&url, &bucket);
    let env = as_refs(&env);
    let dir = tempfile::tempdir().unwrap();
    let api = AppProcess::spawn(&["serve"], &env, dir.path());
    let _a = AppProcess::spawn_until(&["worker"], &env, dir.path(), "workers running");
    let _b = AppProcess::spawn_until(&["worker"], &env, dir.path(), "workers running");

    let mut jobs = vec![];
    for user in 1..=8 {
        let user = api.user(user);
        let id = user.import("fans.csv", generated_csv(3_000)).await;
        jobs.push((user, id));
    }
    for (user, id) in &jobs {
        let job = user.wait_job_within(id, Duration::from_secs(120)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["attempts"], 1, "ran once: {job}");
        assert_eq!(job["result"]["summary"]["successfulInserts"], 3_000);
    }
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let (fans,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM fans")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(fans, 8 * 3_000);
}

/// A worker killed between two batches of a bulk send, and a new one finishing the job:
/// every message is on the queue exactly once. The queue is FIFO, so even a kill inside a
/// batch (after SQS accepted it, before the mark) cannot leave a second copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_between_send_batches_leaves_every_message_on_the_queue_once() {
    let (_db, url) = TestDb::create(Backend::Postgres).await;
    let bucket = format!("fq-test-{}", uuid::Uuid::new_v4().simple());
    let (queue, dlq) = crate::helpers::sqs_queues(true, 5).await;
    let mut env = deployment_env(&url, &bucket);
    env.push(("SQS_QUEUE_URL".into(), queue.clone()));
    env.push(("SQS_DLQ_URL".into(), dlq));
    env.push(("WRITE_LIMIT_PER_MINUTE".into(), "1000".into()));
    let env = as_refs(&env);
    let dir = tempfile::tempdir().unwrap();
    let api = AppProcess::spawn(&["serve"], &env, dir.path());

    let user = api.user(1);
    let mut fans = vec![];
    for i in 0..100 {
        let fan = json!({ "handle": format!("fan{i}") });
        let fan = user
            .post_json("/api/crm/fans", &fan, StatusCode::CREATED)
            .await;
        fans.push(fan["id"].as_i64().unwrap());
    }
    let bulk = json!({ "recipientIds": fans, "content": "Hi!", "campaignName": "Crash" });
    user.post_json("/api/messages/bulk", &bulk, StatusCode::ACCEPTED)
        .await;
    let jobs = user.get_json("/api/jobs?kind=bulk_send").await;
    let id = jobs["items"][0]["id"].as_str().unwrap().to_owned();

    // The job is stored; now a worker takes it, and dies once some batches are on the queue.
    let mut first = AppProcess::spawn_until(&["worker"], &env, dir.path(), "workers running");
    let done_at_kill = kill_once_progressed(&user, &id, 10, &mut first).await;
    assert!(
        done_at_kill < 100,
        "killed with batches left ({done_at_kill} of 100 queued)"
    );

    let _second = AppProcess::spawn_until(&["worker"], &env, dir.path(), "workers running");
    let job = user.wait_job_within(&id, Duration::from_secs(120)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["queued"], 100);

    let bodies = crate::helpers::boto3_drain(&queue);
    let ids: std::collections::HashSet<String> = bodies
        .iter()
        .map(|b| b["messageId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        bodies.len(),
        100,
        "no message twice, none missing (killed at {done_at_kill})"
    );
    assert_eq!(ids.len(), 100);
}

/// A deployment's environment for a stream of sends: no write quota or backlog limit in the
/// way.
fn streaming_env(database_url: &str) -> Vec<(String, String)> {
    let bucket = format!("fq-test-{}", uuid::Uuid::new_v4().simple());
    let mut env = deployment_env(database_url, &bucket);
    env.push(("WRITE_LIMIT_PER_MINUTE".into(), "100000".into()));
    env.push(("MAX_BACKLOG_PER_CREATOR".into(), "100000".into()));
    env
}

/// Creators 1 to `n`, each with a fan of its own.
async fn creators_with_a_fan(api: &str, n: usize) -> Vec<(ApiClient, i64)> {
    let mut fans = vec![];
    for c in 0..n {
        let user = ApiClient::new(api, 1 + c as i64);
        let fan = json!({ "handle": format!("fan{c}") });
        let fan = user
            .post_json("/api/crm/fans", &fan, StatusCode::CREATED)
            .await;
        fans.push((user, fan["id"].as_i64().unwrap()));
    }
    fans
}

/// `sends` single sends, shared out between the creators, each sending one after another
/// and all of them at once.
async fn send_all(fans: Vec<(ApiClient, i64)>, sends: usize) {
    let each = sends / fans.len();
    let sends = fans.into_iter().map(|(user, fan)| async move {
        for i in 0..each {
            let body = json!({ "recipientId": fan, "content": format!("m{i}") });
            user.post_json("/api/onlyfans/messages/send", &body, StatusCode::ACCEPTED)
                .await;
        }
    });
    futures::future::join_all(sends).await;
}

/// Waits (at most 60 s) until `sends` outbound messages are on the outbound queue.
async fn wait_on_queue(url: &str, sends: usize) {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let pool = &pool;
    let (within, every) = (Duration::from_secs(60), Duration::from_millis(50));
    eventually(
        &format!("{sends} messages on the queue"),
        within,
        every,
        || async move {
            let (on_queue,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM messages WHERE direction = 'out' AND enqueued_at IS NOT NULL",
            )
            .fetch_one(pool)
            .await
            .unwrap();
            if on_queue == sends as i64 {
                Ok(())
            } else {
                Err(format!("{on_queue} on it"))
            }
        },
    )
    .await
}

/// The worker's fetch counters for queue `send_message`, from its `/metrics`: (fetches, tasks).
async fn send_fetches(metrics: &str) -> (f64, f64) {
    let text = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let samples = samples(&text);
    let sample = |name: &str| {
        samples
            .get(&format!("{name}{{queue=\"send_message\"}}"))
            .copied()
            .unwrap_or(0.0)
    };
    (
        sample("fanqueue_job_fetches_total"),
        sample("fanqueue_job_fetched_tasks_total"),
    )
}

/// Under a steady stream of sends a worker fetches at most once every 20 ms, however fast the
/// tasks come, and still puts every message on the queue. apalis alone fetched again as soon
/// as a fetch found anything: about once per task, a transaction each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_worker_fetches_at_most_once_every_20_ms() {
    const SENDS: usize = 400;
    const CLIENTS: usize = 4;
    let (_db, url) = TestDb::create(Backend::Postgres).await;
    let env = streaming_env(&url);
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut worker_env = env.clone();
    worker_env.push(("METRICS_ADDR".into(), metrics.clone()));
    let dir = tempfile::tempdir().unwrap();
    let api = AppProcess::spawn(&["serve"], &as_refs(&env), dir.path());
    let _worker = AppProcess::spawn_until(
        &["worker"],
        &as_refs(&worker_env),
        dir.path(),
        "workers running",
    );
    let fans = creators_with_a_fan(&api.address, CLIENTS).await;

    let started = std::time::Instant::now();
    let before = send_fetches(&metrics).await;
    send_all(fans, SENDS).await;
    wait_on_queue(&url, SENDS).await;
    let after = send_fetches(&metrics).await;
    let elapsed = started.elapsed();

    let (fetches, tasks) = (after.0 - before.0, after.1 - before.1);
    let bound = (elapsed.as_millis() / 20 + 1) as f64;
    assert!(tasks >= 1.0, "the worker's fetches found the sends' tasks");
    assert!(
        fetches <= bound,
        "{fetches} fetches in {elapsed:?} (at most {bound}), finding {tasks} tasks"
    );
}

/// An API process tells the workers of other processes about the tasks it stores at most once
/// every 20 ms, and every message still reaches the queue. apalis's trigger notified once per
/// task: at 1,000 sends a second, a thousand wake-ups a second of the workers' listening
/// backend and of the workers, which look at most every 20 ms anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_announces_stored_tasks_at_most_once_every_20_ms() {
    const SENDS: usize = 400;
    const CLIENTS: usize = 4;
    let (_db, url) = TestDb::create(Backend::Postgres).await;
    let env = streaming_env(&url);
    let dir = tempfile::tempdir().unwrap();
    let api = AppProcess::spawn(&["serve"], &as_refs(&env), dir.path());
    let _worker =
        AppProcess::spawn_until(&["worker"], &as_refs(&env), dir.path(), "workers running");
    let fans = creators_with_a_fan(&api.address, CLIENTS).await;
    let mut listener = sqlx::postgres::PgListener::connect(&url).await.unwrap();
    listener.listen("apalis::job::insert").await.unwrap();
    let heard = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listening = tokio::spawn({
        let heard = heard.clone();
        async move {
            while let Ok(n) = listener.recv().await {
                let n: serde_json::Value = serde_json::from_str(n.payload()).unwrap();
                if n["job_type"] == "send_message" {
                    heard.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
    });

    let started = std::time::Instant::now();
    send_all(fans, SENDS).await;
    wait_on_queue(&url, SENDS).await;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let elapsed = started.elapsed();
    let (tasks,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM apalis.jobs WHERE job_type = 'send_message'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    listening.abort();
    let heard = heard.load(std::sync::atomic::Ordering::SeqCst);
    let bound = (elapsed.as_millis() / 20 + 1) as usize;
    assert!(heard >= 1, "the sends were announced");
    assert!(
        heard <= bound,
        "{heard} announcements of {tasks} tasks in {elapsed:?} (at most {bound})"
    );
}

//! Worker processes as operators run them: several on one PostgreSQL, and one killed with
//! SIGKILL in the middle of a job.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use sqlx::Connection;

use crate::helpers::{
    AppProcess, Backend, JWT_SECRET, TestDb, aws_endpoint, generated_csv, json_of, wait_job_at,
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

/// Polls the job until `progress.done` reaches `at_least`, then SIGKILLs `worker`; returns
/// the progress seen at the kill. Fails if the job finishes first.
async fn kill_once_progressed(
    client: &reqwest::Client,
    api: &str,
    token: &str,
    id: &str,
    at_least: u64,
    worker: &mut AppProcess,
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let resp = client
            .get(format!("{api}/api/jobs/{id}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let job = json_of(resp, StatusCode::OK).await;
        let done = job["progress"]["done"].as_u64().unwrap();
        if done >= at_least {
            worker.child.kill().expect("SIGKILL the worker");
            worker.child.wait().unwrap();
            return done;
        }
        assert!(
            job["status"] != "succeeded",
            "the job finished before the worker could be killed: {job}"
        );
        assert!(Instant::now() < deadline, "the job never progressed: {job}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn upload(
    client: &reqwest::Client,
    api: &str,
    token: &str,
    name: &str,
    bytes: Vec<u8>,
) -> String {
    let part = reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned());
    let resp = client
        .post(format!("{api}/api/onlyfans/import/csv"))
        .bearer_auth(token)
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    json_of(resp, StatusCode::ACCEPTED).await["jobId"]
        .as_str()
        .unwrap()
        .to_owned()
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

    let keys = fanqueue::auth::JwtKeys::new(&secrecy::SecretString::from(JWT_SECRET));
    let token = keys.issue(fanqueue_jobs::domain::UserId(1), Duration::from_secs(3600));
    let client = reqwest::Client::new();
    let id = upload(
        &client,
        &api.address,
        &token,
        "big.csv",
        generated_csv(ROWS),
    )
    .await;

    let done_at_kill =
        kill_once_progressed(&client, &api.address, &token, &id, 1, &mut first).await;
    assert!(
        done_at_kill < ROWS as u64,
        "killed mid-file (at {done_at_kill} rows)"
    );

    let _second = AppProcess::spawn_until(&["worker"], &env, dir.path(), "workers running");
    let job = wait_job_at(&client, &api.address, &token, &id, Duration::from_secs(120)).await;
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

    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT handle) FROM fans WHERE user_id = 1")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        (rows, distinct),
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

    let keys = fanqueue::auth::JwtKeys::new(&secrecy::SecretString::from(JWT_SECRET));
    let client = reqwest::Client::new();
    let mut jobs = vec![];
    for user in 1..=8 {
        let token = keys.issue(
            fanqueue_jobs::domain::UserId(user),
            Duration::from_secs(3600),
        );
        let id = upload(
            &client,
            &api.address,
            &token,
            "fans.csv",
            generated_csv(3_000),
        )
        .await;
        jobs.push((token, id));
    }
    for (token, id) in &jobs {
        let job = wait_job_at(&client, &api.address, token, id, Duration::from_secs(120)).await;
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

    let keys = fanqueue::auth::JwtKeys::new(&secrecy::SecretString::from(JWT_SECRET));
    let token = keys.issue(fanqueue_jobs::domain::UserId(1), Duration::from_secs(3600));
    let client = reqwest::Client::new();
    let mut fans = vec![];
    for i in 0..100 {
        let resp = client
            .post(format!("{}/api/crm/fans", api.address))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "handle": format!("fan{i}") }))
            .send()
            .await
            .unwrap();
        fans.push(
            json_of(resp, StatusCode::CREATED).await["id"]
                .as_i64()
                .unwrap(),
        );
    }
    let resp = client
        .post(format!("{}/api/messages/bulk", api.address))
        .bearer_auth(&token)
        .json(
            &serde_json::json!({ "recipientIds": fans, "content": "Hi!", "campaignName": "Crash" }),
        )
        .send()
        .await
        .unwrap();
    json_of(resp, StatusCode::ACCEPTED).await;
    let jobs = json_of(
        client
            .get(format!("{}/api/jobs?kind=bulk_send", api.address))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let id = jobs["items"][0]["id"].as_str().unwrap().to_owned();

    // The job is stored; now a worker takes it, and dies once some batches are on the queue.
    let mut first = AppProcess::spawn_until(&["worker"], &env, dir.path(), "workers running");
    let done_at_kill =
        kill_once_progressed(&client, &api.address, &token, &id, 10, &mut first).await;
    assert!(
        done_at_kill < 100,
        "killed with batches left ({done_at_kill} of 100 queued)"
    );

    let _second = AppProcess::spawn_until(&["worker"], &env, dir.path(), "workers running");
    let job = wait_job_at(&client, &api.address, &token, &id, Duration::from_secs(120)).await;
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

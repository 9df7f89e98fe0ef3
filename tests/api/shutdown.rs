//! SIGTERM as an orchestrator sends it: `fanqueue all` on the embedded default stops while an
//! import runs, exits 0 within its drain bound, and the import resumes from its checkpoint on
//! the next start.

use std::time::{Duration, Instant};

use fanqueue::supervisor::DRAIN_TIMEOUT;
use reqwest::StatusCode;
use sqlx::Connection;

use crate::helpers::{AppProcess, JWT_SECRET, generated_csv, json_of, wait_job_at};

const ROWS: usize = 100_000;

async fn job(client: &reqwest::Client, api: &str, token: &str, id: &str) -> serde_json::Value {
    let resp = client
        .get(format!("{api}/api/jobs/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("job poll sent");
    json_of(resp, StatusCode::OK).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_an_import_exits_0_in_bound_and_the_import_resumes_on_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    // Small batches: many commits, so the signal lands between two of them mid-file.
    let env = [("JWT_SECRET", JWT_SECRET), ("IMPORT_BATCH_ROWS", "250")];
    let mut first = AppProcess::spawn(&["all"], &env, dir.path());
    let keys = fanqueue::auth::JwtKeys::new(&secrecy::SecretString::from(JWT_SECRET));
    let token = keys.issue(fanqueue_jobs::domain::UserId(1), Duration::from_secs(3600));
    let client = reqwest::Client::new();

    let part = reqwest::multipart::Part::bytes(generated_csv(ROWS)).file_name("big.csv");
    let resp = client
        .post(format!("{}/api/onlyfans/import/csv", first.address))
        .bearer_auth(&token)
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    let id = json_of(resp, StatusCode::ACCEPTED).await["jobId"]
        .as_str()
        .unwrap()
        .to_owned();

    // Wait until some batches are committed, then SIGTERM.
    let deadline = Instant::now() + Duration::from_secs(60);
    let done_at_signal = loop {
        let j = job(&client, &first.address, &token, &id).await;
        let done = j["progress"]["done"].as_u64().unwrap();
        assert_ne!(j["status"], "succeeded", "finished before the signal: {j}");
        if done >= 1_000 {
            break done;
        }
        assert!(
            Instant::now() < deadline,
            "the import never progressed: {j}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (exit, took) = first.terminate(DRAIN_TIMEOUT * 2).await;
    assert!(
        exit.success(),
        "SIGTERM ends the process with 0, got {exit}"
    );
    assert!(
        took <= DRAIN_TIMEOUT,
        "it exited within the drain bound ({took:?} > {DRAIN_TIMEOUT:?})"
    );
    assert_eq!(
        first
            .logged("job interrupted by shutdown; it resumes on the next worker")
            .len(),
        1,
        "the import stopped at a safe point rather than being cut off"
    );

    // Stopped mid-file: the record waits, queued, at its last committed batch.
    let db = dir.path().join("data/fanqueue.db");
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let (status, done, attempts): (String, i64, i64) =
        sqlx::query_as("SELECT status, progress_done, attempts FROM job_records WHERE id = $1")
            .bind(&id)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    drop(conn);
    assert_eq!(status, "queued");
    assert_eq!(
        attempts, 0,
        "a run stopped by a shutdown does not use up an attempt"
    );
    assert!(
        (done_at_signal as i64..ROWS as i64).contains(&done),
        "stopped after {done} rows (signal at {done_at_signal})"
    );

    // The next start takes it up where it stopped and ends as an uninterrupted run would.
    let second = AppProcess::spawn(&["all"], &env, dir.path());
    let finished = wait_job_at(
        &client,
        &second.address,
        &token,
        &id,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(finished["status"], "succeeded", "{finished}");
    assert_eq!(finished["attempts"], 1, "{finished}");
    let s = &finished["result"]["summary"];
    assert_eq!(s["totalRows"], ROWS);
    assert_eq!(s["successfulInserts"], ROWS, "{s}");
    assert_eq!(
        (s["updated"].as_u64(), s["errorCount"].as_u64()),
        (Some(0), Some(0))
    );
    let resumed = second
        .wait_for_log(
            "resuming import from its checkpoint",
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(
        resumed["fields"]["resume_after_row"].as_i64(),
        Some(done + 1),
        "resumed after the last committed row (the header is row 1)"
    );
    let fans = json_of(
        client
            .get(format!("{}/api/crm/fans?limit=1", second.address))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(fans["total"], ROWS, "every row present exactly once");
}

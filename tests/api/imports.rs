//! CSV imports end to end: upload, job, poll, summary, fans.

use std::time::Duration;

use fanqueue_jobs::{
    engine::{JobKind, relay::OutboxRelay},
    kinds::import_csv::ImportCsv,
};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{
    Backend, SAMPLE_CSV, TestApp, error_of, eventually, generated_csv, handles_of, json_of,
    spawn_api_only, spawn_app_with, summary, with_redis_jobs, with_s3,
};

crate::on_both_backends!(
    // Small batches: many commits, so a cancel lands mid-file whatever the machine's speed.
    tweak = |s| s.imports.import_batch_rows = 200;
    the_sample_export_imports_and_importing_it_again_adds_no_fan,
    a_messy_export_is_read_and_every_row_is_accounted_for,
    bad_uploads_get_a_clear_4xx_and_import_nothing,
    a_file_without_a_usable_header_fails_at_once_with_the_reason,
    wait_answers_with_the_summary_like_the_seeds_api,
    the_11th_import_in_an_hour_is_a_429,
    cancelling_a_running_import_keeps_committed_batches_and_says_where_it_stopped,
);

async fn the_sample_export_imports_and_importing_it_again_adds_no_fan(app: TestApp) {
    let id = app
        .user(1)
        .import("onlyfans_export.csv", SAMPLE_CSV.into())
        .await;
    let job = app.user(1).wait_job(&id).await;
    assert_eq!(job["kind"], "import_csv");
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["progress"], json!({ "done": 2, "total": 2 }));
    assert!(job["startedAt"].is_string() && job["finishedAt"].is_string());
    let s = summary(&job);
    assert_eq!(
        (
            s["totalRows"].as_u64(),
            s["successfulInserts"].as_u64(),
            s["updated"].as_u64(),
            s["unchanged"].as_u64(),
            s["skipped"].as_u64()
        ),
        (Some(2), Some(2), Some(0), Some(0), Some(0))
    );
    assert_eq!(s["errors"], json!([]));

    let fans = app.user(1).get_json("/api/crm/fans").await;
    assert_eq!(fans["total"], 2);
    let john = fans["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["handle"] == "@johndoe")
        .expect("@johndoe");
    assert_eq!(john["name"], "John Doe");
    assert_eq!(john["email"], "john@example.com");
    assert_eq!(john["valueCents"], 50000);
    assert_eq!(john["tags"], json!(["Premium"]));
    assert_eq!(
        crate::helpers::instant(&john["lastSeenAt"]),
        crate::helpers::at("2025-11-01T00:00:00Z")
    );
    let before = fans.clone();

    let again = app
        .user(1)
        .wait_job(
            &app.user(1)
                .import("onlyfans_export.csv", SAMPLE_CSV.into())
                .await,
        )
        .await;
    let s = summary(&again);
    assert_eq!(
        (
            s["totalRows"].as_u64(),
            s["successfulInserts"].as_u64(),
            s["updated"].as_u64(),
            s["unchanged"].as_u64(),
            s["skipped"].as_u64()
        ),
        (Some(2), Some(0), Some(0), Some(2), Some(0)),
        "the same rows again match both fans and change nothing: {s}"
    );
    let after = app.user(1).get_json("/api/crm/fans").await;
    assert_eq!(
        after, before,
        "re-importing the same file changes nothing, not even updatedAt"
    );
    // Another user's import is theirs alone.
    assert_eq!(app.user(2).fan_total().await, 0);
}

async fn a_messy_export_is_read_and_every_row_is_accounted_for(app: TestApp) {
    // An existing fan the file updates; its tags gain the tier, its email stays.
    let existing = app
        .user(1).create_fan(json!({ "handle": "@Existing", "email": "keep@example.com", "tags": ["vip"], "valueCents": 1 }))
        .await;
    // Excel "CSV UTF-8" with European settings: BOM, ';', decimal commas, DD.MM.YYYY.
    let csv = "\u{feff}USER_NAME;Name;Email Address;Tier;Lifetime Spend;Last Active\r\n\
               existing;Existing Fan;;Gold;1.234,56 €;01.11.2025\r\n\
               alice;\"Alice \"\"Al\"\" Smith\";alice@example.com;Basic;12,50;2025-10-30\r\n\
               bob;\"Bob\nMultiline\";not-an-email;Basic;5;2025-10-30\r\n\
               carol;=HYPERLINK(\"http://evil\");carol@example.com;+1;7;2025-10-30\r\n\
               ALICE;Alice Again;alice2@example.com;Premium;20;2025-11-02\r\n\
               dave;Dave;dave@example.com;Basic;lots;2025-10-30\r\n";
    let job = app
        .user(1)
        .wait_job(&app.user(1).import("export.csv", csv.into()).await)
        .await;
    let s = summary(&job);
    assert_eq!(s["totalRows"], 6);
    assert_eq!(
        s["successfulInserts"], 2,
        "alice (her last row) and carol: {s}"
    );
    assert_eq!(s["updated"], 1, "existing: {s}");
    assert_eq!(s["unchanged"], 0, "{s}");
    assert_eq!(s["skipped"], 1, "alice's first row: {s}");
    assert_eq!(
        s["skippedRows"],
        json!([{ "row": 3, "error": "duplicate of row 6" }])
    );
    let errors = s["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{s}");
    assert_eq!(
        errors[0]["row"], 4,
        "bob's row keeps its number despite the quoted newline"
    );
    assert!(
        errors[0]["error"].as_str().unwrap().contains("email"),
        "{s}"
    );
    assert_eq!(errors[1]["row"], 7);
    assert!(errors[1]["error"].as_str().unwrap().contains("lots"), "{s}");
    assert_eq!(s["errorCount"], 2);
    let accounted: u64 = [
        "successfulInserts",
        "updated",
        "unchanged",
        "skipped",
        "errorCount",
    ]
    .iter()
    .map(|k| s[k].as_u64().unwrap())
    .sum();
    assert_eq!(accounted, 6, "every row is counted exactly once: {s}");

    let fans = app.user(1).get_json("/api/crm/fans").await;
    let mut handles = handles_of(&fans);
    handles.sort();
    assert_eq!(handles, ["@alice", "@carol", "@existing"]);
    let by = |h: &str| {
        fans["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["handle"] == h)
            .unwrap()
            .clone()
    };
    let alice = by("@alice");
    assert_eq!(alice["name"], "Alice Again", "the later row wins");
    assert_eq!(alice["valueCents"], 2000);
    let carol = by("@carol");
    assert_eq!(
        carol["name"], "=HYPERLINK(\"http://evil\")",
        "stored as given, never evaluated"
    );
    assert_eq!(carol["tags"], json!(["+1"]));
    let ex = by("@existing");
    assert_eq!(ex["id"], existing["id"]);
    assert_eq!(ex["valueCents"], 123456);
    assert_eq!(
        ex["email"], "keep@example.com",
        "an empty cell does not erase what is known"
    );
    assert_eq!(ex["tags"], json!(["vip", "Gold"]));
    assert_eq!(ex["name"], "Existing Fan");
}

async fn bad_uploads_get_a_clear_4xx_and_import_nothing(app: TestApp) {
    let err = error_of(
        app.user(1)
            .upload_csv("fans.txt", SAMPLE_CSV.into(), "")
            .await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    assert!(err["message"].as_str().unwrap().contains(".csv"));
    let err = error_of(
        app.user(1).upload_csv("empty.csv", vec![], "").await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
    )
    .await;
    assert!(err["message"].as_str().unwrap().contains("empty"));
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let err = error_of(
        app.user(1).upload_csv("garbage.csv", garbage, "").await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
    )
    .await;
    assert!(err["message"].as_str().unwrap().contains("binary"));
    // 11 MB announced: refused from the headers, before a byte of the body is read.
    let (status, body) = raw_upload_headers(&app, 11 * 1024 * 1024).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("payload_too_large"), "{body}");
    // A form without the `file` field, with a field the form does not have.
    let resp = app
        .client
        .post(app.url("/api/onlyfans/import/csv"))
        .bearer_auth(app.token(1))
        .multipart(reqwest::multipart::Form::new().text("other", "x"))
        .send()
        .await
        .unwrap();
    let err = error_of(resp, StatusCode::BAD_REQUEST, "invalid_field").await;
    assert_eq!(err["field"], "other");
    let resp = app
        .user(1)
        .post("/api/onlyfans/import/csv", &json!({ "file": "x" }))
        .await;
    assert!(resp.status().is_client_error());

    let jobs = app.user(1).get_json("/api/jobs").await;
    assert_eq!(jobs["total"], 0, "no job for a refused upload");
    assert_eq!(app.user(1).fan_total().await, 0);
}

async fn a_file_without_a_usable_header_fails_at_once_with_the_reason(app: TestApp) {
    let id = app
        .user(1)
        .import("numbers.csv", b"foo,bar\n1,2\n3,4\n".to_vec())
        .await;
    let job = app.user(1).wait_job(&id).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["attempts"], 1, "a permanent error is not retried");
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains("username") && error.contains("foo"),
        "the reason names the problem: {error}"
    );
    assert_eq!(app.user(1).fan_total().await, 0);
}

async fn wait_answers_with_the_summary_like_the_seeds_api(app: TestApp) {
    let done = json_of(
        app.user(1)
            .upload_csv("onlyfans_export.csv", SAMPLE_CSV.into(), "?wait=30")
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["summary"]["totalRows"], 2);
    assert_eq!(done["summary"]["successfulInserts"], 2);
    assert!(done["jobId"].is_string());
    let failed = app
        .user(1)
        .upload_csv("bad.csv", b"foo\n1\n".to_vec(), "?wait=30")
        .await;
    let err = error_of(failed, StatusCode::BAD_REQUEST, "import_failed").await;
    assert!(
        err["message"].as_str().unwrap().contains("username"),
        "{err}"
    );
    let err = error_of(
        app.user(1)
            .upload_csv("a.csv", SAMPLE_CSV.into(), "?wait=61")
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
    )
    .await;
    assert_eq!(err["field"], "wait");
}

async fn the_11th_import_in_an_hour_is_a_429(app: TestApp) {
    for i in 0..10 {
        let resp = app
            .user(1)
            .upload_csv("onlyfans_export.csv", SAMPLE_CSV.into(), "")
            .await;
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "import {}", i + 1);
    }
    let resp = app
        .user(1)
        .upload_csv("onlyfans_export.csv", SAMPLE_CSV.into(), "")
        .await;
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 60 && retry <= 3600, "about an hour: {retry}");
    error_of(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    let jobs = app.user(1).get_json("/api/jobs?kind=import_csv").await;
    assert_eq!(jobs["total"], 10, "the refused import stored no job");
    // Another user is not affected.
    assert_eq!(
        app.user(2)
            .upload_csv("onlyfans_export.csv", SAMPLE_CSV.into(), "")
            .await
            .status(),
        StatusCode::ACCEPTED
    );
}

async fn cancelling_a_running_import_keeps_committed_batches_and_says_where_it_stopped(
    app: TestApp,
) {
    let id = app.user(1).import("big.csv", generated_csv(60_000)).await;
    // Wait until it runs and has committed something, then cancel.
    let (within, every) = (Duration::from_secs(60), Duration::from_millis(20));
    eventually("the import started", within, every, || async {
        let job = app.user(1).get_json(&format!("/api/jobs/{id}")).await;
        assert!(
            job["status"] != "succeeded",
            "finished before it could be cancelled: {job}"
        );
        if job["progress"]["done"].as_i64().unwrap() > 0 {
            Ok(())
        } else {
            Err(job.to_string())
        }
    })
    .await;
    let cancelled = json_of(
        app.user(1).delete(&format!("/api/jobs/{id}")).await,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(cancelled["cancelRequested"], true);
    let job = app.user(1).wait_job(&id).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    let s = &job["result"]["summary"];
    assert_eq!(s["cancelled"], true);
    let stopped = s["stoppedAtRow"].as_u64().expect("stoppedAtRow");
    assert!(
        stopped > 1 && stopped < 60_001,
        "stopped inside the file: {stopped}"
    );
    // Every row up to the stop committed (the file has no duplicates or errors), none after.
    let inserted = s["successfulInserts"].as_i64().unwrap();
    assert_eq!(inserted as u64, stopped - 1);
    assert_eq!(app.user(1).fan_total().await, inserted);
    // A finished job cannot be cancelled again.
    error_of(
        app.user(1).delete(&format!("/api/jobs/{id}")).await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
}

/// Sends only the headers of an upload announcing `length` bytes; returns the status and body.
async fn raw_upload_headers(app: &TestApp, length: u64) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let head = format!(
        "POST /api/onlyfans/import/csv HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: {length}\r\n\r\n",
        app.token(1)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) =
        tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf)).await
    {
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
        if String::from_utf8_lossy(&response).contains("}}") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    (status, text)
}

/// An upload without a usable Content-Length is cut off as soon as it crosses the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_over_the_limit_is_refused_while_streaming() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.imports.import_max_bytes = 1_000).await;
    let csv = generated_csv(100); // about 6 KB, within the form overhead allowance
    assert!(csv.len() > 1_000);
    error_of(
        app.user(1).upload_csv("fans.csv", csv, "").await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    json_of(
        app.user(1)
            .upload_csv("fans.csv", generated_csv(5), "")
            .await,
        StatusCode::ACCEPTED,
    )
    .await;
}

/// A queued job nobody has started is cancelled at once, and no worker runs it later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_queued_import_cancels_it_at_once() {
    let app = spawn_api_only(Backend::Sqlite, |_| {}).await;
    let id = app
        .user(1)
        .import("onlyfans_export.csv", SAMPLE_CSV.into())
        .await;
    let job = app.user(1).get_json(&format!("/api/jobs/{id}")).await;
    assert_eq!(job["status"], "queued");
    let cancelled = json_of(
        app.user(1).delete(&format!("/api/jobs/{id}")).await,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled["finishedAt"].is_string());
    // Now start a worker on the same database: the job stays cancelled and imports nothing.
    app.start_workers().await;
    let second = app
        .user(1)
        .import("onlyfans_export.csv", SAMPLE_CSV.into())
        .await;
    app.user(1).wait_job(&second).await; // the worker is live and past the cancelled job
    let job = app.user(1).get_json(&format!("/api/jobs/{id}")).await;
    assert_eq!(job["status"], "cancelled");
    assert_eq!(job["attempts"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_with_s3_the_sample_imports_and_the_upload_is_removed_after() {
    let app = spawn_app_with(Backend::Postgres, with_s3).await;
    let id = app
        .user(1)
        .import("onlyfans_export.csv", SAMPLE_CSV.into())
        .await;
    let s = summary(&app.user(1).wait_job(&id).await);
    assert_eq!(
        (s["totalRows"].as_u64(), s["successfulInserts"].as_u64()),
        (Some(2), Some(2))
    );
    let again = summary(
        &app.user(1)
            .wait_job(
                &app.user(1)
                    .import("onlyfans_export.csv", SAMPLE_CSV.into())
                    .await,
            )
            .await,
    );
    assert_eq!(again["successfulInserts"], 0);
    assert_eq!(app.user(1).fan_total().await, 2);
    // Both uploads went to the bucket and were deleted once their jobs were final.
    let blobs = fanqueue_jobs::blobs::BlobStore::s3(
        app.settings.imports.s3_bucket.as_deref().unwrap(),
        app.settings.aws_endpoint_url.as_deref(),
    )
    .await
    .unwrap();
    let key = fanqueue_jobs::kinds::import_csv::blob_key(
        fanqueue_jobs::domain::UserId(1),
        &fanqueue_jobs::engine::JobId(id),
    );
    let err = blobs
        .open(&key)
        .await
        .err()
        .expect("the upload is deleted after the import");
    assert!(format!("{err:#}").contains("not found"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_jobs_on_redis_the_sample_imports_through_the_outbox() {
    let app = spawn_app_with(Backend::Postgres, with_redis_jobs).await;
    let id = app
        .user(1)
        .import("onlyfans_export.csv", SAMPLE_CSV.into())
        .await;
    let s = summary(&app.user(1).wait_job(&id).await);
    assert_eq!(s["successfulInserts"], 2);
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&app.database_url)
        .await
        .unwrap();
    let (dispatched,): (bool,) =
        sqlx::query_as("SELECT dispatched_at IS NOT NULL FROM job_records WHERE id = $1")
            .bind(&id)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(dispatched, "the outbox row was marked dispatched");
}

/// Undoes the API's push of job `id` to Redis and marks its outbox row undispatched, as if
/// the API had crashed right after the commit; `age` moves the row's creation back.
async fn forget_push(app: &TestApp, id: &str, age: chrono::TimeDelta) {
    let prefix = app.settings.database.redis_prefix.clone();
    let client = redis::Client::open(crate::helpers::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        !keys.is_empty(),
        "the API pushed the job to Redis under its prefix"
    );
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut db = <sqlx::SqliteConnection as sqlx::Connection>::connect(&app.database_url)
        .await
        .unwrap();
    sqlx::query("UPDATE job_records SET dispatched_at = NULL, created_at = $2 WHERE id = $1")
        .bind(id)
        .bind(fanqueue_jobs::domain::Timestamp(chrono::Utc::now() - age))
        .execute(&mut db)
        .await
        .unwrap();
}

/// A job whose outbox row was committed but never pushed (the API died in between) is
/// pushed by the relay and runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_relay_pushes_a_job_the_api_never_pushed() {
    let app = spawn_api_only(Backend::Sqlite, with_redis_jobs).await;
    let id = app
        .user(1)
        .import("onlyfans_export.csv", SAMPLE_CSV.into())
        .await;
    forget_push(&app, &id, chrono::TimeDelta::zero()).await;
    // A worker process of this deployment starts: its relay pushes the job, which then runs.
    app.start_workers().await;
    let s = summary(&app.user(1).wait_job(&id).await);
    assert_eq!(s["successfulInserts"], 2);
}

/// One step of the relay pushes each forgotten job once; a second step finds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_relay_step_pushes_each_forgotten_job_exactly_once() {
    let app = spawn_api_only(Backend::Sqlite, with_redis_jobs).await;
    let id = app
        .user(1)
        .import("onlyfans_export.csv", SAMPLE_CSV.into())
        .await;
    forget_push(&app, &id, chrono::TimeDelta::minutes(1)).await;
    let services = app.services().await;
    let relay = OutboxRelay::new(services.jobs.clone(), services.db.clone());
    assert_eq!(
        relay.run_once().await.unwrap(),
        1,
        "the forgotten job is pushed"
    );
    assert_eq!(relay.run_once().await.unwrap(), 0, "and not pushed again");
    app.start_workers().await;
    let job = app.user(1).wait_job(&id).await;
    assert_eq!(summary(&job)["successfulInserts"], 2);
    assert_eq!(job["attempts"], 1, "{job}");
}

/// More than 1,000 bad rows: 1,000 are listed, all are counted, the good rows still land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_summary_lists_a_thousand_errors_and_counts_the_rest() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let mut csv = String::from("Username,Email\n");
    for i in 0..1_205 {
        csv.push_str(&format!("bad{i},not-an-email-{i}\n"));
    }
    csv.push_str("good,good@example.com\n");
    let s = summary(
        &app.user(1)
            .wait_job(&app.user(1).import("errors.csv", csv.into_bytes()).await)
            .await,
    );
    assert_eq!(s["totalRows"], 1_206);
    assert_eq!(s["errors"].as_array().unwrap().len(), 1_000);
    assert_eq!(s["errors"][0]["row"], 2);
    assert_eq!(s["errorCount"], 1_205);
    assert_eq!(s["errorsOmitted"], 205);
    assert_eq!(s["successfulInserts"], 1);
    assert_eq!(app.user(1).fan_total().await, 1);
}

/// A run that fails for a reason worth retrying (here: the upload vanished from storage)
/// is retried with backoff per the kind's policy, then recorded as failed with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_import_is_retried_by_its_policy_then_failed_with_the_reason() {
    let app = spawn_api_only(Backend::Postgres, |_| {}).await;
    let id = app
        .user(1)
        .import("onlyfans_export.csv", SAMPLE_CSV.into())
        .await;
    let services = app.services().await;
    let key = fanqueue_jobs::kinds::import_csv::blob_key(
        fanqueue_jobs::domain::UserId(1),
        &fanqueue_jobs::engine::JobId(id.clone()),
    );
    services.blobs.delete(&key).await.unwrap();
    let started = std::time::Instant::now();
    app.start_workers().await;
    let job = app.user(1).wait_job(&id).await;
    assert_eq!(job["status"], "failed", "{job}");
    let max = <ImportCsv as JobKind>::RETRY.max_attempts;
    assert_eq!(job["attempts"], max, "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("gave up after {max} attempts")) && error.contains("not found"),
        "{error}"
    );
    // The runs were spaced by the backoff (1 s, 2 s, 4 s, ±20%), not run back to back: a
    // lower bound on elapsed time, which a slow machine can only exceed.
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(5),
        "retries waited: {:?}",
        started.elapsed()
    );
}

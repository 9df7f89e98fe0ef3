//! SIGTERM as an orchestrator sends it: `fanqueue all` on the embedded default stops while an
//! import runs, exits 0 within its drain bound, and the import resumes from its checkpoint on
//! the next start, also when a look for tasks took the database's write lock as the worker
//! was stopping.

use std::time::Duration;

use fanqueue::supervisor::DRAIN_TIMEOUT;
use fanqueue_jobs::engine::wake::FALLBACK;
use sqlx::Connection;

use crate::helpers::{AppProcess, JWT_SECRET, generated_csv};

const ROWS: usize = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_an_import_exits_0_in_bound_and_the_import_resumes_on_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    // Small batches: many commits, so the signal lands between two of them mid-file.
    let env = [("JWT_SECRET", JWT_SECRET), ("IMPORT_BATCH_ROWS", "250")];
    let mut first = AppProcess::spawn(&["all"], &env, dir.path());
    let user = first.user(1);
    let id = user.import("big.csv", generated_csv(ROWS)).await;

    // Wait until some batches are committed, then SIGTERM while this test holds the
    // database's write lock (SQLite lets another process take it). The import's worker has a
    // free slot, so it looks for tasks every `FALLBACK`; held for longer than that, the lock
    // has such a look waiting for it, as one often waits behind the import's own commits.
    // The look gets the lock once it is free, while the worker is stopping: it must not keep
    // it from the import, which still commits its last batch and hands its job back.
    let done_at_signal = user.wait_progress(&id, 1_000).await;
    let db = dir.path().join("data/fanqueue.db");
    let mut holder = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();
    tokio::time::sleep(FALLBACK * 2).await;
    let sent = first.sigterm();
    first
        .wait_for_log("shutdown requested; draining", Duration::from_secs(10))
        .await;
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    drop(holder);
    let (exit, took) = first.exit_since(sent, DRAIN_TIMEOUT * 2).await;
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
    let user = second.user(1);
    let finished = user.wait_job_within(&id, Duration::from_secs(120)).await;
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
    let fans = user.get_json("/api/crm/fans?limit=1").await;
    assert_eq!(fans["total"], ROWS, "every row present exactly once");
}

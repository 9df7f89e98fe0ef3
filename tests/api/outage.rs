//! The job backend's database goes away for a while: a `fanqueue worker` process keeps going
//! (it rebuilds its workers after a backoff instead of ending them), and once the database
//! is back, the job that was running when it went finishes with every row exactly once and
//! new jobs run.

use std::time::Duration;

use sqlx::{Connection, PgConnection};

use crate::helpers::{
    AppProcess, Backend, JWT_SECRET, TestDb, cut, eventually, generated_csv, postgres_admin_url,
    restore,
};

const ROWS: usize = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_run_jobs_again_after_their_database_was_unreachable_and_lose_nothing() {
    let (db, url) = TestDb::create(Backend::Postgres).await;
    let TestDb::Postgres { name, .. } = &db else {
        unreachable!("a PostgreSQL test database")
    };
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("JWT_SECRET", JWT_SECRET),
        // Small batches: the import is mid-file when the database goes away.
        ("IMPORT_BATCH_ROWS", "100"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let api = AppProcess::spawn(&["serve"], &env, dir.path());
    let mut worker = AppProcess::spawn_until(&["worker"], &env, dir.path(), "workers running");
    let user = api.user(1);

    // An import is running when the database goes away.
    let running = user.import("fans.csv", generated_csv(ROWS)).await;
    user.wait_progress(&running, 500).await;
    let mut admin = PgConnection::connect(&postgres_admin_url()).await.unwrap();
    cut(&mut admin, name).await;
    // Down long enough for every kind's worker to fail on it at least once.
    let lost = "worker lost its job backend; building it again";
    let kinds_lost = |worker: &AppProcess| {
        let mut kinds: Vec<String> = worker
            .logged(lost)
            .iter()
            .map(|l| l["fields"]["kind"].as_str().unwrap().to_owned())
            .collect();
        kinds.sort();
        kinds.dedup();
        kinds
    };
    let (within, every) = (Duration::from_secs(60), Duration::from_millis(200));
    eventually("every worker noticed the outage", within, every, || async {
        let lost = kinds_lost(&worker);
        if lost == ["bulk_send", "campaign_feed", "import_csv", "send_message"] {
            Ok(())
        } else {
            Err(format!("{lost:?}"))
        }
    })
    .await;
    restore(&mut admin, name).await;
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the worker process is still running"
    );

    // The interrupted import finishes as an uninterrupted run would.
    let job = user
        .wait_job_within(&running, Duration::from_secs(180))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let s = &job["result"]["summary"];
    assert_eq!(s["totalRows"], ROWS);
    assert_eq!(s["successfulInserts"], ROWS, "{s}");
    assert_eq!(s["updated"], 0, "{s}");

    // And new jobs run.
    let other = api.user(2);
    let fresh = other.import("fans.csv", generated_csv(50)).await;
    let job = other.wait_job_within(&fresh, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");

    assert_eq!(
        crate::helpers::pg_fan_rows(&url, 1).await,
        (ROWS as i64, ROWS as i64),
        "every row exactly once"
    );
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the worker process kept running throughout"
    );
}

//! The job API: one user's jobs are theirs alone; ids, filters and states are checked.

use std::time::{Duration, Instant};

use fanqueue_jobs::{db::Db, on_db};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{SAMPLE_CSV, TestApp, error_of, json_of};

crate::on_both_backends!(
    jobs_are_listed_filtered_and_private_to_their_user,
    a_workers_finished_tasks_are_deleted_and_its_jobs_stay_listed,
);

/// apalis keeps every task it ran, and its acknowledgement of a task scans all of its
/// worker's: the worker deletes the tasks it finished, while the job records stay.
async fn a_workers_finished_tasks_are_deleted_and_its_jobs_stay_listed(app: TestApp) {
    let fan = app.create_fan(1, json!({ "handle": "tasks" })).await;
    let bodies: Vec<Value> = (0..30)
        .map(|i| json!({ "recipientId": fan["id"], "content": format!("m{i}") }))
        .collect();
    let sends = bodies
        .iter()
        .map(|b| app.post(1, "/api/onlyfans/messages/send", b));
    for resp in futures::future::join_all(sends).await {
        json_of(resp, StatusCode::ACCEPTED).await;
    }
    let services = app.services().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = json_of(
            app.get(1, "/api/jobs?kind=send_message&status=succeeded")
                .await,
            StatusCode::OK,
        )
        .await;
        let tasks = task_count(&services.db).await;
        if done["total"] == 30 && tasks == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "30 jobs succeeded and no task left: {} jobs succeeded, {tasks} tasks",
            done["total"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `send_message` tasks in apalis's table, finished or not.
async fn task_count(db: &Db) -> i64 {
    let (n,): (i64,) = on_db!(db, pool => sqlx::query_as(match db {
        Db::Postgres(_) => "SELECT COUNT(*) FROM apalis.jobs WHERE job_type = 'send_message'",
        Db::Sqlite(_) => "SELECT COUNT(*) FROM Jobs WHERE job_type = 'send_message'",
    })
    .fetch_one(pool)
    .await
    .expect("the task table reads"));
    n
}

async fn jobs_are_listed_filtered_and_private_to_their_user(app: TestApp) {
    let ok = app
        .import(1, "onlyfans_export.csv", SAMPLE_CSV.into())
        .await;
    let bad = app
        .import(1, "bad.csv", b"nothing,useful\n1,2\n".to_vec())
        .await;
    assert_eq!(app.wait_job(1, &ok).await["status"], "succeeded");
    assert_eq!(app.wait_job(1, &bad).await["status"], "failed");

    let all = json_of(app.get(1, "/api/jobs").await, StatusCode::OK).await;
    assert_eq!(all["total"], 2);
    assert_eq!(all["items"][0]["id"], bad.as_str(), "newest first");
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let failed = json_of(app.get(1, "/api/jobs?status=failed").await, StatusCode::OK).await;
    assert_eq!(ids(&failed), [bad.as_str()]);
    let imports = json_of(
        app.get(1, "/api/jobs?kind=import_csv&status=succeeded")
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(ids(&imports), [ok.as_str()]);

    for (path, field) in [
        ("/api/jobs?status=done", "status"),
        ("/api/jobs?kind=email", "kind"),
    ] {
        let err = error_of(
            app.get(1, path).await,
            StatusCode::BAD_REQUEST,
            "invalid_field",
        )
        .await;
        assert_eq!(err["field"], field);
    }
    let err = error_of(
        app.get(1, "/api/jobs/not-a-ulid").await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
    )
    .await;
    assert_eq!(err["field"], "id");
    error_of(
        app.get(1, "/api/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // User 2 sees none of it and can touch none of it.
    for resp in [
        app.get(2, &format!("/api/jobs/{ok}")).await,
        app.delete(2, &format!("/api/jobs/{ok}")).await,
    ] {
        error_of(resp, StatusCode::NOT_FOUND, "not_found").await;
    }
    assert_eq!(
        json_of(app.get(2, "/api/jobs").await, StatusCode::OK).await["total"],
        0
    );

    // Finished jobs cannot be cancelled.
    let err = error_of(
        app.delete(1, &format!("/api/jobs/{ok}")).await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    assert!(err["message"].as_str().unwrap().contains("succeeded"));
    let job = json_of(app.get(1, &format!("/api/jobs/{ok}")).await, StatusCode::OK).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["cancelRequested"], false);
}

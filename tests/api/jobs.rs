//! The job API: one user's jobs are theirs alone; ids, filters and states are checked.

use reqwest::StatusCode;

use crate::helpers::{SAMPLE_CSV, TestApp, error_of};

crate::on_both_backends!(jobs_are_listed_filtered_and_private_to_their_user);

async fn jobs_are_listed_filtered_and_private_to_their_user(app: TestApp) {
    let ok = app
        .user(1)
        .import("onlyfans_export.csv", SAMPLE_CSV.into())
        .await;
    let bad = app
        .user(1)
        .import("bad.csv", b"nothing,useful\n1,2\n".to_vec())
        .await;
    assert_eq!(app.user(1).wait_job(&ok).await["status"], "succeeded");
    assert_eq!(app.user(1).wait_job(&bad).await["status"], "failed");

    let all = app.user(1).get_json("/api/jobs").await;
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
    let failed = app.user(1).get_json("/api/jobs?status=failed").await;
    assert_eq!(ids(&failed), [bad.as_str()]);
    let imports = app
        .user(1)
        .get_json("/api/jobs?kind=import_csv&status=succeeded")
        .await;
    assert_eq!(ids(&imports), [ok.as_str()]);

    for (path, field) in [
        ("/api/jobs?status=done", "status"),
        ("/api/jobs?kind=email", "kind"),
    ] {
        let err = error_of(
            app.user(1).get(path).await,
            StatusCode::BAD_REQUEST,
            "invalid_field",
        )
        .await;
        assert_eq!(err["field"], field);
    }
    let err = error_of(
        app.user(1).get("/api/jobs/not-a-ulid").await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
    )
    .await;
    assert_eq!(err["field"], "id");
    error_of(
        app.user(1)
            .get("/api/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV")
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // User 2 sees none of it and can touch none of it.
    for resp in [
        app.user(2).get(&format!("/api/jobs/{ok}")).await,
        app.user(2).delete(&format!("/api/jobs/{ok}")).await,
    ] {
        error_of(resp, StatusCode::NOT_FOUND, "not_found").await;
    }
    assert_eq!(app.user(2).get_json("/api/jobs").await["total"], 0);

    // Finished jobs cannot be cancelled.
    let err = error_of(
        app.user(1).delete(&format!("/api/jobs/{ok}")).await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    assert!(err["message"].as_str().unwrap().contains("succeeded"));
    let job = app.user(1).get_json(&format!("/api/jobs/{ok}")).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["cancelRequested"], false);
}

//! Load shedding: past its capacity the API answers 503 with Retry-After at once (nothing
//! done) instead of queueing every request behind the others, and serves again when a slot
//! frees. How fast it sheds under a real overload is measured by the load benchmark.

use std::time::Duration;

use reqwest::StatusCode;

use crate::helpers::{Backend, TestApp, error_of, eventually, generated_csv, spawn_api_only};

crate::on_both_backends!(backend: a_full_server_sheds_with_503_and_retry_after_then_serves_again);

async fn a_full_server_sheds_with_503_and_retry_after_then_serves_again(backend: Backend) {
    // One request at a time, and a short wait for the slot.
    let app = spawn_api_only(backend, |s| {
        s.api.max_in_flight_requests = 1;
        s.api.request_queue_ms = 50;
    })
    .await;
    // No worker runs: an import that waits for its result holds the only slot for its wait.
    let holder = {
        let app_url = app.url("/api/onlyfans/import/csv?wait=3");
        let client = app.client.clone();
        let token = app.token(1);
        tokio::spawn(async move {
            let part = reqwest::multipart::Part::bytes(generated_csv(3)).file_name("f.csv");
            client
                .post(app_url)
                .bearer_auth(token)
                .multipart(reqwest::multipart::Form::new().part("file", part))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    wait_until_full(&app).await;

    let resp = app.user(2).get("/api/crm/fans").await;
    let retry_after = resp.headers().get("retry-after").cloned();
    let body = error_of(resp, StatusCode::SERVICE_UNAVAILABLE, "overloaded").await;
    assert_eq!(retry_after.unwrap(), "1", "{body}");
    let resp = app
        .user(2)
        .post("/api/crm/fans", &serde_json::json!({ "handle": "shed" }))
        .await;
    error_of(resp, StatusCode::SERVICE_UNAVAILABLE, "overloaded").await;
    // Liveness and the docs are not gated.
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    // The import answers once its wait is over (still queued: no worker), freeing the slot.
    assert_eq!(holder.await.unwrap(), StatusCode::ACCEPTED);
    let page = app.user(2).get_json("/api/crm/fans").await;
    assert_eq!(page["total"], 0, "the shed create did nothing");
}

/// Polls until a request is shed: the holder is in its slot.
async fn wait_until_full(app: &TestApp) {
    let (within, every) = (Duration::from_secs(10), Duration::from_millis(20));
    eventually("the import holding the slot", within, every, || async {
        let resp = app
            .client
            .get(app.url("/api/crm/fans"))
            .send()
            .await
            .unwrap();
        // Unauthenticated requests are gated too; 503 means the slot is held.
        match resp.status() {
            StatusCode::SERVICE_UNAVAILABLE => Ok(()),
            other => Err(other.to_string()),
        }
    })
    .await
}

//! Safe retries with `Idempotency-Key`: a repeat gets the first answer and creates nothing;
//! the same key with another request is a 422, a repeat while the first runs a 409; keys are
//! per user.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    Backend, TestApp, error_of, eventually, generated_csv, spawn_api_only, spawn_app_with,
};

crate::on_both_backends!(backend:
    a_bulk_sent_twice_with_one_key_creates_one_campaign_and_answers_the_same_body_twice,
    a_repeat_while_the_first_runs_is_409_and_an_upload_repeated_gets_the_same_job,
    a_repeat_after_a_crash_between_the_commit_and_the_answer_answers_for_the_committed_write,
);

async fn post(app: &TestApp, user: i64, path: &str, key: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(app.token(user))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn a_bulk_sent_twice_with_one_key_creates_one_campaign_and_answers_the_same_body_twice(
    backend: Backend,
) {
    let app = spawn_app_with(backend, |s| s.api.write_limit_per_minute = 1_000).await;
    let mut fans = vec![];
    for i in 0..3 {
        let fan = app
            .user(1)
            .create_fan(json!({ "handle": format!("f{i}") }))
            .await;
        fans.push(fan["id"].as_i64().unwrap());
    }
    let bulk = json!({ "recipientIds": fans, "content": "Offer", "campaignName": "Once" });
    let first = post(&app, 1, "/api/messages/bulk", "bulk-1", &bulk).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();

    // The response was lost; the client sends the same request again with the same key.
    let again = post(&app, 1, "/api/messages/bulk", "bulk-1", &bulk).await;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first, "the same body");
    let campaigns = app.user(1).get_json("/api/crm/campaigns").await;
    assert_eq!(campaigns["total"], 1, "one campaign: {campaigns}");
    let jobs = app.user(1).get_json("/api/jobs?kind=bulk_send").await;
    assert_eq!(jobs["total"], 1, "one job");

    // The same key with another body is refused and creates nothing.
    let other = json!({ "recipientIds": fans, "content": "Other", "campaignName": "Once" });
    let resp = post(&app, 1, "/api/messages/bulk", "bulk-1", &other).await;
    error_of(
        resp,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(app.user(1).get_json("/api/crm/campaigns").await["total"], 1);

    // Keys are per user: another creator's request with the same key is their own.
    let theirs = app.user(2).create_fan(json!({ "handle": "g" })).await;
    let send = json!({ "recipientId": theirs["id"], "content": "Hi" });
    let resp = post(&app, 2, "/api/onlyfans/messages/send", "bulk-1", &send).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert!(resp.headers().get("idempotent-replayed").is_none());

    // A refusal is an answer too: repeated, it is given again.
    let missing = json!({ "recipientId": 999_999, "content": "Hi" });
    let first = post(&app, 1, "/api/onlyfans/messages/send", "send-404", &missing).await;
    assert_eq!(first.status(), StatusCode::NOT_FOUND);
    let again = post(&app, 1, "/api/onlyfans/messages/send", "send-404", &missing).await;
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
    assert_eq!(again.headers()["idempotent-replayed"], "true");

    // A key that is not 1 to 255 printable characters is a 400.
    let resp = post(
        &app,
        1,
        "/api/onlyfans/messages/send",
        &"k".repeat(256),
        &send,
    )
    .await;
    let err = error_of(resp, StatusCode::BAD_REQUEST, "invalid_field").await;
    assert_eq!(err["field"], "Idempotency-Key");
}

async fn a_repeat_while_the_first_runs_is_409_and_an_upload_repeated_gets_the_same_job(
    backend: Backend,
) {
    // No worker: an import that waits for its result runs for its whole wait.
    let app = spawn_api_only(backend, |_| {}).await;
    let upload = |query: &'static str| {
        let app_url = app.url(&format!("/api/onlyfans/import/csv{query}"));
        let client = app.client.clone();
        let token = app.token(1);
        async move {
            // reqwest picks a new multipart boundary for every request.
            let part = reqwest::multipart::Part::bytes(generated_csv(3)).file_name("fans.csv");
            client
                .post(app_url)
                .bearer_auth(token)
                .header("Idempotency-Key", "upload-1")
                .multipart(reqwest::multipart::Form::new().part("file", part))
                .send()
                .await
                .unwrap()
        }
    };
    let first = tokio::spawn(upload("?wait=2"));
    // The first holds its key from before its job is stored until it answers, 2 s later.
    let (within, every) = (Duration::from_secs(10), Duration::from_millis(20));
    eventually("the first upload's job stored", within, every, || async {
        let jobs = app.user(1).get_json("/api/jobs?kind=import_csv").await;
        if jobs["total"] == 0 {
            Err(jobs.to_string())
        } else {
            Ok(())
        }
    })
    .await;
    let resp = upload("?wait=2").await;
    error_of(resp, StatusCode::CONFLICT, "idempotency_key_in_use").await;
    let first = first.await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    let again = upload("?wait=2").await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(
        again["jobId"], first["jobId"],
        "the same job, not a second import"
    );
    let jobs = app.user(1).get_json("/api/jobs?kind=import_csv").await;
    assert_eq!(jobs["total"], 1);
}

/// What a process killed right after its write committed leaves: the write recorded on its
/// key, no answer kept, the claim's lease run out. Every route that writes then answers a
/// repeat for that write, and writes nothing again.
async fn a_repeat_after_a_crash_between_the_commit_and_the_answer_answers_for_the_committed_write(
    backend: Backend,
) {
    let app = spawn_api_only(backend, |s| s.api.write_limit_per_minute = 1_000).await;
    let fan = json!({ "handle": "crashed" });
    let first_fan = post(&app, 1, "/api/crm/fans", "fan-1", &fan).await;
    assert_eq!(first_fan.status(), StatusCode::CREATED);
    let fan_id = first_fan.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    let conversation = app.user(1).open_conversation(fan_id).await["id"]
        .as_i64()
        .unwrap();
    let csv = |key: &'static str| {
        let part = reqwest::multipart::Part::bytes(generated_csv(2)).file_name("fans.csv");
        app.client
            .post(app.url("/api/onlyfans/import/csv"))
            .bearer_auth(app.token(1))
            .header("Idempotency-Key", key)
            .multipart(reqwest::multipart::Form::new().part("file", part))
    };
    let requests: Vec<(&str, String, Value, &str)> = vec![
        ("fan-1", "/api/crm/fans".into(), fan.clone(), "id"),
        (
            "send-1",
            "/api/onlyfans/messages/send".into(),
            json!({ "recipientId": fan_id, "content": "Hi" }),
            "messageId",
        ),
        (
            "reply-1",
            format!("/api/crm/conversations/{conversation}/messages"),
            json!({ "text": "Thanks!" }),
            "messageId",
        ),
        (
            "inbound-1",
            format!("/api/crm/conversations/{conversation}/inbound"),
            json!({ "text": "Hello" }),
            "id",
        ),
        (
            "bulk-1",
            "/api/messages/bulk".into(),
            json!({ "recipientIds": [fan_id], "content": "Offer", "campaignName": "Once" }),
            "campaignId",
        ),
    ];
    let mut firsts = vec![first_fan_answer(&app, fan_id).await];
    for (key, path, body, _) in &requests[1..] {
        let resp = post(&app, 1, path, key, body).await;
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        firsts.push(resp.json::<Value>().await.unwrap());
    }
    let import = csv("import-1").send().await.unwrap();
    assert_eq!(import.status(), StatusCode::ACCEPTED);
    let import = import.json::<Value>().await.unwrap();

    crash_after_commit(&app.database_url).await;

    for ((key, path, body, id), first) in requests.iter().zip(&firsts) {
        let again = post(&app, 1, path, key, body).await;
        assert!(again.status().is_success(), "{path}: {}", again.status());
        let again = again.json::<Value>().await.unwrap();
        assert_eq!(
            again[*id], first[*id],
            "{path} answers for the committed write: {again}"
        );
        // And that answer is now kept.
        let kept = post(&app, 1, path, key, body).await;
        assert_eq!(kept.headers()["idempotent-replayed"], "true", "{path}");
        assert_eq!(kept.json::<Value>().await.unwrap(), again, "{path}");
    }
    let again = csv("import-1").send().await.unwrap();
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(
        again.json::<Value>().await.unwrap()["jobId"],
        import["jobId"]
    );

    // Nothing was written twice.
    assert_eq!(app.user(1).get_json("/api/crm/fans").await["total"], 1);
    let messages = app
        .user(1)
        .get_json(&format!("/api/crm/conversations/{conversation}/messages"))
        .await;
    assert_eq!(
        messages["total"], 4,
        "send, reply, inbound, campaign: {messages}"
    );
    assert_eq!(app.user(1).get_json("/api/crm/campaigns").await["total"], 1);
    assert_eq!(
        app.user(1).get_json("/api/jobs?kind=import_csv").await["total"],
        1
    );
}

/// The fan the first request created, as its answer named it.
async fn first_fan_answer(app: &TestApp, id: i64) -> Value {
    app.user(1).get_json(&format!("/api/crm/fans/{id}")).await
}

/// Forgets every kept answer and runs every claim's lease out, as a process killed between
/// its commit and its answer would have left them.
async fn crash_after_commit(url: &str) {
    let db = fanqueue_jobs::db::Db::connect(url).await.unwrap();
    let past = chrono::Utc::now() - chrono::TimeDelta::minutes(5);
    let forgot = fanqueue_jobs::on_db!(&db, pool => sqlx::query(
        "UPDATE idempotency_keys SET status = NULL, headers = NULL, body = NULL, locked_until = $1",
    )
    .bind(fanqueue_jobs::domain::Timestamp(past))
    .execute(pool)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    assert_eq!(forgot, 6, "one key per request");
    db.close().await;
}

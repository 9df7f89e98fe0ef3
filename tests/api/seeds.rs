//! Every request example of the seeds' user guide and developer guide, sent as written (ids
//! substituted): each answers with the status the SPEC gives and the fields the guides
//! document.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, SAMPLE_CSV, TestApp, json_of, spawn_app_with, summary};

crate::on_both_backends!(backend: every_request_example_of_the_seed_guides_works_as_written);

/// Asserts that `v` has every one of `fields` (a null counts: the field is there).
fn has(v: &Value, fields: &[&str]) {
    let obj = v.as_object().unwrap_or_else(|| panic!("an object: {v}"));
    for f in fields {
        assert!(obj.contains_key(*f), "`{f}` in {v}");
    }
}

/// Sends `body` (raw JSON text, as the guide writes it) with `method` to `path`.
async fn send(app: &TestApp, method: reqwest::Method, path: &str, body: &str) -> reqwest::Response {
    app.client
        .request(method, app.url(path))
        .bearer_auth(app.token(1))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

async fn every_request_example_of_the_seed_guides_works_as_written(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;

    // User guide 2: import the export (multipart, file=onlyfans_export.csv). The SPEC answers
    // 202 with the job; the job's result is the documented summary.
    let part = reqwest::multipart::Part::bytes(SAMPLE_CSV.as_bytes().to_vec())
        .file_name("onlyfans_export.csv");
    let resp = app
        .client
        .post(app.url("/api/onlyfans/import/csv"))
        .bearer_auth(app.token(1))
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    let accepted = json_of(resp, StatusCode::ACCEPTED).await;
    let job = app
        .user(1)
        .wait_job(accepted["jobId"].as_str().unwrap())
        .await;
    let s = summary(&job);
    has(&s, &["totalRows", "successfulInserts", "skipped", "errors"]);
    assert_eq!(
        (s["totalRows"].as_i64(), s["successfulInserts"].as_i64()),
        (Some(2), Some(2))
    );

    // More fans for the examples that name five recipients.
    let mut ids = vec![];
    for h in ["a", "b", "c"] {
        let fan = app.user(1).create_fan(json!({ "handle": h })).await;
        ids.push(fan["id"].as_i64().unwrap());
    }

    // User guide 1: list the fans; see one.
    let fans = app.user(1).get_json("/api/crm/fans").await;
    assert_eq!(fans["total"], 5);
    let john = fans["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["handle"] == "@johndoe")
        .unwrap()
        .clone();
    has(
        &john,
        &[
            "name",
            "platform",
            "valueCents",
            "lastSeenAt",
            "tags",
            "notes",
        ],
    );
    let id = john["id"].as_i64().unwrap();
    let jane = fans["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["handle"] == "@janedoe")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    ids.splice(0..0, [id, jane]);
    let one = app.user(1).get_json(&format!("/api/crm/fans/{id}")).await;
    has(&one, &["tags", "notes", "valueCents"]);

    // User guide 1: update a fan, as written.
    let resp = send(
        &app,
        reqwest::Method::PUT,
        &format!("/api/crm/fans/{id}"),
        r#"{
  "name": "John Doe Updated",
  "tags": ["vip", "whale", "active"],
  "notes": "Very engaged customer",
  "valueCents": 55000
}"#,
    )
    .await;
    let updated = json_of(resp, StatusCode::OK).await;
    assert_eq!(updated["name"], "John Doe Updated");
    assert_eq!(updated["tags"], json!(["vip", "whale", "active"]));
    assert_eq!(updated["notes"], "Very engaged customer");
    assert_eq!(updated["valueCents"], 55000);

    // Developer guide: send one message, the recipient id written as a string.
    let resp = send(
        &app,
        reqwest::Method::POST,
        "/api/onlyfans/messages/send",
        &format!(
            r#"{{
  "recipientId": "{id}",
  "content": "Hello!",
  "mediaUrls": ["https://..."],
  "priority": 8
}}"#
        ),
    )
    .await;
    let queued = json_of(resp, StatusCode::ACCEPTED).await;
    has(
        &queued,
        &["messageId", "status", "queuedAt", "estimatedSendTime"],
    );
    assert_eq!(queued["status"], "queued");

    // User guide 3: conversations, a thread's messages, a reply.
    let convs = app.user(1).get_json("/api/crm/conversations").await;
    let conv = &convs["items"][0];
    has(conv, &["fan", "lastMessageAt", "unreadCount"]);
    has(&conv["fan"], &["avatarUrl", "name", "handle"]);
    let conv = conv["id"].as_i64().unwrap();
    let thread = app
        .user(1)
        .get_json(&format!(
            "/api/crm/conversations/{conv}/messages?limit=100&offset=0"
        ))
        .await;
    assert_eq!(thread["items"].as_array().unwrap().len(), 1);
    let resp = send(
        &app,
        reqwest::Method::POST,
        &format!("/api/crm/conversations/{conv}/messages"),
        r#"{
  "text": "Thanks for your support!",
  "priceCents": 500,
  "attachments": [
    {
      "type": "image",
      "url": "https://s3.amazonaws.com/media/photo.jpg"
    }
  ]
}"#,
    )
    .await;
    has(
        &json_of(resp, StatusCode::ACCEPTED).await,
        &["messageId", "status"],
    );

    // User guide 4 and the developer guide: bulk campaigns, as written.
    let campaign_fields = [
        "campaignId",
        "totalRecipients",
        "queued",
        "failed",
        "estimatedCompletionTime",
        "status",
    ];
    let five = format!(
        "[{}]",
        ids.iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let three = format!("[{}, {}, {}]", ids[0], ids[1], ids[2]);
    for (body, n) in [
        (
            format!(
                r#"{{
  "recipientIds": {five},
  "content": "Special offer for you! 🎉",
  "mediaUrls": ["https://s3.amazonaws.com/promo.jpg"],
  "campaignName": "Black Friday 2025",
  "priority": 8
}}"#
            ),
            5,
        ),
        (
            format!(
                r#"{{
  "recipientIds": {three},
  "content": "Special offer!",
  "mediaUrls": ["https://..."],
  "campaignName": "Black Friday",
  "priority": 8
}}"#
            ),
            3,
        ),
        (
            format!(
                r#"{{"recipientIds":{three},"content":"Test","campaignName":"Test Campaign"}}"#
            ),
            3,
        ),
    ] {
        let resp = send(&app, reqwest::Method::POST, "/api/messages/bulk", &body).await;
        let created = json_of(resp, StatusCode::ACCEPTED).await;
        has(&created, &campaign_fields);
        assert_eq!(created["totalRecipients"], n, "{created}");
        assert_eq!(created["status"], "queued");
    }

    // User guide 5: the queue's status.
    let status = app.user(1).get_json("/api/onlyfans/messages/status").await;
    has(
        &status,
        &[
            "queueDepth",
            "messagesInFlight",
            "dlqCount",
            "lastProcessedAt",
        ],
    );

    // User guide 6 and the developer guide: the health check (an operator's business).
    let health = app.operator(999).get_json("/api/monitoring/onlyfans").await;
    has(&health, &["status", "timestamp", "components"]);
    has(&health["components"]["database"], &["status", "latencyMs"]);
    has(
        &health["components"]["sqs"],
        &["status", "queueDepth", "messagesInFlight", "dlqCount"],
    );
    has(&health["components"]["rateLimiter"], &["status", "enabled"]);

    // User guide 1: delete a fan.
    let resp = app
        .user(1)
        .delete(&format!("/api/crm/fans/{}", ids[4]))
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
}

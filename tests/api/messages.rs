//! Outbound messages: single sends, conversation sends, bulk campaigns, the outbound queue.

use std::collections::HashSet;

use fanqueue_jobs::{engine::JobKind, kinds::bulk_send::BulkSend};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    Backend, TestApp, boto3_drain, error_of, instant, spawn_app_with, sqs_queues, with_sqs,
};

crate::on_both_backends!(
    a_single_send_is_queued_with_an_estimate_and_its_conversation_moves,
    a_send_in_a_conversation_is_queued_and_bad_bodies_are_400s,
    a_bulk_over_100_recipients_or_with_another_users_fan_creates_nothing,
    the_6th_campaign_in_an_hour_is_a_429,
    a_campaigns_recipients_are_its_messages_with_each_fans_handle,
);

/// `n` fans of `user`; returns their ids.
async fn fans(app: &TestApp, user: i64, n: usize) -> Vec<i64> {
    let mut ids = vec![];
    for i in 0..n {
        let fan = app
            .user(user)
            .create_fan(json!({ "handle": format!("u{user}fan{i}"), "name": format!("Fan {i}") }))
            .await;
        ids.push(fan["id"].as_i64().unwrap());
    }
    ids
}

async fn status(app: &TestApp) -> Value {
    app.operator(999)
        .get_json("/api/onlyfans/messages/status")
        .await
}

async fn a_single_send_is_queued_with_an_estimate_and_its_conversation_moves(app: TestApp) {
    let fan = fans(&app, 1, 1).await[0];
    let body = json!({ "recipientId": fan, "content": "Hello!", "mediaUrls": ["https://cdn.example.com/a.jpg"], "priority": 8 });
    let first = app
        .user(1)
        .post_json("/api/onlyfans/messages/send", &body, StatusCode::ACCEPTED)
        .await;
    assert_eq!(first["status"], "queued");
    assert!(first["messageId"].is_i64());
    let queued = instant(&first["queuedAt"]);
    let handoff = chrono::TimeDelta::from_std(fanqueue_jobs::delivery::limiter::HANDOFF).unwrap();
    assert_eq!(
        instant(&first["estimatedSendTime"]),
        queued + handoff,
        "nothing ahead of it: as soon as it is in the dispatcher's hands"
    );
    let second = app
        .user(1)
        .post_json("/api/onlyfans/messages/send", &body, StatusCode::ACCEPTED)
        .await;
    let behind = instant(&second["estimatedSendTime"]) - instant(&second["queuedAt"]) - handoff;
    assert_eq!(behind.num_seconds(), 6, "one message ahead at 10 a minute");

    // The send opened the fan's conversation; the message is in it, oldest first.
    let convs = app.user(1).get_json("/api/crm/conversations").await;
    assert_eq!(convs["total"], 1);
    let conv = &convs["items"][0];
    assert_eq!(conv["fanId"], fan);
    assert!(instant(&conv["lastMessageAt"]) >= queued);
    let msgs = app
        .user(1)
        .get_json(&format!("/api/crm/conversations/{}/messages", conv["id"]))
        .await;
    assert_eq!(msgs["total"], 2);
    let m = &msgs["items"][0];
    assert_eq!(m["id"], first["messageId"]);
    assert_eq!(
        (m["direction"].as_str(), m["text"].as_str()),
        (Some("out"), Some("Hello!"))
    );
    assert_eq!(
        m["attachments"],
        json!([{ "type": "media", "url": "https://cdn.example.com/a.jpg" }])
    );

    // Both reach the embedded queue through their jobs.
    let jobs = app.user(1).get_json("/api/jobs?kind=send_message").await;
    assert_eq!(jobs["total"], 2);
    for job in jobs["items"].as_array().unwrap() {
        let job = app.user(1).wait_job(job["id"].as_str().unwrap()).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["result"]["queued"], 1);
    }
    assert_eq!(status(&app).await["queueDepth"], 2);

    // Someone else's fan, or nobody's: 404, nothing stored.
    let other = fans(&app, 2, 1).await[0];
    for id in [other, 999_999] {
        let resp = app
            .user(1)
            .post(
                "/api/onlyfans/messages/send",
                &json!({ "recipientId": id, "content": "x" }),
            )
            .await;
        error_of(resp, StatusCode::NOT_FOUND, "not_found").await;
    }
    assert_eq!(app.user(1).get_json("/api/jobs").await["total"], 2);
}

async fn a_send_in_a_conversation_is_queued_and_bad_bodies_are_400s(app: TestApp) {
    let (_, conv) = app.user(1).fan_with_conversation("chat").await;
    let path = format!("/api/crm/conversations/{conv}/messages");
    let ok = json!({ "text": "Thanks!", "priceCents": 500, "attachments": [{ "type": "image", "url": "https://s3.example.com/p.jpg" }] });
    let queued = app
        .user(1)
        .post_json(&path, &ok, StatusCode::ACCEPTED)
        .await;
    assert_eq!(queued["status"], "queued");
    let msgs = app.user(1).get_json(&format!("{path}?limit=10")).await;
    assert_eq!(msgs["items"][0]["priceCents"], 500);
    assert_eq!(msgs["items"][0]["status"], "queued");

    for (body, field) in [
        (json!({ "text": "" }), "text"),
        (json!({ "text": "x".repeat(5001) }), "text"),
        (json!({ "text": "x", "priceCents": -1 }), "priceCents"),
        (
            json!({ "text": "x", "attachments": [{ "type": "image", "url": "javascript:alert(1)" }] }),
            "attachments[0].url",
        ),
        (json!({ "text": "x", "bogus": 1 }), "bogus"),
    ] {
        let err = error_of(
            app.user(1).post(&path, &body).await,
            StatusCode::BAD_REQUEST,
            "invalid_field",
        )
        .await;
        assert_eq!(err["field"], field, "{body}");
    }
    for (body, field) in [
        (
            json!({ "recipientId": 1, "content": "x", "mediaUrls": ["ftp://x/y"] }),
            "mediaUrls[0]",
        ),
        (
            json!({ "recipientId": 1, "content": "x", "priority": 11 }),
            "priority",
        ),
        (
            json!({ "recipientId": "1a", "content": "x" }),
            "recipientId",
        ),
        (json!({ "recipientId": 1.5, "content": "x" }), "recipientId"),
        (json!({ "recipientId": 1 }), "content"),
    ] {
        let err = error_of(
            app.user(1).post("/api/onlyfans/messages/send", &body).await,
            StatusCode::BAD_REQUEST,
            "invalid_field",
        )
        .await;
        assert_eq!(err["field"], field, "{body}");
    }
    error_of(
        app.user(2).post(&path, &ok).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let msgs = app.user(1).get_json(&path).await;
    assert_eq!(msgs["total"], 1, "no refused message was stored");
}

async fn a_bulk_over_100_recipients_or_with_another_users_fan_creates_nothing(app: TestApp) {
    let mine = fans(&app, 1, 3).await;
    let theirs = fans(&app, 2, 1).await[0];
    let too_many: Vec<i64> = (1..=101).collect();
    let err = error_of(
        app.user(1)
            .post(
                "/api/messages/bulk",
                &json!({ "recipientIds": too_many, "content": "Hi", "campaignName": "Big" }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
    )
    .await;
    assert_eq!(err["field"], "recipientIds");
    assert!(err["message"].as_str().unwrap().contains("101"));

    let mixed = vec![mine[0], theirs, mine[1], 888_888];
    let err = error_of(
        app.user(1)
            .post(
                "/api/messages/bulk",
                &json!({ "recipientIds": mixed, "content": "Hi", "campaignName": "Mixed" }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
    )
    .await;
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains(&theirs.to_string()) && message.contains("888888"),
        "names the ids: {message}"
    );
    assert!(
        !message.contains(&format!("{},", mine[0])),
        "only the bad ids: {message}"
    );

    // Nothing of either attempt exists.
    assert_eq!(app.user(1).get_json("/api/crm/campaigns").await["total"], 0);
    assert_eq!(app.user(1).get_json("/api/jobs").await["total"], 0);
    assert_eq!(
        app.user(1).get_json("/api/crm/conversations").await["total"],
        0
    );

    // 100 with duplicates is fine once deduplicated: here 3 distinct.
    let dup = vec![mine[0], mine[1], mine[2], mine[0], mine[1]];
    let ok = app
        .user(1)
        .post_json(
            "/api/messages/bulk",
            &json!({ "recipientIds": dup, "content": "Hi", "campaignName": "Dup" }),
            StatusCode::ACCEPTED,
        )
        .await;
    assert_eq!(
        (
            ok["totalRecipients"].as_i64(),
            ok["queued"].as_i64(),
            ok["failed"].as_i64()
        ),
        (Some(3), Some(3), Some(0))
    );
    assert_eq!(ok["status"], "queued");
    let eta = instant(&ok["estimatedCompletionTime"]) - chrono::Utc::now();
    assert!(
        eta.num_seconds() >= 10 && eta.num_seconds() <= 13,
        "two messages ahead of the last: {eta}"
    );
    // Another user cannot see the campaign.
    error_of(
        app.user(2)
            .get(&format!("/api/crm/campaigns/{}", ok["campaignId"]))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

async fn the_6th_campaign_in_an_hour_is_a_429(app: TestApp) {
    let fan = fans(&app, 1, 1).await[0];
    let body = json!({ "recipientIds": [fan], "content": "Hi", "campaignName": "C" });
    for i in 0..5 {
        assert_eq!(
            app.user(1).post("/api/messages/bulk", &body).await.status(),
            StatusCode::ACCEPTED,
            "campaign {}",
            i + 1
        );
    }
    let resp = app.user(1).post("/api/messages/bulk", &body).await;
    assert!(resp.headers().contains_key("retry-after"));
    error_of(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(app.user(1).get_json("/api/crm/campaigns").await["total"], 5);
}

/// Creates `n` fans and a campaign to all of them; returns (fan ids, campaign id, job id).
async fn bulk(app: &TestApp, n: usize) -> (Vec<i64>, i64, String) {
    let ids = fans(app, 1, n).await;
    let body = json!({
        "recipientIds": ids, "content": "Special offer!", "mediaUrls": ["https://cdn.example.com/promo.jpg"],
        "campaignName": "Black Friday", "priority": 8
    });
    let accepted = app
        .user(1)
        .post_json("/api/messages/bulk", &body, StatusCode::ACCEPTED)
        .await;
    let campaign = accepted["campaignId"].as_i64().unwrap();
    let jobs = app.user(1).get_json("/api/jobs?kind=bulk_send").await;
    let job = jobs["items"][0]["id"].as_str().unwrap().to_owned();
    (ids, campaign, job)
}

/// The SQS path: 100 recipients make exactly 10 SendMessageBatch calls, and a boto3
/// consumer finds the 100 bodies with every field right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_of_100_makes_10_batch_calls_and_a_boto3_consumer_reads_every_field() {
    let (queue, dlq) = sqs_queues(false, 3).await;
    let sqs = with_sqs(&queue, &dlq);
    let app = spawn_app_with(Backend::Postgres, move |s| {
        s.api.write_limit_per_minute = 1_000;
        sqs(s);
    })
    .await;
    let (fan_ids, campaign, job) = bulk(&app, 100).await;
    let job = app.user(1).wait_job(&job).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["sendMessageBatchCalls"], 10);
    assert_eq!(job["result"]["queued"], 100);
    let status = app
        .operator(999)
        .get_json("/api/onlyfans/messages/status")
        .await;
    assert_eq!(
        (status["queueDepth"].as_u64(), status["dlqCount"].as_u64()),
        (Some(100), Some(0))
    );

    let bodies = boto3_drain(&queue);
    assert_eq!(bodies.len(), 100, "every message on the queue once");
    let c = app
        .user(1)
        .get_json(&format!("/api/crm/campaigns/{campaign}"))
        .await;
    assert_eq!(c["status"], "active");
    assert_eq!(c["metrics"]["queued"], 100);
    let mut ids = HashSet::new();
    let mut recipients = HashSet::new();
    for b in &bodies {
        let keys: HashSet<&str> = b.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            HashSet::from([
                "messageId",
                "userId",
                "recipientId",
                "content",
                "mediaUrls",
                "priority",
                "campaignId"
            ]),
            "{b}"
        );
        assert_eq!(b["userId"], "1");
        assert_eq!(b["content"], "Special offer!");
        assert_eq!(b["mediaUrls"], json!(["https://cdn.example.com/promo.jpg"]));
        assert_eq!(b["priority"], 8);
        assert_eq!(b["campaignId"], campaign.to_string());
        assert!(
            ids.insert(b["messageId"].as_str().unwrap().to_owned()),
            "duplicate {b}"
        );
        recipients.insert(b["recipientId"].as_str().unwrap().parse::<i64>().unwrap());
    }
    assert_eq!(recipients, fan_ids.into_iter().collect::<HashSet<_>>());
    // The message ids on the queue are the campaign's messages.
    let mut stored = HashSet::new();
    let convs = app
        .user(1)
        .get_json("/api/crm/conversations?limit=200")
        .await;
    for conv in convs["items"].as_array().unwrap() {
        let msgs = app
            .user(1)
            .get_json(&format!("/api/crm/conversations/{}/messages", conv["id"]))
            .await;
        for m in msgs["items"].as_array().unwrap() {
            assert_eq!(m["campaignId"], campaign);
            stored.insert(m["id"].as_i64().unwrap().to_string());
        }
    }
    assert_eq!(stored, ids);
}

/// The embedded default: the same bulk reaches the embedded queue and the status route
/// counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_default_a_bulk_reaches_the_embedded_queue() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.api.write_limit_per_minute = 1_000).await;
    let (_, campaign, job) = bulk(&app, 100).await;
    let job = app.user(1).wait_job(&job).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["sendMessageBatchCalls"], 10);
    let status = app
        .operator(999)
        .get_json("/api/onlyfans/messages/status")
        .await;
    assert_eq!(
        (
            status["queueDepth"].as_u64(),
            status["messagesInFlight"].as_u64(),
            status["dlqCount"].as_u64()
        ),
        (Some(100), Some(0), Some(0))
    );
    let c = app
        .user(1)
        .get_json(&format!("/api/crm/campaigns/{campaign}"))
        .await;
    assert_eq!(
        (
            c["metrics"]["total"].as_i64(),
            c["metrics"]["queued"].as_i64()
        ),
        (Some(100), Some(100))
    );
    assert_eq!(c["type"], "bulk_message");
    assert_eq!(c["template"]["content"], "Special offer!");
    let list = app.user(1).get_json("/api/crm/campaigns").await;
    assert_eq!(list["items"][0]["id"], campaign);
}

/// `RATE_LIMITER_ENABLED=false`: messages skip the queue, are logged and marked sent; the
/// campaign completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_rate_limiter_disabled_messages_are_marked_sent_without_the_queue() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.delivery.rate_limiter_enabled = false).await;
    let (_, campaign, job) = bulk(&app, 3).await;
    let job = app.user(1).wait_job(&job).await;
    assert_eq!(job["result"]["sent"], 3, "{job}");
    assert_eq!(job["result"]["sendMessageBatchCalls"], 0);
    let status = app.user(1).get_json("/api/onlyfans/messages/status").await;
    assert_eq!(status["queueDepth"], 0);
    assert!(status["lastProcessedAt"].is_string());
    let c = app
        .user(1)
        .get_json(&format!("/api/crm/campaigns/{campaign}"))
        .await;
    assert_eq!(c["status"], "completed");
    assert_eq!(
        (
            c["metrics"]["sent"].as_i64(),
            c["metrics"]["queued"].as_i64()
        ),
        (Some(3), Some(0))
    );
    assert!(c["completedAt"].is_string());
}

/// SQS unreachable: the job retries (each call 1 s, 2 s, 4 s; then the job again), and after
/// its last attempt every message is failed with the reason; none stays queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sqs_unreachable_the_job_retries_then_fails_the_messages_with_the_reason() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.outbound.sqs_queue_url = Some("http://127.0.0.1:9/000000000000/unreachable".into());
        s.aws_endpoint_url = Some("http://127.0.0.1:9".into());
    })
    .await;
    let (_, campaign, job) = bulk(&app, 12).await;
    let job = app
        .user(1)
        .wait_job_within(&job, std::time::Duration::from_secs(120))
        .await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["attempts"], <BulkSend as JobKind>::RETRY.max_attempts);
    let c = app
        .user(1)
        .get_json(&format!("/api/crm/campaigns/{campaign}"))
        .await;
    assert_eq!(
        (
            c["metrics"]["failed"].as_i64(),
            c["metrics"]["queued"].as_i64()
        ),
        (Some(12), Some(0)),
        "{c}"
    );
    assert_eq!(c["status"], "completed", "every message is final");
    let convs = app.user(1).get_json("/api/crm/conversations").await;
    let conv = &convs["items"][0];
    let msgs = app
        .user(1)
        .get_json(&format!("/api/crm/conversations/{}/messages", conv["id"]))
        .await;
    let m = &msgs["items"][0];
    assert_eq!(m["status"], "failed");
    let error = m["error"].as_str().unwrap();
    assert!(
        error.contains("SendMessageBatch"),
        "the reason says what failed: {error}"
    );
    let status = app
        .operator(999)
        .get_json("/api/onlyfans/messages/status")
        .await;
    assert!(
        status["queueError"].is_string(),
        "the status route says the queue is unreachable: {status}"
    );
}

async fn a_campaigns_recipients_are_its_messages_with_each_fans_handle(app: TestApp) {
    let ids = fans(&app, 1, 3).await;
    let out = app
        .user(1)
        .post_json(
            "/api/messages/bulk",
            &json!({ "recipientIds": [ids[2], ids[0]], "content": "Offer", "campaignName": "R" }),
            StatusCode::ACCEPTED,
        )
        .await;
    let campaign = out["campaignId"].as_i64().unwrap();
    let path = format!("/api/crm/campaigns/{campaign}/recipients");
    let page = app.user(1).get_json(&path).await;
    assert_eq!(page["total"], 2);
    let items = page["items"].as_array().unwrap();
    let mut got: Vec<(i64, String)> = items
        .iter()
        .map(|r| {
            assert_eq!(r["message"]["campaignId"], campaign);
            assert_eq!(r["message"]["text"], "Offer");
            assert!(r["message"]["status"].is_string());
            assert_eq!(
                r["name"],
                format!(
                    "Fan {}",
                    if r["message"]["fanId"] == ids[0] {
                        0
                    } else {
                        2
                    }
                )
            );
            (
                r["message"]["fanId"].as_i64().unwrap(),
                r["handle"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (ids[0], "@u1fan0".to_owned()),
            (ids[2], "@u1fan2".to_owned())
        ]
    );
    let second = app
        .user(1)
        .get_json(&format!("{path}?limit=1&offset=1"))
        .await;
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert_eq!(second["total"], 2);
    // Another creator's campaign is not there for them; a bad page is a 400.
    let other = app.user(2).get(&path).await;
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    let bad = app.user(1).get(&format!("{path}?limit=0")).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

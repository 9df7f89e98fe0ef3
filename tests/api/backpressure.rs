//! Backpressure (the seeds' "Queue Depth Too High"): past its creator's backlog limit a send or
//! a campaign answers 429 `backlog_full` with the backlog and a Retry-After from the delivery
//! rate, and stores nothing.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, error_of, json_of, spawn_api_only};

crate::on_both_backends!(backend:
    a_creator_at_the_backlog_limit_gets_429_backlog_full_and_nothing_is_created,
    concurrent_sends_past_the_limit_fill_exactly_the_room_and_their_estimates_are_a_slot_apart,
);

async fn a_creator_at_the_backlog_limit_gets_429_backlog_full_and_nothing_is_created(
    backend: Backend,
) {
    // No worker: what is queued stays the creator's backlog.
    let app = spawn_api_only(backend, |s| {
        s.api.max_backlog_per_creator = 3;
        s.api.write_limit_per_minute = 1_000;
        s.delivery.delivery_rate_per_minute = 10;
    })
    .await;
    let mut fans = vec![];
    for i in 0..4 {
        let fan = app
            .user(1)
            .create_fan(json!({ "handle": format!("f{i}") }))
            .await;
        fans.push(fan["id"].as_i64().unwrap());
    }
    let send = |fan: i64| json!({ "recipientId": fan, "content": "Hello!" });
    for fan in &fans[..3] {
        let resp = app
            .user(1)
            .post("/api/onlyfans/messages/send", &send(*fan))
            .await;
        json_of(resp, StatusCode::ACCEPTED).await;
    }
    let before = counts(&app).await;

    let resp = app
        .user(1)
        .post("/api/onlyfans/messages/send", &send(fans[3]))
        .await;
    let retry_after = resp.headers().get("retry-after").cloned();
    let err = error_of(resp, StatusCode::TOO_MANY_REQUESTS, "backlog_full").await;
    assert_eq!(err["backlog"], 3, "{err}");
    // One message must drain first: one slot at 10 a minute.
    assert_eq!(retry_after.unwrap(), "6");

    let bulk = json!({ "recipientIds": fans, "content": "Offer", "campaignName": "Full" });
    let resp = app.user(1).post("/api/messages/bulk", &bulk).await;
    let retry_after = resp.headers().get("retry-after").cloned();
    let err = error_of(resp, StatusCode::TOO_MANY_REQUESTS, "backlog_full").await;
    assert_eq!(err["backlog"], 3, "{err}");
    // Room for 4 more on a backlog of 3 with a limit of 3: four slots, 24 s.
    assert_eq!(retry_after.unwrap(), "24");

    assert_eq!(counts(&app).await, before, "nothing was created");
    // Another creator's backlog is their own.
    let other = app.user(2).create_fan(json!({ "handle": "g" })).await;
    let resp = app
        .user(2)
        .post(
            "/api/onlyfans/messages/send",
            &send(other["id"].as_i64().unwrap()),
        )
        .await;
    json_of(resp, StatusCode::ACCEPTED).await;
}

/// Sends arriving together are stored together (one transaction, or one statement on
/// PostgreSQL): the limit still holds send by send within the group.
async fn concurrent_sends_past_the_limit_fill_exactly_the_room_and_their_estimates_are_a_slot_apart(
    backend: Backend,
) {
    let app = spawn_api_only(backend, |s| {
        s.api.max_backlog_per_creator = 5;
        s.api.write_limit_per_minute = 1_000;
        s.delivery.delivery_rate_per_minute = 10;
    })
    .await;
    let mut fans = vec![];
    for i in 0..12 {
        let fan = app
            .user(1)
            .create_fan(json!({ "handle": format!("c{i}") }))
            .await;
        fans.push(fan["id"].as_i64().unwrap());
    }
    let bodies: Vec<Value> = fans
        .iter()
        .map(|fan| json!({ "recipientId": fan, "content": "Hi" }))
        .collect();
    let creator = app.user(1);
    let sends = bodies
        .iter()
        .map(|body| creator.post("/api/onlyfans/messages/send", body));
    let mut accepted = vec![];
    let mut refused = 0;
    for resp in futures::future::join_all(sends).await {
        match resp.status() {
            StatusCode::ACCEPTED => accepted.push(json_of(resp, StatusCode::ACCEPTED).await),
            _ => {
                assert!(resp.headers().contains_key("retry-after"));
                let err = error_of(resp, StatusCode::TOO_MANY_REQUESTS, "backlog_full").await;
                assert_eq!(err["backlog"], 5, "{err}");
                refused += 1;
            }
        }
    }
    assert_eq!((accepted.len(), refused), (5, 7));
    let status = app.user(1).get_json("/api/onlyfans/messages/status").await;
    assert_eq!(status["queueDepth"], 5, "{status}");
    // Each accepted send counted the ones before it: five slots of 6 s, one per message.
    let mut etas: Vec<chrono::DateTime<chrono::Utc>> = accepted
        .iter()
        .map(|a| a["estimatedSendTime"].as_str().unwrap().parse().unwrap())
        .collect();
    etas.sort();
    for pair in etas.windows(2) {
        let gap = (pair[1] - pair[0]).num_milliseconds();
        assert!((5_000..=7_000).contains(&gap), "estimates {etas:?}");
    }
}

/// The creator's queued messages, campaigns and jobs, as the API shows them.
async fn counts(app: &TestApp) -> (Value, Value, Value) {
    let status = app.user(1).get_json("/api/onlyfans/messages/status").await;
    let campaigns = app.user(1).get_json("/api/crm/campaigns").await;
    let jobs = app.user(1).get_json("/api/jobs").await;
    (
        status["queueDepth"].clone(),
        campaigns["total"].clone(),
        jobs["total"].clone(),
    )
}

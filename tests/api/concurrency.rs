//! Many writes at once on the embedded default (SQLite): 50 concurrent requests to each write
//! route answer without a 5xx, every accepted write is there afterwards, and a refused or
//! failed request leaves the caller's quotas as they were.

use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, generated_csv, json_of, spawn_app};

const N: usize = 50;

/// Sends `N` requests built by `request` at once; returns each status and JSON body.
async fn burst(request: impl Fn(usize) -> RequestBuilder) -> Vec<(StatusCode, Value)> {
    let sends = (0..N).map(|i| {
        let req = request(i);
        async move {
            let resp = req.send().await.expect("request sent");
            let status = resp.status();
            let text = resp.text().await.expect("a body");
            let body = serde_json::from_str(&text).unwrap_or(Value::Null);
            (status, body)
        }
    });
    futures::future::join_all(sends).await
}

/// Asserts no 5xx and that every answer is `ok` or a 429 with the `rate_limited` code;
/// returns the accepted bodies.
fn accepted(results: &[(StatusCode, Value)], ok: StatusCode, route: &str) -> Vec<Value> {
    let mut bodies = vec![];
    for (status, body) in results {
        assert!(
            !status.is_server_error(),
            "{route}: a 5xx under concurrency: {status} {body}"
        );
        if *status == ok {
            bodies.push(body.clone());
        } else {
            assert_eq!(
                *status,
                StatusCode::TOO_MANY_REQUESTS,
                "{route}: unexpected answer {body}"
            );
            assert_eq!(body["error"]["code"], "rate_limited", "{route}: {body}");
        }
    }
    bodies
}

/// Spends what is left of `user`'s write quota on fan creations and returns how many got in
/// before the first 429 (at most 61 tries).
async fn writes_left(app: &TestApp, user: i64) -> usize {
    for i in 0..=60 {
        let resp = app
            .user(user)
            .post("/api/crm/fans", &json!({ "handle": format!("left{i}") }))
            .await;
        match resp.status() {
            StatusCode::CREATED => {}
            StatusCode::TOO_MANY_REQUESTS => return i,
            other => panic!("spending the write quota: unexpected {other}"),
        }
    }
    panic!("more than 60 writes in a minute were accepted")
}

/// How many messages the conversation holds.
async fn messages_in(app: &TestApp, user: i64, conv: i64) -> usize {
    let path = format!("/api/crm/conversations/{conv}/messages?limit=1");
    let page = app.user(user).get_json(&path).await;
    page["total"].as_u64().unwrap() as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_writes_per_route_answer_without_5xx_and_keep_every_accepted_write() {
    let app = spawn_app(Backend::Sqlite).await;

    // Fans: 50 creations at once, all under the write quota.
    let user = 1;
    let results = burst(|i| {
        app.user(user)
            .request(Method::POST, "/api/crm/fans")
            .json(&json!({ "handle": format!("fan{i}") }))
    })
    .await;
    let ok = accepted(&results, StatusCode::CREATED, "create fan");
    assert_eq!(ok.len(), N);
    assert_eq!(app.user(user).fan_total().await, N as i64);

    // Inbound messages into one conversation.
    let user = 2;
    let (_, conv) = app.user(user).fan_with_conversation("@in").await;
    let results = burst(|i| {
        app.user(user)
            .request(
                Method::POST,
                &format!("/api/crm/conversations/{conv}/inbound"),
            )
            .json(&json!({ "text": format!("hi {i}"), "externalId": format!("ext-{i}") }))
    })
    .await;
    let ok = accepted(&results, StatusCode::CREATED, "inbound");
    assert_eq!(ok.len(), N);
    assert_eq!(
        messages_in(&app, user, conv).await,
        N,
        "every inbound message is stored once"
    );
    let convs = app.user(user).get_json("/api/crm/conversations").await;
    assert_eq!(
        convs["items"][0]["unreadCount"], N,
        "every one counted unread"
    );

    // Sends into one conversation.
    let user = 3;
    let (_, conv) = app.user(user).fan_with_conversation("@conv").await;
    let results = burst(|i| {
        app.user(user)
            .request(
                Method::POST,
                &format!("/api/crm/conversations/{conv}/messages"),
            )
            .json(&json!({ "text": format!("reply {i}") }))
    })
    .await;
    let ok = accepted(&results, StatusCode::ACCEPTED, "conversation send");
    assert_eq!(ok.len(), N);
    assert_eq!(messages_in(&app, user, conv).await, N);

    // Single sends to one fan.
    let user = 4;
    let fan = app
        .user(user)
        .create_fan(json!({ "handle": "@single" }))
        .await["id"]
        .clone();
    let results = burst(|i| {
        app.user(user)
            .request(Method::POST, "/api/onlyfans/messages/send")
            .json(&json!({ "recipientId": fan, "content": format!("hello {i}") }))
    })
    .await;
    let ok = accepted(&results, StatusCode::ACCEPTED, "single send");
    assert_eq!(ok.len(), N);
    let ids: std::collections::HashSet<i64> = ok
        .iter()
        .map(|b| b["messageId"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), N, "one message per accepted send");

    // Bulk sends: 5 campaigns an hour; the 45 refused ones must not use the write quota.
    let user = 5;
    let mut fans = vec![];
    for i in 0..3 {
        fans.push(
            app.user(user)
                .create_fan(json!({ "handle": format!("@bulk{i}") }))
                .await["id"]
                .clone(),
        );
    }
    let results = burst(|i| {
        app.user(user).request(Method::POST, "/api/messages/bulk").json(
            &json!({ "recipientIds": fans, "content": "offer", "campaignName": format!("c{i}") }),
        )
    })
    .await;
    let ok = accepted(&results, StatusCode::ACCEPTED, "bulk");
    assert_eq!(ok.len(), 5, "5 campaigns an hour");
    let campaigns = app.user(user).get_json("/api/crm/campaigns").await;
    assert_eq!(campaigns["total"], 5, "every accepted campaign exists");
    assert_eq!(
        writes_left(&app, user).await,
        60 - 3 - 5,
        "only the 3 fans and the 5 accepted campaigns used the write quota"
    );

    // Imports: 10 an hour; the 40 refused ones must not use the write quota.
    let user = 6;
    let results = burst(|i| {
        let part =
            reqwest::multipart::Part::bytes(generated_csv(20)).file_name(format!("fans{i}.csv"));
        app.user(user)
            .request(Method::POST, "/api/onlyfans/import/csv")
            .multipart(reqwest::multipart::Form::new().part("file", part))
    })
    .await;
    let ok = accepted(&results, StatusCode::ACCEPTED, "import");
    assert_eq!(ok.len(), 10, "10 imports an hour");
    for body in &ok {
        let job = app
            .user(user)
            .wait_job(body["jobId"].as_str().unwrap())
            .await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    let jobs = app.user(user).get_json("/api/jobs?kind=import_csv").await;
    assert_eq!(jobs["total"], 10, "every accepted import is a job");
    assert_eq!(
        app.user(user).fan_total().await,
        20,
        "the same 20 fans each time"
    );
    assert_eq!(writes_left(&app, user).await, 60 - 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_requests_leave_the_callers_quotas_as_they_were() {
    let app = spawn_app(Backend::Sqlite).await;
    let other = app.user(2).create_fan(json!({ "handle": "@theirs" })).await["id"].clone();
    let user = 1;
    let mine = app
        .user(user)
        .create_fan(json!({ "handle": "@mine" }))
        .await["id"]
        .clone();

    // 400s: bad bodies on every write route; 404s: another user's ids.
    let bad =
        burst(|i| {
            match i % 5 {
        0 => app.user(user).request(Method::POST, "/api/crm/fans").json(&json!({ "handle": "" })),
        1 => app.user(user).request(Method::POST, "/api/onlyfans/messages/send")
            .json(&json!({ "recipientId": other, "content": "not yours" })),
        2 => app.user(user).request(Method::POST, "/api/messages/bulk").json(
            &json!({ "recipientIds": [mine, other], "content": "x", "campaignName": "mixed" }),
        ),
        3 => app
            .user(user)
            .request(Method::PUT, &format!("/api/crm/fans/{other}"))
            .json(&json!({ "notes": "not yours" })),
        _ => app.user(user).request(Method::POST, "/api/onlyfans/import/csv").multipart(
            reqwest::multipart::Form::new().part(
                "file",
                reqwest::multipart::Part::bytes(b"a,b\n".to_vec()).file_name("fans.txt"),
            ),
        ),
    }
        })
        .await;
    // Each answers with its own 4xx; a bad bulk may also meet a 429 while other bad bulks
    // hold the campaign slots they are about to give back.
    for (i, (status, body)) in bad.iter().enumerate() {
        assert!(status.is_client_error(), "a client error: {status} {body}");
        if i % 5 != 2 {
            assert_ne!(*status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        }
    }

    // None of the 50 failures counted: one campaign and one import still go through, and
    // the write quota holds its 60 less the fan and those two.
    let resp = app
        .user(user)
        .post(
            "/api/messages/bulk",
            &json!({ "recipientIds": [mine], "content": "x", "campaignName": "fine" }),
        )
        .await;
    json_of(resp, StatusCode::ACCEPTED).await;
    let resp = app
        .user(user)
        .upload_csv("fans.csv", generated_csv(3), "")
        .await;
    json_of(resp, StatusCode::ACCEPTED).await;
    assert_eq!(writes_left(&app, user).await, 60 - 3);

    // Nothing the failures asked for exists.
    let campaigns = app.user(user).get_json("/api/crm/campaigns").await;
    assert_eq!(campaigns["total"], 1);
    let theirs = app
        .user(2)
        .get_json(&format!("/api/crm/fans/{other}"))
        .await;
    assert!(theirs["notes"].is_null(), "{theirs}");
}

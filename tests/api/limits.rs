//! 60 writes a minute per user, then 429 with Retry-After; reads are never limited; with
//! REDIS_URL set, every API process draws on one budget.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{AppProcess, JWT_SECRET, TestApp, TestDb, error_of, redis_url};

crate::on_both_backends!(the_61st_write_in_a_minute_is_a_429_and_reads_go_on);

async fn the_61st_write_in_a_minute_is_a_429_and_reads_go_on(app: TestApp) {
    for i in 0..60 {
        let resp = app
            .user(1)
            .post("/api/crm/fans", &json!({ "handle": format!("fan{i}") }))
            .await;
        assert_eq!(resp.status(), StatusCode::CREATED, "write {} of 60", i + 1);
    }
    let resp = app
        .user(1)
        .post("/api/crm/fans", &json!({ "handle": "one-too-many" }))
        .await;
    let retry_after: u64 = resp
        .headers()
        .get("retry-after")
        .expect("a 429 carries Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in whole seconds");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    error_of(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // PUT and DELETE draw on the same budget.
    let resp = app.user(1).delete("/api/crm/fans/1").await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);

    // Reads are not limited, and the refused writes wrote nothing.
    for _ in 0..100 {
        let page = app.user(1).get_json("/api/crm/fans?limit=1").await;
        assert_eq!(page["total"], 60);
    }
    // Another user has a budget of their own.
    app.user(2).create_fan(json!({ "handle": "fresh" })).await;
}

/// Two `fanqueue serve` processes on one PostgreSQL and one Redis: 40 writes through each
/// leave the 61st and later refused wherever they land.
#[tokio::test]
async fn two_api_processes_share_one_budget_through_redis() {
    let (_db, url) = TestDb::create(crate::helpers::Backend::Postgres).await;
    let prefix = format!("fqtest-{}", uuid::Uuid::new_v4().simple());
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("REDIS_URL", &redis_url()),
        ("REDIS_PREFIX", &prefix),
        ("JWT_SECRET", JWT_SECRET),
    ];
    let a = AppProcess::spawn(&["serve"], &env, dir.path());
    let b = AppProcess::spawn(&["serve"], &env, dir.path());
    let keys = fanqueue::auth::JwtKeys::new(&secrecy::SecretString::from(JWT_SECRET));
    let token = keys.issue(
        fanqueue_jobs::domain::UserId(7),
        std::time::Duration::from_secs(600),
    );
    let client = reqwest::Client::new();
    let mut created = 0;
    let mut limited = 0;
    for i in 0..80 {
        let base = if i % 2 == 0 { &a.address } else { &b.address };
        let resp = client
            .post(format!("{base}/api/crm/fans"))
            .bearer_auth(&token)
            .json(&json!({ "handle": format!("f{i}") }))
            .send()
            .await
            .unwrap();
        match resp.status() {
            StatusCode::CREATED => created += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(resp.headers().contains_key("retry-after"));
                limited += 1;
            }
            other => panic!("write {i}: unexpected {other}"),
        }
    }
    assert_eq!(
        (created, limited),
        (60, 20),
        "one budget of 60 across both processes"
    );
    let page: serde_json::Value = client
        .get(format!("{}/api/crm/fans?limit=1", b.address))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["total"], 60);
}

//! Bad input gets a 4xx JSON error naming what is wrong, changes nothing, and never a 5xx.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, error_of};

crate::on_both_backends!(
    // These tests send many writes; the quota is tested in limits.rs.
    tweak = |s| s.api.write_limit_per_minute = 10_000;
    bad_fan_bodies_are_400s_naming_the_field,
    a_one_megabyte_name_is_a_400,
    invalid_utf8_and_non_json_bodies_are_400s,
    bad_ids_and_query_parameters_are_400s,
    a_sweep_of_malformed_requests_never_gets_a_5xx,
);

async fn post_raw(
    app: &TestApp,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(app.token(1))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn assert_nothing_created(app: &TestApp) {
    let page = app.user(1).get_json("/api/crm/fans").await;
    assert_eq!(page["total"], 0, "a refused request created a fan");
}

async fn bad_fan_bodies_are_400s_naming_the_field(app: TestApp) {
    let cases: Vec<(Value, &str)> = vec![
        (json!({ "handle": "x", "valueCents": "lots" }), "valueCents"),
        (json!({ "handle": "x", "valueCents": -1 }), "valueCents"),
        (json!({ "handle": "x", "valueCents": 1.5 }), "valueCents"),
        (json!({ "handle": 42 }), "handle"),
        (json!({ "name": "no handle" }), "handle"),
        (json!({ "handle": "x", "isAdmin": true }), "isAdmin"),
        (json!({ "handle": "x", "email": "not-an-email" }), "email"),
        (
            json!({ "handle": "x", "avatarUrl": "javascript:alert(1)" }),
            "avatarUrl",
        ),
        (json!({ "handle": "x", "platform": "myspace" }), "platform"),
        (json!({ "handle": "x", "tags": "vip" }), "tags"),
        (
            json!({ "handle": "x", "lastSeenAt": "yesterday" }),
            "lastSeenAt",
        ),
        (json!({ "handle": "two words" }), "handle"),
    ];
    for (body, field) in cases {
        let resp = app.user(1).post("/api/crm/fans", &body).await;
        let err = error_of(resp, StatusCode::BAD_REQUEST, "invalid_field").await;
        assert!(
            err["message"].as_str().unwrap().contains(field),
            "{body}: the message must name {field}: {err}"
        );
    }
    assert_nothing_created(&app).await;

    let fan = app
        .user(1)
        .create_fan(json!({ "handle": "ok", "valueCents": 10 }))
        .await;
    let path = format!("/api/crm/fans/{}", fan["id"]);
    for (body, field) in [
        (json!({ "valueCents": -5 }), "valueCents"),
        (json!({ "handle": "@renamed" }), "handle"),
        (json!({ "tags": [""] }), "tags"),
    ] {
        let err = error_of(
            app.user(1).put(&path, &body).await,
            StatusCode::BAD_REQUEST,
            "invalid_field",
        )
        .await;
        assert!(
            err["message"].as_str().unwrap().contains(field),
            "{body}: {err}"
        );
    }
    let after = app.user(1).get_json(&path).await;
    assert_eq!(
        crate::fans::without_history(&after),
        fan,
        "a refused update changed the fan"
    );
}

async fn a_one_megabyte_name_is_a_400(app: TestApp) {
    let body = json!({ "handle": "big", "name": "n".repeat(1024 * 1024) });
    let err = error_of(
        app.user(1).post("/api/crm/fans", &body).await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
    )
    .await;
    assert_eq!(err["field"], "name");
    assert_nothing_created(&app).await;
    // Past the body limit the answer is 413, still JSON.
    let huge = json!({ "handle": "big", "notes": "n".repeat(3 * 1024 * 1024) });
    error_of(
        app.user(1).post("/api/crm/fans", &huge).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
}

async fn invalid_utf8_and_non_json_bodies_are_400s(app: TestApp) {
    let invalid_utf8 = b"{\"handle\":\"\xff\xfe\"}".to_vec();
    let err = error_of(
        post_raw(&app, "/api/crm/fans", "application/json", invalid_utf8).await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
    )
    .await;
    assert_eq!(err["field"], "handle");
    error_of(
        post_raw(
            &app,
            "/api/crm/fans",
            "application/json",
            b"{not json".to_vec(),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_body",
    )
    .await;
    error_of(
        post_raw(&app, "/api/crm/fans", "application/json", b"[1,2]".to_vec()).await,
        StatusCode::BAD_REQUEST,
        "invalid_body",
    )
    .await;
    error_of(
        post_raw(&app, "/api/crm/fans", "application/json", vec![]).await,
        StatusCode::BAD_REQUEST,
        "empty_body",
    )
    .await;
    error_of(
        post_raw(
            &app,
            "/api/crm/fans",
            "application/json",
            b"{\"handle\":\"a\"} {}".to_vec(),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_body",
    )
    .await;
    let resp = post_raw(&app, "/api/crm/fans", "text/plain", b"handle=x".to_vec()).await;
    error_of(
        resp,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    assert_nothing_created(&app).await;
}

async fn bad_ids_and_query_parameters_are_400s(app: TestApp) {
    for path in [
        "/api/crm/fans/abc",
        "/api/crm/fans/1.5",
        "/api/crm/fans/99999999999999999999",
        "/api/crm/conversations/x/messages",
    ] {
        let err = error_of(
            app.user(1).get(path).await,
            StatusCode::BAD_REQUEST,
            "invalid_field",
        )
        .await;
        assert_eq!(err["field"], "id", "{path}");
    }
    for (path, field) in [
        ("/api/crm/fans?limit=0", "limit"),
        ("/api/crm/fans?limit=abc", "limit"),
        ("/api/crm/fans?offset=-1", "offset"),
        ("/api/crm/fans?minValueCents=-3", "minValueCents"),
        ("/api/crm/fans?minValueCents=lots", "minValueCents"),
        ("/api/crm/fans?tag=%00", "tag"),
    ] {
        let err = error_of(
            app.user(1).get(path).await,
            StatusCode::BAD_REQUEST,
            "invalid_field",
        )
        .await;
        assert_eq!(err["field"], field, "{path}");
    }
    // Ids that parse but are nobody's are 404s.
    for path in [
        "/api/crm/fans/0",
        "/api/crm/fans/-4",
        "/api/crm/conversations/123456",
    ] {
        error_of(
            app.user(1).get(path).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
}

async fn a_sweep_of_malformed_requests_never_gets_a_5xx(app: TestApp) {
    let (_, conv) = app.user(1).fan_with_conversation("target").await;
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"null".to_vec(),
        b"true".to_vec(),
        b"\"s\"".to_vec(),
        b"{}".to_vec(),
        b"{\"text\":null}".to_vec(),
        b"{\"text\":\"\"}".to_vec(),
        b"{\"text\":\"   \"}".to_vec(),
        b"{\"text\":\"a\",\"priceCents\":-1}".to_vec(),
        b"{\"text\":\"a\",\"priceCents\":1e99}".to_vec(),
        b"{\"text\":\"a\",\"attachments\":[{\"type\":\"image\",\"url\":\"file:///etc/passwd\"}]}"
            .to_vec(),
        b"{\"text\":\"a\",\"attachments\":[{\"type\":\"\",\"url\":\"https://x.io/a\"}]}".to_vec(),
        b"{\"text\":\"a\",\"receivedAt\":\"31/12/2025\"}".to_vec(),
        b"{\"fanId\":\"one\"}".to_vec(),
        b"{\"fanId\":\"1.5\"}".to_vec(),
        b"{\"fanId\":9223372036854775808}".to_vec(),
        "{\"text\":\"\u{0}\"}".as_bytes().to_vec(),
        vec![0xde, 0xad, 0xbe, 0xef],
        br#"{"text":"a\u0000b"}"#.to_vec(),
        br#"{"text":"a","externalId":"x\u0000"}"#.to_vec(),
        br#"{"handle":"a","name":"n\u0000"}"#.to_vec(),
        br#"{"handle":"a","notes":"\u0000"}"#.to_vec(),
        br#"{"handle":"a","email":"a\u0000@x.io"}"#.to_vec(),
    ];
    let paths = [
        "/api/crm/fans".to_owned(),
        "/api/crm/conversations".to_owned(),
        format!("/api/crm/conversations/{conv}/inbound"),
        format!("/api/crm/fans/{}", 1),
    ];
    for path in &paths {
        for body in &bodies {
            for method in [reqwest::Method::POST, reqwest::Method::PUT] {
                let resp = app
                    .client
                    .request(method.clone(), app.url(path))
                    .bearer_auth(app.token(1))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                let status = resp.status();
                let text = resp.text().await.unwrap();
                // An empty patch of an existing fan is a valid no-op; everything else is refused.
                let noop = method == reqwest::Method::PUT
                    && path.starts_with("/api/crm/fans/")
                    && body == b"{}";
                assert!(
                    status.is_client_error() || (noop && status == StatusCode::OK),
                    "{method} {path} {body:?}: {status} {text}"
                );
                let v: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
                assert!(
                    noop || v["error"]["code"].is_string(),
                    "{method} {path}: {text}"
                );
            }
        }
    }
    let c = app
        .user(1)
        .get_json(&format!("/api/crm/conversations/{conv}"))
        .await;
    assert_eq!(
        c["unreadCount"], 0,
        "no malformed inbound message was recorded"
    );
}

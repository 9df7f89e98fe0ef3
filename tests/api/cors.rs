//! CORS, as a browser sees it: the preflight it sends before a page on another origin may call
//! the API, and the headers that let the page read an answer. The browser test
//! (tests/browser/app.test.mjs) checks the same from pages in Chromium.

use reqwest::{Method, Response, StatusCode, header};
use serde_json::json;

use crate::helpers::{Backend, TestApp, error_of, run_fanqueue, spawn_api_only};

const PAGE: &str = "http://127.0.0.1:3000";
const OTHER: &str = "http://127.0.0.1:3001";

async fn with_origins(
    origins: &str,
    tweak: impl FnOnce(&mut fanqueue::settings::Settings),
) -> TestApp {
    let origins = origins.parse().expect("origins parse");
    spawn_api_only(Backend::Sqlite, |s| {
        s.api.cors_allowed_origins = origins;
        tweak(s);
    })
    .await
}

/// A browser's preflight for a JSON POST with a bearer token and an idempotency key.
async fn preflight(
    app: &TestApp,
    path: &str,
    origin: &str,
    method: &str,
    headers: &str,
) -> Response {
    app.client
        .request(Method::OPTIONS, app.url(path))
        .header(header::ORIGIN, origin)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, method)
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, headers)
        .send()
        .await
        .expect("request sent")
}

/// A header's comma-separated values, lower-cased.
fn listed(resp: &Response, name: header::HeaderName) -> Vec<String> {
    resp.headers()
        .get_all(name)
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        .collect()
}

fn no_cors_headers(resp: &Response, what: &str) {
    let cors: Vec<_> = resp
        .headers()
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .collect();
    assert!(cors.is_empty(), "{what}: {cors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_origin_gets_its_preflight_answered_before_tokens_and_quotas() {
    // One write a minute: the preflight of a second write must still pass.
    let app = with_origins(&format!("{PAGE},https://app.example.com"), |s| {
        s.api.write_limit_per_minute = 1;
    })
    .await;
    let path = "/api/crm/fans";
    let headers = "authorization, content-type, idempotency-key";
    for _ in 0..3 {
        let resp = preflight(&app, path, PAGE, "POST", headers).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], PAGE);
        let methods = listed(&resp, header::ACCESS_CONTROL_ALLOW_METHODS);
        for m in ["get", "post", "put", "delete"] {
            assert!(methods.contains(&m.to_owned()), "{m} in {methods:?}");
        }
        let allowed = listed(&resp, header::ACCESS_CONTROL_ALLOW_HEADERS);
        for h in ["authorization", "content-type", "idempotency-key"] {
            assert!(allowed.contains(&h.to_owned()), "{h} in {allowed:?}");
        }
        assert_eq!(resp.headers()[header::ACCESS_CONTROL_MAX_AGE], "600");
        assert!(
            !resp
                .headers()
                .contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS),
            "bearer tokens, not cookies: no credentials"
        );
    }

    // The page's write itself: its answer names the origin and the headers the page may read.
    let token = app.token(1);
    let create = |handle: &str| {
        app.client
            .post(app.url(path))
            .header(header::ORIGIN, PAGE)
            .bearer_auth(&token)
            .json(&json!({ "handle": handle }))
            .send()
    };
    let resp = create("first").await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], PAGE);
    let exposed = listed(&resp, header::ACCESS_CONTROL_EXPOSE_HEADERS);
    for h in ["retry-after", "location", "idempotent-replayed"] {
        assert!(exposed.contains(&h.to_owned()), "{h} in {exposed:?}");
    }
    assert!(listed(&resp, header::VARY).contains(&"origin".to_owned()));

    // Over the quota: the 429 is readable by the page, Retry-After included; the preflight
    // before it was not charged and still answers.
    let resp = preflight(&app, path, PAGE, "POST", headers).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = create("second").await.unwrap();
    assert_eq!(resp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], PAGE);
    assert!(resp.headers().contains_key(header::RETRY_AFTER));
    error_of(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;

    // The second listed origin, in the form a browser sends it.
    let resp = preflight(
        &app,
        "/api/jobs/x",
        "https://app.example.com",
        "GET",
        "authorization",
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://app.example.com"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_origin_gets_no_allow_origin_and_its_preflight_a_json_403() {
    let app = with_origins(PAGE, |_| {}).await;
    let resp = preflight(
        &app,
        "/api/crm/fans",
        OTHER,
        "POST",
        "authorization, content-type",
    )
    .await;
    no_cors_headers(&resp, "preflight from another origin");
    error_of(resp, StatusCode::FORBIDDEN, "forbidden").await;

    // Its requests are served as without CORS (a non-browser client may send any Origin), but
    // nothing tells a browser to share the answer with the page.
    let resp = app
        .client
        .get(app.url("/api/crm/fans"))
        .header(header::ORIGIN, OTHER)
        .bearer_auth(app.token(1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    no_cors_headers(&resp, "GET from another origin");
    assert!(listed(&resp, header::VARY).contains(&"origin".to_owned()));

    // The web app at /app is on the API's own origin: its writes (browsers send Origin with
    // them) go through untouched.
    let resp = app
        .client
        .post(app.url("/api/crm/fans"))
        .header(header::ORIGIN, &app.address)
        .bearer_auth(app.token(1))
        .json(&json!({ "handle": "same-origin" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    no_cors_headers(&resp, "POST from the API's own origin");

    // A listed origin asking for a method or a header the API does not take.
    let resp = preflight(&app, "/api/crm/fans/1", PAGE, "PATCH", "authorization").await;
    no_cors_headers(&resp, "preflight for PATCH");
    error_of(resp, StatusCode::FORBIDDEN, "forbidden").await;
    let resp = preflight(&app, "/api/crm/fans", PAGE, "POST", "x-custom").await;
    no_cors_headers(&resp, "preflight for x-custom");
    error_of(resp, StatusCode::FORBIDDEN, "forbidden").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_setting_no_cors_header_is_sent() {
    let app = spawn_api_only(Backend::Sqlite, |_| {}).await;
    assert!(app.settings.api.cors_allowed_origins.is_empty());
    let resp = preflight(
        &app,
        "/api/crm/fans",
        PAGE,
        "POST",
        "authorization, content-type",
    )
    .await;
    no_cors_headers(&resp, "preflight");
    assert!(resp.status().is_client_error(), "{}", resp.status());
    let resp = app
        .client
        .post(app.url("/api/crm/fans"))
        .header(header::ORIGIN, PAGE)
        .bearer_auth(app.token(1))
        .json(&json!({ "handle": "anyone" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    no_cors_headers(&resp, "POST with an Origin");
}

#[test]
fn a_malformed_origin_stops_the_server_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_fanqueue(
        dir.path(),
        &["serve"],
        &[(
            "CORS_ALLOWED_ORIGINS",
            "https://app.example.com,app.example.com",
        )],
    );
    assert!(!out.status.success(), "fanqueue serve started");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("CORS_ALLOWED_ORIGINS: `app.example.com` is not an origin"),
        "{stderr}"
    );
    assert!(!dir.path().join("data").exists(), "nothing was created");
}

//! Every /api route wants a valid HS256 bearer token; anything else is a JSON 401.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{JWT_SECRET, TestApp, error_of, json_of};

crate::on_both_backends!(
    bad_tokens_get_a_json_401_on_reads_and_writes,
    a_valid_token_gets_in
);

fn signed(claims: Value, secret: &str, alg: Algorithm) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn unsigned(claims: Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    format!("{header}.{}.", URL_SAFE_NO_PAD.encode(claims.to_string()))
}

async fn bad_tokens_get_a_json_401_on_reads_and_writes(app: TestApp) {
    let now = chrono::Utc::now().timestamp();
    let later = now + 3600;
    let bad: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("not a JWT", Some("Bearer not-a-jwt".into())),
        ("basic scheme", Some("Basic dXNlcjpwYXNz".into())),
        ("empty bearer", Some("Bearer ".into())),
        (
            "expired",
            Some(format!(
                "Bearer {}",
                signed(
                    json!({ "sub": "1", "exp": now - 3600 }),
                    JWT_SECRET,
                    Algorithm::HS256
                )
            )),
        ),
        (
            "wrong secret",
            Some(format!(
                "Bearer {}",
                signed(
                    json!({ "sub": "1", "exp": later }),
                    "some-other-secret-xxxxxxxx",
                    Algorithm::HS256
                )
            )),
        ),
        (
            "alg none",
            Some(format!(
                "Bearer {}",
                unsigned(json!({ "sub": "1", "exp": later }))
            )),
        ),
        (
            "HS512",
            Some(format!(
                "Bearer {}",
                signed(
                    json!({ "sub": "1", "exp": later }),
                    JWT_SECRET,
                    Algorithm::HS512
                )
            )),
        ),
        (
            "no exp",
            Some(format!(
                "Bearer {}",
                signed(json!({ "sub": "1" }), JWT_SECRET, Algorithm::HS256)
            )),
        ),
        (
            "non-numeric sub",
            Some(format!(
                "Bearer {}",
                signed(
                    json!({ "sub": "alice", "exp": later }),
                    JWT_SECRET,
                    Algorithm::HS256
                )
            )),
        ),
    ];
    for (what, header) in bad {
        for write in [false, true] {
            let mut req = if write {
                app.client
                    .post(app.url("/api/crm/fans"))
                    .json(&json!({ "handle": "x" }))
            } else {
                app.client.get(app.url("/api/crm/fans"))
            };
            if let Some(h) = &header {
                req = req.header("Authorization", h);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(
                resp.status(),
                StatusCode::UNAUTHORIZED,
                "{what} (write: {write})"
            );
            error_of(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
        }
    }
    // Nothing was written by any of those.
    let page = app.user(1).get_json("/api/crm/fans").await;
    assert_eq!(page["total"], 0);
}

async fn a_valid_token_gets_in(app: TestApp) {
    let later = chrono::Utc::now().timestamp() + 60;
    // A numeric `sub` is accepted as well as the string form.
    let token = signed(
        json!({ "sub": 5, "exp": later }),
        JWT_SECRET,
        Algorithm::HS256,
    );
    let resp = app
        .client
        .get(app.url("/api/crm/fans"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    json_of(resp, StatusCode::OK).await;
}

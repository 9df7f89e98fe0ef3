//! Operators live in the Swagger UI: the OpenAPI document must describe every route.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{Backend, spawn_app};

#[tokio::test]
async fn openapi_documents_every_crm_route_with_bearer_security() {
    let app = spawn_app(Backend::Sqlite).await;
    let resp = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let doc: Value = resp.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(
        doc["components"]["securitySchemes"]["BearerAuth"]["scheme"],
        "bearer"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["BearerAuth"]["bearerFormat"],
        "JWT"
    );

    let expected = [
        ("/api/crm/fans", "get", "listFans"),
        ("/api/crm/fans", "post", "createFan"),
        ("/api/crm/fans/{id}", "get", "getFan"),
        ("/api/crm/fans/{id}", "put", "updateFan"),
        ("/api/crm/fans/{id}", "delete", "deleteFan"),
        ("/api/crm/conversations", "get", "listConversations"),
        ("/api/crm/conversations", "post", "openConversation"),
        ("/api/crm/conversations/{id}", "get", "getConversation"),
        (
            "/api/crm/conversations/{id}/messages",
            "get",
            "listMessages",
        ),
        (
            "/api/crm/conversations/{id}/inbound",
            "post",
            "recordInboundMessage",
        ),
        (
            "/api/crm/conversations/{id}/read",
            "post",
            "markConversationRead",
        ),
        ("/api/onlyfans/import/csv", "post", "importCsv"),
        ("/api/jobs", "get", "listJobs"),
        ("/api/jobs/{id}", "get", "getJob"),
        ("/api/jobs/{id}", "delete", "cancelJob"),
        ("/api/onlyfans/messages/send", "post", "sendMessage"),
        ("/api/onlyfans/messages/status", "get", "messageQueueStatus"),
        ("/api/messages/bulk", "post", "sendBulk"),
        (
            "/api/crm/conversations/{id}/messages",
            "post",
            "sendInConversation",
        ),
        ("/api/crm/campaigns", "get", "listCampaigns"),
        ("/api/crm/campaigns/{id}", "get", "getCampaign"),
        (
            "/api/crm/campaigns/{id}/recipients",
            "get",
            "listCampaignRecipients",
        ),
        (
            "/api/crm/campaigns/{id}/retry-failed",
            "post",
            "retryCampaignFailed",
        ),
        ("/api/onlyfans/messages/failed", "get", "listFailedMessages"),
        (
            "/api/onlyfans/messages/failed/{id}/retry",
            "post",
            "retryFailedMessage",
        ),
        ("/api/monitoring/onlyfans", "get", "monitoring"),
        ("/metrics", "get", "metrics"),
        (
            "/api/crm/fans/{id}/value-history",
            "get",
            "listFanValueHistory",
        ),
        ("/api/onlyfans/events", "post", "reportEvents"),
        ("/api/crm/analytics", "get", "getAnalytics"),
    ];
    for (path, method, operation_id) in expected {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not documented");
        assert_eq!(op["operationId"], operation_id, "{method} {path}");
        assert_eq!(
            op["security"],
            serde_json::json!([{ "BearerAuth": [] }]),
            "{method} {path}"
        );
        assert!(
            op["summary"].as_str().is_some_and(|s| !s.is_empty()),
            "{method} {path} has no summary"
        );
        for status in ["400", "401", "429"] {
            assert!(
                op["responses"][status].is_object(),
                "{method} {path} does not document {status}"
            );
        }
    }
    let ops: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    assert_eq!(
        ops,
        expected.len(),
        "an undocumented or unexpected operation appeared"
    );
    let delete = &doc["paths"]["/api/crm/fans/{id}"]["delete"]["responses"];
    assert!(delete["204"].is_object(), "DELETE documents its 204");
    assert!(doc["paths"]["/api/crm/fans"]["post"]["requestBody"]["content"]["application/json; charset=utf-8"].is_object());
    let upload = &doc["paths"]["/api/onlyfans/import/csv"]["post"];
    let form = &upload["requestBody"]["content"]["multipart/form-data"]["schema"];
    assert!(
        form.is_object(),
        "the upload documents its multipart form: {upload}"
    );
    for status in ["202", "413", "415"] {
        assert!(
            upload["responses"][status].is_object(),
            "the upload documents {status}"
        );
    }
}

#[tokio::test]
async fn swagger_ui_and_health_are_served() {
    let app = spawn_app(Backend::Sqlite).await;
    let resp = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let html = resp.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "the /docs page is Swagger UI");
    let health: Value = app
        .client
        .get(app.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
}

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
        ("/api/crm/segments", "get", "listSegments"),
        ("/api/crm/segments", "post", "createSegment"),
        ("/api/crm/segments/preview", "post", "previewFilter"),
        ("/api/crm/segments/{id}", "get", "getSegment"),
        ("/api/crm/segments/{id}", "put", "updateSegment"),
        ("/api/crm/segments/{id}", "delete", "deleteSegment"),
        ("/api/crm/segments/{id}/preview", "get", "previewSegment"),
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
        ("/api/crm/campaigns", "post", "createCampaign"),
        ("/api/crm/campaigns/{id}/pause", "post", "pauseCampaign"),
        ("/api/crm/campaigns/{id}/resume", "post", "resumeCampaign"),
        ("/api/crm/campaigns/{id}/cancel", "post", "cancelCampaign"),
        ("/api/crm/campaigns/{id}/runs", "get", "listCampaignRuns"),
        ("/api/crm/automations", "get", "listAutomations"),
        ("/api/crm/automations", "post", "createAutomation"),
        ("/api/crm/automations/{id}", "get", "getAutomation"),
        ("/api/crm/automations/{id}", "put", "updateAutomation"),
        ("/api/crm/automations/{id}", "delete", "deleteAutomation"),
        ("/api/crm/automations/{id}/pause", "post", "pauseAutomation"),
        (
            "/api/crm/automations/{id}/resume",
            "post",
            "resumeAutomation",
        ),
        (
            "/api/crm/automations/{id}/enrollments",
            "get",
            "listEnrollments",
        ),
        ("/api/crm/fans/{id}/timeline", "get", "fanTimeline"),
        ("/api/onlyfans/messages/failed", "get", "listFailedMessages"),
        (
            "/api/onlyfans/messages/failed/{id}/retry",
            "post",
            "retryFailedMessage",
        ),
        ("/api/monitoring/onlyfans", "get", "monitoring"),
        ("/metrics", "get", "metrics"),
        ("/api/onlyfans/events", "post", "reportEvents"),
        (
            "/api/crm/fans/{id}/value-history",
            "get",
            "listFanValueHistory",
        ),
        ("/api/crm/analytics", "get", "getAnalytics"),
        (
            "/api/onlyfans/messages/backlogs",
            "get",
            "listCreatorBacklogs",
        ),
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

async fn document(app: &crate::helpers::TestApp) -> Value {
    app.client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn fields_sent_as_null_are_declared_nullable_and_always_present() {
    let app = spawn_app(Backend::Sqlite).await;
    let doc = document(&app).await;
    let schemas = &doc["components"]["schemas"];
    for (schema, fields) in [
        (
            "FanOut",
            &["name", "email", "avatarUrl", "notes", "lastSeenAt"][..],
        ),
        (
            "MessageOut",
            &["error", "campaignId", "externalId", "sentAt"],
        ),
        ("JobOut", &["result", "error", "startedAt", "finishedAt"]),
        ("ConversationOut", &["lastMessageAt"]),
        ("QueueStatusOut", &["dlqCount", "lastProcessedAt"]),
    ] {
        let required = schemas[schema]["required"].as_array().unwrap();
        for field in fields {
            assert_eq!(
                schemas[schema]["properties"][field]["nullable"], true,
                "{schema}.{field} is sent as null: it must be nullable"
            );
            assert!(
                required.contains(&Value::from(*field)),
                "{schema}.{field} is always sent: it must be required"
            );
        }
    }
    // What a client sees: a fan with only a handle has these fields, null.
    let fan: Value = app
        .user(1)
        .post("/api/crm/fans", &serde_json::json!({ "handle": "@nulls" }))
        .await
        .json()
        .await
        .unwrap();
    for field in ["name", "email", "avatarUrl", "notes", "lastSeenAt"] {
        assert!(fan[field].is_null() && fan.get(field).is_some(), "{fan}");
    }
    // Fields left out when empty are not nullable (and not required).
    assert!(schemas["ErrorDetail"]["properties"]["field"]["nullable"].is_null());
    assert!(
        !schemas["ErrorDetail"]["required"]
            .as_array()
            .unwrap()
            .contains(&Value::from("field"))
    );
}

#[tokio::test]
async fn the_constraints_the_server_enforces_are_declared() {
    let app = spawn_app(Backend::Sqlite).await;
    let doc = document(&app).await;
    let param = |path: &str, method: &str, name: &str| -> Value {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))["schema"]
            .clone()
    };
    for path in [
        "/api/crm/fans",
        "/api/crm/conversations",
        "/api/crm/conversations/{id}/messages",
        "/api/jobs",
        "/api/crm/campaigns",
        "/api/onlyfans/messages/failed",
    ] {
        assert_eq!(param(path, "get", "limit")["minimum"], 1.0, "{path}");
        assert_eq!(param(path, "get", "limit")["maximum"], 200.0, "{path}");
        assert_eq!(param(path, "get", "offset")["minimum"], 0.0, "{path}");
    }
    let ulid = param("/api/jobs/{id}", "get", "id")["pattern"].clone();
    assert!(ulid.as_str().unwrap().contains("{26}"), "{ulid}");
    let key = param("/api/crm/fans", "post", "Idempotency-Key");
    assert!(key["pattern"].is_string(), "{key}");
    // Every POST under /api honours the header (and says so once); nothing else declares it.
    let mut keyed = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let declared = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["name"] == "Idempotency-Key" && p["in"] == "header")
                .count();
            let honoured = method == "post" && path.starts_with("/api/");
            assert_eq!(declared, usize::from(honoured), "{method} {path}");
            keyed += declared;
        }
    }
    assert_eq!(keyed, 20, "the POST routes under /api");
    assert_eq!(
        param("/api/onlyfans/import/csv", "post", "wait")["maximum"],
        60.0
    );

    let schemas = &doc["components"]["schemas"];
    for body in [
        "CreateFan",
        "UpdateFan",
        "OpenConversation",
        "InboundIn",
        "OutboundIn",
        "AttachmentIn",
        "SendIn",
        "BulkIn",
    ] {
        assert_eq!(
            schemas[body]["additionalProperties"], false,
            "{body} refuses unknown fields"
        );
    }
    let form = &doc["paths"]["/api/onlyfans/import/csv"]["post"]["requestBody"]["content"]["multipart/form-data"]
        ["schema"];
    assert_eq!(form["additionalProperties"], false, "{form}");
    let bulk = &schemas["BulkIn"]["properties"]["recipientIds"];
    assert_eq!(bulk["minItems"], 1);
    assert_eq!(bulk["maxItems"], 100);
    for (schema, field) in [
        ("CreateFan", "handle"),
        ("CreateFan", "name"),
        ("CreateFan", "avatarUrl"),
        ("SendIn", "content"),
        ("BulkIn", "campaignName"),
        ("OutboundIn", "text"),
    ] {
        assert!(
            schemas[schema]["properties"][field]["pattern"].is_string(),
            "{schema}.{field} declares what the server accepts"
        );
    }
    assert_eq!(
        schemas["CreateFan"]["properties"]["email"]["format"],
        "email"
    );
    // A value the schema refuses, the server refuses too.
    let resp = app
        .user(1)
        .post(
            "/api/crm/fans",
            &serde_json::json!({ "handle": "@ok", "bogus": 1 }),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = app.user(1).get("/api/crm/fans?limit=201").await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["field"], "limit", "{err}");
}

#[tokio::test]
async fn a_405_names_the_methods_the_path_has_in_allow() {
    let app = spawn_app(Backend::Sqlite).await;
    for (method, path, allow) in [
        ("TRACE", "/api/crm/fans/1", "DELETE, GET, HEAD, PUT"),
        ("PATCH", "/api/crm/fans", "GET, HEAD, POST"),
        ("DELETE", "/api/onlyfans/messages/status", "GET, HEAD"),
        (
            "PUT",
            "/api/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "DELETE, GET, HEAD",
        ),
        ("POST", "/metrics", "GET, HEAD"),
    ] {
        let resp = app
            .client
            .request(method.parse().unwrap(), app.url(path))
            .bearer_auth(app.token(1))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(
            resp.headers()["allow"].to_str().unwrap(),
            allow,
            "{method} {path}"
        );
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "method_not_allowed");
    }
    // HEAD is served wherever GET is, as Allow says.
    let resp = app
        .client
        .head(app.url("/api/crm/fans"))
        .bearer_auth(app.token(1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

/// The schema a property points to, whether poem writes the `$ref` bare or (with a
/// description or `nullable`) under `allOf`.
fn referenced(property: &Value) -> Option<&str> {
    property["$ref"]
        .as_str()
        .or_else(|| property["allOf"][0]["$ref"].as_str())
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
}

#[tokio::test]
async fn statuses_kinds_platforms_and_directions_are_enums_and_job_results_have_schemas() {
    let app = spawn_app(Backend::Sqlite).await;
    let doc = document(&app).await;
    let schemas = &doc["components"]["schemas"];
    let words = |values: &[&str]| serde_json::json!({ "type": "string", "enum": values });
    for (name, values) in [
        (
            "JobKind",
            &[
                "import_csv",
                "send_message",
                "bulk_send",
                "campaign_feed",
                "sweep",
            ][..],
        ),
        (
            "JobStatus",
            &["queued", "running", "succeeded", "failed", "cancelled"],
        ),
        ("MessageStatus", &["queued", "sending", "sent", "failed"]),
        (
            "CampaignStatus",
            &[
                "draft",
                "scheduled",
                "active",
                "paused",
                "completed",
                "cancelled",
            ],
        ),
        (
            "RunStatus",
            &["active", "paused", "completed", "cancelled", "skipped"],
        ),
        (
            "CampaignType",
            &["bulk_message", "welcome", "re-engagement", "ppv", "custom"],
        ),
        ("Platform", &["onlyfans", "fansly", "other"]),
        ("Direction", &["in", "out"]),
        (
            "ValueSource",
            &[
                "created",
                "edit",
                "import",
                "purchased",
                "tip",
                "subscription",
            ],
        ),
        ("HealthStatus", &["healthy", "degraded", "unhealthy"]),
        ("EventStatus", &["applied", "duplicate", "rejected"]),
        ("QueueScope", &["creator", "queue"]),
    ] {
        let schema = &schemas[name];
        assert_eq!(
            serde_json::json!({ "type": schema["type"], "enum": schema["enum"] }),
            words(values),
            "{name}: {schema}"
        );
    }
    for (schema, field, words) in [
        ("JobOut", "kind", "JobKind"),
        ("JobOut", "status", "JobStatus"),
        ("ImportAccepted", "status", "JobStatus"),
        ("ImportFinished", "status", "JobStatus"),
        ("MessageOut", "status", "MessageStatus"),
        ("MessageOut", "direction", "Direction"),
        ("QueuedOut", "status", "MessageStatus"),
        ("BulkOut", "status", "MessageStatus"),
        ("RetriedOut", "status", "MessageStatus"),
        ("CampaignOut", "status", "CampaignStatus"),
        ("CampaignOut", "type", "CampaignType"),
        ("RunOut", "status", "RunStatus"),
        ("FanOut", "platform", "Platform"),
        ("ConversationOut", "platform", "Platform"),
        ("ValueChangeOut", "source", "ValueSource"),
        ("HealthOut", "status", "HealthStatus"),
        ("DatabaseHealth", "status", "HealthStatus"),
        ("QueueHealth", "status", "HealthStatus"),
        ("EventResultOut", "status", "EventStatus"),
        ("QueueStatusOut", "scope", "QueueScope"),
    ] {
        let property = &schemas[schema]["properties"][field];
        assert_eq!(
            referenced(property),
            Some(words),
            "{schema}.{field}: {property}"
        );
    }
    // GET /api/jobs filters by the same kinds and statuses.
    let params = doc["paths"]["/api/jobs"]["get"]["parameters"]
        .as_array()
        .unwrap();
    for (name, words) in [("kind", "JobKind"), ("status", "JobStatus")] {
        let p = params.iter().find(|p| p["name"] == name).unwrap();
        assert_eq!(referenced(&p["schema"]), Some(words), "{p}");
    }

    // A job's result is one of the kinds' results, and an import's summary is spelled out.
    let result = &schemas["JobOut"]["properties"]["result"];
    assert_eq!(result["nullable"], true, "{result}");
    assert_eq!(referenced(result), Some("JobResult"), "{result}");
    let one_of: Vec<&str> = schemas["JobResult"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(referenced)
        .collect();
    assert_eq!(
        one_of,
        [
            "ImportResult",
            "SendResultOut",
            "FeedResultOut",
            "SweepResultOut"
        ],
        "{}",
        schemas["JobResult"]
    );
    assert_eq!(
        referenced(&schemas["ImportResult"]["properties"]["summary"]),
        Some("ImportSummary")
    );
    let summary = &schemas["ImportSummary"];
    let mut required: Vec<&str> = summary["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    required.sort_unstable();
    assert_eq!(
        required,
        [
            "cancelled",
            "errorCount",
            "errors",
            "errorsOmitted",
            "skipped",
            "skippedRows",
            "stoppedAtRow",
            "successfulInserts",
            "totalRows",
            "unchanged",
            "updated",
        ]
    );
    let row_error = referenced(&summary["properties"]["errors"]["items"]).unwrap();
    assert_eq!(
        schemas[row_error]["properties"]["row"]["type"], "integer",
        "{row_error}"
    );
    assert_eq!(
        referenced(&schemas["ImportFinished"]["properties"]["summary"]),
        Some("ImportSummary")
    );
}

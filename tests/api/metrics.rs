//! `/metrics` as a scraper reads it, beside the monitoring route, after a known history: an
//! import, a campaign whose deliveries partly fail, a few requests. A process of its own
//! (`fanqueue all` on the embedded default), so that no other test's counts mix in.

use std::{collections::BTreeMap, time::Duration};

use fanqueue::auth::{JwtKeys, Role};
use fanqueue_jobs::domain::UserId;
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::helpers::{AppProcess, JWT_SECRET, Sim, free_port, generated_csv, json_of, samples};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_the_monitoring_route_agree_with_what_was_done() {
    let sim = Sim::start(600).await;
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let platform = sim.messages_url();
    let app = AppProcess::spawn(
        &["all"],
        &[
            ("JWT_SECRET", JWT_SECRET),
            ("PLATFORM_API_URL", &platform),
            ("DELIVERY_RATE_PER_MINUTE", "600"),
            ("DELIVERY_MAX_ATTEMPTS", "1"),
            ("PLATFORM_TIMEOUT_MS", "1000"),
            ("METRICS_ADDR", &metrics_addr),
            // Sweeps would move the DLQ's message under the test's feet.
            ("SWEEP_CRON", "0 0 0 1 1 *"),
        ],
        dir.path(),
    );
    let creator = app.user(1);
    let keys = JwtKeys::new(&SecretString::from(JWT_SECRET));
    let operator = keys.issue_as(UserId(9), Role::Operator, Duration::from_secs(600));
    let client = reqwest::Client::new();

    // Three fans by import, one by hand; a campaign to all four, of which the platform
    // refuses one (400) and fails one (500, with one attempt allowed: to the DLQ).
    let job = creator.import("fans.csv", generated_csv(3)).await;
    let job = creator.wait_job_within(&job, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    creator
        .post_json(
            "/api/crm/fans",
            &json!({ "handle": "@d" }),
            StatusCode::CREATED,
        )
        .await;
    let fans = creator.get_json("/api/crm/fans?limit=10").await;
    let ids: Vec<Value> = fans["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].clone())
        .collect();
    assert_eq!(ids.len(), 4);
    sim.faults(json!({ "userId": "1", "fail400": 1, "fail500": 1 }))
        .await;
    let bulk = creator
        .post_json(
            "/api/messages/bulk",
            &json!({ "recipientIds": ids, "content": "hi", "campaignName": "m" }),
            StatusCode::ACCEPTED,
        )
        .await;
    let campaign = bulk["campaignId"].as_i64().expect("a campaignId");
    let metrics = creator
        .wait_campaign(campaign, Duration::from_secs(60))
        .await["metrics"]
        .clone();
    assert_eq!(
        (metrics["sent"].as_i64(), metrics["failed"].as_i64()),
        (Some(2), Some(2))
    );

    // The API's /metrics is an operator's: no token 401, a creator's 403.
    let url = format!("{}/metrics", app.address);
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = client
        .get(&url)
        .bearer_auth(&creator.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = client
        .get(&url)
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let from_api = samples(&resp.text().await.unwrap());
    // METRICS_ADDR serves the same without a token.
    let open = client
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), StatusCode::OK);
    let m = samples(&open.text().await.unwrap());

    let get = |series: &str| m.get(series).copied().unwrap_or(0.0);
    assert_eq!(get("fanqueue_messages_queued_total"), 4.0, "{m:#?}");
    assert_eq!(get("fanqueue_messages_sent_total"), 2.0, "{m:#?}");
    assert_eq!(
        get(r#"fanqueue_messages_failed_total{reason="rejected"}"#),
        1.0
    );
    assert_eq!(
        get(r#"fanqueue_messages_failed_total{reason="attempts_exhausted"}"#),
        1.0
    );
    assert_eq!(get("fanqueue_delivery_latency_seconds_count"), 2.0);
    let calls: f64 = ["delivered", "rejected", "failed"]
        .iter()
        .map(|o| {
            get(&format!(
                r#"fanqueue_platform_call_duration_seconds_count{{outcome="{o}"}}"#
            ))
        })
        .sum();
    assert_eq!(calls, 4.0, "one call per message: {m:#?}");
    assert_eq!(get("fanqueue_campaigns_total"), 1.0);
    assert_eq!(get("fanqueue_campaign_recipients_sum"), 4.0);
    assert_eq!(
        get(r#"fanqueue_imported_rows_total{outcome="created"}"#),
        3.0
    );
    for kind in ["import_csv", "bulk_send"] {
        assert_eq!(
            get(&format!(
                r#"fanqueue_jobs_total{{kind="{kind}",status="queued"}}"#
            )),
            1.0,
            "{kind}: {m:#?}"
        );
        assert_eq!(
            get(&format!(
                r#"fanqueue_jobs_total{{kind="{kind}",status="succeeded"}}"#
            )),
            1.0,
            "{kind}: {m:#?}"
        );
    }
    // Requests by route template, not by id.
    assert_eq!(
        get(r#"fanqueue_http_requests_total{method="POST",route="/api/crm/fans",status="201"}"#),
        1.0
    );
    assert!(
        get(
            r#"fanqueue_http_requests_total{method="GET",route="/api/crm/campaigns/{id}",status="200"}"#
        ) >= 1.0,
        "{m:#?}"
    );
    assert!(
        !m.keys()
            .any(|k| k.contains(&format!("/campaigns/{campaign}"))),
        "no series per id"
    );
    assert_eq!(
        get(r#"fanqueue_http_requests_total{method="GET",route="/metrics",status="403"}"#),
        1.0
    );

    // The gauges and the monitoring route read the same queue: one message in the DLQ.
    let resp = client
        .get(format!("{}/api/monitoring/onlyfans", app.address))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap();
    let health = json_of(resp, StatusCode::OK).await;
    let queue = &health["components"]["sqs"];
    assert_eq!(queue["dlqCount"], 1, "{health}");
    assert_eq!(get("fanqueue_outbound_dlq_messages"), 1.0);
    assert_eq!(
        queue["queueDepth"].as_f64(),
        Some(get("fanqueue_outbound_queue_depth"))
    );
    assert_eq!(
        queue["messagesInFlight"].as_f64(),
        Some(get("fanqueue_outbound_in_flight"))
    );
    assert_eq!(get("fanqueue_outbound_queue_depth"), 0.0);
    for series in [
        "fanqueue_messages_queued_total",
        "fanqueue_messages_sent_total",
        "fanqueue_outbound_dlq_messages",
    ] {
        assert_eq!(
            from_api.get(series),
            m.get(series),
            "{series}: one recorder"
        );
    }

    // The JSON logs carry the ids of what they are about.
    let failed = app
        .wait_for_log("message failed", Duration::from_secs(5))
        .await;
    let fields: BTreeMap<String, Value> = failed["spans"]
        .as_array()
        .expect("the span list")
        .iter()
        .flat_map(|s| s.as_object().unwrap().clone())
        .collect();
    assert_eq!(fields["user_id"], 1, "{failed}");
    assert_eq!(fields["campaign_id"], campaign, "{failed}");
    assert!(fields["message_id"].as_i64().is_some(), "{failed}");
    let done = app
        .wait_for_log("job succeeded", Duration::from_secs(5))
        .await;
    assert!(done["span"]["job_id"].as_str().is_some(), "{done}");
    assert_eq!(done["span"]["user_id"], 1, "{done}");
}

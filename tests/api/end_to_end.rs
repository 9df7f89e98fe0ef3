//! The whole flow a user runs, with each role as its own process (`serve`, `worker`,
//! `dispatch`, `sweep`) on PostgreSQL, Redis, SQS and S3 (moto), against a platform stand-in
//! that fails some deliveries: import fans from a CSV, send them a campaign, see what failed
//! and why, retry it, and end with every message delivered once.

use std::{collections::HashMap, time::Duration};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    ApiClient, AppProcess, Deployment, Queue, Sim, aws_endpoint, eventually, generated_csv,
    redis_url,
};

const FANS: usize = 10;
/// A slot every 2 s: a message's retry (1 s after a 500) comes due before the next slot, so
/// the lane, oldest first, gives it that slot and the injected faults land on known messages.
const PER_MINUTE: u32 = 30;
/// The two 5xx messages each get two 500s: out of attempts, failed and dead-lettered.
const FAIL_500: u32 = 4;
/// The two 4xx messages are refused once each: failed at once, not in the DLQ.
const FAIL_400: u32 = 2;

/// How often the test looks again.
const EVERY: Duration = Duration::from_millis(200);

fn sum(jobs: &[Value], field: &str) -> u64 {
    jobs.iter()
        .map(|j| j["result"][field].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_campaign_failures_dlq_sweep_and_retry_end_with_every_message_sent_once() {
    let sim = Sim::start(PER_MINUTE).await;
    let bucket = format!("fq-test-{}", uuid::Uuid::new_v4().simple());
    let d = Deployment::with(
        &sim.messages_url(),
        PER_MINUTE,
        &redis_url(),
        Queue::Sqs,
        &[
            ("DELIVERY_MAX_ATTEMPTS", "2"),
            ("SWEEP_CRON", "*/2 * * * * *"),
            ("S3_BUCKET", &bucket),
        ],
    )
    .await;
    let _dispatcher = d.dispatcher();
    let refs: Vec<(&str, &str)> = d
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let _sweeper = AppProcess::spawn_until(&["sweep"], &refs, d.dir.path(), "sweeper running");
    let user = d.user(1);
    let operator = ApiClient::operator(&d.api, 99);

    // 1. Fans from the platform's CSV export (the file goes to S3, the worker imports it).
    let import = user.import("fans.csv", generated_csv(FANS)).await;
    let job = user.wait_job_within(&import, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["kind"], "import_csv");
    assert_eq!(job["progress"]["done"], FANS, "{job}");
    let summary = &job["result"]["summary"];
    assert_eq!(
        (
            summary["totalRows"].as_u64(),
            summary["successfulInserts"].as_u64(),
            summary["errorCount"].as_u64()
        ),
        (Some(FANS as u64), Some(FANS as u64), Some(0)),
        "{summary}"
    );
    let blobs = fanqueue_jobs::blobs::BlobStore::s3(&bucket, Some(&aws_endpoint()))
        .await
        .unwrap();
    let key = fanqueue_jobs::kinds::import_csv::blob_key(
        fanqueue_jobs::domain::UserId(1),
        &fanqueue_jobs::engine::JobId(import.clone()),
    );
    assert!(
        blobs.open(&key).await.is_err(),
        "the upload is removed from the bucket once imported"
    );
    let fans = user.get_json("/api/crm/fans?limit=200").await;
    assert_eq!(fans["total"], FANS);
    let fan_ids: Vec<i64> = fans["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_i64().unwrap())
        .collect();

    // 2. A campaign to all of them. The platform first asks us to slow down (not charged),
    // so that every message is in the creator's schedule before the failures start.
    sim.faults(json!({ "fail429": 1, "retryAfterSecs": 3 }))
        .await;
    let accepted = user
        .post_json(
            "/api/messages/bulk",
            &json!({ "recipientIds": fan_ids, "content": "Spring sale!", "campaignName": "Spring" }),
            StatusCode::ACCEPTED,
        )
        .await;
    assert_eq!(
        (
            accepted["totalRecipients"].as_u64(),
            accepted["queued"].as_u64(),
            accepted["status"].as_str()
        ),
        (Some(FANS as u64), Some(FANS as u64), Some("queued")),
        "{accepted}"
    );
    assert!(accepted["estimatedCompletionTime"].is_string());
    let campaign = accepted["campaignId"].as_i64().unwrap();
    let campaign_path = format!("/api/crm/campaigns/{campaign}");
    eventually(
        "the platform's 429",
        Duration::from_secs(30),
        EVERY,
        || async {
            let stats = sim.stats().await;
            match stats["rejected"]["429"] == 1 {
                true => Ok(()),
                false => Err(stats.to_string()),
            }
        },
    )
    .await;
    sim.faults(json!({ "fail500": FAIL_500, "fail400": FAIL_400 }))
        .await;

    // 3. The campaign runs to its end: six sent, four failed.
    let done = user.wait_campaign(campaign, Duration::from_secs(90)).await;
    let m = &done["metrics"];
    assert_eq!(
        (
            m["total"].as_u64(),
            m["sent"].as_u64(),
            m["failed"].as_u64(),
            m["queued"].as_u64()
        ),
        (Some(10), Some(6), Some(4), Some(0)),
        "{done}"
    );

    // 4. The sweeper reads the two dead-lettered copies, finds them failed with their reason,
    // and empties the DLQ; later sweeps find nothing more.
    let sweeps = eventually("the DLQ swept", Duration::from_secs(30), EVERY, || async {
        let jobs = operator.get_json("/api/jobs?kind=sweep&limit=200").await["items"]
            .as_array()
            .unwrap()
            .clone();
        let status = operator.get_json("/api/onlyfans/messages/status").await;
        match sum(&jobs, "dlqRead") == 2 && status["dlqCount"] == 0 {
            true => Ok(jobs),
            false => Err(format!("{status} {jobs:?}")),
        }
    })
    .await;
    // Every sweep that ended succeeded (the tick's newest may still be queued or running).
    assert!(
        sweeps
            .iter()
            .all(|j| ["succeeded", "queued", "running"].contains(&j["status"].as_str().unwrap())),
        "{sweeps:?}"
    );
    assert_eq!(sum(&sweeps, "dlqAlreadyFinal"), 2, "{sweeps:?}");
    assert_eq!(sum(&sweeps, "dlqRedriven"), 0, "{sweeps:?}");
    assert_eq!(sum(&sweeps, "dlqUnreadable"), 0, "{sweeps:?}");
    let mine = user.get_json("/api/jobs?kind=sweep").await;
    assert_eq!(mine["total"], 0, "a creator does not see the sweeps");

    // 5. What failed, and why: newest first, with reason, attempts, campaign and fan.
    let failed = user.get_json("/api/onlyfans/messages/failed").await;
    assert_eq!(failed["total"], 4, "{failed}");
    let items = failed["items"].as_array().unwrap();
    for item in items {
        assert_eq!(item["campaignId"], campaign, "{item}");
        assert!(fan_ids.contains(&item["fanId"].as_i64().unwrap()), "{item}");
        assert!(item["conversationId"].is_i64(), "{item}");
        assert!(item["failedAt"].is_string(), "{item}");
        assert_eq!(item["content"], "Spring sale!");
    }
    let (refused, out_of_attempts): (Vec<&Value>, Vec<&Value>) = items
        .iter()
        .partition(|i| i["reason"].as_str().unwrap().contains("400"));
    assert_eq!((refused.len(), out_of_attempts.len()), (2, 2), "{failed}");
    for item in &refused {
        assert_eq!(item["attempts"], 1, "a refusal is never retried: {item}");
        assert!(
            item["reason"]
                .as_str()
                .unwrap()
                .contains("recipient cannot receive messages"),
            "the platform's reason: {item}"
        );
    }
    for item in &out_of_attempts {
        assert_eq!(item["attempts"], 2, "DELIVERY_MAX_ATTEMPTS: {item}");
        assert!(item["reason"].as_str().unwrap().contains("500"), "{item}");
    }
    // The refusals went last (the 500s came first), so they are the newest failures.
    assert!(
        items[..2]
            .iter()
            .all(|i| i["reason"].as_str().unwrap().contains("400")),
        "newest first: {failed}"
    );
    let status = user.get_json("/api/onlyfans/messages/status").await;
    assert_eq!(
        (status["failed"].as_u64(), status["queueDepth"].as_u64()),
        (Some(4), Some(0)),
        "{status}"
    );

    // 6. The platform is fine again: one refused message retried by hand, then the rest of
    // the campaign's failures at once.
    sim.clear_faults().await;
    let one = refused[0]["id"].as_i64().unwrap();
    let retried = user
        .post_json(
            &format!("/api/onlyfans/messages/failed/{one}/retry"),
            &json!({}),
            StatusCode::ACCEPTED,
        )
        .await;
    assert_eq!(
        (retried["messageId"].as_i64(), retried["status"].as_str()),
        (Some(one), Some("queued")),
        "{retried}"
    );
    let rest = user
        .post_json(
            &format!("{campaign_path}/retry-failed"),
            &json!({}),
            StatusCode::ACCEPTED,
        )
        .await;
    assert_eq!(rest["requeued"], 3, "the three still failed: {rest}");
    let mut expected: Vec<i64> = items
        .iter()
        .map(|i| i["id"].as_i64().unwrap())
        .filter(|id| *id != one)
        .collect();
    expected.sort_unstable();
    let mut requeued: Vec<i64> = rest["messageIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    requeued.sort_unstable();
    assert_eq!(requeued, expected, "{rest}");
    let reopened = user.get_json(&campaign_path).await;
    assert_eq!(reopened["status"], "active", "reopened: {reopened}");
    assert_eq!(reopened["metrics"]["failed"], 0, "{reopened}");
    assert_eq!(
        user.get_json("/api/onlyfans/messages/failed").await["total"],
        0
    );

    // 7. Everything is sent, once.
    let done = user.wait_campaign(campaign, Duration::from_secs(60)).await;
    let m = &done["metrics"];
    assert_eq!(
        (
            m["total"].as_u64(),
            m["sent"].as_u64(),
            m["failed"].as_u64(),
            m["queued"].as_u64()
        ),
        (Some(10), Some(10), Some(0), Some(0)),
        "{done}"
    );
    for job in [&retried["jobId"], &rest["jobId"]] {
        let job = user
            .wait_job_within(job.as_str().unwrap(), Duration::from_secs(30))
            .await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    let messages = user.outbound_messages().await;
    assert_eq!(messages.len(), FANS);
    for m in &messages {
        assert_eq!(m["status"], "sent", "{m}");
        assert!(m["sentAt"].is_string(), "{m}");
        assert!(m["error"].is_null(), "a retry clears the reason: {m}");
    }
    assert_eq!(
        user.get_json("/api/onlyfans/messages/failed").await["total"],
        0
    );
    assert_eq!(
        d.statuses().await,
        std::collections::BTreeMap::from([("sent".to_owned(), FANS as i64)]),
        "the database agrees"
    );

    // The platform accepted each message once: the 5xx ones under their own key, the refused
    // ones under a retry key (the platform replays its refusal for the old one).
    let deliveries = sim.deliveries().await;
    let mut by_message: HashMap<i64, Vec<&Value>> = HashMap::new();
    for delivery in &deliveries {
        let id = delivery["messageId"].as_str().unwrap().parse().unwrap();
        by_message.entry(id).or_default().push(delivery);
    }
    assert_eq!(by_message.len(), FANS, "{deliveries:?}");
    assert!(
        by_message.values().all(|d| d.len() == 1),
        "each message delivered once: {deliveries:?}"
    );
    for item in &refused {
        let id = item["id"].as_i64().unwrap();
        assert_eq!(by_message[&id][0]["key"], format!("{id}-r1"));
    }
    for item in &out_of_attempts {
        let id = item["id"].as_i64().unwrap();
        assert_eq!(by_message[&id][0]["key"], id.to_string());
    }
    let stats = sim.stats().await;
    assert_eq!(stats["duplicatesReplayed"], 0, "{stats}");
    assert_eq!(stats["totalViolations"], 0, "{stats}");
    let r = &stats["rejected"];
    assert_eq!(
        (r["500"].as_u64(), r["400"].as_u64(), r["429"].as_u64()),
        (Some(FAIL_500.into()), Some(FAIL_400.into()), Some(1)),
        "{stats}"
    );
}

//! The sweeper as operators run it: two `fanqueue sweep` processes on PostgreSQL, Redis and
//! the SQS emulator, beside a worker and a dispatcher, each tick swept once.

use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    AppProcess, Deployment, JWT_SECRET, Queue, Sim, eventually, json_of, redis_url, sqs_client,
};

/// Moves every message of `from` to `to` as SQS's redrive does when a queue gives up on a
/// message: same body, no reason attached. Returns how many moved.
async fn move_all(sqs: &aws_sdk_sqs::Client, from: &str, to: &str) -> usize {
    let mut moved = 0;
    for _ in 0..20 {
        let got = sqs
            .receive_message()
            .queue_url(from)
            .max_number_of_messages(10)
            .visibility_timeout(60)
            .send()
            .await
            .expect("a receive");
        if got.messages().is_empty() {
            break;
        }
        for m in got.messages() {
            sqs.send_message()
                .queue_url(to)
                .message_body(m.body().unwrap())
                .send()
                .await
                .expect("a send to the DLQ");
            sqs.delete_message()
                .queue_url(from)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .expect("a delete");
            moved += 1;
        }
    }
    moved
}

async fn dlq_depth(sqs: &aws_sdk_sqs::Client, dlq: &str) -> u64 {
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(dlq)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("the DLQ's attributes");
    attrs
        .attributes()
        .unwrap()
        .values()
        .map(|v| v.parse::<u64>().unwrap())
        .sum()
}

async fn sweeps(client: &reqwest::Client, api: &str, token: &str) -> Vec<Value> {
    let resp = client
        .get(format!("{api}/api/jobs?kind=sweep&limit=200"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    json_of(resp, StatusCode::OK).await["items"]
        .as_array()
        .unwrap()
        .clone()
}

fn total(jobs: &[Value], field: &str) -> u64 {
    jobs.iter()
        .map(|j| j["result"][field].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sweep_processes_record_each_dlq_message_once_and_redrive_what_the_queue_gave_up_on() {
    let sim = Sim::start(600).await;
    let d = Deployment::with(
        &sim.messages_url(),
        600,
        &redis_url(),
        Queue::Sqs,
        &[
            ("DELIVERY_MAX_ATTEMPTS", "1"),
            ("SWEEP_CRON", "*/2 * * * * *"),
        ],
    )
    .await;
    let sqs = sqs_client().await;
    // Three messages the queue gave up on (moved to the DLQ without being delivered).
    d.campaign(1, 3).await;
    assert_eq!(move_all(&sqs, d.queue_url(), &d.dlq).await, 3);
    // Two the platform failed: their only attempt answered 500, so the dispatcher fails them
    // and dead-letters them with the reason.
    sim.faults(json!({ "userId": "2", "fail500": 2 })).await;
    d.campaign(2, 2).await;
    let _dispatcher = d.dispatcher();
    let (within, every) = (Duration::from_secs(60), Duration::from_millis(200));
    eventually("two messages failed", within, every, || async {
        let s = d.statuses().await;
        if s.get("failed") == Some(&2) {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    // A failed message is dead-lettered just after its status is written.
    eventually("five messages in the DLQ", within, every, || async {
        match dlq_depth(&sqs, &d.dlq).await {
            5 => Ok(()),
            n => Err(format!("{n} in the DLQ")),
        }
    })
    .await;

    let refs: Vec<(&str, &str)> = d
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let started = std::time::Instant::now();
    let _one = AppProcess::spawn_until(&["sweep"], &refs, d.dir.path(), "sweeper running");
    let _two = AppProcess::spawn_until(&["sweep"], &refs, d.dir.path(), "sweeper running");
    // The three given up on are re-driven and delivered; the two failed stay failed.
    let (within, every) = (Duration::from_secs(90), Duration::from_millis(300));
    eventually("the re-driven three sent", within, every, || async {
        let s = d.statuses().await;
        let depth = dlq_depth(&sqs, &d.dlq).await;
        if s.get("sent") == Some(&3) && s.get("failed") == Some(&2) && depth == 0 {
            Ok(())
        } else {
            Err(format!("{s:?}, {depth} on the DLQ"))
        }
    })
    .await;
    // A few more ticks: sweeps with nothing left to do.
    let client = reqwest::Client::new();
    let keys = fanqueue::auth::JwtKeys::new(&secrecy::SecretString::from(JWT_SECRET));
    let op = keys.issue_as(
        fanqueue_jobs::domain::UserId(1),
        fanqueue::auth::Role::Operator,
        Duration::from_secs(600),
    );
    let settled = sweeps(&client, &d.api, &op).await.len();
    let (within, every) = (Duration::from_secs(30), Duration::from_millis(300));
    let jobs = eventually("three more sweeps", within, every, || async {
        let jobs = sweeps(&client, &d.api, &op).await;
        if jobs.len() >= settled + 3 && jobs.iter().all(|j| j["status"] == "succeeded") {
            Ok(jobs)
        } else {
            Err(format!("{jobs:?}"))
        }
    })
    .await;
    // One sweep per tick, however many sweepers: no more sweeps than ticks went by.
    let elapsed = started.elapsed().as_secs();
    assert!(
        jobs.len() as u64 <= elapsed / 2 + 2,
        "{} sweeps in {elapsed} s of ticks every 2 s",
        jobs.len()
    );
    // Each DLQ message was handled once across both sweepers.
    assert_eq!(total(&jobs, "dlqRedriven"), 3, "{jobs:?}");
    assert_eq!(total(&jobs, "dlqAlreadyFinal"), 2, "{jobs:?}");
    assert_eq!(total(&jobs, "dlqRecorded"), 0, "{jobs:?}");
    // The newest sweep changed nothing.
    let newest = &jobs[0]["result"];
    for field in [
        "dlqRead",
        "dlqRedriven",
        "dlqRecorded",
        "dlqAlreadyFinal",
        "stuckRequeued",
    ] {
        assert_eq!(newest[field], 0, "{newest}");
    }
    // The platform got each re-driven message once.
    let stats = sim.stats().await;
    assert_eq!(stats["duplicatesReplayed"], 0, "{stats}");
    let user1 = sim
        .deliveries()
        .await
        .into_iter()
        .filter(|x| x["userId"] == "1")
        .count();
    assert_eq!(user1, 3);
}

//! A campaign to an audience under faults, as operators run it: PostgreSQL, Redis and SQS,
//! with the API, the worker, dispatchers and the process that starts campaigns (`sweep`) each
//! a process of its own, each killed (SIGKILL) several times while a 2,000-recipient campaign
//! is delivered at a raised rate. What the platform saw is judged from the stand-in's record.

use std::{collections::BTreeMap, time::Duration};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{AppProcess, Deployment, Sim, eventually};

const RECIPIENTS: usize = 2_000;

/// The stand-in's deliveries of `campaign`, by recipient.
async fn reached(sim: &Sim, campaign: i64) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for d in sim.deliveries().await {
        if d["campaignId"] == campaign.to_string().as_str() {
            *n.entry(d["recipientId"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_worker_dispatchers_and_the_campaign_starter_loses_and_repeats_no_recipient() {
    let sim = Sim::start(100_000).await;
    // Requests take a while at the platform: kills land while some are out.
    sim.faults(json!({ "latencyMs": 50 })).await;
    // 3,000 a minute; 100 messages kept ahead, so the campaign is fed some twenty times.
    let mut d = Deployment::with(
        &sim.messages_url(),
        3_000,
        &crate::helpers::redis_url(),
        crate::helpers::Queue::Sqs,
        &[("CAMPAIGN_AHEAD", "100")],
    )
    .await;
    let me = d.user(1);
    let mut csv =
        String::from("Username,Display Name,Email,Subscription Tier,Total Spent,Last Seen\n");
    for i in 0..RECIPIENTS {
        csv.push_str(&format!(
            "fan{i:05},Fan {i},f{i}@example.com,Crowd,$1.00,2025-01-01\n"
        ));
    }
    let job = me.import("fans.csv", csv.into_bytes()).await;
    me.wait_job_within(&job, Duration::from_secs(120)).await;

    let spawn_starter = |d: &Deployment| {
        AppProcess::spawn_until(
            &["sweep"],
            &d.env_refs(),
            d.dir.path(),
            "campaign clock running",
        )
    };
    let mut starter = spawn_starter(&d);
    let mut dispatcher = d.dispatcher();
    // Two dispatchers share the rate (Redis) and the claims (PostgreSQL).
    let _second = d.dispatcher();
    // Starts in two seconds: the starter process starts it.
    let at = chrono::Utc::now() + chrono::TimeDelta::seconds(2);
    let created = me
        .post_json(
            "/api/crm/campaigns",
            &json!({
                "name": "Everyone",
                "content": "Hello from the campaign",
                "audience": { "filter": { "tagsAll": ["crowd"] } },
                "schedule": { "at": at },
            }),
            StatusCode::CREATED,
        )
        .await;
    let id = created["id"].as_i64().unwrap();
    let campaign = || async { me.get_json(&format!("/api/crm/campaigns/{id}")).await };

    // The starter dies right after its time, then again; another takes over.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    starter.child.kill().expect("SIGKILL the starter");
    starter.child.wait().unwrap();
    starter = spawn_starter(&d);
    eventually(
        "the campaign starts",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let c = campaign().await;
            if c["status"] == "active" {
                Ok(())
            } else {
                Err(c.to_string())
            }
        },
    )
    .await;

    // Each round: some deliveries, then one of the roles is killed and replaced.
    for round in 0..9 {
        let before = reached(&sim, id).await.values().sum::<usize>();
        eventually(
            "more deliveries",
            Duration::from_secs(90),
            Duration::from_millis(100),
            || async {
                let now = reached(&sim, id).await.values().sum::<usize>();
                if now >= before + 120 || now >= RECIPIENTS {
                    Ok(())
                } else {
                    Err(format!("{now}"))
                }
            },
        )
        .await;
        match round % 3 {
            0 => d.kill_worker(),
            1 => {
                dispatcher.child.kill().expect("SIGKILL a dispatcher");
                dispatcher.child.wait().unwrap();
                dispatcher = d.dispatcher();
            }
            _ => {
                starter.child.kill().expect("SIGKILL the starter");
                starter.child.wait().unwrap();
                starter = spawn_starter(&d);
            }
        }
    }
    let sent = reached(&sim, id).await.values().sum::<usize>();
    assert!(
        sent < RECIPIENTS,
        "the kills landed while the campaign ran ({sent} sent)"
    );

    eventually(
        "the campaign completes",
        Duration::from_secs(240),
        Duration::from_millis(500),
        || async {
            let c = campaign().await;
            if c["status"] == "completed" {
                Ok(())
            } else {
                Err(c["metrics"].to_string())
            }
        },
    )
    .await;
    let reached = reached(&sim, id).await;
    assert_eq!(reached.len(), RECIPIENTS, "every recipient reached");
    let twice: Vec<_> = reached.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "reached more than once: {twice:?}");
    let c = campaign().await;
    let m: &Value = &c["metrics"];
    assert_eq!(
        (
            m["audience"].clone(),
            m["sent"].clone(),
            m["failed"].clone(),
            m["excluded"].clone(),
            m["remaining"].clone(),
            m["total"].clone()
        ),
        (
            json!(RECIPIENTS),
            json!(RECIPIENTS),
            json!(0),
            json!(0),
            json!(0),
            json!(RECIPIENTS)
        ),
        "the metrics are the recipients' statuses: {c}"
    );
    let s = d.statuses().await;
    assert_eq!(
        s.get("sent").copied(),
        Some(RECIPIENTS as i64),
        "the database agrees: {s:?}"
    );
}

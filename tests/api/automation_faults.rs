//! Automations under faults, as operators run them: PostgreSQL, Redis and SQS, with the API,
//! the worker, two dispatchers and two schedulers (`sweep`, which runs the automation clock)
//! each a process of its own. 500 enrollments wait on their timers while every role is killed
//! (SIGKILL) and restarted, several times each: every step runs once per enrollment, and the
//! platform's stand-in sees each send once.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    automations::all_enrollments,
    helpers::{ApiClient, AppProcess, Deployment, Sim, eventually},
};

const FANS: usize = 500;
/// Two sends per enrollment (the daily cap's default, 2, lets both through).
const SENDS: usize = 2 * FANS;

fn scheduler(d: &Deployment) -> AppProcess {
    AppProcess::spawn_until(
        &["sweep"],
        &d.env_refs(),
        d.dir.path(),
        "automation clock running",
    )
}

fn kill(p: &mut AppProcess) {
    p.child.kill().expect("SIGKILL");
    p.child.wait().unwrap();
}

/// The funnel of `automation`.
async fn metrics(me: &ApiClient, automation: i64) -> Value {
    me.get_json(&format!("/api/crm/automations/{automation}"))
        .await["metrics"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_every_role_while_enrollments_wait_runs_each_step_once_and_sends_each_once() {
    let sim = Sim::start(100_000).await;
    // Requests take a while at the platform: kills land while some are out.
    sim.faults(json!({ "latencyMs": 50 })).await;
    let mut d = Deployment::with(
        &sim.messages_url(),
        3_000,
        &crate::helpers::redis_url(),
        crate::helpers::Queue::Sqs,
        &[],
    )
    .await;
    let mut me = d.user(1);
    // A welcome and a follow-up, each after a timer drawn per enrollment.
    let automation = me
        .post_json(
            "/api/crm/automations",
            &json!({
                "name": "Welcome and follow-up",
                "trigger": { "type": "fan_created" },
                "steps": [
                    { "wait": { "minSeconds": 8, "maxSeconds": 40 } },
                    { "send": { "content": "Welcome!" } },
                    { "wait": { "minSeconds": 2, "maxSeconds": 20 } },
                    { "send": { "content": "Anything you would like to see?" } }
                ]
            }),
            StatusCode::CREATED,
        )
        .await;
    let id = automation["id"].as_i64().unwrap();
    // The import's 500 new fans enroll with their batches.
    let mut csv =
        String::from("Username,Display Name,Email,Subscription Tier,Total Spent,Last Seen\n");
    for i in 0..FANS {
        csv.push_str(&format!(
            "fan{i:05},Fan {i},f{i}@example.com,Crowd,$1.00,2025-01-01\n"
        ));
    }
    let job = me.import("fans.csv", csv.into_bytes()).await;
    me.wait_job_within(&job, Duration::from_secs(120)).await;
    let m = metrics(&me, id).await;
    assert_eq!(
        (m["enrolled"].clone(), m["active"].clone()),
        (json!(FANS), json!(FANS)),
        "every new fan waits on its first timer: {m}"
    );

    let mut schedulers = [scheduler(&d), scheduler(&d)];
    let mut dispatcher = d.dispatcher();
    let _second = d.dispatcher();
    // While every enrollment still waits (the first timer is 8 s at least), each role dies
    // once and comes back.
    d.kill_worker();
    kill(&mut dispatcher);
    dispatcher = d.dispatcher();
    kill(&mut schedulers[0]);
    schedulers[0] = scheduler(&d);
    d.kill_api();
    me = d.user(1);
    kill(&mut schedulers[1]);
    schedulers[1] = scheduler(&d);
    assert_eq!(
        sim.deliveries().await.len(),
        0,
        "the kills landed before the first timer"
    );

    // Then, each round: some deliveries, then one role is killed and replaced.
    for round in 0..10 {
        let before = sim.deliveries().await.len();
        eventually(
            "more deliveries",
            Duration::from_secs(90),
            Duration::from_millis(100),
            || async {
                let now = sim.deliveries().await.len();
                if now >= before + 60 || now >= SENDS {
                    Ok(())
                } else {
                    Err(format!("{now}"))
                }
            },
        )
        .await;
        match round % 5 {
            0 => kill(&mut schedulers[0]),
            1 => d.kill_worker(),
            2 => {
                kill(&mut dispatcher);
                dispatcher = d.dispatcher();
            }
            3 => {
                d.kill_api();
                me = d.user(1);
            }
            _ => kill(&mut schedulers[1]),
        }
        // A scheduler comes back a round after it died: for a while one clock does the work.
        for s in &mut schedulers {
            if s.child.try_wait().unwrap().is_some() && round % 5 != 0 && round % 5 != 4 {
                *s = scheduler(&d);
            }
        }
    }
    for s in &mut schedulers {
        if s.child.try_wait().unwrap().is_some() {
            *s = scheduler(&d);
        }
    }
    let sent = sim.deliveries().await.len();
    assert!(
        sent < SENDS,
        "the kills landed while sends went out ({sent} delivered)"
    );

    eventually(
        "every enrollment completes",
        Duration::from_secs(240),
        Duration::from_millis(500),
        || async {
            let m = metrics(&me, id).await;
            if m["completed"] == json!(FANS) && sim.deliveries().await.len() >= SENDS {
                Ok(())
            } else {
                Err(format!("{m} ({} delivered)", sim.deliveries().await.len()))
            }
        },
    )
    .await;

    // Each step of each enrollment ran once, in order, and each send has its own message.
    let enrollments = all_enrollments(&me, id).await;
    assert_eq!(enrollments.len(), FANS);
    let mut queued: BTreeMap<String, String> = BTreeMap::new();
    for e in &enrollments {
        let steps: Vec<(i64, String)> = e["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["step"].as_i64().unwrap(),
                    s["outcome"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            steps,
            [(0, "waited"), (1, "sent"), (2, "waited"), (3, "sent")]
                .map(|(n, o)| (n, o.to_owned()))
                .to_vec(),
            "{e}"
        );
        assert_eq!(e["status"], "completed", "{e}");
        for s in e["steps"].as_array().unwrap() {
            if let Some(m) = s["messageId"].as_i64() {
                let fan = e["fanId"].to_string();
                assert!(
                    queued.insert(m.to_string(), fan).is_none(),
                    "message {m} queued by two steps"
                );
            }
        }
    }
    assert_eq!(queued.len(), SENDS);

    // The stand-in saw each of those messages once, sent to its enrollment's fan.
    let deliveries = sim.deliveries().await;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for got in &deliveries {
        let m = got["messageId"].as_str().unwrap().to_owned();
        assert_eq!(
            queued.get(&m).map(String::as_str),
            got["recipientId"].as_str(),
            "delivery {got} is a step's message to its fan"
        );
        *seen.entry(m).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(
        seen.keys().cloned().collect::<BTreeSet<_>>(),
        queued.keys().cloned().collect::<BTreeSet<_>>(),
        "every step's message delivered"
    );

    let m = metrics(&me, id).await;
    assert_eq!(
        (
            m["enrolled"].clone(),
            m["completed"].clone(),
            m["exited"].clone(),
            m["sent"].clone()
        ),
        (json!(FANS), json!(FANS), json!(0), json!(SENDS)),
        "the funnel agrees: {m}"
    );
    let s = d.statuses().await;
    assert_eq!(
        s.get("sent").copied(),
        Some(SENDS as i64),
        "the database agrees: {s:?}"
    );
}

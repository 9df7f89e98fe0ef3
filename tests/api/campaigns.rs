//! Campaigns to an audience, on SQLite and on PostgreSQL, delivered to the platform stand-in
//! by a dispatcher and started by the campaign clock, both driven by the test (`run_once`):
//! a scheduled start with the segment as it is then and the exclusions checked just before
//! each message; pause, resume and cancel, each recipient reached at most once; delivery
//! lanes (a reply before campaigns, campaigns taking turns).

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, Utc};
use fanqueue_jobs::runtime::{CampaignClock, Dispatcher};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    delivery::reply,
    helpers::{ApiClient, Backend, Sim, TestApp, eventually, spawn_app_with, with_platform},
};

crate::on_both_backends!(backend:
    a_scheduled_campaign_starts_at_its_time_with_its_segment_as_then_and_skips_the_excluded,
    a_paused_campaign_sends_nothing_until_resumed_and_then_each_recipient_once,
    a_cancelled_campaign_sends_nothing_more_and_counts_the_rest_cancelled,
    during_two_large_campaigns_a_reply_goes_out_within_a_slot_and_the_two_alternate,
    a_recurring_campaign_runs_once_per_tick_under_two_schedulers_and_skips_a_busy_tick,
);

/// A deployment delivering `per_minute` a minute to a stand-in, with a dispatcher and a
/// campaign clock the test drives, a campaign keeping `ahead` messages queued.
async fn setup(
    backend: Backend,
    per_minute: u32,
    ahead: u32,
) -> (Sim, TestApp, Dispatcher, CampaignClock) {
    let sim = Sim::start(per_minute).await;
    let platform = with_platform(&sim.messages_url(), per_minute);
    let app = spawn_app_with(backend, |s| {
        platform(s);
        s.api.write_limit_per_minute = 10_000;
        s.delivery.campaign_ahead = ahead;
    })
    .await;
    let dispatcher = app.dispatcher().await;
    let clock = app.campaign_clock().await;
    (sim, app, dispatcher, clock)
}

/// One step of the deployment's clock and dispatcher.
async fn step(dispatcher: &Dispatcher, clock: &CampaignClock) {
    clock.run_once().await.expect("a clock look");
    dispatcher.run_once().await.expect("a dispatcher pass");
}

/// Steps until `done` holds (60 s at most).
async fn drive_until<F, Fut>(
    dispatcher: &Dispatcher,
    clock: &CampaignClock,
    what: &str,
    mut done: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually(
        what,
        Duration::from_secs(60),
        Duration::from_millis(20),
        || {
            let done = done();
            async move {
                step(dispatcher, clock).await;
                if done.await {
                    Ok(())
                } else {
                    Err("not yet".into())
                }
            }
        },
    )
    .await
}

/// Steps for `long`.
async fn drive_for(dispatcher: &Dispatcher, clock: &CampaignClock, long: Duration) {
    let end = tokio::time::Instant::now() + long;
    while tokio::time::Instant::now() < end {
        step(dispatcher, clock).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The stand-in's deliveries of `campaign`: recipient ids, in arrival order, and arrival
/// times.
async fn delivered(sim: &Sim, campaign: i64) -> Vec<(i64, DateTime<Utc>)> {
    let campaign = campaign.to_string();
    sim.deliveries()
        .await
        .iter()
        .filter(|d| d["campaignId"] == campaign.as_str())
        .map(|d| {
            (
                d["recipientId"].as_str().unwrap().parse().unwrap(),
                d["arrivedAt"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

/// How often each recipient was reached.
fn times(deliveries: &[(i64, DateTime<Utc>)]) -> BTreeMap<i64, usize> {
    let mut n = BTreeMap::new();
    for (fan, _) in deliveries {
        *n.entry(*fan).or_default() += 1;
    }
    n
}

async fn fan(me: &ApiClient, handle: &str, tags: &[&str]) -> i64 {
    me.create_fan(json!({ "handle": handle, "tags": tags }))
        .await["id"]
        .as_i64()
        .unwrap()
}

async fn campaign(me: &ApiClient, id: i64) -> Value {
    me.get_json(&format!("/api/crm/campaigns/{id}")).await
}

async fn a_scheduled_campaign_starts_at_its_time_with_its_segment_as_then_and_skips_the_excluded(
    backend: Backend,
) {
    // The platform's 10 a minute: a slot every 6 s. (At 20 a minute the 3 s slot was less than
    // the start's two job hops take on SQLite under the whole suite's load: 4.9 s twice.)
    let slot = Duration::from_secs(6);
    let (sim, app, dispatcher, clock) = setup(backend, 10, 0).await;
    let me = app.user(1);
    let a = fan(&me, "@a", &["vip"]).await;
    let b = fan(&me, "@b", &["vip"]).await;
    let c = fan(&me, "@c", &["VIP"]).await;
    let d = fan(&me, "@d", &[]).await;
    // e is never in the segment.
    fan(&me, "@e", &["other"]).await;
    // b was messaged a moment ago; c wrote and is not read yet.
    let b_conv = me.open_conversation(b).await["id"].as_i64().unwrap();
    reply(&app, 1, b_conv, "see you soon").await;
    let c_conv = me.open_conversation(c).await["id"].as_i64().unwrap();
    me.post_json(
        &format!("/api/crm/conversations/{c_conv}/inbound"),
        &json!({ "text": "are you there?" }),
        StatusCode::CREATED,
    )
    .await;
    let vip = me
        .post_json(
            "/api/crm/segments",
            &json!({ "name": "VIPs", "filter": { "tagsAny": ["vip"] } }),
            StatusCode::CREATED,
        )
        .await["id"]
        .as_i64()
        .unwrap();

    let at = Utc::now() + chrono::TimeDelta::seconds(5);
    let created = me
        .post_json(
            "/api/crm/campaigns",
            &json!({
                "name": "Friday drop",
                "content": "New set tonight",
                "audience": { "segmentId": vip },
                "exclude": { "messagedWithinHours": 1, "unreadInbound": true },
                "schedule": { "at": at },
            }),
            StatusCode::CREATED,
        )
        .await;
    let id = created["id"].as_i64().unwrap();
    assert_eq!(created["status"], "scheduled", "{created}");
    let starts: DateTime<Utc> = created["startsAt"].as_str().unwrap().parse().unwrap();
    assert!((starts - at).num_milliseconds().abs() < 1, "{created}");
    // d joins the segment before the start; e never does.
    me.put(&format!("/api/crm/fans/{d}"), &json!({ "tags": ["vip"] }))
        .await
        .error_for_status()
        .unwrap();

    // Until its time: the reply to b goes out, nothing of the campaign does.
    while Utc::now() + chrono::TimeDelta::milliseconds(300) < at {
        step(&dispatcher, &clock).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        delivered(&sim, id).await.is_empty(),
        "nothing before its time"
    );
    assert_eq!(campaign(&me, id).await["status"], "scheduled");
    assert_eq!(sim.deliveries().await.len(), 1, "the reply to b only");

    drive_until(&dispatcher, &clock, "both recipients reached", || async {
        delivered(&sim, id).await.len() >= 2
    })
    .await;
    let out = delivered(&sim, id).await;
    let first = out[0].1;
    assert!(
        first >= at,
        "the first message left at {first}, before {at}"
    );
    assert!(
        first <= at + chrono::TimeDelta::from_std(slot).unwrap(),
        "the first message left at {first}, more than a slot after {at}"
    );
    drive_until(&dispatcher, &clock, "the campaign completes", || async {
        campaign(&me, id).await["status"] == "completed"
    })
    .await;
    let out = delivered(&sim, id).await;
    assert_eq!(
        times(&out),
        BTreeMap::from([(a, 1), (d, 1)]),
        "a and d (tagged in before the start) once each; b, c excluded; e not in the segment"
    );
    let c = campaign(&me, id).await;
    let m = &c["metrics"];
    assert_eq!(
        (
            m["audience"].clone(),
            m["sent"].clone(),
            m["excluded"].clone(),
            m["cancelled"].clone(),
            m["remaining"].clone(),
            m["failed"].clone()
        ),
        (json!(4), json!(2), json!(2), json!(0), json!(0), json!(0)),
        "{c}"
    );
    assert_eq!(
        m["excludedBy"],
        json!({ "messaged_recently": 1, "unread_inbound": 1 }),
        "{c}"
    );
    let runs = me.get_json(&format!("/api/crm/campaigns/{id}/runs")).await;
    assert_eq!(runs["total"], 1, "{runs}");
    let run = &runs["items"][0];
    assert_eq!(
        (
            run["status"].clone(),
            run["audience"].clone(),
            run["sent"].clone()
        ),
        (json!("completed"), json!(4), json!(2)),
        "{runs}"
    );
}

/// Creates `n` fans of the tier (tag) `Crowd` with one import; returns their ids.
async fn many_fans(me: &ApiClient, n: usize) -> Vec<i64> {
    let mut csv =
        String::from("Username,Display Name,Email,Subscription Tier,Total Spent,Last Seen\n");
    for i in 0..n {
        csv.push_str(&format!(
            "fan{i:04},Fan {i},fan{i}@example.com,Crowd,$1.00,2025-01-01\n"
        ));
    }
    let job = me.import("fans.csv", csv.into_bytes()).await;
    me.wait_job(&job).await;
    let page = me.get_json("/api/crm/fans?tag=Crowd&limit=200").await;
    assert_eq!(page["total"], n as i64, "{page}");
    let mut ids = vec![];
    let mut offset = 0;
    while ids.len() < n {
        let page = me
            .get_json(&format!(
                "/api/crm/fans?tag=Crowd&limit=200&offset={offset}"
            ))
            .await;
        let items = page["items"].as_array().unwrap();
        ids.extend(items.iter().map(|f| f["id"].as_i64().unwrap()));
        offset += items.len();
    }
    ids.sort_unstable();
    ids
}

/// Starts a campaign of `priority` to the imported fans; returns its id.
async fn start_to_tagged(me: &ApiClient, priority: i64) -> i64 {
    let created = me
        .post_json(
            "/api/crm/campaigns",
            &json!({
                "name": "Everyone",
                "content": "Hello all",
                "priority": priority,
                "audience": { "filter": { "tagsAll": ["crowd"] } },
            }),
            StatusCode::CREATED,
        )
        .await;
    assert_eq!(created["status"], "active", "{created}");
    created["id"].as_i64().unwrap()
}

async fn control(me: &ApiClient, id: i64, what: &str) -> Value {
    me.post_json(
        &format!("/api/crm/campaigns/{id}/{what}"),
        &json!({}),
        StatusCode::OK,
    )
    .await
}

async fn a_paused_campaign_sends_nothing_until_resumed_and_then_each_recipient_once(
    backend: Backend,
) {
    // 600 a minute (a slot every 100 ms); 10 messages kept ahead, so the campaign is fed
    // many times.
    let (sim, app, dispatcher, clock) = setup(backend, 600, 10).await;
    let me = app.user(1);
    let fans = many_fans(&me, 60).await;
    let id = start_to_tagged(&me, 5).await;

    drive_until(&dispatcher, &clock, "15 delivered", || async {
        delivered(&sim, id).await.len() >= 15
    })
    .await;
    let paused = control(&me, id, "pause").await;
    assert_eq!(paused["status"], "paused", "{paused}");
    let at_pause = delivered(&sim, id).await.len();
    // Pausing again changes nothing.
    assert_eq!(control(&me, id, "pause").await["status"], "paused");
    drive_for(&dispatcher, &clock, Duration::from_secs(2)).await;
    let while_paused = delivered(&sim, id).await.len();
    assert!(
        while_paused <= at_pause + 1,
        "at most the one already out after the pause: {at_pause} then {while_paused}"
    );
    let c = campaign(&me, id).await;
    assert_eq!(c["status"], "paused");
    assert_eq!(c["estimatedCompletionTime"], Value::Null, "{c}");

    let resumed = control(&me, id, "resume").await;
    assert_eq!(resumed["status"], "active", "{resumed}");
    assert!(resumed["estimatedCompletionTime"].is_string(), "{resumed}");
    drive_until(&dispatcher, &clock, "the campaign completes", || async {
        campaign(&me, id).await["status"] == "completed"
    })
    .await;
    let out = delivered(&sim, id).await;
    let reached = times(&out);
    assert_eq!(
        reached.keys().copied().collect::<Vec<_>>(),
        fans,
        "every recipient reached"
    );
    assert!(reached.values().all(|n| *n == 1), "each once: {reached:?}");
    let m = &campaign(&me, id).await["metrics"];
    assert_eq!(
        (
            m["audience"].clone(),
            m["sent"].clone(),
            m["remaining"].clone()
        ),
        (json!(60), json!(60), json!(0)),
        "{m}"
    );
    // A completed campaign is neither paused nor resumed.
    for what in ["pause", "resume"] {
        let resp = me
            .post(&format!("/api/crm/campaigns/{id}/{what}"), &json!({}))
            .await;
        assert_eq!(resp.status(), StatusCode::CONFLICT, "{what}");
    }
}

async fn a_cancelled_campaign_sends_nothing_more_and_counts_the_rest_cancelled(backend: Backend) {
    let (sim, app, dispatcher, clock) = setup(backend, 600, 10).await;
    let me = app.user(1);
    many_fans(&me, 40).await;
    let id = start_to_tagged(&me, 5).await;

    drive_until(&dispatcher, &clock, "10 delivered", || async {
        delivered(&sim, id).await.len() >= 10
    })
    .await;
    let cancelled = control(&me, id, "cancel").await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let at_cancel = delivered(&sim, id).await.len();
    drive_for(&dispatcher, &clock, Duration::from_secs(2)).await;
    let out = delivered(&sim, id).await;
    assert!(
        out.len() <= at_cancel + 1,
        "at most the one already out after the cancel: {at_cancel} then {}",
        out.len()
    );
    assert!(times(&out).values().all(|n| *n == 1), "each once");
    // Resuming a cancelled campaign is refused; cancelling again changes nothing.
    let resp = me
        .post(&format!("/api/crm/campaigns/{id}/resume"), &json!({}))
        .await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert_eq!(control(&me, id, "cancel").await["status"], "cancelled");

    let c = campaign(&me, id).await;
    let m = &c["metrics"];
    let sent = m["sent"].as_i64().unwrap();
    assert_eq!(sent, out.len() as i64, "{c}");
    assert_eq!(
        (
            m["audience"].clone(),
            m["cancelled"].clone(),
            m["remaining"].clone()
        ),
        (json!(40), json!(40 - sent), json!(0)),
        "the rest is cancelled: {c}"
    );
    assert!(c["cancelledAt"].is_string(), "{c}");
}

async fn during_two_large_campaigns_a_reply_goes_out_within_a_slot_and_the_two_alternate(
    backend: Backend,
) {
    let (sim, app, dispatcher, clock) = setup(backend, 600, 20).await;
    let me = app.user(1);
    many_fans(&me, 5_000).await;
    let (_, conv) = me.fan_with_conversation("@writes-in").await;
    // Priority 10: above the reply's 9, which goes first all the same (its lane does).
    let first = start_to_tagged(&me, 10).await;
    let second = start_to_tagged(&me, 10).await;
    let campaign_deliveries = || async {
        sim.deliveries()
            .await
            .iter()
            .filter_map(|d| d["campaignId"].as_str().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    drive_until(
        &dispatcher,
        &clock,
        "30 campaign messages delivered",
        || async { campaign_deliveries().await.len() >= 30 },
    )
    .await;

    // A reply, once on the outbound queue, goes out before all but at most one campaign
    // message (the one already out when it arrived).
    let id = reply(&app, 1, conv, "thanks for writing!").await;
    let key = id.to_string();
    let page = me.get_json("/api/jobs?kind=send_message&limit=1").await;
    me.wait_job(page["items"][0]["id"].as_str().unwrap()).await;
    let before = sim.deliveries().await.len();
    drive_until(&dispatcher, &clock, "the reply is delivered", || async {
        sim.deliveries()
            .await
            .iter()
            .any(|d| d["messageId"] == key.as_str())
    })
    .await;
    let all = sim.deliveries().await;
    let at = all
        .iter()
        .position(|d| d["messageId"] == key.as_str())
        .unwrap();
    assert!(
        at <= before + 1,
        "the reply went out after {} more campaign messages",
        at - before
    );

    drive_until(
        &dispatcher,
        &clock,
        "80 campaign messages delivered",
        || async { campaign_deliveries().await.len() >= 80 },
    )
    .await;
    for id in [first, second] {
        control(&me, id, "cancel").await;
    }
    // At any moment the two are within one message of each other.
    let (a, b) = (first.to_string(), second.to_string());
    let (mut n_a, mut n_b) = (0i64, 0i64);
    for (i, c) in campaign_deliveries().await.iter().enumerate() {
        if *c == a {
            n_a += 1;
        } else if *c == b {
            n_b += 1;
        }
        assert!(
            (n_a - n_b).abs() <= 1,
            "after {} deliveries: {n_a} and {n_b}",
            i + 1
        );
    }
    assert!(n_a >= 40 && n_b >= 40, "{n_a} and {n_b}");
}

async fn a_recurring_campaign_runs_once_per_tick_under_two_schedulers_and_skips_a_busy_tick(
    backend: Backend,
) {
    let (sim, app, dispatcher, clock) = setup(backend, 600, 0).await;
    let other = app.campaign_clock().await;
    let me = app.user(1);
    let fans = many_fans(&me, 30).await;
    for (schedule, field) in [
        (json!({ "cron": "every minute" }), "schedule.cron"),
        (json!({ "cron": "0 * * * * *" }), "schedule.cron"),
        (
            json!({ "cron": "* * * * *", "timezone": "Mars/Olympus" }),
            "schedule.cron",
        ),
        (json!({ "timezone": "UTC" }), "schedule.timezone"),
    ] {
        let body = json!({ "name": "x", "content": "x", "audience": { "filter": {} }, "schedule": schedule });
        let resp = me.post("/api/crm/campaigns", &body).await;
        assert_eq!(
            resp.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{schedule}"
        );
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["field"], field, "{err}");
    }
    let asked = Utc::now();
    let created = me
        .post_json(
            "/api/crm/campaigns",
            &json!({
                "name": "Every minute",
                "content": "Tick",
                "audience": { "filter": { "tagsAll": ["crowd"] } },
                "schedule": { "cron": "* * * * *", "timezone": "Europe/Paris" },
            }),
            StatusCode::CREATED,
        )
        .await;
    let id = created["id"].as_i64().unwrap();
    assert_eq!(
        (
            created["status"].clone(),
            created["cron"].clone(),
            created["timezone"].clone()
        ),
        (
            json!("scheduled"),
            json!("* * * * *"),
            json!("Europe/Paris")
        ),
        "{created}"
    );
    let first: DateTime<Utc> = created["startsAt"].as_str().unwrap().parse().unwrap();
    assert_eq!(first.timestamp() % 60, 0, "a minute's tick: {first}");
    assert!(
        first >= asked && first <= asked + chrono::TimeDelta::seconds(60),
        "the next minute after {asked}: {first}"
    );
    let minute = chrono::TimeDelta::seconds(60);
    // Both schedulers look at each tick at the same time; one of them starts it.
    let (clock, other) = (&clock, &other);
    let both = |at: DateTime<Utc>| async move {
        let at = fanqueue_jobs::domain::Timestamp(at);
        let (a, b) = tokio::join!(clock.run_at(at), other.run_at(at));
        a.unwrap() + b.unwrap()
    };
    let runs = || async { me.get_json(&format!("/api/crm/campaigns/{id}/runs")).await };

    assert_eq!(both(first).await, 1, "one start for the first tick");
    let r = runs().await;
    assert_eq!(r["total"], 1, "{r}");
    assert_eq!(r["items"][0]["status"], "active", "{r}");
    // The next tick comes while the first run is still going: recorded skipped.
    assert_eq!(both(first + minute).await, 1);
    let r = runs().await;
    assert_eq!(r["total"], 2, "{r}");
    let skipped = &r["items"][0];
    assert_eq!(skipped["status"], "skipped", "{r}");
    let at: DateTime<Utc> = skipped["tick"].as_str().unwrap().parse().unwrap();
    assert_eq!(at, first + minute, "{r}");
    let completed = |n: usize| async move {
        let r = runs().await;
        r["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|run| run["status"] == "completed")
            .count()
            == n
    };
    drive_until(&dispatcher, clock, "the first run completes", || {
        completed(1)
    })
    .await;
    // The tick after: a run of its own.
    assert_eq!(both(first + minute * 2).await, 1);
    drive_until(&dispatcher, clock, "the second run completes", || {
        completed(2)
    })
    .await;

    let r = runs().await;
    assert_eq!(r["total"], 3, "{r}");
    for run in r["items"].as_array().unwrap() {
        if run["status"] == "completed" {
            assert_eq!(
                (
                    run["audience"].clone(),
                    run["sent"].clone(),
                    run["remaining"].clone()
                ),
                (json!(30), json!(30), json!(0)),
                "{run}"
            );
        }
    }
    let reached = times(&delivered(&sim, id).await);
    assert_eq!(reached.keys().copied().collect::<Vec<_>>(), fans);
    assert!(
        reached.values().all(|n| *n == 2),
        "once per run: {reached:?}"
    );
    let c = campaign(&me, id).await;
    assert_eq!(c["status"], "active", "a recurring campaign goes on: {c}");
    assert_eq!(c["metrics"]["sent"], 60, "{c}");

    // Cancelled, it starts nothing more.
    control(&me, id, "cancel").await;
    assert_eq!(both(first + minute * 3).await, 0);
    assert_eq!(runs().await["total"], 3);
}

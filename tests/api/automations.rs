//! Automations over HTTP on both backends, their clock and a dispatcher driven by the test
//! (`run_at` steps through waits and days): a welcome on a new subscription, once per event
//! id, between its wait's bounds; a reply that stops a pending send; quiet hours, once per
//! fan, cooldown and the daily cap each biting; a win-back with a paid message whose
//! purchases credit its step and variant; a daily inactivity trigger under two schedulers.

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, TimeDelta, Utc};
use fanqueue_jobs::{
    crm::automations::DailyCap,
    db::Db,
    domain::{FanId, Timestamp},
    runtime::{AutomationClock, Dispatcher},
};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{ApiClient, Backend, Sim, TestApp, eventually, spawn_app_with, with_platform};

crate::on_both_backends!(backend:
    a_subscription_enrolls_once_and_the_welcome_goes_out_between_its_wait_bounds,
    a_fan_who_writes_in_before_the_pending_send_gets_nothing_and_exits_replied,
    quiet_hours_once_per_fan_cooldown_and_the_daily_cap_each_bite,
    a_win_back_splits_its_variants_by_weight_and_credits_purchases_to_step_and_variant,
    inactive_enrolls_each_fan_once_per_spell_under_two_schedulers,
    two_sends_in_a_row_each_queue_their_own_message,
    an_import_enrolls_its_new_fans_in_fan_created_automations_once,
    a_campaign_excludes_fans_at_the_daily_cap_and_counts_toward_it,
);

/// A deployment delivering 600 a minute to a stand-in, with the automation clock and a
/// dispatcher the test drives; `cap` and `action` are the daily cap's settings.
async fn setup(
    backend: Backend,
    cap: u32,
    action: &str,
) -> (Sim, TestApp, Dispatcher, AutomationClock) {
    let sim = Sim::start(600).await;
    let platform = with_platform(&sim.messages_url(), 600);
    let action = action.to_owned();
    let app = spawn_app_with(backend, move |s| {
        platform(s);
        s.api.write_limit_per_minute = 10_000;
        s.automations.max_automated_per_fan_per_day = cap;
        s.automations.daily_cap_action = action.clone();
    })
    .await;
    let dispatcher = app.dispatcher().await;
    let clock = app.automation_clock().await;
    (sim, app, dispatcher, clock)
}

async fn fan(me: &ApiClient, handle: &str) -> i64 {
    me.create_fan(json!({ "handle": handle })).await["id"]
        .as_i64()
        .unwrap()
}

async fn create(me: &ApiClient, body: Value) -> Value {
    me.post_json("/api/crm/automations", &body, StatusCode::CREATED)
        .await
}

async fn events(me: &ApiClient, events: Value) -> Value {
    me.post_json(
        "/api/onlyfans/events",
        &json!({ "events": events }),
        StatusCode::OK,
    )
    .await
}

async fn enrollments(me: &ApiClient, automation: i64) -> Value {
    me.get_json(&format!(
        "/api/crm/automations/{automation}/enrollments?limit=200"
    ))
    .await
}

/// The clock's look at `at`.
async fn look(clock: &AutomationClock, at: DateTime<Utc>) -> fanqueue_jobs::runtime::Looked {
    clock.run_at(Timestamp(at)).await.expect("a clock look")
}

/// Runs the dispatcher until the stand-in has `n` deliveries (30 s at most).
async fn delivered(sim: &Sim, dispatcher: &Dispatcher, n: usize) -> Vec<Value> {
    eventually(
        &format!("{n} deliveries"),
        Duration::from_secs(30),
        Duration::from_millis(20),
        || async {
            dispatcher.run_once().await.expect("a dispatcher pass");
            let got = sim.deliveries().await;
            if got.len() >= n {
                Ok(got)
            } else {
                Err(format!("{} so far", got.len()))
            }
        },
    )
    .await
}

/// The messages the steps of an automation's enrollments queued.
fn step_messages(page: &Value) -> Vec<i64> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["steps"].as_array().unwrap().clone())
        .filter_map(|s| s["messageId"].as_i64())
        .collect()
}

async fn a_subscription_enrolls_once_and_the_welcome_goes_out_between_its_wait_bounds(
    backend: Backend,
) {
    let (sim, app, dispatcher, clock) = setup(backend, 2, "skip").await;
    let me = app.user(1);
    let a = fan(&me, "@a").await;
    let b = fan(&me, "@b").await;
    let welcome = create(
        &me,
        json!({
            "name": "Welcome",
            "trigger": { "type": "subscription" },
            "steps": [
                { "wait": { "minSeconds": 60, "maxSeconds": 120 } },
                { "send": { "content": "Welcome in!" } }
            ]
        }),
    )
    .await;
    assert_eq!(
        (welcome["status"].clone(), welcome["version"].clone()),
        (json!("active"), json!(1)),
        "{welcome}"
    );
    let id = welcome["id"].as_i64().unwrap();
    let at = Utc::now();
    let first = json!([
        { "id": "sub-a", "type": "subscription", "at": at, "fanId": a, "amountCents": 999 },
    ]);
    let applied = events(&me, first.clone()).await;
    assert_eq!(applied["applied"], 1, "{applied}");
    // The same event again, and a renewal (the fan is subscribed already): nobody more.
    let again = events(&me, first).await;
    assert_eq!(again["duplicates"], 1, "{again}");
    events(
        &me,
        json!([{ "id": "renew-a", "type": "subscription", "at": at, "fanId": a, "amountCents": 999 }]),
    )
    .await;
    // Another trigger's event enrolls no one into this one.
    events(
        &me,
        json!([{ "id": "tip-b", "type": "tip", "at": at, "fanId": b, "amountCents": 100 }]),
    )
    .await;
    let page = enrollments(&me, id).await;
    assert_eq!(page["total"], 1, "{page}");
    let e = &page["items"][0];
    assert_eq!(
        (e["fanId"].as_i64(), e["status"].clone(), e["step"].clone()),
        (Some(a), json!("active"), json!(0)),
        "{e}"
    );
    let due: DateTime<Utc> = e["dueAt"].as_str().unwrap().parse().unwrap();
    let asked = Utc::now();
    assert!(
        due >= at + TimeDelta::seconds(60) && due <= asked + TimeDelta::seconds(120),
        "due between 60 and 120 s after the event: {due} (event at {at})"
    );

    // Nothing goes before the wait is over.
    let early = look(&clock, due - TimeDelta::seconds(1)).await;
    assert_eq!(early.sent, 0, "{early:?}");
    assert_eq!(enrollments(&me, id).await["items"][0]["step"], 0);
    let on_time = look(&clock, due).await;
    assert_eq!(on_time.sent, 1, "{on_time:?}");
    let page = enrollments(&me, id).await;
    let e = &page["items"][0];
    assert_eq!(e["status"], "completed", "{e}");
    let steps: Vec<(String, String)> = e["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["kind"].as_str().unwrap().to_owned(),
                s["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("wait".into(), "waited".into()),
            ("send".into(), "sent".into())
        ],
        "{e}"
    );
    let message = step_messages(&page)[0];
    let got = delivered(&sim, &dispatcher, 1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["messageId"], message.to_string(), "{got:?}");
    assert_eq!(got[0]["recipientId"], a.to_string(), "{got:?}");
    // A later look sends nothing more.
    assert_eq!(look(&clock, due + TimeDelta::hours(1)).await.sent, 0);

    let welcome = me.get_json(&format!("/api/crm/automations/{id}")).await;
    let m = &welcome["metrics"];
    assert_eq!(
        (
            m["enrolled"].clone(),
            m["completed"].clone(),
            m["messages"].clone(),
            m["sent"].clone(),
            m["steps"][1]["entered"].clone()
        ),
        (json!(1), json!(1), json!(1), json!(1), json!(1)),
        "{welcome}"
    );
    // The fan's timeline says the same.
    let timeline = me.get_json(&format!("/api/crm/fans/{a}/timeline")).await;
    assert_eq!(timeline["total"], 1, "{timeline}");
    assert_eq!(timeline["items"][0]["automationName"], "Welcome");
    assert_eq!(
        timeline["items"][0]["steps"][1]["messageStatus"], "sent",
        "{timeline}"
    );
    // Another creator sees none of it.
    let other = app.user(2);
    let resp = other.get(&format!("/api/crm/automations/{id}")).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = other.get(&format!("/api/crm/fans/{a}/timeline")).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

async fn a_fan_who_writes_in_before_the_pending_send_gets_nothing_and_exits_replied(
    backend: Backend,
) {
    let (sim, app, dispatcher, clock) = setup(backend, 2, "skip").await;
    let me = app.user(1);
    let a = fan(&me, "@a").await;
    let b = fan(&me, "@b").await;
    let c = fan(&me, "@c").await;
    let id = create(
        &me,
        json!({
            "name": "Win-back",
            "trigger": { "type": "subscription_expired" },
            "stopOnReply": true,
            "steps": [
                { "wait": { "seconds": 3600 } },
                { "send": { "content": "We miss you", "priceCents": 500 } },
                { "wait": { "seconds": 3600 } },
                { "send": { "content": "Last chance" } }
            ]
        }),
    )
    .await["id"]
        .as_i64()
        .unwrap();
    let at = Utc::now();
    let expired: Vec<Value> = [a, b, c]
        .iter()
        .map(|f| json!({ "id": format!("exp-{f}"), "type": "subscription_expired", "at": at, "fanId": f }))
        .collect();
    events(&me, json!(expired)).await;
    assert_eq!(enrollments(&me, id).await["total"], 3);

    // a writes in during the first wait: nothing is ever sent to it.
    let a_conv = me.open_conversation(a).await["id"].as_i64().unwrap();
    me.post_json(
        &format!("/api/crm/conversations/{a_conv}/inbound"),
        &json!({ "text": "hey" }),
        StatusCode::CREATED,
    )
    .await;
    // The first sends to b and c are queued; b writes in before its message went out: the
    // message is taken back.
    // (Enrolled a moment after `at`: the first wait is over an hour after now.)
    let first_send = Utc::now() + TimeDelta::seconds(3601);
    let sent = look(&clock, first_send).await;
    assert_eq!(sent.sent, 2, "{sent:?}");
    let b_conv = me.open_conversation(b).await["id"].as_i64().unwrap();
    me.post_json(
        &format!("/api/crm/conversations/{b_conv}/inbound"),
        &json!({ "text": "not now" }),
        StatusCode::CREATED,
    )
    .await;
    let got = delivered(&sim, &dispatcher, 1).await;
    assert_eq!(
        got.iter()
            .map(|d| d["recipientId"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>(),
        [c.to_string()],
        "only c's first message went out: {got:?}"
    );
    // c goes on to the end; a and b never get anything, however long the clock runs.
    look(&clock, first_send + TimeDelta::seconds(3600)).await;
    let got = delivered(&sim, &dispatcher, 2).await;
    for _ in 0..5 {
        dispatcher.run_once().await.unwrap();
    }
    let to: Vec<String> = sim
        .deliveries()
        .await
        .iter()
        .map(|d| d["recipientId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(to, [c.to_string(), c.to_string()], "{got:?}");

    let page = enrollments(&me, id).await;
    let by_fan = |f: i64| {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["fanId"] == f)
            .unwrap()
            .clone()
    };
    for f in [a, b] {
        let e = by_fan(f);
        assert_eq!(
            (e["status"].clone(), e["exitReason"].clone()),
            (json!("exited"), json!("replied")),
            "{e}"
        );
    }
    let eb = by_fan(b);
    assert_eq!(
        eb["steps"][1]["outcome"], "withdrawn",
        "b's queued message was taken back: {eb}"
    );
    assert_eq!(by_fan(c)["status"], "completed");
    let m = &me.get_json(&format!("/api/crm/automations/{id}")).await["metrics"];
    assert_eq!(m["exitedBy"], json!({ "replied": 2 }), "{m}");
    assert_eq!(m["completed"], 1, "{m}");
}

async fn quiet_hours_once_per_fan_cooldown_and_the_daily_cap_each_bite(backend: Backend) {
    let (_sim, app, _dispatcher, clock) = setup(backend, 1, "wait").await;
    let me = app.user(1);
    let a = fan(&me, "@a").await;
    let b = fan(&me, "@b").await;
    // Quiet 22:00 to 08:00 in Tokyo (UTC+9 all year): 13:00 to 23:00 UTC. The clock looks at
    // 23:30 Tokyo (14:30 UTC) the next day.
    let quiet = create(
        &me,
        json!({
            "name": "Thanks for the tip",
            "trigger": { "type": "tip" },
            "quietHours": { "from": "22:00", "to": "08:00", "timezone": "Asia/Tokyo" },
            "oncePerFan": true,
            "steps": [ { "send": { "content": "Thank you!" } } ]
        }),
    )
    .await["id"]
        .as_i64()
        .unwrap();
    let tomorrow = Utc::now().date_naive().succ_opt().unwrap();
    let utc = |h: u32, m: u32| tomorrow.and_hms_opt(h, m, 0).unwrap().and_utc();
    let night = utc(14, 30);
    let tip = |id: &str, fan: i64| json!({ "id": id, "type": "tip", "at": Utc::now(), "fanId": fan, "amountCents": 100 });
    events(&me, json!([tip("t1", a)])).await;
    let looked = look(&clock, night).await;
    assert_eq!(looked.sent, 0, "quiet: {looked:?}");
    let e = &enrollments(&me, quiet).await["items"][0];
    assert_eq!(
        (
            e["heldBy"].clone(),
            e["dueAt"]
                .as_str()
                .map(|d| d.parse::<DateTime<Utc>>().unwrap())
        ),
        (json!("quiet_hours"), Some(utc(23, 0))),
        "held until 08:00 in Tokyo: {e}"
    );
    assert_eq!(look(&clock, utc(22, 59)).await.sent, 0);
    assert_eq!(look(&clock, utc(23, 0)).await.sent, 1);
    // Once per fan: a second tip enrolls a no more.
    events(&me, json!([tip("t2", a)])).await;
    assert_eq!(enrollments(&me, quiet).await["total"], 1);

    // Cooldown: re-enrolled only after 24 hours.
    let cool = create(
        &me,
        json!({
            "name": "Bought",
            "trigger": { "type": "purchased" },
            "cooldownHours": 24,
            "steps": [ { "wait": { "seconds": 60 } } ]
        }),
    )
    .await["id"]
        .as_i64()
        .unwrap();
    let buy = |id: &str| json!({ "id": id, "type": "purchased", "at": Utc::now(), "fanId": b, "amountCents": 500 });
    events(&me, json!([buy("p1")])).await;
    events(&me, json!([buy("p2")])).await;
    assert_eq!(
        enrollments(&me, cool).await["total"],
        1,
        "the second purchase came within the cooldown"
    );

    // The daily cap (1 a day here, `wait`): b's second automated message of the day waits
    // for the next day.
    let twice = create(
        &me,
        json!({
            "name": "Two in a row",
            "trigger": { "type": "resubscription" },
            "steps": [
                { "send": { "content": "one" } },
                { "send": { "content": "two" } }
            ]
        }),
    )
    .await["id"]
        .as_i64()
        .unwrap();
    let now = Utc::now();
    events(
        &me,
        json!([
            { "id": "s1", "type": "subscription", "at": now - TimeDelta::days(30), "fanId": b, "amountCents": 999 },
            { "id": "x1", "type": "subscription_expired", "at": now - TimeDelta::days(1), "fanId": b },
            { "id": "s2", "type": "subscription", "at": now, "fanId": b, "amountCents": 999 },
        ]),
    )
    .await;
    // The day after tomorrow, 09:00 UTC.
    let morning = utc(9, 0) + TimeDelta::days(1);
    let midnight = utc(0, 0) + TimeDelta::days(2);
    let looked = look(&clock, morning).await;
    assert_eq!(looked.sent, 1, "{looked:?}");
    let e = enrollments(&me, twice).await["items"][0].clone();
    assert_eq!(
        (
            e["step"].clone(),
            e["heldBy"].clone(),
            e["dueAt"]
                .as_str()
                .map(|d| d.parse::<DateTime<Utc>>().unwrap())
        ),
        (json!(1), json!("daily_cap"), Some(midnight)),
        "{e}"
    );
    assert_eq!(look(&clock, morning + TimeDelta::hours(14)).await.sent, 0);
    assert_eq!(look(&clock, midnight).await.sent, 1);
    let e = enrollments(&me, twice).await["items"][0].clone();
    assert_eq!(e["status"], "completed", "{e}");
    assert_eq!(e["steps"][1]["heldBy"], "daily_cap", "{e}");
}

/// Imports `n` fans; returns their ids, ascending.
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
    let mut ids = vec![];
    while ids.len() < n {
        let page = me
            .get_json(&format!("/api/crm/fans?limit=200&offset={}", ids.len()))
            .await;
        let items = page["items"].as_array().unwrap();
        assert!(!items.is_empty(), "{page}");
        ids.extend(items.iter().map(|f| f["id"].as_i64().unwrap()));
    }
    ids.sort_unstable();
    ids
}

/// Every enrollment of an automation, with its steps.
pub(crate) async fn all_enrollments(me: &ApiClient, automation: i64) -> Vec<Value> {
    let mut all = vec![];
    loop {
        let page = me
            .get_json(&format!(
                "/api/crm/automations/{automation}/enrollments?limit=200&offset={}",
                all.len()
            ))
            .await;
        let items = page["items"].as_array().unwrap().clone();
        if items.is_empty() {
            return all;
        }
        all.extend(items);
    }
}

async fn a_win_back_splits_its_variants_by_weight_and_credits_purchases_to_step_and_variant(
    backend: Backend,
) {
    let (_sim, app, _dispatcher, clock) = setup(backend, 2, "skip").await;
    let me = app.user(1);
    let fans = many_fans(&me, 1000).await;
    let id = create(
        &me,
        json!({
            "name": "Win-back",
            "trigger": { "type": "subscription_expired" },
            "steps": [
                { "wait": { "seconds": 60 } },
                { "send": {
                    "content": "Come back",
                    "variants": [
                        { "name": "a", "weight": 1, "content": "Come back: 50% off", "priceCents": 500 },
                        { "name": "b", "weight": 1, "content": "Come back: 30% off", "priceCents": 700 }
                    ]
                } }
            ]
        }),
    )
    .await["id"]
        .as_i64()
        .unwrap();
    let at = Utc::now();
    for chunk in fans.chunks(500) {
        let batch: Vec<Value> = chunk
            .iter()
            .map(|f| json!({ "id": format!("x-{f}"), "type": "subscription_expired", "at": at, "fanId": f }))
            .collect();
        assert_eq!(events(&me, json!(batch)).await["applied"], chunk.len());
    }
    let looked = look(&clock, Utc::now() + TimeDelta::seconds(61)).await;
    assert_eq!(looked.sent, 1000, "{looked:?}");

    // Which variant each message is.
    let enrolled = all_enrollments(&me, id).await;
    assert_eq!(enrolled.len(), 1000);
    let mut variant_of: BTreeMap<i64, String> = BTreeMap::new();
    for e in &enrolled {
        let send = &e["steps"][1];
        assert_eq!(send["outcome"], "sent", "{e}");
        variant_of.insert(
            send["messageId"].as_i64().unwrap(),
            send["variant"].as_str().unwrap().to_owned(),
        );
    }
    let a_count = variant_of.values().filter(|v| *v == "a").count();
    assert!(
        (450..=550).contains(&a_count),
        "50/50 over 1,000 enrollments: {a_count} got a"
    );
    // Every seventh message is bought at its variant's price, every eleventh gets a tip.
    let mut revenue: BTreeMap<&str, i64> = BTreeMap::new();
    let mut purchases: BTreeMap<&str, i64> = BTreeMap::new();
    let mut batch = vec![];
    for (i, (message, variant)) in variant_of.iter().enumerate() {
        let price = if variant == "a" { 500 } else { 700 };
        if i % 7 == 0 {
            batch.push(json!({ "id": format!("buy-{message}"), "type": "purchased", "at": Utc::now(), "messageId": message, "fanId": fan_of(&enrolled, *message), "amountCents": price }));
            *revenue.entry(variant).or_default() += price;
            *purchases.entry(variant).or_default() += 1;
        }
        if i % 11 == 0 {
            batch.push(json!({ "id": format!("tip-{message}"), "type": "tip", "at": Utc::now(), "messageId": message, "fanId": fan_of(&enrolled, *message), "amountCents": 250 }));
            *revenue.entry(variant).or_default() += 250;
        }
    }
    for chunk in batch.chunks(500) {
        let out = events(&me, json!(chunk)).await;
        assert_eq!(out["applied"], chunk.len(), "{out}");
    }
    let a = me.get_json(&format!("/api/crm/automations/{id}")).await;
    let step = &a["metrics"]["steps"][1];
    let variants: BTreeMap<String, Value> = step["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap().to_owned(), v.clone()))
        .collect();
    for name in ["a", "b"] {
        let v = &variants[name];
        let sent = variant_of.values().filter(|x| *x == name).count() as i64;
        assert_eq!(
            (
                v["messages"].as_i64(),
                v["purchases"].as_i64(),
                v["revenueCents"].as_i64()
            ),
            (Some(sent), Some(purchases[name]), Some(revenue[name])),
            "{v}"
        );
        let conversion = v["conversion"].as_f64().unwrap();
        assert!(
            (conversion - purchases[name] as f64 / sent as f64).abs() < 1e-9,
            "{v}"
        );
        let per = v["revenuePerRecipientCents"].as_f64().unwrap();
        assert!(
            (per - revenue[name] as f64 / sent as f64).abs() < 1e-9,
            "{v}"
        );
    }
    let total: i64 = revenue.values().sum();
    assert_eq!(step["revenueCents"], total, "{step}");
    assert_eq!(a["metrics"]["revenueCents"], total, "{a}");
    assert_eq!(
        a["metrics"]["purchases"],
        purchases.values().sum::<i64>(),
        "{a}"
    );
}

fn fan_of(enrolled: &[Value], message: i64) -> i64 {
    enrolled
        .iter()
        .find(|e| e["steps"][1]["messageId"] == message)
        .unwrap()["fanId"]
        .as_i64()
        .unwrap()
}

async fn inactive_enrolls_each_fan_once_per_spell_under_two_schedulers(backend: Backend) {
    let (_sim, app, _dispatcher, clock) = setup(backend, 2, "skip").await;
    let other = app.automation_clock().await;
    let me = app.user(1);
    // The clock's looks are from 01:00 UTC tomorrow on, so that "an hour later" is the same
    // UTC day whatever time the test runs at.
    let now = Utc::now()
        .date_naive()
        .succ_opt()
        .unwrap()
        .and_hms_opt(1, 0, 0)
        .unwrap()
        .and_utc();
    let seen = |handle: &str, days: i64| json!({ "handle": handle, "lastSeenAt": now - TimeDelta::days(days) });
    let a = me.create_fan(seen("@a", 20)).await["id"].as_i64().unwrap();
    let b = me.create_fan(seen("@b", 10)).await["id"].as_i64().unwrap();
    let c = me.create_fan(seen("@c", 15)).await["id"].as_i64().unwrap();
    // e turns 14 days quiet half an hour after the first check: the next day's check takes it.
    let e = me
        .create_fan(json!({ "handle": "@e", "lastSeenAt": now - TimeDelta::days(14) + TimeDelta::minutes(30) }))
        .await["id"]
        .as_i64()
        .unwrap();
    // d is new (created now, never seen): not inactive.
    let d = me.create_fan(json!({ "handle": "@d" })).await["id"]
        .as_i64()
        .unwrap();
    let id = create(
        &me,
        json!({
            "name": "Win back the quiet ones",
            "trigger": { "type": "inactive", "days": 14 },
            "steps": [ { "send": { "content": "It's been a while" } } ]
        }),
    )
    .await["id"]
        .as_i64()
        .unwrap();
    let (clock, other) = (&clock, &other);
    let both = |at: DateTime<Utc>| async move {
        let (x, y) = tokio::join!(look(clock, at), look(other, at));
        x.enrolled + y.enrolled
    };
    let fans_enrolled = || async {
        let mut f: Vec<i64> = all_enrollments(&me, id)
            .await
            .iter()
            .map(|e| e["fanId"].as_i64().unwrap())
            .collect();
        f.sort_unstable();
        f
    };
    assert_eq!(both(now).await, 2, "a and c, once");
    assert_eq!(fans_enrolled().await, [a, c]);
    // An hour later the same day (e is quiet 14 days by then): checked already today.
    assert_eq!(both(now + TimeDelta::hours(1)).await, 0);
    // The next day: e; b is 11 days quiet, a and c are in the same spell.
    assert_eq!(both(now + TimeDelta::days(1)).await, 1);
    let mut three = vec![a, c, e];
    three.sort_unstable();
    assert_eq!(fans_enrolled().await, three);
    // a comes back; fifteen days later a (a new spell), b (25 days) and d (created 15 days
    // before, never seen) are quiet.
    let resp = me
        .put(
            &format!("/api/crm/fans/{a}"),
            &json!({ "lastSeenAt": Utc::now() }),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(both(now + TimeDelta::days(15)).await, 3);
    let mut all = vec![a, a, b, c, d, e];
    all.sort_unstable();
    assert_eq!(fans_enrolled().await, all);
    // Each enrollment sent its message once.
    let page = enrollments(&me, id).await;
    assert_eq!(step_messages(&page).len(), 6, "{page}");
}

async fn two_sends_in_a_row_each_queue_their_own_message(backend: Backend) {
    let (sim, app, dispatcher, clock) = setup(backend, 2, "skip").await;
    let me = app.user(1);
    let id = create(
        &me,
        json!({
            "name": "Hello twice",
            "trigger": { "type": "fan_created" },
            "steps": [
                { "send": { "content": "one" } },
                { "send": { "content": "two" } }
            ]
        }),
    )
    .await["id"]
        .as_i64()
        .unwrap();
    let a = fan(&me, "@a").await;
    let at = Utc::now();
    look(&clock, at).await;
    look(&clock, at).await;
    let page = enrollments(&me, id).await;
    let e = &page["items"][0];
    assert_eq!(e["status"], "completed", "{e}");
    let sends: Vec<(Value, Value)> = e["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["outcome"].clone(), s["messageId"].clone()))
        .collect();
    assert_eq!(sends.len(), 2, "{e}");
    assert!(
        sends.iter().all(|(o, m)| *o == "sent" && m.is_i64()) && sends[0].1 != sends[1].1,
        "each send its own message: {e}"
    );
    let got = delivered(&sim, &dispatcher, 2).await;
    let mut ids: Vec<String> = got
        .iter()
        .map(|d| d["messageId"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut want: Vec<String> = sends.iter().map(|(_, m)| m.to_string()).collect();
    want.sort();
    assert_eq!(ids, want, "{got:?}");
    assert!(
        got.iter()
            .all(|d| d["recipientId"].as_str() == Some(a.to_string().as_str()))
    );
}

async fn an_import_enrolls_its_new_fans_in_fan_created_automations_once(backend: Backend) {
    let (_sim, app, _dispatcher, _clock) = setup(backend, 2, "skip").await;
    let me = app.user(1);
    let old = fan(&me, "@old").await;
    let id = create(
        &me,
        json!({
            "name": "Hello new fans",
            "trigger": { "type": "fan_created" },
            "steps": [
                { "wait": { "seconds": 3600 } },
                { "send": { "content": "Welcome!" } }
            ]
        }),
    )
    .await["id"]
        .as_i64()
        .unwrap();
    let file = |spent: &str| {
        format!(
            "Username,Display Name,Email,Subscription Tier,Total Spent,Last Seen\n\
             old,Old,old@example.com,Gold,{spent},2025-01-01\n\
             new1,New 1,n1@example.com,Gold,{spent},2025-01-01\n\
             new2,New 2,n2@example.com,Gold,{spent},2025-01-01\n"
        )
        .into_bytes()
    };
    let job = me.import("fans.csv", file("$1.00")).await;
    me.wait_job(&job).await;
    let enrolled = |page: &Value| -> Vec<i64> {
        let mut fans: Vec<i64> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["fanId"].as_i64().unwrap())
            .collect();
        fans.sort_unstable();
        fans
    };
    let page = enrollments(&me, id).await;
    let fans = enrolled(&page);
    assert_eq!(
        fans.len(),
        2,
        "the two new fans, not the one there before: {page}"
    );
    assert!(!fans.contains(&old), "{page}");
    assert!(
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["status"] == "active" && e["dueAt"].is_string()),
        "each waits on its timer: {page}"
    );
    // The same fans again, changed: nobody is new, nobody enrolls again.
    let job = me.import("fans.csv", file("$2.00")).await;
    let done = me.wait_job(&job).await;
    assert_eq!(done["result"]["summary"]["updated"], 3, "{done}");
    assert_eq!(enrolled(&enrollments(&me, id).await), fans);
}

/// An automation that thanks each tip at once; its id.
async fn thanks_for_tips(me: &ApiClient) -> i64 {
    create(
        me,
        json!({
            "name": "Thanks for the tip",
            "trigger": { "type": "tip" },
            "steps": [{ "send": { "content": "Thank you!" } }]
        }),
    )
    .await["id"]
        .as_i64()
        .unwrap()
}

/// A tip event `id` from `fan`, now.
fn tip(id: &str, fan: i64) -> Value {
    json!({ "id": id, "type": "tip", "at": Utc::now(), "fanId": fan, "amountCents": 500 })
}

/// The daily cap (1 here, `skip`) spans automations and campaigns: a campaign leaves out the
/// fan an automation already messaged today (`daily_cap`), and its own message counts against
/// the next automated one.
async fn a_campaign_excludes_fans_at_the_daily_cap_and_counts_toward_it(backend: Backend) {
    let (sim, app, dispatcher, clock) = setup(backend, 1, "skip").await;
    let campaigns = app.campaign_clock().await;
    let me = app.user(1);
    let a = fan(&me, "@a").await;
    let b = fan(&me, "@b").await;
    let thanks = thanks_for_tips(&me).await;
    events(&me, json!([tip("t-a", a)])).await;
    assert_eq!(look(&clock, Utc::now()).await.sent, 1, "a is thanked");

    let id = me
        .post_json(
            "/api/crm/campaigns",
            &json!({
                "name": "Tonight",
                "content": "New set tonight",
                "audience": { "recipientIds": [a, b] },
            }),
            StatusCode::CREATED,
        )
        .await["id"]
        .as_i64()
        .unwrap();
    let c = eventually(
        "the campaign completes",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || async {
            campaigns.run_once().await.expect("a campaign clock look");
            dispatcher.run_once().await.expect("a dispatcher pass");
            let c = me.get_json(&format!("/api/crm/campaigns/{id}")).await;
            if c["status"] == "completed" {
                Ok(c)
            } else {
                Err(c.to_string())
            }
        },
    )
    .await;
    let m = &c["metrics"];
    assert_eq!(
        (
            m["sent"].clone(),
            m["excluded"].clone(),
            m["excludedBy"].clone()
        ),
        (json!(1), json!(1), json!({ "daily_cap": 1 })),
        "a was at the cap: {c}"
    );
    let to: Vec<(String, String)> = sim
        .deliveries()
        .await
        .iter()
        .map(|d| {
            (
                d["recipientId"].as_str().unwrap().to_owned(),
                d["campaignId"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert!(
        to.contains(&(b.to_string(), id.to_string()))
            && !to.contains(&(a.to_string(), id.to_string())),
        "the campaign reached b, not a: {to:?}"
    );

    // b's campaign message counts: its thanks today is over the cap, skipped.
    events(&me, json!([tip("t-b", b)])).await;
    assert_eq!(look(&clock, Utc::now()).await.sent, 0);
    let e = enrollments(&me, thanks).await["items"][0].clone();
    assert_eq!(
        (
            e["fanId"].clone(),
            e["status"].clone(),
            e["steps"][0]["outcome"].clone()
        ),
        (json!(b), json!("completed"), json!("capped")),
        "{e}"
    );
}

/// On PostgreSQL a scheduler counts a fan's messages of the day and sends under the fan's cap
/// lock: a fan whose lock another holds (a second scheduler's batch, a campaign's feed) is
/// left for a later batch, not counted at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_fan_counted_elsewhere_waits_for_a_later_batch() {
    let (_sim, app, _dispatcher, clock) = setup(Backend::Postgres, 1, "skip").await;
    let me = app.user(1);
    let a = fan(&me, "@a").await;
    let b = fan(&me, "@b").await;
    let thanks = thanks_for_tips(&me).await;
    events(&me, json!([tip("t-a", a), tip("t-b", b)])).await;

    let db = Db::connect(&app.database_url).await.unwrap();
    let mut elsewhere = db.begin().await.unwrap();
    DailyCap::hold(&mut elsewhere, &[FanId(b)]).await.unwrap();
    assert_eq!(look(&clock, Utc::now()).await.sent, 1, "a only");
    let page = enrollments(&me, thanks).await;
    let status: BTreeMap<i64, Value> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["fanId"].as_i64().unwrap(), e["status"].clone()))
        .collect();
    assert_eq!(
        status,
        BTreeMap::from([(a, json!("completed")), (b, json!("active"))]),
        "{page}"
    );
    elsewhere.commit().await.unwrap();
    assert_eq!(
        look(&clock, Utc::now()).await.sent,
        1,
        "b, once the lock is free"
    );
    let page = enrollments(&me, thanks).await;
    assert!(
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["status"] == "completed" && e["steps"][0]["outcome"] == "sent"),
        "{page}"
    );
}

//! Delivery to the platform stand-in, driven one dispatcher pass at a time (`run_once`), on
//! SQLite and on PostgreSQL: once per message under its id, in priority order, each failure
//! kind handled as the contract says.

use std::time::Duration;

use fanqueue_jobs::{outbound::OutboundQueue, runtime::Dispatcher};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, Sim, TestApp, eventually, spawn_app_with, with_platform};

crate::on_both_backends!(backend:
    a_message_reaches_the_platform_once_under_its_id_and_is_recorded_sent,
    higher_priority_goes_first_and_one_creators_backlog_does_not_hold_up_another,
    a_run_of_500s_is_retried_then_delivered,
    a_400_fails_at_once_with_the_platforms_reason_and_is_never_retried,
    used_up_attempts_fail_the_message_and_put_it_in_the_dlq,
    a_429_holds_the_creator_for_retry_after_without_charging_an_attempt,
    a_campaign_completes_with_its_counts_once_every_message_is_delivered,
    a_timeout_is_retried_under_the_same_key_and_delivered_once,
    a_dispatcher_dead_between_the_platforms_2xx_and_its_record_is_covered_by_the_key,
    a_lapsed_claim_is_fenced_out_given_back_unsent_and_cannot_record_over_its_successor,
);

/// 600 a minute: a slot every 100 ms, so tests do not wait long between deliveries.
pub(crate) const FAST: u32 = 600;

pub(crate) async fn setup(
    backend: Backend,
    tweak: impl FnOnce(&mut fanqueue::settings::Settings),
) -> (Sim, TestApp, Dispatcher) {
    let sim = Sim::start(FAST).await;
    let platform = with_platform(&sim.messages_url(), FAST);
    let app = spawn_app_with(backend, |s| {
        platform(s);
        s.api.write_limit_per_minute = 1_000;
        tweak(s);
    })
    .await;
    let dispatcher = app.dispatcher().await;
    (sim, app, dispatcher)
}

/// Runs dispatcher passes until `done` holds (30 s at most).
pub(crate) async fn until<F, Fut>(dispatcher: &Dispatcher, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let (within, every) = (Duration::from_secs(30), Duration::from_millis(20));
    eventually(what, within, every, || {
        let pass = dispatcher.run_once();
        let done = done();
        async move {
            pass.await.expect("a dispatcher pass");
            if done.await {
                Ok(())
            } else {
                Err("not yet".into())
            }
        }
    })
    .await
}

/// Waits until every job of `user` is final (their messages are on the outbound queue).
pub(crate) async fn jobs_done(app: &TestApp, user: i64) {
    let page = app.user(user).get_json("/api/jobs?limit=200").await;
    for job in page["items"].as_array().unwrap() {
        app.user(user).wait_job(job["id"].as_str().unwrap()).await;
    }
}

/// The message `id` of `user` as the API shows it.
pub(crate) async fn message(app: &TestApp, user: i64, conv: i64, id: i64) -> Value {
    let what = format!("message {id}");
    app.user(user)
        .message_where(conv, &what, |m| m["id"] == id)
        .await
}

/// Sends `text` to the fan of `conv` (a reply, priority 9); returns the message id.
pub(crate) async fn reply(app: &TestApp, user: i64, conv: i64, text: &str) -> i64 {
    let sent = app
        .user(user)
        .post_json(
            &format!("/api/crm/conversations/{conv}/messages"),
            &json!({ "text": text }),
            StatusCode::ACCEPTED,
        )
        .await;
    sent["messageId"].as_i64().unwrap()
}

pub(crate) async fn status_is(app: &TestApp, user: i64, conv: i64, id: i64, status: &str) -> bool {
    message(app, user, conv, id).await["status"] == status
}

async fn a_message_reaches_the_platform_once_under_its_id_and_is_recorded_sent(backend: Backend) {
    let (sim, app, dispatcher) = setup(backend, |_| {}).await;
    let (fan, conv) = app.user(1).fan_with_conversation("@once").await;
    let id = reply(&app, 1, conv, "Hello there").await;
    until(&dispatcher, "the message is sent", || {
        status_is(&app, 1, conv, id, "sent")
    })
    .await;

    let delivered = sim.deliveries().await;
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    let d = &delivered[0];
    assert_eq!(
        d["key"],
        id.to_string(),
        "the message id is the idempotency key"
    );
    assert_eq!(
        (
            d["messageId"].clone(),
            d["userId"].clone(),
            d["recipientId"].clone()
        ),
        (json!(id.to_string()), json!("1"), json!(fan.to_string()))
    );
    let m = message(&app, 1, conv, id).await;
    assert_eq!(m["attempts"], 1);
    assert!(m["sentAt"].is_string() && m["error"].is_null(), "{m}");

    // More passes change nothing; a second copy of it coming off the queue (a redelivery,
    // a standard queue's duplicate) is deleted without a send.
    let services = app.services().await;
    let copy = fanqueue_jobs::outbound::OutboundEntry {
        id: id.to_string(),
        group: "1".into(),
        body: json!({ "messageId": id.to_string(), "userId": "1", "recipientId": fan.to_string(),
                      "content": "Hello there", "mediaUrls": [], "priority": 9 })
        .to_string(),
    };
    services.outbound.send_batch(&[copy]).await.unwrap();
    for _ in 0..3 {
        dispatcher.run_once().await.unwrap();
    }
    assert_eq!(sim.deliveries().await.len(), 1, "still delivered once");
    assert_eq!(sim.stats().await["requests"], 1, "and never sent again");
    let counts = services.outbound.counts().await.unwrap();
    assert_eq!((counts.depth, counts.in_flight), (0, 0), "the copy is gone");
}

async fn higher_priority_goes_first_and_one_creators_backlog_does_not_hold_up_another(
    backend: Backend,
) {
    let (sim, app, dispatcher) = setup(backend, |_| {}).await;
    // Creator 1: a campaign of three (priority 5), then a reply (priority 9).
    let mut fans = vec![];
    for i in 0..3 {
        fans.push(
            app.user(1)
                .create_fan(json!({ "handle": format!("@c{i}") }))
                .await["id"]
                .clone(),
        );
    }
    let bulk = json!({ "recipientIds": fans, "content": "offer", "campaignName": "Spring" });
    app.user(1)
        .post_json("/api/messages/bulk", &bulk, StatusCode::ACCEPTED)
        .await;
    let (_, conv) = app.user(1).fan_with_conversation("@waiting").await;
    let urgent = reply(&app, 1, conv, "right away").await;
    // Creator 2: one message, sent after all of creator 1's.
    let (_, other_conv) = app.user(2).fan_with_conversation("@other").await;
    let other = reply(&app, 2, other_conv, "hi").await;
    jobs_done(&app, 1).await;
    jobs_done(&app, 2).await;

    until(&dispatcher, "all five delivered", || async {
        sim.deliveries().await.len() == 5
    })
    .await;
    let order: Vec<(String, String)> = sim
        .deliveries()
        .await
        .iter()
        .map(|d| {
            (
                d["userId"].as_str().unwrap().to_owned(),
                d["messageId"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let of_creator_1: Vec<&str> = order
        .iter()
        .filter(|(u, _)| u == "1")
        .map(|(_, m)| m.as_str())
        .collect();
    assert_eq!(
        of_creator_1[0],
        urgent.to_string(),
        "the reply goes before the campaign queued ahead of it: {order:?}"
    );
    let other_at = order
        .iter()
        .position(|(_, m)| *m == other.to_string())
        .unwrap();
    assert!(
        other_at <= 1,
        "creator 2 waits for no more than one of creator 1's slots: {order:?}"
    );
}

async fn a_run_of_500s_is_retried_then_delivered(backend: Backend) {
    let (sim, app, dispatcher) = setup(backend, |_| {}).await;
    let (_, conv) = app.user(1).fan_with_conversation("@flaky").await;
    sim.faults(json!({ "fail500": 2 })).await;
    let id = reply(&app, 1, conv, "third time lucky").await;
    until(&dispatcher, "the message is sent", || {
        status_is(&app, 1, conv, id, "sent")
    })
    .await;
    let m = message(&app, 1, conv, id).await;
    assert_eq!(
        m["attempts"], 3,
        "two failed attempts, then the delivery: {m}"
    );
    let stats = sim.stats().await;
    assert_eq!(
        (stats["requests"].as_u64(), stats["deliveries"].as_u64()),
        (Some(3), Some(1))
    );
}

async fn a_400_fails_at_once_with_the_platforms_reason_and_is_never_retried(backend: Backend) {
    let (sim, app, dispatcher) = setup(backend, |_| {}).await;
    let (_, conv) = app.user(1).fan_with_conversation("@blocked").await;
    sim.faults(json!({ "fail400": 1 })).await;
    let id = reply(&app, 1, conv, "you blocked me").await;
    until(&dispatcher, "the message fails", || {
        status_is(&app, 1, conv, id, "failed")
    })
    .await;
    for _ in 0..5 {
        dispatcher.run_once().await.unwrap();
    }
    let m = message(&app, 1, conv, id).await;
    assert_eq!(m["attempts"], 1, "{m}");
    let error = m["error"].as_str().unwrap();
    assert!(
        error.contains("400") && error.contains("recipient cannot receive messages"),
        "the platform's reason: {error}"
    );
    assert_eq!(sim.stats().await["requests"], 1, "never retried");
    let status = app
        .operator(999)
        .get_json("/api/onlyfans/messages/status")
        .await;
    assert_eq!(
        status["dlqCount"], 0,
        "a refusal is not a delivery failure: {status}"
    );
}

async fn used_up_attempts_fail_the_message_and_put_it_in_the_dlq(backend: Backend) {
    let (sim, app, dispatcher) = setup(backend, |s| s.delivery.delivery_max_attempts = 2).await;
    let (_, conv) = app.user(1).fan_with_conversation("@down").await;
    sim.faults(json!({ "fail500": 10 })).await;
    let id = reply(&app, 1, conv, "nobody home").await;
    until(&dispatcher, "the message fails", || {
        status_is(&app, 1, conv, id, "failed")
    })
    .await;
    let m = message(&app, 1, conv, id).await;
    assert_eq!(m["attempts"], 2, "{m}");
    assert!(
        m["error"].as_str().unwrap().contains("500"),
        "the last error is kept: {m}"
    );
    assert_eq!(sim.stats().await["requests"], 2);
    let status = app
        .operator(999)
        .get_json("/api/onlyfans/messages/status")
        .await;
    assert_eq!(status["dlqCount"], 1, "{status}");
}

async fn a_429_holds_the_creator_for_retry_after_without_charging_an_attempt(backend: Backend) {
    let (sim, app, dispatcher) = setup(backend, |_| {}).await;
    let (_, conv) = app.user(1).fan_with_conversation("@busy").await;
    sim.faults(json!({ "fail429": 1, "retryAfterSecs": 2 }))
        .await;
    let id = reply(&app, 1, conv, "wait for it").await;
    until(&dispatcher, "the message is sent", || {
        status_is(&app, 1, conv, id, "sent")
    })
    .await;
    let m = message(&app, 1, conv, id).await;
    assert_eq!(
        m["attempts"], 1,
        "the rate-limited attempt is not charged: {m}"
    );

    // The delivery started at least Retry-After after the refused attempt started.
    let attempts = attempt_log(&app, id).await;
    assert_eq!(
        attempts.iter().map(|(o, _)| o.as_str()).collect::<Vec<_>>(),
        ["rate_limited", "delivered"]
    );
    let gap = attempts[1].1 - attempts[0].1;
    assert!(
        gap >= chrono::TimeDelta::seconds(2),
        "held for Retry-After: {gap:?}"
    );
    assert_eq!(sim.stats().await["deliveries"], 1);
}

async fn a_campaign_completes_with_its_counts_once_every_message_is_delivered(backend: Backend) {
    let (sim, app, dispatcher) = setup(backend, |_| {}).await;
    let mut fans = vec![];
    for i in 0..4 {
        fans.push(
            app.user(1)
                .create_fan(json!({ "handle": format!("@m{i}") }))
                .await["id"]
                .clone(),
        );
    }
    let bulk = json!({ "recipientIds": fans, "content": "news", "campaignName": "Launch" });
    let created = app
        .user(1)
        .post_json("/api/messages/bulk", &bulk, StatusCode::ACCEPTED)
        .await;
    let campaign = created["campaignId"].as_i64().unwrap();
    jobs_done(&app, 1).await;
    until(&dispatcher, "all four delivered", || async {
        sim.deliveries().await.len() == 4
    })
    .await;
    let c = app
        .user(1)
        .get_json(&format!("/api/crm/campaigns/{campaign}"))
        .await;
    assert_eq!(c["status"], "completed", "{c}");
    assert_eq!(
        (
            c["metrics"]["sent"].as_i64(),
            c["metrics"]["queued"].as_i64()
        ),
        (Some(4), Some(0))
    );
    assert!(
        sim.deliveries()
            .await
            .iter()
            .all(|d| d["campaignId"].as_str() == Some(campaign.to_string().as_str()))
    );
}

async fn a_timeout_is_retried_under_the_same_key_and_delivered_once(backend: Backend) {
    let (sim, app, dispatcher) = setup(backend, |_| {}).await;
    let (_, conv) = app.user(1).fan_with_conversation("@slow").await;
    // The platform hangs on the first request; the attempt gives up after its timeout (1 s).
    sim.faults(json!({ "timeouts": 1 })).await;
    let id = reply(&app, 1, conv, "are you there").await;
    until(&dispatcher, "the message is sent", || {
        status_is(&app, 1, conv, id, "sent")
    })
    .await;
    let attempts = attempt_log(&app, id).await;
    assert_eq!(
        attempts.iter().map(|(o, _)| o.as_str()).collect::<Vec<_>>(),
        ["retry", "delivered"]
    );
    let stats = sim.stats().await;
    assert_eq!(stats["rejected"]["timeouts"], 1, "{stats}");
    let delivered = sim.deliveries().await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(
        delivered[0]["key"],
        id.to_string(),
        "the same key both times"
    );
    assert_eq!(message(&app, 1, conv, id).await["attempts"], 2);
}

async fn a_dispatcher_dead_between_the_platforms_2xx_and_its_record_is_covered_by_the_key(
    backend: Backend,
) {
    let (sim, app, dispatcher) = setup(backend, |_| {}).await;
    let (_, conv) = app.user(1).fan_with_conversation("@once-only").await;
    let id = reply(&app, 1, conv, "exactly once").await;
    until(&dispatcher, "the message is sent", || {
        status_is(&app, 1, conv, id, "sent")
    })
    .await;
    // What a kill -9 right after the platform's 2xx leaves behind: the platform has the
    // message, the database still has it `sending` under its first attempt, whose lease has
    // run out since.
    let services = app.services().await;
    let past =
        fanqueue_jobs::domain::Timestamp(chrono::Utc::now() - chrono::TimeDelta::seconds(60));
    let sql =
        "UPDATE messages SET status = 'sending', sent_at = NULL, lease_until = $2 WHERE id = $1";
    fanqueue_jobs::on_db!(&services.db, pool => sqlx::query(sql)
        .bind(id)
        .bind(past)
        .execute(pool)
        .await
        .unwrap()
        .rows_affected());
    until(
        &dispatcher,
        "the message is sent again in the database",
        || status_is(&app, 1, conv, id, "sent"),
    )
    .await;
    let stats = sim.stats().await;
    assert_eq!(
        (
            stats["requests"].as_u64(),
            stats["deliveries"].as_u64(),
            stats["duplicatesReplayed"].as_u64()
        ),
        (Some(2), Some(1), Some(1)),
        "taken over under the same key, the platform applied it once: {stats}"
    );
    assert_eq!(message(&app, 1, conv, id).await["attempts"], 2);
}

/// The message's attempts from the attempt log: (outcome, start).
async fn attempt_log(app: &TestApp, id: i64) -> Vec<(String, chrono::DateTime<chrono::Utc>)> {
    let services = app.services().await;
    let sql = "SELECT outcome, started_at FROM delivery_attempts WHERE message_id = $1 ORDER BY id";
    fanqueue_jobs::on_db!(&services.db, pool => sqlx::query_as(sql)
        .bind(id)
        .fetch_all(pool)
        .await
        .unwrap())
}

/// The fence a dispatcher passes right before its request, as a stalled dispatcher meets it
/// when it resumes: its claim's lease ran out (it is given back, uncharged), or another
/// dispatcher took the message over meanwhile (it is left to that one, and the stalled one can
/// record nothing over it).
async fn a_lapsed_claim_is_fenced_out_given_back_unsent_and_cannot_record_over_its_successor(
    backend: Backend,
) {
    use fanqueue_jobs::{
        crm::messages::{self, Settled},
        domain::{MessageId, UserId},
    };
    let (sim, app, dispatcher) = setup(backend, |_| {}).await;
    let (_, conv) = app.user(1).fan_with_conversation("@stalled").await;
    let id = reply(&app, 1, conv, "are you there?").await;
    jobs_done(&app, 1).await;
    let db = app.services().await.db;
    assert_eq!(messages::park(&db, &[MessageId(id)]).await.unwrap(), 1);
    let now = chrono::Utc::now;
    let second = chrono::TimeDelta::seconds(1);

    // A claim whose lease ran out while its dispatcher stalled, no one else around.
    let lapsed = messages::claim_next(&db, UserId(1), now() - second)
        .await
        .unwrap()
        .expect("the message is due");
    assert!(!messages::holds(&db, &lapsed, now() + second).await.unwrap());
    assert!(messages::give_back(&db, &lapsed).await.unwrap());
    let m = message(&app, 1, conv, id).await;
    assert_eq!(
        (m["status"].as_str(), m["attempts"].as_i64()),
        (Some("queued"), Some(0)),
        "{m}"
    );
    assert_eq!(
        attempts_logged(&app, id).await,
        0,
        "an attempt never sent is not logged"
    );

    // Again, and this time another dispatcher takes the message over meanwhile.
    let stalled = messages::claim_next(&db, UserId(1), now() - second)
        .await
        .unwrap()
        .expect("the message is due again");
    let successor = messages::claim_next(&db, UserId(1), now() + second * 60)
        .await
        .unwrap()
        .expect("a lapsed claim is taken over");
    assert_eq!(successor.message.id, stalled.message.id);
    assert_eq!((stalled.attempt, successor.attempt), (1, 2));
    assert!(
        !messages::holds(&db, &stalled, now() + second)
            .await
            .unwrap()
    );
    assert!(
        messages::holds(&db, &successor, now() + second)
            .await
            .unwrap()
    );
    // Asked for a request longer than the lease left, the successor's claim does not hold.
    assert!(
        !messages::holds(&db, &successor, now() + second * 61)
            .await
            .unwrap()
    );
    // The stalled one resumes: it can neither give the message back nor record an outcome.
    assert!(!messages::give_back(&db, &stalled).await.unwrap());
    let late = Settled::Delivered {
        http_status: 200,
        platform_id: None,
    };
    assert!(!messages::settle(&db, &stalled, late).await.unwrap());
    let m = message(&app, 1, conv, id).await;
    assert_eq!(
        (m["status"].as_str(), m["attempts"].as_i64()),
        (Some("sending"), Some(2)),
        "{m}"
    );
    assert_eq!(
        attempts_logged(&app, id).await,
        1,
        "only the successor's attempt is logged"
    );

    // The successor gives it back too; a dispatcher then delivers it once.
    assert!(messages::give_back(&db, &successor).await.unwrap());
    until(&dispatcher, "the message is sent", || {
        status_is(&app, 1, conv, id, "sent")
    })
    .await;
    let stats = sim.stats().await;
    assert_eq!(
        (stats["requests"].as_u64(), stats["deliveries"].as_u64()),
        (Some(1), Some(1)),
        "{stats}"
    );
    let log = attempt_log(&app, id).await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].0, "delivered");
    // The stalled claim that was taken over stays charged (its dispatcher could not give it
    // back); the successor's given-back claim does not.
    assert_eq!(message(&app, 1, conv, id).await["attempts"], 2);
}

/// How many attempts of message `id` the attempt log holds, finished or not.
async fn attempts_logged(app: &TestApp, id: i64) -> i64 {
    let services = app.services().await;
    let sql = "SELECT COUNT(*) FROM delivery_attempts WHERE message_id = $1";
    let (n,): (i64,) = fanqueue_jobs::on_db!(&services.db, pool => sqlx::query_as(sql)
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap());
    n
}

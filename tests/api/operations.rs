//! Operations on SQLite and PostgreSQL: the sweeper (the DLQ recorded once, what the queue
//! gave up on re-driven, a second sweep changing nothing, one sweep per tick), failed
//! messages listed and retried, and who sees which figures.

use std::time::Duration;

use fanqueue_jobs::{kinds::sweep::SweepReport, outbound::OutboundQueue};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    delivery::{jobs_done, message, reply, setup, status_is, until},
    helpers::{Backend, TestApp, error_of},
};

crate::on_both_backends!(backend:
    a_sweep_records_the_dlq_once_redrives_what_the_queue_gave_up_on_and_a_second_changes_nothing,
    past_its_redrives_a_message_fails_with_the_reason_and_its_campaign_retries_once,
    two_sweepers_on_one_tick_make_one_sweep,
    failed_messages_are_listed_newest_first_and_retried_by_their_owner_only,
    a_creator_sees_only_their_own_backlog_and_an_operator_the_whole_queue,
);

/// Puts every message on the outbound queue into its DLQ the way a queue does it: received
/// (and not deleted) until its receives are used up (`OUTBOUND_MAX_RECEIVES=1`).
async fn queue_gives_up(app: &TestApp) {
    let services = app.services().await;
    for _ in 0..2 {
        services
            .outbound
            .receive(10, Duration::ZERO, Duration::ZERO)
            .await
            .expect("a receive");
    }
}

async fn operator_status(app: &TestApp) -> Value {
    app.operator(999)
        .get_json("/api/onlyfans/messages/status")
        .await
}

async fn failed_list(app: &TestApp, user: i64) -> Value {
    app.user(user)
        .get_json("/api/onlyfans/messages/failed")
        .await
}

/// A campaign's status and its `sent` and `failed` counts.
async fn campaign_state(app: &TestApp, campaign: i64) -> (String, i64, i64) {
    let c = app
        .user(1)
        .get_json(&format!("/api/crm/campaigns/{campaign}"))
        .await;
    (
        c["status"].as_str().unwrap_or_default().to_owned(),
        c["metrics"]["sent"].as_i64().unwrap_or(-1),
        c["metrics"]["failed"].as_i64().unwrap_or(-1),
    )
}

fn tweak(s: &mut fanqueue::settings::Settings) {
    s.delivery.delivery_max_attempts = 1;
    s.outbound.outbound_max_receives = 1;
    s.sweep.sweep_max_redrives = 1;
}

async fn a_sweep_records_the_dlq_once_redrives_what_the_queue_gave_up_on_and_a_second_changes_nothing(
    backend: Backend,
) {
    let (sim, app, dispatcher) = setup(backend, tweak).await;
    let sweeper = app.sweeper().await;
    let (_, conv) = app.user(1).fan_with_conversation("@dlq").await;
    // B: on the queue, then moved to the DLQ by the queue (its receives used up), never
    // delivered: a transient failure.
    let b = reply(&app, 1, conv, "lost in the queue").await;
    jobs_done(&app, 1).await;
    queue_gives_up(&app).await;
    // A: its only attempt answered 500: failed by the dispatcher, and dead-lettered.
    sim.faults(json!({ "fail500": 1 })).await;
    let a = reply(&app, 1, conv, "platform down").await;
    until(&dispatcher, "A fails", || {
        status_is(&app, 1, conv, a, "failed")
    })
    .await;
    assert_eq!(operator_status(&app).await["dlqCount"], 2);
    assert_eq!(message(&app, 1, conv, b).await["status"], "queued");

    let first = sweeper.run_once().await.expect("a sweep");
    assert_eq!(
        (
            first.dlq_read,
            first.dlq_already_final,
            first.dlq_redriven,
            first.dlq_recorded
        ),
        (2, 1, 1, 0),
        "{first:?}"
    );
    assert_eq!(operator_status(&app).await["dlqCount"], 0);
    let a_now = message(&app, 1, conv, a).await;
    assert_eq!(a_now["status"], "failed");
    assert!(a_now["error"].as_str().unwrap().contains("500"), "{a_now}");
    // B is back on the queue and goes out, once.
    until(&dispatcher, "B is delivered", || {
        status_is(&app, 1, conv, b, "sent")
    })
    .await;
    let delivered: Vec<Value> = sim
        .deliveries()
        .await
        .into_iter()
        .filter(|d| d["messageId"].as_str() == Some(b.to_string().as_str()))
        .collect();
    assert_eq!(delivered.len(), 1, "B reached the platform once");

    let second = sweeper.run_once().await.expect("another sweep");
    assert_eq!(
        second,
        SweepReport::default(),
        "a second sweep changes nothing"
    );
    assert!(!second.changed_anything());

    // Each sweep is a job with its counts: an operator sees them, a creator does not.
    let jobs = app.operator(999).get_json("/api/jobs?kind=sweep").await;
    assert_eq!(jobs["total"], 2, "{jobs}");
    let results: Vec<&Value> = jobs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| &j["result"])
        .collect();
    assert!(results.iter().any(|r| r["dlqRedriven"] == 1), "{jobs}");
    assert!(
        jobs["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["status"] == "succeeded")
    );
    let mine = app.user(1).get_json("/api/jobs?kind=sweep").await;
    assert_eq!(mine["total"], 0, "a creator does not see the sweeps");
}

async fn past_its_redrives_a_message_fails_with_the_reason_and_its_campaign_retries_once(
    backend: Backend,
) {
    let (sim, app, dispatcher) = setup(backend, tweak).await;
    let sweeper = app.sweeper().await;
    let (fan, conv) = app.user(1).fan_with_conversation("@camp").await;
    let accepted = app
        .user(1)
        .post_json(
            "/api/messages/bulk",
            &json!({ "recipientIds": [fan], "content": "offer", "campaignName": "Retry me" }),
            StatusCode::ACCEPTED,
        )
        .await;
    let campaign = accepted["campaignId"].as_i64().unwrap();
    jobs_done(&app, 1).await;
    // Given up on by the queue twice: re-driven once (the limit), then failed.
    queue_gives_up(&app).await;
    let first = sweeper.run_once().await.unwrap();
    assert_eq!(first.dlq_redriven, 1, "{first:?}");
    queue_gives_up(&app).await;
    let second = sweeper.run_once().await.unwrap();
    assert_eq!(
        (second.dlq_redriven, second.dlq_recorded),
        (0, 1),
        "{second:?}"
    );
    let failed = failed_list(&app, 1).await;
    assert_eq!(failed["total"], 1, "{failed}");
    let item = &failed["items"][0];
    assert_eq!(item["campaignId"], campaign);
    assert_eq!(item["fanId"], fan);
    assert!(
        item["reason"]
            .as_str()
            .unwrap()
            .contains("dead-letter queue after 1 re-drives"),
        "{item}"
    );
    assert_eq!(
        campaign_state(&app, campaign).await,
        ("completed".into(), 0, 1),
        "failed, not sent"
    );
    assert_eq!(operator_status(&app).await["dlqCount"], 0);

    // Another creator cannot retry it; its owner can, once.
    let path = format!("/api/crm/campaigns/{campaign}/retry-failed");
    error_of(
        app.user(2).post(&path, &json!({})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let retried = app
        .user(1)
        .post_json(&path, &json!({}), StatusCode::ACCEPTED)
        .await;
    assert_eq!(retried["requeued"], 1, "{retried}");
    let again = app
        .user(1)
        .post_json(&path, &json!({}), StatusCode::ACCEPTED)
        .await;
    assert_eq!(again["requeued"], 0, "nothing failed is left: {again}");
    assert!(again["jobId"].is_null());
    jobs_done(&app, 1).await;
    let id = item["id"].as_i64().unwrap();
    until(&dispatcher, "the retried recipient is delivered", || {
        status_is(&app, 1, conv, id, "sent")
    })
    .await;
    assert_eq!(sim.deliveries().await.len(), 1);
    assert_eq!(
        campaign_state(&app, campaign).await,
        ("completed".into(), 1, 0),
        "sent on the retry"
    );
    assert_eq!(failed_list(&app, 1).await["total"], 0);
}

async fn two_sweepers_on_one_tick_make_one_sweep(backend: Backend) {
    let (_sim, app, dispatcher) = setup(backend, tweak).await;
    let (one, two) = (app.sweeper().await, app.sweeper().await);
    let (_, conv) = app.user(1).fan_with_conversation("@tick").await;
    let b = reply(&app, 1, conv, "given up on").await;
    jobs_done(&app, 1).await;
    queue_gives_up(&app).await;
    let tick = chrono::Utc::now();
    let (a, b_fire) = tokio::join!(one.fire(tick), two.fire(tick));
    let (a, b_fire) = (a.expect("sweeper one"), b_fire.expect("sweeper two"));
    assert!(
        a.is_some() != b_fire.is_some(),
        "exactly one sweeper sweeps the tick: {a:?} {b_fire:?}"
    );
    let (_, report) = a.or(b_fire).unwrap();
    assert_eq!(report.dlq_redriven, 1, "{report:?}");
    // The message went back on the queue once: one copy to take off it.
    let pass = dispatcher.run_once().await.unwrap();
    assert_eq!(pass.parked, 1, "{pass:?}");
    until(&dispatcher, "it is delivered", || {
        status_is(&app, 1, conv, b, "sent")
    })
    .await;
    let jobs = app.operator(999).get_json("/api/jobs?kind=sweep").await;
    assert_eq!(jobs["total"], 1, "one job for the tick: {jobs}");
    // The same tick again changes nothing.
    assert!(one.fire(tick).await.unwrap().is_none());
}

async fn failed_messages_are_listed_newest_first_and_retried_by_their_owner_only(backend: Backend) {
    let (sim, app, dispatcher) = setup(backend, |s| s.delivery.delivery_max_attempts = 1).await;
    let (_, conv) = app.user(1).fan_with_conversation("@fails").await;
    sim.faults(json!({ "fail400": 2 })).await;
    let first = reply(&app, 1, conv, "first").await;
    until(&dispatcher, "the first fails", || {
        status_is(&app, 1, conv, first, "failed")
    })
    .await;
    let second = reply(&app, 1, conv, "second").await;
    until(&dispatcher, "the second fails", || {
        status_is(&app, 1, conv, second, "failed")
    })
    .await;
    let list = failed_list(&app, 1).await;
    let ids: Vec<i64> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![second, first], "newest failure first: {list}");
    let item = &list["items"][0];
    assert_eq!(item["attempts"], 1);
    assert!(item["reason"].as_str().unwrap().contains("400"), "{item}");
    assert!(item["failedAt"].is_string(), "{item}");
    // Paginated.
    let page = app
        .user(1)
        .get_json("/api/onlyfans/messages/failed?limit=1&offset=1")
        .await;
    assert_eq!(
        (page["total"].as_i64(), page["items"][0]["id"].as_i64()),
        (Some(2), Some(first))
    );
    error_of(
        app.user(1)
            .get("/api/onlyfans/messages/failed?limit=0")
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
    )
    .await;
    // Another creator sees none of them and cannot retry them.
    assert_eq!(failed_list(&app, 2).await["total"], 0);
    let retry = |id: i64| format!("/api/onlyfans/messages/failed/{id}/retry");
    error_of(
        app.user(2).post(&retry(first), &json!({})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    error_of(
        app.user(1).post(&retry(987_654), &json!({})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // The owner retries it: queued again, attempts cleared; a second retry is a conflict.
    let queued = app
        .user(1)
        .post_json(&retry(first), &json!({}), StatusCode::ACCEPTED)
        .await;
    assert_eq!(queued["status"], "queued");
    error_of(
        app.user(1).post(&retry(first), &json!({})).await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    jobs_done(&app, 1).await;
    until(&dispatcher, "the retried message is delivered", || {
        status_is(&app, 1, conv, first, "sent")
    })
    .await;
    let m = message(&app, 1, conv, first).await;
    assert_eq!(
        (m["attempts"].as_i64(), m["error"].as_str()),
        (Some(1), None),
        "{m}"
    );
    error_of(
        app.user(1).post(&retry(first), &json!({})).await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    let list = failed_list(&app, 1).await;
    assert_eq!(list["total"], 1);
    assert_eq!(list["items"][0]["id"], second);
    // The platform's 400 is final for the old key (it replays it): the retry of a rejected
    // message carries a new one, and the platform saw the message delivered once.
    let delivered: Vec<Value> = sim
        .deliveries()
        .await
        .into_iter()
        .filter(|d| d["messageId"].as_str() == Some(first.to_string().as_str()))
        .collect();
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0]["key"], format!("{first}-r1"));
}

async fn a_creator_sees_only_their_own_backlog_and_an_operator_the_whole_queue(backend: Backend) {
    let (_sim, app, _dispatcher) = setup(backend, |_| {}).await;
    let (_, conv) = app.user(1).fan_with_conversation("@busy").await;
    for i in 0..3 {
        reply(&app, 1, conv, &format!("m{i}")).await;
    }
    jobs_done(&app, 1).await;
    let mine = app.user(1).get_json("/api/onlyfans/messages/status").await;
    assert_eq!(
        (
            mine["scope"].as_str(),
            mine["queueDepth"].as_i64(),
            mine["messagesInFlight"].as_i64(),
            mine["failed"].as_i64()
        ),
        (Some("creator"), Some(3), Some(0), Some(0)),
        "{mine}"
    );
    assert!(mine["dlqCount"].is_null(), "{mine}");
    assert!(mine["drainedBy"].is_string(), "{mine}");
    let other = app.user(2).get_json("/api/onlyfans/messages/status").await;
    assert_eq!(
        (
            other["queueDepth"].as_i64(),
            other["messagesInFlight"].as_i64(),
            other["failed"].as_i64()
        ),
        (Some(0), Some(0), Some(0)),
        "another creator sees none of it: {other}"
    );
    assert!(other["drainedBy"].is_null());
    let all = operator_status(&app).await;
    assert_eq!(
        (
            all["scope"].as_str(),
            all["queueDepth"].as_i64(),
            all["dlqCount"].as_i64()
        ),
        (Some("queue"), Some(3), Some(0)),
        "{all}"
    );
    // Across creators needs an operator.
    error_of(
        app.user(2)
            .get("/api/onlyfans/messages/failed?userId=1")
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    app.operator(999)
        .get_json("/api/onlyfans/messages/failed?userId=1")
        .await;
}

mod prune {
    use chrono::{TimeDelta, Utc};
    use fanqueue_jobs::{db::PRUNE_BATCH, domain::Timestamp, on_db};

    use crate::helpers::TestApp;

    crate::on_both_backends!(a_sweep_prunes_more_than_a_batch_and_keeps_what_is_recent,);

    /// A sweep after a backlog of old records (more than two batches) deletes them all, a
    /// batch a statement, and keeps the recent ones.
    async fn a_sweep_prunes_more_than_a_batch_and_keeps_what_is_recent(app: TestApp) {
        let db = app.services().await.db;
        let old = Timestamp(Utc::now() - TimeDelta::days(30));
        let recent = Timestamp(Utc::now());
        let n = 2 * PRUNE_BATCH + 1;
        // Seeded around the owners: a month of finished jobs and of idempotency keys, and one
        // of each from now.
        for (from, rows, at) in [("old", n, old), ("recent", 1, recent)] {
            on_db!(&db, pool => sqlx::query(
                "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < $1)
                 INSERT INTO job_records (id, user_id, kind, status, payload, created_at, finished_at)
                 SELECT $2 || i, 1, 'send_message', 'succeeded', '{}', $3, $3 FROM s",
            )
            .bind(rows)
            .bind(from)
            .bind(at)
            .execute(pool)
            .await
            .map(|_| ())
            .unwrap());
            on_db!(&db, pool => sqlx::query(
                "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < $1)
                 INSERT INTO idempotency_keys (user_id, key, fingerprint, locked_until, created_at)
                 SELECT 1, $2 || i, 'f', $3, $3 FROM s",
            )
            .bind(rows)
            .bind(from)
            .bind(at)
            .execute(pool)
            .await
            .map(|_| ())
            .unwrap());
        }

        let report = app.sweeper().await.run_once().await.unwrap();
        assert_eq!(report.pruned_jobs, n as u64, "{report:?}");
        assert_eq!(report.pruned_idempotency_keys, n as u64, "{report:?}");
        let left: (i64, i64) = on_db!(&db, pool => sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM job_records WHERE id LIKE 'old%' OR id LIKE 'recent%'),
                    (SELECT COUNT(*) FROM idempotency_keys)",
        )
        .fetch_one(pool)
        .await
        .unwrap());
        assert_eq!(left, (1, 1), "only the recent record and key are left");
        let again = app.sweeper().await.run_once().await.unwrap();
        assert_eq!((again.pruned_jobs, again.pruned_idempotency_keys), (0, 0));
    }
}

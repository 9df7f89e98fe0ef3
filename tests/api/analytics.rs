//! `GET /api/crm/analytics` on a small data set, on both backends: every figure equals what a
//! direct computation over the stored rows gives (fans, value changes, messages, campaigns).

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use fanqueue_jobs::db::Db;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    delivery::{jobs_done, setup, until},
    helpers::{Backend, TestApp, error_of, json_of},
};

crate::on_both_backends!(backend:
    analytics_figures_match_a_direct_computation_over_the_rows,
    bad_analytics_queries_are_400,
);

/// The rows the figures are computed from, read straight from the database.
struct Rows {
    /// (id, handle, value, last seen)
    fans: Vec<(i64, String, i64, Option<DateTime<Utc>>)>,
    /// (at, delta)
    changes: Vec<(DateTime<Utc>, i64)>,
    /// (sent_at) of outbound messages sent
    sent: Vec<DateTime<Utc>>,
    /// (failed_at) of failed messages
    failed: Vec<DateTime<Utc>>,
}

async fn rows(app: &TestApp, user: i64) -> Rows {
    macro_rules! read {
        ($pool:expr) => {{
            let pool = $pool;
            Rows {
                fans: sqlx::query_as(
                    "SELECT id, handle, value_cents, last_seen_at FROM fans WHERE user_id = $1",
                )
                .bind(user)
                .fetch_all(pool)
                .await
                .unwrap(),
                changes: sqlx::query_as::<_, (DateTime<Utc>, i64)>(
                    "SELECT at, delta_cents FROM fan_value_changes WHERE user_id = $1",
                )
                .bind(user)
                .fetch_all(pool)
                .await
                .unwrap(),
                sent: sqlx::query_as::<_, (DateTime<Utc>,)>(
                    "SELECT sent_at FROM messages
                     WHERE user_id = $1 AND direction = 'out' AND status = 'sent'",
                )
                .bind(user)
                .fetch_all(pool)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.0)
                .collect(),
                failed: sqlx::query_as::<_, (DateTime<Utc>,)>(
                    "SELECT failed_at FROM messages WHERE user_id = $1 AND status = 'failed'",
                )
                .bind(user)
                .fetch_all(pool)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.0)
                .collect(),
            }
        }};
    }
    match &app.services().await.db {
        Db::Postgres(pool) => read!(pool),
        Db::Sqlite(pool) => read!(pool),
    }
}

fn start_of(period: &str, day: NaiveDate) -> NaiveDate {
    match period {
        "day" => day,
        "week" => day - Duration::days(day.weekday().num_days_from_monday() as i64),
        _ => NaiveDate::from_ymd_opt(day.year(), day.month(), 1).unwrap(),
    }
}

async fn analytics_figures_match_a_direct_computation_over_the_rows(backend: Backend) {
    let (sim, app, dispatcher) = setup(backend, |_| {}).await;
    let now = Utc::now();
    let mut ids = vec![];
    for i in 0..14i64 {
        let seen = match i % 3 {
            0 => Some(now - Duration::days(2)),
            1 => Some(now - Duration::days(45)),
            _ => None,
        };
        let fan = app
            .user(1).create_fan(json!({ "handle": format!("@f{i}"), "valueCents": (i * 37) % 500, "lastSeenAt": seen }),
            )
            .await;
        ids.push(fan["id"].as_i64().unwrap());
    }
    // Another creator's big spender is not in creator 1's figures.
    app.user(2)
        .create_fan(json!({ "handle": "@whale", "valueCents": 99_999 }))
        .await;
    // Revenue over several days, weeks and months.
    let events: Vec<Value> = (0..20)
        .map(|i| {
            let at = now - Duration::days(i * 5) - Duration::hours(i);
            json!({ "id": format!("t{i}"), "type": if i % 2 == 0 { "tip" } else { "subscription" },
                    "at": at.to_rfc3339(), "fanId": ids[i as usize % ids.len()], "amountCents": 100 + i * 10 })
        })
        .collect();
    app.user(1)
        .post_json(
            "/api/onlyfans/events",
            &json!({ "events": events }),
            StatusCode::OK,
        )
        .await;
    // An edit that lowers a value counts against its day.
    json_of(
        app.user(1)
            .put(
                &format!("/api/crm/fans/{}", ids[13]),
                &json!({ "valueCents": 1 }),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    // A campaign of four: three delivered, one refused by the platform.
    sim.faults(json!({ "userId": "1", "fail400": 1 })).await;
    let bulk = json!({ "recipientIds": &ids[..4], "content": "hi", "campaignName": "Four" });
    let campaign = app
        .user(1)
        .post_json("/api/messages/bulk", &bulk, StatusCode::ACCEPTED)
        .await["campaignId"]
        .as_i64()
        .unwrap();
    jobs_done(&app, 1).await;
    until(&dispatcher, "the campaign is final", || async {
        let c = app
            .user(1)
            .get_json(&format!("/api/crm/campaigns/{campaign}"))
            .await;
        c["metrics"]["sent"].as_i64().unwrap() + c["metrics"]["failed"].as_i64().unwrap() == 4
    })
    .await;

    let r = rows(&app, 1).await;
    for period in ["day", "week", "month"] {
        let url = format!("/api/crm/analytics?period={period}&from=2026-01-01&activeDays=30");
        let a = app.user(1).get_json(&url).await;

        assert_eq!(a["totalFans"], r.fans.len() as i64, "{a}");
        let active = r
            .fans
            .iter()
            .filter(|f| f.3.is_some_and(|t| t >= now - Duration::days(30)))
            .count();
        assert_eq!(a["activeFans"], active as i64, "{a}");
        assert!(
            active > 0 && active < r.fans.len(),
            "some fans are active, not all: {active}"
        );
        let ltv: i64 = r.fans.iter().map(|f| f.2).sum();
        assert_eq!(a["lifetimeValueCents"], ltv, "{a}");
        let mut top = r.fans.clone();
        top.sort_by_key(|f| (-f.2, f.0));
        let top: Vec<Value> = top
            .iter()
            .take(10)
            .map(|f| json!({ "id": f.0, "handle": f.1, "valueCents": f.2 }))
            .collect();
        let got: Vec<Value> = a["topFans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| json!({ "id": f["id"], "handle": f["handle"], "valueCents": f["valueCents"] }))
            .collect();
        assert_eq!(got, top, "{period}");

        let mut expected: BTreeMap<NaiveDate, (i64, i64, i64)> = BTreeMap::new();
        for (at, delta) in &r.changes {
            expected
                .entry(start_of(period, at.date_naive()))
                .or_default()
                .0 += delta;
        }
        for at in &r.sent {
            expected
                .entry(start_of(period, at.date_naive()))
                .or_default()
                .1 += 1;
        }
        for at in &r.failed {
            expected
                .entry(start_of(period, at.date_naive()))
                .or_default()
                .2 += 1;
        }
        let got: BTreeMap<NaiveDate, (i64, i64, i64)> = a["periods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["start"].as_str().unwrap().parse().unwrap(),
                    (
                        p["revenueCents"].as_i64().unwrap(),
                        p["sent"].as_i64().unwrap(),
                        p["failed"].as_i64().unwrap(),
                    ),
                )
            })
            .filter(|(_, v)| *v != (0, 0, 0))
            .collect();
        assert_eq!(got, expected, "{period}: {a}");
        assert!(
            a["periods"].as_array().unwrap().len() >= expected.len() && expected.len() > 2,
            "{period}: every period is listed, empty ones too"
        );

        let c = &a["campaigns"][0];
        assert_eq!(
            (&c["id"], &c["recipients"], &c["sent"], &c["failed"]),
            (&json!(campaign), &json!(4), &json!(3), &json!(1)),
            "{a}"
        );
    }
    // Revenue is the net change of value: the periods add up to the changes in the range.
    let a = app
        .user(1)
        .get_json("/api/crm/analytics?period=month&from=2026-01-01")
        .await;
    let total: i64 = a["periods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["revenueCents"].as_i64().unwrap())
        .sum();
    assert_eq!(total, r.changes.iter().map(|c| c.1).sum::<i64>());
}

async fn bad_analytics_queries_are_400(backend: Backend) {
    let (_sim, app, _dispatcher) = setup(backend, |_| {}).await;
    for query in [
        "period=year",
        "from=2026-13-01",
        "from=2026-12-02&to=2026-12-01",
        "period=day&from=2020-01-01&to=2026-01-01",
        "activeDays=0",
        "from=0001-01-01",
        "to=9999-12-31&from=9999-12-30&period=month",
    ] {
        let resp = app
            .user(1)
            .get(&format!("/api/crm/analytics?{query}"))
            .await;
        if query.starts_with("to=9999") {
            // The last possible month is still a month.
            json_of(resp, StatusCode::OK).await;
            continue;
        }
        let body = json_of(resp, StatusCode::BAD_REQUEST).await;
        assert!(body["error"]["message"].is_string(), "{query}: {body}");
    }
    error_of(
        app.client
            .get(app.url("/api/crm/analytics"))
            .send()
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
}

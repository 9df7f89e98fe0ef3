//! Platform events and the fans' value history, over HTTP on both backends: each event applies
//! once, campaigns and fans agree with what was reported, and every change of a fan's value
//! is in its history with its source.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    delivery::{jobs_done, message, setup, until},
    helpers::{Backend, TestApp, at, error_of, instant, json_of, spawn_app},
};

crate::on_both_backends!(backend:
    concurrent_batches_of_the_same_events_apply_each_once_without_a_5xx,
    events_apply_once_and_campaigns_and_fans_agree_with_them,
    a_fans_value_history_records_every_change_with_its_source,
    bad_event_batches_are_refused_whole_with_the_field_at_fault,
);

async fn post_events(app: &TestApp, user: i64, events: Value) -> Value {
    app.user(user)
        .post_json(
            "/api/onlyfans/events",
            &json!({ "events": events }),
            StatusCode::OK,
        )
        .await
}

async fn fan(app: &TestApp, user: i64, id: i64) -> Value {
    app.user(user)
        .get_json(&format!("/api/crm/fans/{id}"))
        .await
}

async fn campaign_metrics(app: &TestApp, id: i64) -> Value {
    app.user(1)
        .get_json(&format!("/api/crm/campaigns/{id}"))
        .await["metrics"]
        .clone()
}

/// The outbound message of `campaign` in conversation `conv`.
async fn campaign_message(app: &TestApp, conv: i64, campaign: i64) -> Value {
    let what = format!("campaign {campaign}'s message");
    app.user(1)
        .message_where(conv, &what, |m| m["campaignId"] == campaign)
        .await
}

async fn events_apply_once_and_campaigns_and_fans_agree_with_them(backend: Backend) {
    let (_sim, app, dispatcher) = setup(backend, |_| {}).await;
    let (ava, ava_conv) = app.user(1).fan_with_conversation("@ava").await;
    let (ben, ben_conv) = app.user(1).fan_with_conversation("@ben").await;
    json_of(
        app.user(1)
            .put(
                &format!("/api/crm/fans/{ava}"),
                &json!({ "valueCents": 1000 }),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    let bulk =
        json!({ "recipientIds": [ava, ben], "content": "New set", "campaignName": "Launch" });
    let campaign = app
        .user(1)
        .post_json("/api/messages/bulk", &bulk, StatusCode::ACCEPTED)
        .await["campaignId"]
        .as_i64()
        .unwrap();
    jobs_done(&app, 1).await;
    until(&dispatcher, "both campaign messages sent", || async {
        campaign_message(&app, ava_conv, campaign).await["status"] == "sent"
            && campaign_message(&app, ben_conv, campaign).await["status"] == "sent"
    })
    .await;
    let to_ava = campaign_message(&app, ava_conv, campaign).await;
    let to_ben = campaign_message(&app, ben_conv, campaign).await;
    // The platform's id of a delivered message is kept: events may name it.
    let ben_platform_id = to_ben["externalId"]
        .as_str()
        .expect("the platform's id")
        .to_owned();

    let batch = json!([
        { "id": "e1", "type": "delivered", "at": "2026-12-01T10:00:00Z", "fanId": ava, "messageId": to_ava["id"] },
        { "id": "e2", "type": "opened", "at": "2026-12-01T11:00:00Z", "fanHandle": "BEN", "platformMessageId": ben_platform_id },
        { "id": "e3", "type": "purchased", "at": "2026-12-01T12:00:00Z", "fanId": ava.to_string(), "messageId": to_ava["id"].to_string(), "amountCents": 500 },
        { "id": "e4", "type": "tip", "at": "2026-12-02T09:00:00Z", "fanHandle": "@ben", "amountCents": 300 },
        { "id": "e5", "type": "subscription", "at": "2026-12-03T09:00:00Z", "fanId": ava, "amountCents": 1000 },
        { "id": "e6", "type": "tip", "at": "2026-12-03T09:00:00Z", "fanId": 987654321, "amountCents": 100 },
        { "id": "e7", "type": "opened", "at": "2026-12-03T09:00:00Z", "fanId": ava, "messageId": 987654321 },
        { "id": "e8", "type": "opened", "at": "2026-12-03T09:00:00Z", "fanId": ava, "messageId": to_ben["id"] },
        { "id": "e3", "type": "purchased", "at": "2026-12-01T12:00:00Z", "fanId": ava, "messageId": to_ava["id"], "amountCents": 500 },
    ]);
    let first = post_events(&app, 1, batch.clone()).await;
    assert_eq!(
        (&first["applied"], &first["duplicates"], &first["rejected"]),
        (&json!(5), &json!(1), &json!(3)),
        "{first}"
    );
    let statuses: Vec<&str> = first["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "applied",
            "applied",
            "applied",
            "applied",
            "applied",
            "rejected",
            "rejected",
            "rejected",
            "duplicate"
        ]
    );
    assert_eq!(first["results"][5]["error"], "no such fan");
    assert_eq!(first["results"][6]["error"], "no such outbound message");
    assert_eq!(
        first["results"][7]["error"],
        "the message was sent to another fan"
    );

    let check = |label: &'static str| {
        let app = &app;
        let (to_ava, to_ben) = (&to_ava, &to_ben);
        async move {
            let m = campaign_metrics(app, campaign).await;
            assert_eq!(
                (
                    &m["delivered"],
                    &m["opened"],
                    &m["revenueCents"],
                    &m["sent"]
                ),
                (&json!(2), &json!(1), &json!(500), &json!(2)),
                "{label}: {m}"
            );
            let a = fan(app, 1, ava).await;
            let b = fan(app, 1, ben).await;
            assert_eq!(a["valueCents"], 1000 + 500 + 1000, "{label}: {a}");
            assert_eq!(b["valueCents"], 300, "{label}: {b}");
            // Seen: the latest paid event for Ava, the open then the tip for Ben.
            assert_eq!(
                instant(&a["lastSeenAt"]),
                at("2026-12-03T09:00:00Z"),
                "{label}: {a}"
            );
            assert_eq!(
                instant(&b["lastSeenAt"]),
                at("2026-12-02T09:00:00Z"),
                "{label}: {b}"
            );
            let ma = message(app, 1, ava_conv, to_ava["id"].as_i64().unwrap()).await;
            assert_eq!(
                instant(&ma["deliveredAt"]),
                at("2026-12-01T10:00:00Z"),
                "{label}: {ma}"
            );
            assert!(ma.get("openedAt").is_none(), "{label}: {ma}");
            assert_eq!(ma["revenueCents"], 500, "{label}: {ma}");
            let mb = message(app, 1, ben_conv, to_ben["id"].as_i64().unwrap()).await;
            assert_eq!(
                instant(&mb["deliveredAt"]),
                at("2026-12-01T11:00:00Z"),
                "{label}: {mb}"
            );
            assert_eq!(
                instant(&mb["openedAt"]),
                at("2026-12-01T11:00:00Z"),
                "{label}: {mb}"
            );
            let sources: Vec<(String, i64)> = a["valueHistory"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    (
                        c["source"].as_str().unwrap().to_owned(),
                        c["deltaCents"].as_i64().unwrap(),
                    )
                })
                .collect();
            assert_eq!(
                sources,
                [
                    ("subscription".into(), 1000),
                    ("purchased".into(), 500),
                    ("edit".into(), 1000)
                ],
                "{label}: {a}"
            );
        }
    };
    check("after the batch").await;

    // The same batch again: everything applied is a duplicate, nothing changes.
    let again = post_events(&app, 1, batch).await;
    assert_eq!(
        (&again["applied"], &again["duplicates"], &again["rejected"]),
        (&json!(0), &json!(6), &json!(3)),
        "{again}"
    );
    check("after the batch was sent again").await;

    // Another creator's events never reach creator 1's fans or messages.
    let other = post_events(
        &app,
        2,
        json!([{ "id": "e1", "type": "tip", "at": "2026-12-03T09:00:00Z", "fanId": ava, "amountCents": 100 },
               { "id": "x2", "type": "delivered", "at": "2026-12-03T09:00:00Z", "fanHandle": "@ava", "messageId": to_ava["id"] }]),
    )
    .await;
    assert_eq!(
        (&other["applied"], &other["rejected"]),
        (&json!(0), &json!(2)),
        "{other}"
    );
    check("after another creator's events").await;
}

async fn a_fans_value_history_records_every_change_with_its_source(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app
        .user(1)
        .create_fan(json!({ "handle": "@vera", "valueCents": 100 }))
        .await;
    let id = created["id"].as_i64().unwrap();
    json_of(
        app.user(1)
            .put(
                &format!("/api/crm/fans/{id}"),
                &json!({ "valueCents": 250 }),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    // A change of something else is not a value change.
    json_of(
        app.user(1)
            .put(&format!("/api/crm/fans/{id}"), &json!({ "notes": "VIP" }))
            .await,
        StatusCode::OK,
    )
    .await;
    let csv = "Username,Display Name,Email,Subscription Tier,Total Spent,Last Seen\n\
               vera,Vera,,Gold,$40.00,\n\
               newcomer,New,,,$12.50,\n";
    let job = app
        .user(1)
        .import("export.csv", csv.as_bytes().to_vec())
        .await;
    app.user(1).wait_job(&job).await;
    // Importing the same file again changes no value.
    let job = app
        .user(1)
        .import("export.csv", csv.as_bytes().to_vec())
        .await;
    app.user(1).wait_job(&job).await;
    post_events(
        &app,
        1,
        json!([{ "id": "t1", "type": "tip", "at": "2026-12-04T08:00:00Z", "fanHandle": "@vera", "amountCents": 60 }]),
    )
    .await;

    let f = fan(&app, 1, id).await;
    assert_eq!(f["valueCents"], 4060, "{f}");
    let history: Vec<(String, i64, i64)> = f["valueHistory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["source"].as_str().unwrap().to_owned(),
                c["deltaCents"].as_i64().unwrap(),
                c["valueCents"].as_i64().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("tip".to_owned(), 60, 4060),
        ("import".to_owned(), 3750, 4000),
        ("edit".to_owned(), 150, 250),
        ("created".to_owned(), 100, 100),
    ];
    assert_eq!(history, expected, "{f}");

    // The whole history, paged.
    let url = format!("/api/crm/fans/{id}/value-history?limit=3");
    let page = app.user(1).get_json(&url).await;
    assert_eq!(
        (&page["total"], page["items"].as_array().unwrap().len()),
        (&json!(4), 3)
    );
    assert_eq!(page["items"][0]["source"], "tip");
    let url = format!("/api/crm/fans/{id}/value-history?limit=3&offset=3");
    let page = app.user(1).get_json(&url).await;
    assert_eq!(page["items"][0]["source"], "created", "{page}");

    // The imported newcomer's value came from the import.
    let fans = app
        .user(1)
        .get_json("/api/crm/fans?minValueCents=1250")
        .await;
    let newcomer = fans["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["handle"] == "@newcomer")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let nf = fan(&app, 1, newcomer).await;
    assert_eq!(nf["valueHistory"][0]["source"], "import", "{nf}");

    // Another creator's fan, or no fan: 404.
    error_of(
        app.user(2)
            .get(&format!("/api/crm/fans/{id}/value-history"))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    error_of(
        app.user(1)
            .get("/api/crm/fans/987654321/value-history")
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    error_of(
        app.user(1)
            .get(&format!("/api/crm/fans/{id}/value-history?limit=0"))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
    )
    .await;
}

async fn bad_event_batches_are_refused_whole_with_the_field_at_fault(backend: Backend) {
    let app = spawn_app(backend).await;
    let f = app.user(1).create_fan(json!({ "handle": "@zoe" })).await;
    let id = f["id"].as_i64().unwrap();
    let ok = json!({ "id": "ok", "type": "tip", "at": "2026-12-01T00:00:00Z", "fanId": id, "amountCents": 5 });
    let cases = [
        (json!({ "events": [] }), "events"),
        (
            json!({ "events": [ok, { "id": "a", "type": "tip", "at": "2026-12-01T00:00:00Z", "fanId": id }] }),
            "events[1].amountCents",
        ),
        (
            json!({ "events": [{ "id": "a", "type": "delivered", "at": "2026-12-01T00:00:00Z", "fanId": id }] }),
            "events[0].messageId",
        ),
        (
            json!({ "events": [{ "id": "a", "type": "delivered", "at": "2026-12-01T00:00:00Z", "fanId": id, "messageId": 1, "amountCents": 5 }] }),
            "events[0].amountCents",
        ),
        (
            json!({ "events": [{ "id": "a", "type": "tip", "at": "2026-12-01T00:00:00Z", "amountCents": 5 }] }),
            "events[0].fanId",
        ),
        (
            json!({ "events": [{ "id": "a", "type": "tip", "at": "2026-12-01T00:00:00Z", "fanId": id, "fanHandle": "@zoe", "amountCents": 5 }] }),
            "events[0].fanId",
        ),
        (
            json!({ "events": [{ "id": " ", "type": "tip", "at": "2026-12-01T00:00:00Z", "fanId": id, "amountCents": 5 }] }),
            "events[0].id",
        ),
        (
            json!({ "events": [{ "id": "a", "type": "tip", "at": "2999-01-01T00:00:00Z", "fanId": id, "amountCents": 5 }] }),
            "events[0].at",
        ),
        (
            json!({ "events": [{ "id": "a", "type": "refund", "at": "2026-12-01T00:00:00Z", "fanId": id }] }),
            "events[0].type",
        ),
    ];
    for (body, field) in cases {
        let e = app
            .user(1)
            .post_json("/api/onlyfans/events", &body, StatusCode::BAD_REQUEST)
            .await;
        assert!(
            e["error"]["field"] == field
                || e["error"]["message"].as_str().unwrap_or("").contains(field),
            "{body} names {field}: {e}"
        );
    }
    let too_many: Vec<Value> = (0..501)
        .map(|i| json!({ "id": format!("e{i}"), "type": "tip", "at": "2026-12-01T00:00:00Z", "fanId": id, "amountCents": 1 }))
        .collect();
    error_of(
        app.user(1)
            .post("/api/onlyfans/events", &json!({ "events": too_many }))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
    )
    .await;
    // Nothing of the refused batches applied: the fan's value is untouched.
    assert_eq!(fan(&app, 1, id).await["valueCents"], 0);
}

async fn concurrent_batches_of_the_same_events_apply_each_once_without_a_5xx(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut fans = vec![];
    for i in 0..5 {
        fans.push(
            app.user(1)
                .create_fan(json!({ "handle": format!("@c{i}") }))
                .await["id"]
                .clone(),
        );
    }
    // 8 clients send overlapping batches (each the 60 events in its own order).
    let events: Vec<Value> = (0..60)
        .map(|i| {
            json!({ "id": format!("c{i}"), "type": "tip", "at": "2026-12-01T00:00:00Z",
                         "fanId": fans[i % 5], "amountCents": 10 + i })
        })
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..8usize {
        let mut batch = events.clone();
        batch.rotate_left(k * 7);
        if k % 2 == 1 {
            batch.reverse();
        }
        let (client, url, token) = (
            app.client.clone(),
            app.url("/api/onlyfans/events"),
            app.token(1),
        );
        tasks.spawn(async move {
            let resp = client
                .post(url)
                .bearer_auth(token)
                .json(&json!({ "events": batch }))
                .send()
                .await
                .unwrap();
            json_of(resp, StatusCode::OK).await
        });
    }
    let mut applied = 0;
    while let Some(answer) = tasks.join_next().await {
        let answer = answer.unwrap();
        assert_eq!(
            answer["applied"].as_i64().unwrap() + answer["duplicates"].as_i64().unwrap(),
            60,
            "{answer}"
        );
        applied += answer["applied"].as_i64().unwrap();
    }
    assert_eq!(applied, 60, "each event applied by exactly one batch");
    let mut total = 0;
    for (f, id) in fans.iter().enumerate() {
        let fan = fan(&app, 1, id.as_i64().unwrap()).await;
        let expected: i64 = (0..60).filter(|i| i % 5 == f).map(|i| 10 + i as i64).sum();
        assert_eq!(fan["valueCents"], expected, "{fan}");
        total += expected;
    }
    assert_eq!(total, (0..60).map(|i| 10 + i).sum::<i64>());
}

//! Segments over HTTP on both backends: for every filter field, what a preview counts, what a
//! saved segment's preview counts and the fans `GET /api/crm/fans?segmentId=` lists are the
//! fans the test's own fixtures say; another creator's campaign or message matches nothing.

use std::collections::BTreeSet;

use chrono::{Duration, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{ApiClient, TestApp, error_of, json_of};

crate::on_both_backends!(
    // The test saves a segment per filter it checks: more writes than a creator's minute.
    tweak = |s| s.api.write_limit_per_minute = 10_000;
    every_filter_field_matches_the_fans_the_fixtures_say,
    segments_are_the_callers_own_and_bad_filters_are_refused_with_the_field,
);

type Handles = BTreeSet<String>;

fn handles(items: &Value) -> Handles {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["handle"].as_str().unwrap().to_owned())
        .collect()
}

fn set(names: &[&str]) -> Handles {
    names.iter().map(|n| format!("@{n}")).collect()
}

/// Checks `filter` three ways: the unsaved preview, a saved segment's preview, and the fan
/// list of the segment (every page); each must be `expected`.
async fn holds(user: &ApiClient, what: &str, filter: Value, expected: &Handles) {
    let preview = user
        .post_json(
            "/api/crm/segments/preview",
            &json!({ "filter": filter }),
            StatusCode::OK,
        )
        .await;
    assert_eq!(
        preview["count"],
        expected.len(),
        "{what}: the preview's count; expected {expected:?}, sample {}",
        preview["sample"]
    );
    assert_eq!(&handles(&preview["sample"]), expected, "{what}: the sample");
    let segment = user
        .post_json(
            "/api/crm/segments",
            &json!({ "name": what, "filter": filter }),
            StatusCode::CREATED,
        )
        .await;
    let id = segment["id"].as_i64().unwrap();
    let saved = user
        .get_json(&format!("/api/crm/segments/{id}/preview"))
        .await;
    assert_eq!(saved["count"], expected.len(), "{what}: the saved preview");
    let mut listed = Handles::new();
    for offset in (0..).step_by(2) {
        let page = user
            .get_json(&format!(
                "/api/crm/fans?segmentId={id}&limit=2&offset={offset}"
            ))
            .await;
        assert_eq!(page["total"], expected.len(), "{what}: the list's total");
        if page["items"].as_array().unwrap().is_empty() {
            break;
        }
        listed.extend(handles(&page["items"]));
    }
    assert_eq!(&listed, expected, "{what}: the segment's fans");
}

async fn fan(user: &ApiClient, body: Value) -> i64 {
    user.create_fan(body).await["id"].as_i64().unwrap()
}

async fn conversation(user: &ApiClient, fan: i64) -> i64 {
    user.open_conversation(fan).await["id"].as_i64().unwrap()
}

/// The outbound message of `campaign` in conversation `conv`.
async fn campaign_message(user: &ApiClient, conv: i64, campaign: i64) -> i64 {
    let what = format!("campaign {campaign}'s message");
    user.message_where(conv, &what, |m| m["campaignId"] == campaign)
        .await["id"]
        .as_i64()
        .unwrap()
}

async fn events(user: &ApiClient, events: Value) {
    let done = user
        .post_json(
            "/api/onlyfans/events",
            &json!({ "events": events }),
            StatusCode::OK,
        )
        .await;
    assert_eq!(done["rejected"], 0, "{done}");
}

async fn campaign(user: &ApiClient, fans: &[i64]) -> i64 {
    let bulk = json!({ "recipientIds": fans, "content": "New set", "campaignName": "Launch" });
    user.post_json("/api/messages/bulk", &bulk, StatusCode::ACCEPTED)
        .await["campaignId"]
        .as_i64()
        .unwrap()
}

async fn every_filter_field_matches_the_fans_the_fixtures_say(app: TestApp) {
    let (me, them) = (app.user(1), app.user(2));
    let now = Utc::now();
    let ago = |d: Duration| (now - d).to_rfc3339();

    // What the fan list shows (tags, platform, value, last seen) is set here and read back
    // below; what it does not show (events, messages, purchases) the fixtures say.
    let vip = fan(
        &me,
        json!({ "handle": "vip", "tags": ["VIP", "whale"], "valueCents": 50000,
                               "lastSeenAt": ago(Duration::days(1)) }),
    )
    .await;
    let whale = fan(
        &me,
        json!({ "handle": "whale", "tags": ["whale"], "platform": "fansly",
                                 "valueCents": 20000, "lastSeenAt": ago(Duration::days(20)) }),
    )
    .await;
    let new = fan(&me, json!({ "handle": "new" })).await;
    let old = fan(
        &me,
        json!({ "handle": "old", "tags": ["vip"], "platform": "other",
                               "valueCents": 100, "lastSeenAt": ago(Duration::days(100)) }),
    )
    .await;
    let mid = fan(
        &me,
        json!({ "handle": "mid", "tags": ["Mid"], "valueCents": 5000,
                               "lastSeenAt": ago(Duration::days(3)) }),
    )
    .await;
    let buyer = fan(
        &me,
        json!({ "handle": "buyer", "lastSeenAt": ago(Duration::days(2)) }),
    )
    .await;
    let theirs = fan(
        &them,
        json!({ "handle": "theirs", "tags": ["VIP"], "valueCents": 90000 }),
    )
    .await;

    // Messages: an unread inbound message from vip 2 hours ago; one from whale 3 days ago,
    // read; an outbound message to new now; a campaign to mid and buyer now.
    let vip_conv = conversation(&me, vip).await;
    me.post_json(
        &format!("/api/crm/conversations/{vip_conv}/inbound"),
        &json!({ "text": "hey", "receivedAt": ago(Duration::hours(2)) }),
        StatusCode::CREATED,
    )
    .await;
    let whale_conv = conversation(&me, whale).await;
    me.post_json(
        &format!("/api/crm/conversations/{whale_conv}/inbound"),
        &json!({ "text": "hello", "receivedAt": ago(Duration::hours(72)) }),
        StatusCode::CREATED,
    )
    .await;
    me.post_json(
        &format!("/api/crm/conversations/{whale_conv}/read"),
        &json!({}),
        StatusCode::OK,
    )
    .await;
    let new_conv = conversation(&me, new).await;
    me.post_json(
        &format!("/api/crm/conversations/{new_conv}/messages"),
        &json!({ "text": "welcome" }),
        StatusCode::ACCEPTED,
    )
    .await;
    let launch = campaign(&me, &[mid, buyer]).await;
    let mid_conv = conversation(&me, mid).await;
    let bought = campaign_message(&me, mid_conv, launch).await;
    let their_campaign = campaign(&them, &[theirs]).await;
    let their_conv = conversation(&them, theirs).await;
    let their_message = campaign_message(&them, their_conv, their_campaign).await;

    // Events: mid unlocks the campaign's message (30.00, 2 days ago); buyer tips 15.00
    // yesterday; vip tipped 200.00 40 days ago, subscribed 10 days ago and expired 5 days ago;
    // whale subscribed 3 days ago; mid turned renewal off yesterday; old expired yesterday,
    // and an older subscription of old's arrives late.
    events(
        &me,
        json!([
            { "id": "p1", "type": "purchased", "at": ago(Duration::days(2)), "fanId": mid, "messageId": bought, "amountCents": 3000 },
            { "id": "t1", "type": "tip", "at": ago(Duration::days(1)), "fanId": buyer, "amountCents": 1500 },
            { "id": "t2", "type": "tip", "at": ago(Duration::days(40)), "fanId": vip, "amountCents": 20000 },
            { "id": "s1", "type": "subscription", "at": ago(Duration::days(10)), "fanId": vip, "amountCents": 1000 },
            { "id": "s2", "type": "subscription_expired", "at": ago(Duration::days(5)), "fanId": vip },
            { "id": "s3", "type": "subscription", "at": ago(Duration::days(3)), "fanId": whale, "amountCents": 1000 },
            { "id": "s4", "type": "subscription_renewal_off", "at": ago(Duration::days(1)), "fanId": mid },
            { "id": "s5", "type": "subscription_expired", "at": ago(Duration::days(1)), "fanId": old },
            { "id": "s6", "type": "subscription", "at": ago(Duration::days(50)), "fanId": old, "amountCents": 1000 },
        ]),
    )
    .await;
    events(
        &them,
        json!([{ "id": "p1", "type": "purchased", "at": ago(Duration::days(1)), "fanId": theirs,
                 "messageId": their_message, "amountCents": 999 }]),
    )
    .await;

    // The fans as the API shows them now (events moved some last-seen times and values).
    let all = me.get_json("/api/crm/fans?limit=200").await["items"].clone();
    let fans = all.as_array().unwrap();
    assert_eq!(fans.len(), 6);
    let shown = |keep: &dyn Fn(&Value) -> bool| -> Handles {
        fans.iter()
            .filter(|f| keep(f))
            .map(|f| f["handle"].as_str().unwrap().to_owned())
            .collect()
    };
    let tags = |f: &Value| -> Vec<String> {
        f["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_lowercase())
            .collect()
    };
    let seen = |f: &Value| {
        f["lastSeenAt"]
            .as_str()
            .map(|t| t.parse::<chrono::DateTime<Utc>>().unwrap())
    };
    let value = |f: &Value| f["valueCents"].as_i64().unwrap();
    let everyone = shown(&|_| true);
    let cutoff = now - Duration::days(7);

    let cases: Vec<(&str, Value, Handles)> = vec![
        ("everyone", json!({}), everyone.clone()),
        (
            "tagsAny",
            json!({ "tagsAny": ["vip", "MID"] }),
            shown(&|f| tags(f).iter().any(|t| t == "vip" || t == "mid")),
        ),
        (
            "tagsAll",
            json!({ "tagsAll": ["Whale", "vip"] }),
            shown(&|f| tags(f).contains(&"whale".into()) && tags(f).contains(&"vip".into())),
        ),
        (
            "tagsNone",
            json!({ "tagsNone": ["whale"] }),
            shown(&|f| !tags(f).contains(&"whale".into())),
        ),
        (
            "platform",
            json!({ "platform": "Fansly" }),
            shown(&|f| f["platform"] == "fansly"),
        ),
        (
            "value range",
            json!({ "minValueCents": 5000, "maxValueCents": 30000 }),
            shown(&|f| (5000..=30000).contains(&value(f))),
        ),
        (
            "lastSeenBefore",
            json!({ "lastSeenBefore": cutoff.to_rfc3339() }),
            shown(&|f| seen(f).is_some_and(|s| s < cutoff)),
        ),
        (
            "lastSeenAfter",
            json!({ "lastSeenAfter": cutoff.to_rfc3339() }),
            shown(&|f| seen(f).is_some_and(|s| s >= cutoff)),
        ),
        (
            "inactiveDays",
            json!({ "inactiveDays": 7 }),
            shown(&|f| seen(f).is_none_or(|s| s < cutoff)),
        ),
        // Spend in the last 30 days: mid's 30.00 and buyer's 15.00, whale's 10.00 subscription;
        // vip's tip was 40 days ago and its subscription 10.00.
        (
            "spent",
            json!({ "spentCentsInLastDays": { "cents": 1500, "days": 30 } }),
            set(&["mid", "buyer"]),
        ),
        (
            "spent, a longer window",
            json!({ "spentCentsInLastDays": { "cents": 1500, "days": 60 } }),
            set(&["mid", "buyer", "vip"]),
        ),
        (
            "subscribed",
            json!({ "subscribed": true }),
            set(&["whale", "mid"]),
        ),
        (
            "not subscribed",
            json!({ "subscribed": false }),
            set(&["vip", "old", "new", "buyer"]),
        ),
        (
            "wrote within a day",
            json!({ "lastInboundWithinHours": 24 }),
            set(&["vip"]),
        ),
        (
            "wrote within four days",
            json!({ "lastInboundWithinHours": 96 }),
            set(&["vip", "whale"]),
        ),
        (
            "messaged within an hour",
            json!({ "lastOutboundWithinHours": 1 }),
            set(&["new", "mid", "buyer"]),
        ),
        ("unread", json!({ "unreadInbound": true }), set(&["vip"])),
        (
            "nothing unread",
            json!({ "unreadInbound": false }),
            set(&["whale", "new", "old", "mid", "buyer"]),
        ),
        (
            "bought the message",
            json!({ "boughtMessageId": bought }),
            set(&["mid"]),
        ),
        (
            "bought from the campaign",
            json!({ "boughtCampaignId": launch }),
            set(&["mid"]),
        ),
        (
            "bought nothing of the campaign",
            json!({ "notBoughtCampaignId": launch }),
            set(&["vip", "whale", "new", "old", "buyer"]),
        ),
        (
            "several fields",
            json!({ "tagsAny": ["whale"], "subscribed": false, "minValueCents": 1 }),
            set(&["vip"]),
        ),
        (
            "an empty value range",
            json!({ "minValueCents": 5000, "maxValueCents": 100 }),
            Handles::new(),
        ),
        (
            "null is not given",
            json!({ "tagsAny": null, "subscribed": null }),
            everyone.clone(),
        ),
    ];
    for (what, filter, expected) in cases {
        holds(&me, what, filter, &expected).await;
    }

    // The fan list's own filters narrow a segment's fans.
    let tagged = me
        .post_json(
            "/api/crm/segments",
            &json!({ "name": "tagged", "filter": { "tagsAny": ["vip", "mid", "whale"] } }),
            StatusCode::CREATED,
        )
        .await["id"]
        .as_i64()
        .unwrap();
    for (query, expected) in [
        ("tag=MID", set(&["mid"])),
        ("q=HAL", set(&["whale"])),
        (
            "minValueCents=6000",
            shown(&|f| {
                value(f) >= 6000
                    && ["@vip", "@mid", "@whale", "@old"].contains(&f["handle"].as_str().unwrap())
            }),
        ),
    ] {
        let page = me
            .get_json(&format!("/api/crm/fans?segmentId={tagged}&{query}"))
            .await;
        assert_eq!(page["total"], expected.len(), "{query}: {page}");
        assert_eq!(handles(&page["items"]), expected, "{query}");
    }

    // Another creator's campaign and message match nothing of theirs: bought none, and
    // "bought nothing of it" is every fan of the caller's.
    holds(
        &me,
        "their message",
        json!({ "boughtMessageId": their_message }),
        &Handles::new(),
    )
    .await;
    holds(
        &me,
        "their campaign",
        json!({ "boughtCampaignId": their_campaign }),
        &Handles::new(),
    )
    .await;
    holds(
        &me,
        "not their campaign",
        json!({ "notBoughtCampaignId": their_campaign }),
        &everyone,
    )
    .await;
    holds(
        &them,
        "their own",
        json!({ "boughtCampaignId": their_campaign }),
        &set(&["theirs"]),
    )
    .await;
}

async fn segments_are_the_callers_own_and_bad_filters_are_refused_with_the_field(app: TestApp) {
    let me = app.user(1);
    let made = me
        .post_json(
            "/api/crm/segments",
            &json!({ "name": " Whales ", "filter": { "tagsAny": ["whale"], "inactiveDays": 14 } }),
            StatusCode::CREATED,
        )
        .await;
    let id = made["id"].as_i64().unwrap();
    assert_eq!(made["name"], "Whales");
    assert_eq!(
        made["filter"],
        json!({ "tagsAny": ["whale"], "inactiveDays": 14 })
    );
    let path = format!("/api/crm/segments/{id}");
    let renamed = json_of(
        me.put(&path, &json!({ "name": "Big whales" })).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        (&renamed["name"], &renamed["filter"]),
        (&json!("Big whales"), &made["filter"])
    );
    let refiltered = json_of(
        me.put(&path, &json!({ "filter": { "subscribed": true } }))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(refiltered["filter"], json!({ "subscribed": true }));
    let listed = me.get_json("/api/crm/segments").await;
    assert_eq!(listed["total"], 1);

    // Another creator's segment is not there for them.
    let other = app.user(2);
    for resp in [
        other.get(&path).await,
        other.get(&format!("{path}/preview")).await,
        other.put(&path, &json!({ "name": "mine" })).await,
        other.delete(&path).await,
        other.get(&format!("/api/crm/fans?segmentId={id}")).await,
    ] {
        error_of(resp, StatusCode::NOT_FOUND, "not_found").await;
    }
    assert_eq!(other.get_json("/api/crm/segments").await["total"], 0);

    // Bad filters: a 400 naming what is wrong, nothing saved.
    for (filter, field) in [
        (json!({ "tagAny": ["x"] }), "tagAny"),
        (json!({ "inactiveDays": 0 }), "inactiveDays"),
        (
            json!({ "lastInboundWithinHours": 100000 }),
            "lastInboundWithinHours",
        ),
        (json!({ "minValueCents": -1 }), "minValueCents"),
        (json!({ "boughtCampaignId": 0 }), "boughtCampaignId"),
        (
            json!({ "tagsNone": (0..51).map(|i| format!("t{}", i % 2)).collect::<Vec<_>>() }),
            "tagsNone",
        ),
        (json!({ "platform": "myspace" }), "platform"),
        (json!({ "tagsAll": [""] }), "tagsAll"),
        (
            json!({ "spentCentsInLastDays": { "cents": 0, "days": 7 } }),
            "cents",
        ),
        (json!({ "lastSeenBefore": "yesterday" }), "lastSeenBefore"),
        (json!({ "subscribed": "yes" }), "subscribed"),
    ] {
        for resp in [
            me.post(
                "/api/crm/segments",
                &json!({ "name": "bad", "filter": filter }),
            )
            .await,
            me.post("/api/crm/segments/preview", &json!({ "filter": filter }))
                .await,
        ] {
            let error = json_of(resp, StatusCode::BAD_REQUEST).await["error"].clone();
            assert!(
                error["message"].as_str().unwrap().contains(field),
                "{filter}: the error names {field}: {error}"
            );
        }
    }
    assert_eq!(me.get_json("/api/crm/segments").await["total"], 1);

    assert_eq!(me.delete(&path).await.status(), StatusCode::NO_CONTENT);
    error_of(me.get(&path).await, StatusCode::NOT_FOUND, "not_found").await;
}

/// A preview only reads: a builder's live count can follow a creator's typing past the write
/// quota, which stays whole for their writes.
#[tokio::test]
async fn previews_do_not_use_up_the_write_quota() {
    let app = crate::helpers::spawn_app(crate::helpers::Backend::Sqlite).await;
    let me = app.user(1);
    for days in 1..=70 {
        me.post_json(
            "/api/crm/segments/preview",
            &json!({ "filter": { "inactiveDays": days } }),
            StatusCode::OK,
        )
        .await;
    }
    for i in 0..60 {
        me.create_fan(json!({ "handle": format!("f{i}") })).await;
    }
    error_of(
        me.post("/api/crm/fans", &json!({ "handle": "one_too_many" }))
            .await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;
}

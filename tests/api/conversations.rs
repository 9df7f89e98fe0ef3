use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Backend, TestApp, at, error_of, instant, json_of, spawn_app_with};

crate::on_both_backends!(
    opening_a_conversation_twice_returns_the_same_one,
    conversations_list_newest_message_first_with_fan_details,
    an_inbound_message_bumps_unread_and_marking_read_resets_it,
    a_replayed_inbound_external_id_is_recorded_once,
    messages_are_listed_oldest_first_with_limit_and_offset,
    conversation_limit_over_200_is_a_400,
    waiting_messages_in_a_thread_carry_the_send_time_their_send_answered,
);

async fn waiting_messages_in_a_thread_carry_the_send_time_their_send_answered(app: TestApp) {
    let (_, conv) = app.user(1).fan_with_conversation("@eta").await;
    let mut answers = vec![];
    for text in ["first", "second"] {
        answers.push(
            app.user(1)
                .post_json(
                    &format!("/api/crm/conversations/{conv}/messages"),
                    &json!({ "text": text }),
                    StatusCode::ACCEPTED,
                )
                .await,
        );
    }
    // An inbound message has none.
    app.user(1)
        .post_json(
            &format!("/api/crm/conversations/{conv}/inbound"),
            &json!({ "text": "hi", "externalId": "in-1" }),
            StatusCode::CREATED,
        )
        .await;
    let page = app
        .user(1)
        .get_json(&format!("/api/crm/conversations/{conv}/messages"))
        .await;
    let items = page["items"].as_array().unwrap();
    for answer in &answers {
        let m = items
            .iter()
            .find(|m| m["id"] == answer["messageId"])
            .unwrap();
        assert_eq!(
            instant(&m["estimatedSendTime"]),
            instant(&answer["estimatedSendTime"]),
            "{m}"
        );
    }
    let inbound = items.iter().find(|m| m["direction"] == "in").unwrap();
    assert!(inbound.get("estimatedSendTime").is_none(), "{inbound}");
}

async fn opening_a_conversation_twice_returns_the_same_one(app: TestApp) {
    let fan = app.user(1).create_fan(json!({ "handle": "x" })).await;
    let body = json!({ "fanId": fan["id"] });
    let first = app
        .user(1)
        .post_json("/api/crm/conversations", &body, StatusCode::CREATED)
        .await;
    let again = app
        .user(1)
        .post_json("/api/crm/conversations", &body, StatusCode::OK)
        .await;
    assert_eq!(first["id"], again["id"]);
    assert_eq!(first["unreadCount"], 0);
    assert_eq!(first["lastMessageAt"], serde_json::Value::Null);
    error_of(
        app.user(1)
            .post("/api/crm/conversations", &json!({ "fanId": 999_999 }))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

async fn conversations_list_newest_message_first_with_fan_details(app: TestApp) {
    let fan = |h: &str| json!({ "handle": h, "name": h.to_uppercase(), "avatarUrl": format!("https://cdn.example.com/{h}.jpg") });
    let mut convs = vec![];
    for h in ["old", "new", "mid", "silent"] {
        let f = app.user(1).create_fan(fan(h)).await;
        convs.push(
            app.user(1)
                .open_conversation(f["id"].as_i64().unwrap())
                .await["id"]
                .as_i64()
                .unwrap(),
        );
    }
    for (conv, at) in [
        (convs[0], "2025-01-01T10:00:00Z"),
        (convs[1], "2025-03-01T10:00:00Z"),
        (convs[2], "2025-02-01T10:00:00.5Z"),
    ] {
        let resp = app
            .user(1)
            .post(
                &format!("/api/crm/conversations/{conv}/inbound"),
                &json!({ "text": "hi", "receivedAt": at }),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    let page = app.user(1).get_json("/api/crm/conversations").await;
    assert_eq!(page["total"], 4);
    assert_eq!(page["limit"], 50);
    let items = page["items"].as_array().unwrap();
    let order: Vec<&str> = items
        .iter()
        .map(|c| c["fan"]["handle"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        ["@new", "@mid", "@old", "@silent"],
        "newest lastMessageAt first, none last"
    );
    assert_eq!(items[0]["fan"]["name"], "NEW");
    assert_eq!(
        items[0]["fan"]["avatarUrl"],
        "https://cdn.example.com/new.jpg"
    );
    assert_eq!(
        instant(&items[0]["lastMessageAt"]),
        at("2025-03-01T10:00:00Z")
    );
    assert_eq!(
        instant(&items[1]["lastMessageAt"]),
        at("2025-02-01T10:00:00.5Z")
    );
}

async fn an_inbound_message_bumps_unread_and_marking_read_resets_it(app: TestApp) {
    let (_, conv) = app.user(1).fan_with_conversation("chatty").await;
    for text in ["one", "two"] {
        let resp = app
            .user(1)
            .post(
                &format!("/api/crm/conversations/{conv}/inbound"),
                &json!({ "text": text }),
            )
            .await;
        let msg = json_of(resp, StatusCode::CREATED).await;
        assert_eq!(msg["direction"], "in");
        assert_eq!(msg["text"], text);
    }
    let c = app
        .user(1)
        .get_json(&format!("/api/crm/conversations/{conv}"))
        .await;
    assert_eq!(c["unreadCount"], 2);
    assert!(c["lastMessageAt"].is_string());
    let read = app
        .user(1)
        .post_json(
            &format!("/api/crm/conversations/{conv}/read"),
            &json!({}),
            StatusCode::OK,
        )
        .await;
    assert_eq!(read["unreadCount"], 0);
    let c = app
        .user(1)
        .get_json(&format!("/api/crm/conversations/{conv}"))
        .await;
    assert_eq!(c["unreadCount"], 0);
}

async fn a_replayed_inbound_external_id_is_recorded_once(app: TestApp) {
    let (_, conv) = app.user(1).fan_with_conversation("sync").await;
    let body = json!({ "text": "hello", "externalId": "of-123", "priceCents": 500,
                       "attachments": [{ "type": "image", "url": "https://cdn.example.com/p.jpg" }] });
    let path = format!("/api/crm/conversations/{conv}/inbound");
    let first = app
        .user(1)
        .post_json(&path, &body, StatusCode::CREATED)
        .await;
    let again = app.user(1).post_json(&path, &body, StatusCode::OK).await;
    assert_eq!(first["id"], again["id"]);
    assert_eq!(
        first["attachments"],
        json!([{ "type": "image", "url": "https://cdn.example.com/p.jpg" }])
    );
    assert_eq!(first["priceCents"], 500);
    let c = app
        .user(1)
        .get_json(&format!("/api/crm/conversations/{conv}"))
        .await;
    assert_eq!(c["unreadCount"], 1);
    let msgs = app
        .user(1)
        .get_json(&format!("/api/crm/conversations/{conv}/messages"))
        .await;
    assert_eq!(msgs["total"], 1);
}

async fn messages_are_listed_oldest_first_with_limit_and_offset(app: TestApp) {
    let (_, conv) = app.user(1).fan_with_conversation("history").await;
    let path = format!("/api/crm/conversations/{conv}/inbound");
    for (text, at) in [
        ("third", "2025-01-03T00:00:00Z"),
        ("first", "2025-01-01T00:00:00Z"),
        ("second", "2025-01-02T00:00:00Z"),
    ] {
        app.user(1)
            .post(&path, &json!({ "text": text, "receivedAt": at }))
            .await;
    }
    let all = app
        .user(1)
        .get_json(&format!("/api/crm/conversations/{conv}/messages"))
        .await;
    let texts: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["first", "second", "third"]);
    let page = app
        .user(1)
        .get_json(&format!(
            "/api/crm/conversations/{conv}/messages?limit=1&offset=1"
        ))
        .await;
    assert_eq!(page["items"][0]["text"], "second");
    assert_eq!(page["total"], 3);
}

async fn conversation_limit_over_200_is_a_400(app: TestApp) {
    let err = error_of(
        app.user(1).get("/api/crm/conversations?limit=201").await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
    )
    .await;
    assert_eq!(err["field"], "limit");
    app.user(1)
        .get_json("/api/crm/conversations?limit=200")
        .await;
}

/// 55 conversations: the default page holds 50, the total says 55.
#[tokio::test]
async fn conversations_page_fifty_by_default_with_the_total() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.api.write_limit_per_minute = 1000).await;
    for i in 0..55 {
        app.user(1).fan_with_conversation(&format!("fan{i}")).await;
    }
    let page = app.user(1).get_json("/api/crm/conversations").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 50);
    assert_eq!(page["total"], 55);
    let rest = app
        .user(1)
        .get_json("/api/crm/conversations?offset=50")
        .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 5);
}

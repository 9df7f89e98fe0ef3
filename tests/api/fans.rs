use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, at, error_of, generated_csv, handles_of, instant, json_of};

crate::on_both_backends!(
    every_page_holds_what_a_walk_of_all_the_fans_has_there,
    a_new_user_lists_an_empty_page,
    a_created_fan_reads_back_with_its_handle_normalised,
    fans_filter_by_tag_and_minimum_value_and_paginate,
    updating_a_fan_changes_only_the_given_fields_and_null_clears,
    deleting_a_fan_answers_204_then_404,
    a_second_fan_with_the_same_handle_is_a_409,
    the_search_finds_fans_by_handle_or_name_without_case_over_every_page,
);

async fn the_search_finds_fans_by_handle_or_name_without_case_over_every_page(app: TestApp) {
    for (handle, name) in [
        ("alice", "Alice Smith"),
        ("bob", "Robert"),
        ("carol_x", "Carol"),
        ("dave", "50% off"),
    ] {
        app.user(1)
            .create_fan(json!({ "handle": handle, "name": name }))
            .await;
    }
    // Fans of another creator are never found.
    app.user(2).create_fan(json!({ "handle": "alice2" })).await;
    for (q, expected) in [
        ("ALI", vec!["@alice"]),
        ("robERT", vec!["@bob"]),
        ("@bo", vec!["@bob"]),
        ("_", vec!["@carol_x"]),
        ("%", vec!["@dave"]),
        ("zzz", vec![]),
    ] {
        let page = app
            .user(1)
            .get_json(&format!("/api/crm/fans?q={}&limit=1", urlencode(q)))
            .await;
        assert_eq!(page["total"], expected.len(), "q={q}: {page}");
        assert_eq!(
            handles_of(&page),
            expected[..expected.len().min(1)],
            "q={q}"
        );
    }
    // With the other filters.
    let page = app
        .user(1)
        .get_json("/api/crm/fans?q=a&minValueCents=0&limit=10")
        .await;
    assert_eq!(handles_of(&page), ["@dave", "@carol_x", "@alice"], "{page}");
    error_of(
        app.user(1).get("/api/crm/fans?q=%20").await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
    )
    .await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn a_new_user_lists_an_empty_page(app: TestApp) {
    let page = app.user(1).get_json("/api/crm/fans").await;
    assert_eq!(
        page,
        json!({ "items": [], "total": 0, "limit": 50, "offset": 0 })
    );
}

async fn a_created_fan_reads_back_with_its_handle_normalised(app: TestApp) {
    let created = app
        .user(1)
        .create_fan(json!({
            "handle": " @JohnDoe ", "name": "John Doe", "email": "john@example.com",
            "avatarUrl": "https://cdn.example.com/j.jpg", "tags": ["vip", "VIP", "whale"],
            "notes": "Very engaged", "valueCents": 50000, "lastSeenAt": "2025-11-01T00:00:00Z"
        }))
        .await;
    assert_eq!(created["handle"], "@johndoe");
    assert_eq!(created["platform"], "onlyfans");
    assert_eq!(created["tags"], json!(["vip", "whale"]));
    let id = created["id"].as_i64().unwrap();
    let fetched = app.user(1).get_json(&format!("/api/crm/fans/{id}")).await;
    assert_eq!(without_history(&fetched), created);
    assert_eq!(fetched["valueCents"], 50000);
    assert_eq!(fetched["email"], "john@example.com");
    assert_eq!(instant(&fetched["lastSeenAt"]), at("2025-11-01T00:00:00Z"));
}

async fn fans_filter_by_tag_and_minimum_value_and_paginate(app: TestApp) {
    app.user(1)
        .create_fan(json!({ "handle": "a", "tags": ["VIP"], "valueCents": 100 }))
        .await;
    app.user(1)
        .create_fan(json!({ "handle": "b", "tags": ["basic"], "valueCents": 5000 }))
        .await;
    app.user(1)
        .create_fan(json!({ "handle": "c", "tags": ["vip"], "valueCents": 9000 }))
        .await;

    let vip = app.user(1).get_json("/api/crm/fans?tag=vip").await;
    assert_eq!(handles_of(&vip), ["@c", "@a"]);
    assert_eq!(vip["total"], 2);

    let rich = app
        .user(1)
        .get_json("/api/crm/fans?minValueCents=5000")
        .await;
    assert_eq!(handles_of(&rich), ["@c", "@b"]);

    let rich_vip = app
        .user(1)
        .get_json("/api/crm/fans?tag=vip&minValueCents=5000")
        .await;
    assert_eq!(handles_of(&rich_vip), ["@c"]);

    let second = app.user(1).get_json("/api/crm/fans?limit=1&offset=1").await;
    assert_eq!(handles_of(&second), ["@b"]);
    assert_eq!(second["total"], 3);
    assert_eq!(second["limit"], 1);
}

async fn updating_a_fan_changes_only_the_given_fields_and_null_clears(app: TestApp) {
    let fan = app
        .user(1)
        .create_fan(
            json!({ "handle": "jane", "name": "Jane", "email": "jane@example.com", "notes": "n" }),
        )
        .await;
    let id = fan["id"].as_i64().unwrap();
    let updated = json_of(
        app.user(1).put(&format!("/api/crm/fans/{id}"), &json!({
            "name": "Jane Updated", "tags": ["vip", "active"], "valueCents": 55000, "email": null
        }))
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(updated["name"], "Jane Updated");
    assert_eq!(updated["tags"], json!(["vip", "active"]));
    assert_eq!(updated["valueCents"], 55000);
    assert_eq!(updated["email"], serde_json::Value::Null);
    assert_eq!(updated["notes"], "n", "fields not in the body stay");
    assert_eq!(updated["handle"], "@jane");
    let fetched = app.user(1).get_json(&format!("/api/crm/fans/{id}")).await;
    assert_eq!(without_history(&fetched), updated);
}

/// A fan as `GET /api/crm/fans/{id}` shows it, without its `valueHistory` (which the other
/// routes' fans do not carry).
pub(crate) fn without_history(fan: &Value) -> Value {
    let mut fan = fan.clone();
    fan.as_object_mut()
        .expect("a fan object")
        .remove("valueHistory")
        .expect("GET shows the value history");
    fan
}

async fn deleting_a_fan_answers_204_then_404(app: TestApp) {
    let (fan_id, conv_id) = app.user(1).fan_with_conversation("gone").await;
    let resp = app.user(1).delete(&format!("/api/crm/fans/{fan_id}")).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    error_of(
        app.user(1).get(&format!("/api/crm/fans/{fan_id}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    error_of(
        app.user(1).delete(&format!("/api/crm/fans/{fan_id}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // The fan's conversation goes with it.
    error_of(
        app.user(1)
            .get(&format!("/api/crm/conversations/{conv_id}"))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

async fn a_second_fan_with_the_same_handle_is_a_409(app: TestApp) {
    app.user(1).create_fan(json!({ "handle": "twin" })).await;
    let resp = app
        .user(1)
        .post("/api/crm/fans", &json!({ "handle": "@TWIN" }))
        .await;
    error_of(resp, StatusCode::CONFLICT, "conflict").await;
    // The same handle on another platform is another fan.
    app.user(1)
        .create_fan(json!({ "handle": "twin", "platform": "fansly" }))
        .await;
    let page = app.user(1).get_json("/api/crm/fans").await;
    assert_eq!(page["total"], 2);
}

/// The list's page index: across imports, creates and deletes, the page at any offset holds
/// what a walk of every fan (newest first) has there, and the total counts them all.
async fn every_page_holds_what_a_walk_of_all_the_fans_has_there(app: TestApp) {
    let first = app.user(1).import("first.csv", generated_csv(2_500)).await;
    assert_eq!(app.user(1).wait_job(&first).await["status"], "succeeded");
    // Another creator's fans are not counted; a fan created between imports, and deletes in
    // the oldest block and of the newest fan, move the counts.
    app.user(2).create_fan(json!({ "handle": "someone" })).await;
    let lone = app.user(1).create_fan(json!({ "handle": "lone" })).await;
    let newest = app.user(1).create_fan(json!({ "handle": "newest" })).await;
    let page = app
        .user(1)
        .get_json("/api/crm/fans?offset=2501&limit=1")
        .await;
    let oldest = page["items"][0]["id"].as_i64().unwrap();
    for id in [oldest, newest["id"].as_i64().unwrap()] {
        let resp = app.user(1).delete(&format!("/api/crm/fans/{id}")).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    }
    let mut more =
        String::from("Username,Display Name,Email,Subscription Tier,Total Spent,Last Seen\n");
    for i in 0..1_200 {
        more.push_str(&format!("later{i},Later {i},,,,\n"));
    }
    let second = app.user(1).import("second.csv", more.into_bytes()).await;
    assert_eq!(app.user(1).wait_job(&second).await["status"], "succeeded");

    let db = fanqueue_jobs::db::Db::connect(&app.database_url)
        .await
        .unwrap();
    let walk: Vec<i64> = fanqueue_jobs::on_db!(&db, pool => sqlx::query_as::<_, (i64,)>(
        "SELECT id FROM fans WHERE user_id = 1 ORDER BY id DESC"
    )
    .fetch_all(pool)
    .await
    .unwrap())
    .into_iter()
    .map(|(id,)| id)
    .collect();
    let n = walk.len();
    // 2,500 imported (the oldest deleted), `lone` (`newest` deleted), 1,200 imported.
    assert_eq!(
        n,
        2_500 - 1 + 1 + 1_200,
        "every fan once, the deleted ones gone"
    );
    assert!(walk.contains(&lone["id"].as_i64().unwrap()));
    for offset in [
        0,
        1,
        49,
        999,
        1000,
        1001,
        1199,
        1200,
        1201,
        2199,
        3000,
        n - 50,
        n - 1,
        n,
        n + 10,
    ] {
        let page = app
            .user(1)
            .get_json(&format!("/api/crm/fans?offset={offset}&limit=50"))
            .await;
        let ids: Vec<i64> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["id"].as_i64().unwrap())
            .collect();
        let expected = &walk[offset.min(n)..(offset + 50).min(n)];
        assert_eq!(ids, expected, "the page at offset {offset}");
        assert_eq!(page["total"], n, "the total at offset {offset}");
    }
}

//! Every row belongs to its user: another user's ids answer 404 on every verb, lists hold
//! only the caller's rows, and nothing of user 1 changes whatever user 2 does.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, error_of};

crate::on_both_backends!(
    another_users_fan_and_conversation_are_404_on_every_verb,
    an_operator_sees_each_creators_backlog_and_a_creator_does_not,
);

async fn another_users_fan_and_conversation_are_404_on_every_verb(app: TestApp) {
    let (fan, conv) = app.user(1).fan_with_conversation("private").await;
    app.user(1)
        .post(
            &format!("/api/crm/conversations/{conv}/inbound"),
            &json!({ "text": "secret" }),
        )
        .await;
    let before_fan = app.user(1).get_json(&format!("/api/crm/fans/{fan}")).await;
    let before_conv = app
        .user(1)
        .get_json(&format!("/api/crm/conversations/{conv}"))
        .await;

    let fan_path = format!("/api/crm/fans/{fan}");
    let conv_path = format!("/api/crm/conversations/{conv}");
    let calls = [
        app.user(2).get(&fan_path).await,
        app.user(2)
            .put(&fan_path, &json!({ "name": "stolen" }))
            .await,
        app.user(2).delete(&fan_path).await,
        app.user(2)
            .post("/api/crm/conversations", &json!({ "fanId": fan }))
            .await,
        app.user(2).get(&conv_path).await,
        app.user(2).get(&format!("{conv_path}/messages")).await,
        app.user(2)
            .post(&format!("{conv_path}/inbound"), &json!({ "text": "spoof" }))
            .await,
        app.user(2)
            .post(&format!("{conv_path}/read"), &json!({}))
            .await,
    ];
    for resp in calls {
        let url = resp.url().clone();
        let err = error_of(resp, StatusCode::NOT_FOUND, "not_found").await;
        assert!(
            !err["message"].as_str().unwrap().contains("private"),
            "{url}: leaks data"
        );
    }

    let fans = app.user(2).get_json("/api/crm/fans").await;
    assert_eq!(fans["total"], 0);
    assert_eq!(fans["items"], json!([]));
    let convs = app.user(2).get_json("/api/crm/conversations").await;
    assert_eq!(convs["total"], 0);

    // User 1's rows are exactly as they were.
    assert_eq!(app.user(1).get_json(&fan_path).await, before_fan);
    assert_eq!(app.user(1).get_json(&conv_path).await, before_conv);
    let msgs = app.user(1).get_json(&format!("{conv_path}/messages")).await;
    assert_eq!(msgs["total"], 1);
}

async fn an_operator_sees_each_creators_backlog_and_a_creator_does_not(app: TestApp) {
    use crate::helpers::{error_of, instant};
    use reqwest::StatusCode;
    use serde_json::json;

    for (user, sends) in [(1, 3), (2, 1)] {
        let (_, conv) = app.user(user).fan_with_conversation("@waiting").await;
        for i in 0..sends {
            app.user(user)
                .post_json(
                    &format!("/api/crm/conversations/{conv}/messages"),
                    &json!({ "text": format!("hello {i}") }),
                    StatusCode::ACCEPTED,
                )
                .await;
        }
    }
    let before = chrono::Utc::now();
    let page = app
        .operator(999)
        .get_json("/api/onlyfans/messages/backlogs")
        .await;
    assert_eq!(page["total"], 2, "{page}");
    let rows: Vec<(i64, i64)> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["userId"].as_i64().unwrap(),
                b["waiting"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows, [(1, 3), (2, 1)], "largest first");
    // Three messages at 10 a minute: the last goes at least two slots (12 s) from now.
    let drained = instant(&page["items"][0]["drainedBy"]);
    assert!(drained >= before + chrono::Duration::seconds(12), "{page}");
    assert!(instant(&page["items"][0]["oldestQueuedAt"]) <= before);
    error_of(
        app.user(1).get("/api/onlyfans/messages/backlogs").await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
}

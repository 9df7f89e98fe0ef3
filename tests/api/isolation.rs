//! Every row belongs to its user: another user's ids answer 404 on every verb, lists hold
//! only the caller's rows, and nothing of user 1 changes whatever user 2 does.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, error_of, json_of};

crate::on_both_backends!(
    another_users_fan_and_conversation_are_404_on_every_verb,
    an_operator_sees_each_creators_backlog_and_a_creator_does_not,
);

async fn another_users_fan_and_conversation_are_404_on_every_verb(app: TestApp) {
    let (fan, conv) = app.fan_with_conversation(1, "private").await;
    app.post(
        1,
        &format!("/api/crm/conversations/{conv}/inbound"),
        &json!({ "text": "secret" }),
    )
    .await;
    let before_fan = json_of(
        app.get(1, &format!("/api/crm/fans/{fan}")).await,
        StatusCode::OK,
    )
    .await;
    let before_conv = json_of(
        app.get(1, &format!("/api/crm/conversations/{conv}")).await,
        StatusCode::OK,
    )
    .await;

    let fan_path = format!("/api/crm/fans/{fan}");
    let conv_path = format!("/api/crm/conversations/{conv}");
    let calls = [
        app.get(2, &fan_path).await,
        app.put(2, &fan_path, &json!({ "name": "stolen" })).await,
        app.delete(2, &fan_path).await,
        app.post(2, "/api/crm/conversations", &json!({ "fanId": fan }))
            .await,
        app.get(2, &conv_path).await,
        app.get(2, &format!("{conv_path}/messages")).await,
        app.post(
            2,
            &format!("{conv_path}/inbound"),
            &json!({ "text": "spoof" }),
        )
        .await,
        app.post(2, &format!("{conv_path}/read"), &json!({})).await,
    ];
    for resp in calls {
        let url = resp.url().clone();
        let err = error_of(resp, StatusCode::NOT_FOUND, "not_found").await;
        assert!(
            !err["message"].as_str().unwrap().contains("private"),
            "{url}: leaks data"
        );
    }

    let fans = json_of(app.get(2, "/api/crm/fans").await, StatusCode::OK).await;
    assert_eq!(fans["total"], 0);
    assert_eq!(fans["items"], json!([]));
    let convs = json_of(app.get(2, "/api/crm/conversations").await, StatusCode::OK).await;
    assert_eq!(convs["total"], 0);

    // User 1's rows are exactly as they were.
    assert_eq!(
        json_of(app.get(1, &fan_path).await, StatusCode::OK).await,
        before_fan
    );
    assert_eq!(
        json_of(app.get(1, &conv_path).await, StatusCode::OK).await,
        before_conv
    );
    let msgs = json_of(
        app.get(1, &format!("{conv_path}/messages")).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(msgs["total"], 1);
}

async fn an_operator_sees_each_creators_backlog_and_a_creator_does_not(app: TestApp) {
    use crate::helpers::{error_of, instant, json_of};
    use reqwest::StatusCode;
    use serde_json::json;

    for (user, sends) in [(1, 3), (2, 1)] {
        let (_, conv) = app.fan_with_conversation(user, "@waiting").await;
        for i in 0..sends {
            json_of(
                app.post(
                    user,
                    &format!("/api/crm/conversations/{conv}/messages"),
                    &json!({ "text": format!("hello {i}") }),
                )
                .await,
                StatusCode::ACCEPTED,
            )
            .await;
        }
    }
    let before = chrono::Utc::now();
    let page = json_of(
        app.operator_get("/api/onlyfans/messages/backlogs").await,
        StatusCode::OK,
    )
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
        app.get(1, "/api/onlyfans/messages/backlogs").await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
}

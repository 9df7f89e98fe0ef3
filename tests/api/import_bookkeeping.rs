//! What an import writes besides the fans: each changed value once in the value history, the
//! creator's revenue per day, the list's page index; and, importing the same file again,
//! nothing at all. Checked against a direct computation over the stored rows, on both backends,
//! with batches small enough that the file takes several.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use fanqueue_jobs::db::Db;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, summary};

crate::on_both_backends!(
    tweak = |s| s.imports.import_batch_rows = 200;
    an_imports_history_revenue_and_page_index_equal_a_direct_computation_and_a_second_import_writes_none,
);

/// Rows of the file: 1,100 fans, of which `@fan0`–`@fan9` exist before the import.
const ROWS: usize = 1_100;

/// The amount (cents) row `i` of the file gives, if any: none on every 7th row, zero on
/// every 11th; `@fan0`–`@fan4` get the value they have already.
fn file_value(i: usize) -> Option<i64> {
    match i {
        _ if i.is_multiple_of(7) => None,
        _ if i.is_multiple_of(11) => Some(0),
        0..5 => Some(existing_value(i)),
        _ => Some(100 * (i as i64 % 50) + 7),
    }
}

fn existing_value(i: usize) -> i64 {
    1_000 + i as i64
}

fn export() -> Vec<u8> {
    let mut out =
        String::from("Username,Display Name,Email,Subscription Tier,Total Spent,Last Seen\n");
    for i in 0..ROWS {
        let amount =
            file_value(i).map_or(String::new(), |c| format!("${}.{:02}", c / 100, c % 100));
        out.push_str(&format!(
            "fan{i},Fan {i},,VIP,{amount},2025-03-{:02}\n",
            1 + i % 28
        ));
    }
    out.into_bytes()
}

/// Everything an import may write, read straight from the database.
#[derive(Debug, PartialEq)]
struct Stored {
    /// (id, value, updated_at, row version: ctid/xmin/xmax on PostgreSQL, empty on SQLite)
    fans: Vec<(i64, i64, DateTime<Utc>, String)>,
    /// (id, fan, at, value, delta)
    history: Vec<(i64, i64, DateTime<Utc>, i64, i64)>,
    /// (day, revenue)
    revenue: Vec<(NaiveDate, i64)>,
    /// (first id, fans)
    blocks: Vec<(i64, i64)>,
}

async fn stored(app: &TestApp, user: i64) -> Stored {
    macro_rules! read {
        ($pool:expr, $version:literal) => {{
            let pool = $pool;
            Stored {
                fans: sqlx::query_as(concat!(
                    "SELECT id, value_cents, updated_at, ",
                    $version,
                    " FROM fans WHERE user_id = $1 ORDER BY id"
                ))
                .bind(user)
                .fetch_all(pool)
                .await
                .unwrap(),
                history: sqlx::query_as(
                    "SELECT id, fan_id, at, value_cents, delta_cents FROM fan_value_changes
                     WHERE user_id = $1 ORDER BY id",
                )
                .bind(user)
                .fetch_all(pool)
                .await
                .unwrap(),
                revenue: sqlx::query_as(
                    "SELECT day, revenue_cents FROM revenue_days WHERE user_id = $1 ORDER BY day",
                )
                .bind(user)
                .fetch_all(pool)
                .await
                .unwrap(),
                blocks: sqlx::query_as(
                    "SELECT first_id, fans FROM fan_blocks WHERE user_id = $1 ORDER BY first_id",
                )
                .bind(user)
                .fetch_all(pool)
                .await
                .unwrap(),
            }
        }};
    }
    match &app.services().await.db {
        Db::Postgres(pool) => read!(pool, "ctid::text || '/' || xmin::text || '/' || xmax::text"),
        Db::Sqlite(pool) => read!(pool, "''"),
    }
}

/// The history, the revenue and the page index equal what the fans and their changes say.
fn check_exact(s: &Stored, label: &str) {
    let mut per_fan: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    let mut per_day: BTreeMap<NaiveDate, i64> = BTreeMap::new();
    for &(_, fan, at, value, delta) in &s.history {
        assert_ne!(delta, 0, "{label}: a history row that changes nothing");
        let (sum, last) = per_fan.entry(fan).or_default();
        *sum += delta;
        *last = value;
        assert_eq!(
            *sum, value,
            "{label}: fan {fan}'s deltas add up to each value"
        );
        *per_day.entry(at.date_naive()).or_default() += delta;
    }
    for &(id, value, _, _) in &s.fans {
        let (sum, _) = per_fan.get(&id).copied().unwrap_or_default();
        assert_eq!(
            sum, value,
            "{label}: fan {id}'s history adds up to its value"
        );
    }
    let revenue: BTreeMap<NaiveDate, i64> = s.revenue.iter().copied().collect();
    assert_eq!(
        revenue, per_day,
        "{label}: revenue per day is the history's"
    );
    // Each block counts the fans from its first id up to the next block's.
    for (i, &(first, count)) in s.blocks.iter().enumerate() {
        let next = s.blocks.get(i + 1).map_or(i64::MAX, |b| b.0);
        let fans = s.fans.iter().filter(|f| f.0 >= first && f.0 < next).count() as i64;
        assert_eq!(count, fans, "{label}: block from {first}");
    }
    let lowest = s.fans.first().map(|f| f.0).unwrap_or(i64::MAX);
    assert!(
        s.blocks.first().is_none_or(|b| b.0 <= lowest),
        "{label}: every fan is in a block"
    );
}

async fn an_imports_history_revenue_and_page_index_equal_a_direct_computation_and_a_second_import_writes_none(
    app: TestApp,
) {
    for i in 0..10 {
        app.user(1)
            .create_fan(json!({ "handle": format!("@fan{i}"), "valueCents": existing_value(i) }))
            .await;
    }
    // Another creator's fan and import: none of it is creator 1's.
    app.user(2)
        .create_fan(json!({ "handle": "@fan1", "valueCents": 77 }))
        .await;
    let other = app.user(2).import("export.csv", export()).await;
    app.user(2).wait_job(&other).await;
    let before = stored(&app, 1).await;
    assert_eq!(before.history.len(), 10);

    let job = app.user(1).import("export.csv", export()).await;
    let s = summary(&app.user(1).wait_job(&job).await).clone();
    assert_eq!(
        (&s["successfulInserts"], &s["updated"], &s["errorCount"]),
        (&json!(ROWS - 10), &json!(10), &json!(0)),
        "{s}"
    );
    let first = stored(&app, 1).await;
    check_exact(&first, "after the import");
    // One history row per value the import changed, nothing for the others.
    let changed = (0..ROWS)
        .filter(|&i| {
            let old = if i < 10 { existing_value(i) } else { 0 };
            file_value(i).is_some_and(|v| v != old)
        })
        .count();
    assert_eq!(first.history.len(), 10 + changed);
    let total = app.user(1).get_json("/api/crm/fans?limit=1").await;
    assert_eq!(total["total"], ROWS);
    // Creator 2's own figures are exact too, and untouched by creator 1's import.
    check_exact(&stored(&app, 2).await, "the other creator");

    let again = app.user(1).import("export.csv", export()).await;
    let s = summary(&app.user(1).wait_job(&again).await).clone();
    assert_eq!(
        (&s["successfulInserts"], &s["updated"], &s["unchanged"]),
        (&json!(0), &json!(0), &json!(ROWS)),
        "{s}"
    );
    // Nothing written: no fan rewritten (on PostgreSQL, not even locked: the same row
    // versions), no history row, no revenue change, no page index change.
    assert_eq!(stored(&app, 1).await, first);

    // A deleted fan's history goes with it; the revenue it brought stays in its days.
    let (gone, ..) = *first
        .fans
        .iter()
        .find(|f| f.1 != 0)
        .expect("a fan with a value");
    let answer = app.user(1).delete(&format!("/api/crm/fans/{gone}")).await;
    assert_eq!(answer.status(), StatusCode::NO_CONTENT);
    let after = stored(&app, 1).await;
    assert!(after.history.iter().all(|h| h.1 != gone));
    assert_eq!(
        after.history.len(),
        first.history.iter().filter(|h| h.1 != gone).count()
    );
    assert_eq!(after.revenue, first.revenue);
}

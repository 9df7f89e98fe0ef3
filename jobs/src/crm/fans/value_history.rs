//! A fan's value history: every change of `value_cents`, with its time and source. The rows
//! are written by the database itself (migration 0009's trigger on `fans`), in the statement
//! that changes the value, so no writer can forget one; this module reads them.

use chrono::{DateTime, Utc};

use crate::{
    db::{Db, Listed, Page, StoreError, StoreResult},
    domain::{FanId, UserId},
    on_db, text_enum,
};

text_enum! {
    /// Why a fan's value changed.
    pub enum ValueSource as "value source" {
        /// The value the fan was created with.
        Created = "created",
        /// Set by hand (`PUT /api/crm/fans/{id}`).
        Edit = "edit",
        /// Set by a CSV import.
        Import = "import",
        /// A paid message unlocked (platform event).
        Purchased = "purchased",
        Tip = "tip",
        Subscription = "subscription",
    }
}

/// One change of a fan's value.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ValueChange {
    pub at: DateTime<Utc>,
    /// The value after the change.
    pub value_cents: i64,
    /// How much it moved (negative when lowered by hand or by an import).
    pub delta_cents: i64,
    pub source: ValueSource,
}

/// How many changes a fan's own page shows.
pub const RECENT: i64 = 10;

/// `fan`'s changes, latest recorded first (an event reported late is recorded with the time it
/// happened, but after what was recorded before it, so each row's value follows the one below); 404 when `fan` is not one of `user`'s.
pub async fn list(
    db: &Db,
    user: UserId,
    fan: FanId,
    page: Page,
) -> StoreResult<Listed<ValueChange>> {
    on_db!(db, pool => {
        let owned: Option<(i64,)> = sqlx::query_as("SELECT id FROM fans WHERE id = $1 AND user_id = $2")
            .bind(fan)
            .bind(user)
            .fetch_optional(pool)
            .await?;
        if owned.is_none() {
            return Err(StoreError::NotFound("fan"));
        }
        let items = sqlx::query_as::<_, ValueChange>(
            "SELECT at, value_cents, delta_cents, source FROM fan_value_changes
             WHERE fan_id = $1 ORDER BY id DESC LIMIT $2 OFFSET $3",
        )
        .bind(fan)
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(pool)
        .await?;
        let (total,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM fan_value_changes WHERE fan_id = $1")
            .bind(fan)
            .fetch_one(pool)
            .await?;
        Ok(Listed { items, total })
    })
}

/// The [`RECENT`] latest changes of a fan known to be `user`'s.
pub async fn recent(db: &Db, fan: FanId) -> StoreResult<Vec<ValueChange>> {
    Ok(on_db!(db, pool => sqlx::query_as::<_, ValueChange>(
        "SELECT at, value_cents, delta_cents, source FROM fan_value_changes
         WHERE fan_id = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(fan)
    .bind(RECENT)
    .fetch_all(pool)
    .await)?)
}

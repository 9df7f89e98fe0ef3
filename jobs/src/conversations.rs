//! Conversations: one thread per fan, listed newest message first.

use chrono::{DateTime, Utc};

use crate::{
    db::{Db, Listed, Page, StoreError, StoreResult},
    domain::{ConversationId, FanId, Timestamp, UserId},
    on_db,
};

/// A conversation with the fan fields a conversation list shows.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Conversation {
    pub id: ConversationId,
    pub user_id: UserId,
    pub fan_id: FanId,
    pub platform: String,
    pub last_message_at: Option<DateTime<Utc>>,
    pub unread_count: i64,
    pub created_at: DateTime<Utc>,
    pub fan_name: Option<String>,
    pub fan_handle: String,
    pub fan_avatar_url: Option<String>,
}

/// The conversation-with-fan select, followed by `$tail` (kept static: sqlx audits SQL text).
macro_rules! select_view {
    ($tail:literal) => {
        concat!(
            "SELECT c.id, c.user_id, c.fan_id, c.platform, c.last_message_at, c.unread_count,
                    c.created_at, f.name AS fan_name, f.handle AS fan_handle,
                    f.avatar_url AS fan_avatar_url
             FROM conversations c JOIN fans f ON f.id = c.fan_id ",
            $tail
        )
    };
}

pub async fn get(db: &Db, user: UserId, id: ConversationId) -> StoreResult<Conversation> {
    const SQL: &str = select_view!("WHERE c.id = $1 AND c.user_id = $2");
    on_db!(db, pool => sqlx::query_as::<_, Conversation>(SQL)
        .bind(id)
        .bind(user)
        .fetch_optional(pool)
        .await)?
    .ok_or(StoreError::NotFound("conversation"))
}

pub async fn list(db: &Db, user: UserId, page: Page) -> StoreResult<Listed<Conversation>> {
    const SQL: &str = select_view!(
        "WHERE c.user_id = $1 ORDER BY c.last_message_at DESC NULLS LAST, c.id DESC
         LIMIT $2 OFFSET $3"
    );
    on_db!(db, pool => {
        let items = sqlx::query_as::<_, Conversation>(SQL)
            .bind(user)
            .bind(page.limit)
            .bind(page.offset)
            .fetch_all(pool)
            .await?;
        let (total,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM conversations WHERE user_id = $1")
            .bind(user)
            .fetch_one(pool)
            .await?;
        Ok(Listed { items, total })
    })
}

/// Creates the conversation of fan `$1` of user `$2` (at `$3`) unless it has one; inserts
/// nothing when the fan is not the user's.
pub(crate) const OPEN_SQL: &str =
    "INSERT INTO conversations (user_id, fan_id, platform, unread_count, created_at)
     SELECT user_id, id, platform, 0, $3 FROM fans WHERE id = $1 AND user_id = $2
     ON CONFLICT (fan_id) DO NOTHING";

/// Returns the fan's conversation, creating it when the fan has none; `true` when created.
pub async fn open_for_fan(db: &Db, user: UserId, fan: FanId) -> StoreResult<(Conversation, bool)> {
    let now = Timestamp::now();
    let created = on_db!(db, pool => {
        // The fan must be the caller's; the insert copies its platform.
        let inserted = sqlx::query(OPEN_SQL)
        .bind(fan)
        .bind(user)
        .bind(now)
        .execute(pool)
        .await?;
        inserted.rows_affected() == 1
    });
    const SQL: &str = select_view!("WHERE c.fan_id = $1 AND c.user_id = $2");
    let conversation = on_db!(db, pool => sqlx::query_as::<_, Conversation>(SQL)
        .bind(fan)
        .bind(user)
        .fetch_optional(pool)
        .await)?
    .ok_or(StoreError::NotFound("fan"))?;
    Ok((conversation, created))
}

/// Resets the unread counter (the creator has read the thread).
pub async fn mark_read(db: &Db, user: UserId, id: ConversationId) -> StoreResult<Conversation> {
    let done = on_db!(db, pool => sqlx::query(
        "UPDATE conversations SET unread_count = 0 WHERE id = $1 AND user_id = $2",
    )
    .bind(id)
    .bind(user)
    .execute(pool)
    .await
    .map(|r| r.rows_affected()))?;
    if done == 0 {
        return Err(StoreError::NotFound("conversation"));
    }
    get(db, user, id).await
}

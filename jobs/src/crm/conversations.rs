//! Conversations: one thread per fan, listed newest message first. The only module that
//! writes `conversations`; what messages change of a thread (unread count, last message
//! time) goes through the transaction functions here.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::{
    db::{Db, Listed, Page, StoreError, StoreResult, Tx},
    domain::{ConversationId, FanId, Platform, Timestamp, UserId},
    on_db, on_tx,
};

/// A conversation with the fan fields a conversation list shows.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Conversation {
    pub id: ConversationId,
    pub user_id: UserId,
    pub fan_id: FanId,
    pub platform: Platform,
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
const OPEN_SQL: &str =
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

/// The fan of conversation `id`, when it is `user`'s (read in `tx`).
pub async fn fan_of(tx: &mut Tx, user: UserId, id: ConversationId) -> sqlx::Result<Option<FanId>> {
    let fan: Option<(FanId,)> = on_tx!(tx, conn => sqlx::query_as(
        "SELECT fan_id FROM conversations WHERE id = $1 AND user_id = $2",
    )
    .bind(id)
    .bind(user)
    .fetch_optional(&mut **conn)
    .await)?;
    Ok(fan.map(|(f,)| f))
}

/// The fans of conversations `ids` that are `user`'s, read in `tx`: `(conversation, fan)`.
pub async fn fans_of(
    tx: &mut Tx,
    user: UserId,
    ids: &[ConversationId],
) -> sqlx::Result<Vec<(ConversationId, FanId)>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    on_tx!(tx, conn => {
        let mut q = sqlx::QueryBuilder::new("SELECT id, fan_id FROM conversations WHERE user_id = ");
        q.push_bind(user).push(" AND id IN (");
        crate::db::push_binds(&mut q, ids.iter().copied());
        q.push(")");
        q.build_query_as().fetch_all(&mut **conn).await
    })
}

/// For messages written at `at` to each `(user, fan)` of `pairs` (each once): opens each fan's
/// conversation when it has none and moves its `last_message_at` forward, in one statement.
/// Returns the conversation of each pair whose fan is the user's; the others are left out.
pub async fn touch_for_outbound(
    tx: &mut Tx,
    pairs: &[(UserId, FanId)],
    at: Timestamp,
) -> sqlx::Result<HashMap<(UserId, FanId), ConversationId>> {
    if pairs.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(ConversationId, UserId, FanId)> = on_tx!(tx, conn => {
        let mut q = sqlx::QueryBuilder::new(OPEN_FOR_OUTBOUND);
        q.push_bind(at).push(", ").push_bind(at);
        q.push(" FROM fans f WHERE (f.id, f.user_id) IN (VALUES ");
        let mut list = q.separated(", ");
        for (user, fan) in pairs {
            list.push("(")
                .push_bind_unseparated(*fan)
                .push_unseparated(", ")
                .push_bind_unseparated(*user)
                .push_unseparated(")");
        }
        q.push(") ").push(MOVE);
        q.build_query_as().fetch_all(&mut **conn).await?
    });
    Ok(rows
        .into_iter()
        .map(|(id, user, fan)| ((user, fan), id))
        .collect())
}

/// [`touch_for_outbound`]'s insert, up to its time.
const OPEN_FOR_OUTBOUND: &str = "INSERT INTO conversations AS c (user_id, fan_id, platform, \
     unread_count, created_at, last_message_at) SELECT f.user_id, f.id, f.platform, 0, ";

/// Rows are written in fan order, so two transactions touching the same conversations take
/// their locks in the same order; `last_message_at` only moves forward.
const MOVE: &str = "ORDER BY f.id ON CONFLICT (fan_id) DO UPDATE SET last_message_at = CASE
         WHEN c.last_message_at IS NULL OR c.last_message_at < excluded.last_message_at
         THEN excluded.last_message_at ELSE c.last_message_at END
     RETURNING id, user_id, fan_id";

/// [`touch_for_outbound`] as one part of a statement that stores other tables' rows in the
/// same round trip (`conv AS (…)` in its `WITH`; the PostgreSQL send path), for the pairs of
/// relation `from` (columns `user_id, fan_id`) at `at`. Returns `id, user_id, fan_id` of each
/// conversation whose fan is the user's.
pub fn touch_for_outbound_sql(from: &str, at: &str) -> String {
    format!(
        "{OPEN_FOR_OUTBOUND}{at}, {at} FROM fans f \
         WHERE (f.id, f.user_id) IN (SELECT fan_id, user_id FROM {from}) {MOVE}"
    )
}

/// [`fans_of`] as a query of a larger statement: the fan of `conversation` when it is
/// `user`'s (columns or parameters).
pub fn fan_of_sql(conversation: &str, user: &str) -> String {
    format!(
        "SELECT c.fan_id FROM conversations c WHERE c.id = {conversation} AND c.user_id = {user}"
    )
}

/// For a new inbound message received at `at`: one more unread, and `last_message_at` moves
/// forward.
pub async fn touch_for_inbound(tx: &mut Tx, id: ConversationId, at: Timestamp) -> sqlx::Result<()> {
    on_tx!(tx, conn => sqlx::query(
        "UPDATE conversations SET unread_count = unread_count + 1,
             last_message_at = CASE WHEN last_message_at IS NULL OR last_message_at < $2
                                    THEN $2 ELSE last_message_at END
         WHERE id = $1",
    )
    .bind(id)
    .bind(at)
    .execute(&mut **conn)
    .await
    .map(|_| ()))?;
    Ok(())
}

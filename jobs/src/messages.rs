//! Messages of a conversation: inbound ones recorded by a platform sync, outbound ones queued
//! for delivery.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;

use crate::{
    db::{Db, Listed, Page, StoreError, StoreResult},
    domain::{
        CampaignId, Cents, ConversationId, FanId, HttpUrl, MessageId, Text, Timestamp, UserId,
    },
    on_db,
};

pub const TEXT_MAX: usize = 5_000;
pub const ATTACHMENTS_MAX: usize = 20;
pub const EXTERNAL_ID_MAX: usize = 200;

/// A media attachment of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "type")]
    pub kind: String,
    pub url: String,
}

/// A message as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Message {
    pub id: MessageId,
    pub user_id: UserId,
    pub conversation_id: ConversationId,
    pub fan_id: FanId,
    pub direction: String,
    pub text: String,
    pub price_cents: i64,
    pub attachments: Json<Vec<Attachment>>,
    pub status: String,
    pub error: Option<String>,
    pub attempts: i64,
    pub campaign_id: Option<CampaignId>,
    pub external_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

/// A parsed attachment: its kind is a short word, its URL http(s).
#[derive(Debug, Clone)]
pub struct NewAttachment {
    pub kind: String,
    pub url: HttpUrl,
}

/// A message the fan sent, as a platform sync reports it.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub text: Text,
    pub price_cents: Cents,
    pub attachments: Vec<NewAttachment>,
    /// The platform's id of the message: recording the same id twice records it once.
    pub external_id: Option<String>,
    pub received_at: DateTime<Utc>,
}

pub async fn list(
    db: &Db,
    user: UserId,
    conversation: ConversationId,
    page: Page,
) -> StoreResult<Listed<Message>> {
    on_db!(db, pool => {
        let owned: Option<(ConversationId,)> =
            sqlx::query_as("SELECT id FROM conversations WHERE id = $1 AND user_id = $2")
                .bind(conversation)
                .bind(user)
                .fetch_optional(pool)
                .await?;
        if owned.is_none() {
            return Err(StoreError::NotFound("conversation"));
        }
        let items = sqlx::query_as::<_, Message>(
            "SELECT * FROM messages WHERE conversation_id = $1 AND user_id = $2
             ORDER BY created_at, id LIMIT $3 OFFSET $4",
        )
        .bind(conversation)
        .bind(user)
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(pool)
        .await?;
        let (total,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM messages WHERE conversation_id = $1 AND user_id = $2")
                .bind(conversation)
                .bind(user)
                .fetch_one(pool)
                .await?;
        Ok(Listed { items, total })
    })
}

/// Records an inbound message, bumps the unread count and moves `last_message_at` forward.
/// Returns the message and `true` when it is new (a replayed `external_id` changes nothing).
pub async fn record_inbound(
    db: &Db,
    user: UserId,
    conversation: ConversationId,
    msg: Inbound,
) -> StoreResult<(Message, bool)> {
    let attachments: Vec<Attachment> = msg
        .attachments
        .iter()
        .map(|a| Attachment {
            kind: a.kind.clone(),
            url: a.url.as_str().to_owned(),
        })
        .collect();
    let received = Timestamp(msg.received_at);
    on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        let fan: Option<(FanId,)> =
            sqlx::query_as("SELECT fan_id FROM conversations WHERE id = $1 AND user_id = $2")
                .bind(conversation)
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((fan,)) = fan else {
            return Err(StoreError::NotFound("conversation"));
        };
        let inserted = sqlx::query_as::<_, Message>(
            "INSERT INTO messages (user_id, conversation_id, fan_id, direction, text, price_cents,
                                   attachments, status, attempts, external_id, created_at, sent_at)
             VALUES ($1, $2, $3, 'in', $4, $5, $6, 'sent', 0, $7, $8, $8)
             ON CONFLICT (conversation_id, external_id) WHERE external_id IS NOT NULL DO NOTHING
             RETURNING *",
        )
        .bind(user)
        .bind(conversation)
        .bind(fan)
        .bind(msg.text.as_str())
        .bind(msg.price_cents.get())
        .bind(Json(&attachments))
        .bind(msg.external_id.as_deref())
        .bind(received)
        .fetch_optional(&mut *tx)
        .await?;
        let result = match inserted {
            Some(message) => {
                sqlx::query(
                    "UPDATE conversations SET unread_count = unread_count + 1,
                         last_message_at = CASE WHEN last_message_at IS NULL OR last_message_at < $2
                                                THEN $2 ELSE last_message_at END
                     WHERE id = $1",
                )
                .bind(conversation)
                .bind(received)
                .execute(&mut *tx)
                .await?;
                (message, true)
            }
            None => {
                let existing = sqlx::query_as::<_, Message>(
                    "SELECT * FROM messages WHERE conversation_id = $1 AND external_id = $2",
                )
                .bind(conversation)
                .bind(msg.external_id.as_deref())
                .fetch_one(&mut *tx)
                .await?;
                (existing, false)
            }
        };
        tx.commit().await?;
        Ok(result)
    })
}

/// Priority of an outbound message: 1 (lowest) to 10, default 5.
pub const PRIORITY_DEFAULT: i64 = 5;

/// An outbound message, parsed: what to send, not yet to whom.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub text: Text,
    pub price_cents: Cents,
    pub attachments: Vec<NewAttachment>,
    pub priority: i64,
}

/// Inserts a queued outbound message to `$fan` in the transaction `$conn`, opening the fan's
/// conversation when it has none and moving its `last_message_at`. `None` when the fan is
/// not the user's. Written once for both SQL backends (a macro: each expands it with its own
/// connection type).
macro_rules! insert_outbound {
    ($conn:expr, $user:expr, $fan:expr, $out:expr, $job:expr, $campaign:expr, $now:expr) => {{
        let (user, fan, out, job, campaign, now): (
            $crate::domain::UserId,
            $crate::domain::FanId,
            &$crate::messages::Outgoing,
            &$crate::jobs::JobId,
            Option<$crate::domain::CampaignId>,
            $crate::domain::Timestamp,
        ) = ($user, $fan, $out, $job, $campaign, $now);
        sqlx::query($crate::conversations::OPEN_SQL)
        .bind(fan)
        .bind(user)
        .bind(now)
        .execute(&mut *$conn)
        .await?;
        let conversation: Option<($crate::domain::ConversationId,)> = sqlx::query_as(
            "UPDATE conversations SET last_message_at = CASE
                 WHEN last_message_at IS NULL OR last_message_at < $3 THEN $3 ELSE last_message_at END
             WHERE fan_id = $1 AND user_id = $2 RETURNING id",
        )
        .bind(fan)
        .bind(user)
        .bind(now)
        .fetch_optional(&mut *$conn)
        .await?;
        match conversation {
            None => None,
            Some((conversation,)) => {
                let attachments: Vec<$crate::messages::Attachment> = out
                    .attachments
                    .iter()
                    .map(|a| $crate::messages::Attachment { kind: a.kind.clone(), url: a.url.as_str().to_owned() })
                    .collect();
                let message = sqlx::query_as::<_, $crate::messages::Message>(
                    "INSERT INTO messages (user_id, conversation_id, fan_id, direction, text, price_cents,
                                           attachments, status, attempts, campaign_id, created_at, priority, job_id)
                     VALUES ($1, $2, $3, 'out', $4, $5, $6, 'queued', 0, $7, $8, $9, $10)
                     RETURNING *",
                )
                .bind(user)
                .bind(conversation)
                .bind(fan)
                .bind(out.text.as_str())
                .bind(out.price_cents.get())
                .bind(sqlx::types::Json(&attachments))
                .bind(campaign)
                .bind(now)
                .bind(out.priority)
                .bind(&job.0)
                .fetch_one(&mut *$conn)
                .await?;
                Some(message)
            }
        }
    }};
}
pub(crate) use insert_outbound;

/// Where a single message goes: to a fan (the send route) or into a conversation.
#[derive(Debug, Clone, Copy)]
pub enum Recipient {
    Fan(FanId),
    Conversation(ConversationId),
}

/// Queues one outbound message and its `send_message` job in one transaction.
pub async fn queue_single(
    db: &Db,
    queue: &crate::jobs::JobQueue,
    user: UserId,
    to: Recipient,
    out: &Outgoing,
) -> Result<Message, crate::jobs::queue::EnqueueError> {
    use crate::jobs::{JobId, JobKind, JobTx, NewJob, queue::EnqueueError};
    let now = Timestamp::now();
    let job = JobId::generate();
    let message = on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        let fan = match to {
            Recipient::Fan(fan) => Some(fan),
            Recipient::Conversation(c) => sqlx::query_as::<_, (FanId,)>(
                "SELECT fan_id FROM conversations WHERE id = $1 AND user_id = $2",
            )
            .bind(c)
            .bind(user)
            .fetch_optional(&mut *tx)
            .await?
            .map(|(f,)| f),
        };
        let Some(fan) = fan else {
            return Err(EnqueueError::NotFound(match to {
                Recipient::Fan(_) => "fan",
                Recipient::Conversation(_) => "conversation",
            }));
        };
        let Some(message) = insert_outbound!(&mut *tx, user, fan, out, &job, None, now) else {
            return Err(EnqueueError::NotFound("fan"));
        };
        let new_job = NewJob {
            id: job.clone(),
            user,
            kind: JobKind::SendMessage,
            payload: serde_json::json!({ "messageIds": [message.id.0] }),
        };
        tx.enqueue(queue, &new_job).await?;
        tx.commit().await?;
        queue.after_commit(db, &new_job).await;
        message
    });
    Ok(message)
}

/// Outbound messages of `user` not yet final: the creator's delivery backlog.
pub async fn backlog(db: &Db, user: UserId) -> StoreResult<i64> {
    let (n,): (i64,) = on_db!(db, pool => sqlx::query_as(
        "SELECT COUNT(*) FROM messages WHERE user_id = $1 AND direction = 'out' AND status IN ('queued', 'sending')",
    )
    .bind(user)
    .fetch_one(pool)
    .await)?;
    Ok(n)
}

/// When the creator's last outbound message was sent or failed.
pub async fn last_processed_at(db: &Db, user: UserId) -> StoreResult<Option<DateTime<Utc>>> {
    let (at,): (Option<DateTime<Utc>>,) = on_db!(db, pool => sqlx::query_as(
        "SELECT MAX(sent_at) FROM messages WHERE user_id = $1 AND direction = 'out' AND status IN ('sent', 'failed')",
    )
    .bind(user)
    .fetch_one(pool)
    .await)?;
    Ok(at)
}

//! Campaigns: one message to many fans, sent as one `bulk_send` job.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::types::Json;

use crate::{
    db::{Db, Listed, Page, StoreError, StoreResult},
    domain::{CampaignId, FanId, Line, Timestamp, UserId},
    jobs::{JobId, JobKind, JobQueue, JobTx, NewJob, queue::EnqueueError},
    messages::{self, Outgoing},
    on_db,
};

/// At most this many recipients a campaign (SPEC section 5).
pub const MAX_RECIPIENTS: usize = 100;
pub const NAME_MAX: usize = 200;

/// A campaign as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Campaign {
    pub id: CampaignId,
    pub user_id: UserId,
    pub name: String,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub status: String,
    pub template: Json<Value>,
    pub target_audience: Json<Value>,
    pub metrics: Json<Value>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// Message counts of a campaign by delivery status, read from its messages (so they are live).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    pub total: i64,
    pub queued: i64,
    pub sending: i64,
    pub sent: i64,
    pub failed: i64,
}

/// A campaign to create, already parsed.
#[derive(Debug, Clone)]
pub struct NewBulk {
    pub name: Line,
    /// Distinct fan ids, at most [`MAX_RECIPIENTS`].
    pub recipients: Vec<FanId>,
    pub message: Outgoing,
}

#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    /// Recipients that are not the caller's fans; nothing was created.
    #[error("recipients not found among your fans: {0:?}")]
    NotOwned(Vec<i64>),
    #[error(transparent)]
    Enqueue(#[from] EnqueueError),
}

impl From<sqlx::Error> for BulkError {
    fn from(e: sqlx::Error) -> Self {
        BulkError::Enqueue(EnqueueError::Sql(e))
    }
}

/// The created campaign and its messages' ids.
pub struct Created {
    pub campaign: Campaign,
    pub message_ids: Vec<i64>,
}

/// Creates the campaign, one queued message per recipient (opening conversations where
/// needed) and the `bulk_send` job, all in one transaction.
pub async fn create_bulk(
    db: &Db,
    queue: &JobQueue,
    user: UserId,
    bulk: NewBulk,
) -> Result<Created, BulkError> {
    let now = Timestamp::now();
    let job = JobId::generate();
    let ids: Vec<i64> = bulk.recipients.iter().map(|f| f.0).collect();
    let template = json!({
        "content": bulk.message.text.as_str(),
        "mediaUrls": bulk.message.attachments.iter().map(|a| a.url.as_str()).collect::<Vec<_>>(),
        "priceCents": bulk.message.price_cents.get(),
    });
    let audience = json!({ "recipientIds": ids });
    let metrics = json!({ "sent": 0, "delivered": 0, "failed": 0, "opened": 0, "clicked": 0, "revenueCents": 0 });
    on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        let mut q = sqlx::QueryBuilder::new("SELECT id FROM fans WHERE user_id = ");
        q.push_bind(user).push(" AND id IN (");
        let mut list = q.separated(", ");
        for id in &ids {
            list.push_bind(*id);
        }
        q.push(")");
        let owned: Vec<i64> = q
            .build_query_as::<(i64,)>()
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|(id,)| id)
            .collect();
        let missing: Vec<i64> = ids.iter().copied().filter(|id| !owned.contains(id)).collect();
        if !missing.is_empty() {
            return Err(BulkError::NotOwned(missing));
        }
        let campaign = sqlx::query_as::<_, Campaign>(
            "INSERT INTO campaigns (user_id, name, type, status, template, target_audience, metrics,
                                    created_at, started_at)
             VALUES ($1, $2, 'bulk_message', 'active', $3, $4, $5, $6, $6)
             RETURNING *",
        )
        .bind(user)
        .bind(bulk.name.as_str())
        .bind(Json(&template))
        .bind(Json(&audience))
        .bind(Json(&metrics))
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let mut message_ids = Vec::with_capacity(ids.len());
        for fan in &bulk.recipients {
            let message = messages::insert_outbound!(&mut *tx, user, *fan, &bulk.message, &job, Some(campaign.id), now)
                .ok_or(BulkError::NotOwned(vec![fan.0]))?;
            message_ids.push(message.id.0);
        }
        let new_job = NewJob {
            id: job.clone(),
            user,
            kind: JobKind::BulkSend,
            payload: json!({ "campaignId": campaign.id.0, "messageIds": message_ids }),
        };
        tx.enqueue(queue, &new_job).await?;
        tx.commit().await?;
        queue.after_commit(db, &new_job).await;
        Ok(Created { campaign, message_ids })
    })
}

pub async fn get(db: &Db, user: UserId, id: CampaignId) -> StoreResult<Campaign> {
    on_db!(db, pool => sqlx::query_as::<_, Campaign>("SELECT * FROM campaigns WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user)
        .fetch_optional(pool)
        .await)?
    .ok_or(StoreError::NotFound("campaign"))
}

pub async fn list(db: &Db, user: UserId, page: Page) -> StoreResult<Listed<Campaign>> {
    on_db!(db, pool => {
        let items = sqlx::query_as::<_, Campaign>(
            "SELECT * FROM campaigns WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3",
        )
        .bind(user)
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(pool)
        .await?;
        let (total,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM campaigns WHERE user_id = $1")
            .bind(user)
            .fetch_one(pool)
            .await?;
        Ok(Listed { items, total })
    })
}

/// Live counts of one campaign's messages.
pub async fn counts(db: &Db, id: CampaignId) -> StoreResult<Counts> {
    let rows: Vec<(String, i64)> = on_db!(db, pool => sqlx::query_as(
        "SELECT status, COUNT(*) FROM messages WHERE campaign_id = $1 GROUP BY status",
    )
    .bind(id)
    .fetch_all(pool)
    .await)?;
    let mut c = Counts::default();
    for (status, n) in rows {
        c.total += n;
        match status.as_str() {
            "queued" => c.queued = n,
            "sending" => c.sending = n,
            "sent" => c.sent = n,
            "failed" => c.failed = n,
            _ => {}
        }
    }
    Ok(c)
}

/// Brings a campaign's stored metrics in line with its messages, and marks it `completed`
/// once every message is final (sent or failed).
pub async fn refresh(db: &Db, id: CampaignId) -> StoreResult<()> {
    let c = counts(db, id).await?;
    let now = Timestamp::now();
    let done = c.queued == 0 && c.sending == 0;
    // Only what the messages say is rewritten; delivered/opened/clicked/revenue are reported
    // by the platform and kept.
    let (Json(mut metrics),): (Json<Value>,) = on_db!(db, pool => sqlx::query_as("SELECT metrics FROM campaigns WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await)?;
    metrics["sent"] = json!(c.sent);
    metrics["failed"] = json!(c.failed);
    on_db!(db, pool => sqlx::query(
        "UPDATE campaigns SET
             metrics = $2,
             status = CASE WHEN $3 AND status = 'active' THEN 'completed' ELSE status END,
             completed_at = CASE WHEN $3 AND completed_at IS NULL THEN $4 ELSE completed_at END
         WHERE id = $1",
    )
    .bind(id)
    .bind(Json(&metrics))
    .bind(done)
    .bind(now)
    .execute(pool)
    .await
    .map(|_| ()))?;
    Ok(())
}

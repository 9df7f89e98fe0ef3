//! Campaigns: one message to many fans. The only module that writes `campaigns`; its sent
//! and failed metrics are counted from the campaign's messages.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::types::Json;

use super::messages::{self, Outgoing, StatusCounts};
use crate::{
    db::{Db, Listed, Page, StoreError, StoreResult, Tx},
    domain::{CampaignId, FanId, Line, Timestamp, UserId},
    on_db, on_tx, text_enum,
};

/// At most this many recipients a campaign (SPEC section 5).
pub const MAX_RECIPIENTS: usize = 100;
pub const NAME_MAX: usize = 200;

text_enum! {
    pub enum CampaignStatus as "campaign status" {
        Draft = "draft",
        Scheduled = "scheduled",
        /// Its messages are being delivered.
        Active = "active",
        Paused = "paused",
        /// Every message is sent or failed.
        Completed = "completed",
    }
}

text_enum! {
    pub enum CampaignType as "campaign type" {
        BulkMessage = "bulk_message",
        Welcome = "welcome",
        ReEngagement = "re-engagement",
        Ppv = "ppv",
        Custom = "custom",
    }
}

/// A campaign as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Campaign {
    pub id: CampaignId,
    pub user_id: UserId,
    pub name: String,
    #[sqlx(rename = "type")]
    pub kind: CampaignType,
    pub status: CampaignStatus,
    pub template: Json<Value>,
    pub target_audience: Json<Value>,
    pub metrics: Json<Value>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// A campaign to create, already parsed.
#[derive(Debug, Clone)]
pub struct NewBulk {
    pub name: Line,
    /// Distinct fan ids, at most [`MAX_RECIPIENTS`].
    pub recipients: Vec<FanId>,
    pub message: Outgoing,
}

/// New → `active`: stores a bulk campaign in `tx` (its messages are stored beside it by the
/// caller).
pub async fn insert_active(
    tx: &mut Tx,
    user: UserId,
    bulk: &NewBulk,
    now: Timestamp,
) -> sqlx::Result<Campaign> {
    let ids: Vec<i64> = bulk.recipients.iter().map(|f| f.0).collect();
    let template = json!({
        "content": bulk.message.text.as_str(),
        "mediaUrls": bulk.message.attachments.iter().map(|a| a.url.as_str()).collect::<Vec<_>>(),
        "priceCents": bulk.message.price_cents.get(),
    });
    let audience = json!({ "recipientIds": ids });
    let metrics = json!({ "sent": 0, "delivered": 0, "failed": 0, "opened": 0, "clicked": 0, "revenueCents": 0 });
    on_tx!(tx, conn => sqlx::query_as::<_, Campaign>(
        "INSERT INTO campaigns (user_id, name, type, status, template, target_audience, metrics,
                                created_at, started_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
         RETURNING *",
    )
    .bind(user)
    .bind(bulk.name.as_str())
    .bind(CampaignType::BulkMessage)
    .bind(CampaignStatus::Active)
    .bind(Json(&template))
    .bind(Json(&audience))
    .bind(Json(&metrics))
    .bind(now)
    .fetch_one(&mut **conn)
    .await)
}

pub async fn get(db: &Db, user: UserId, id: CampaignId) -> StoreResult<Campaign> {
    on_db!(db, pool => sqlx::query_as::<_, Campaign>("SELECT * FROM campaigns WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user)
        .fetch_optional(pool)
        .await)?
    .ok_or(StoreError::NotFound("campaign"))
}

/// Whether `id` is one of `user`'s campaigns (in `tx`).
pub async fn owned(tx: &mut Tx, user: UserId, id: CampaignId) -> StoreResult<bool> {
    let row: Option<(CampaignId,)> = on_tx!(tx, conn => sqlx::query_as(
        "SELECT id FROM campaigns WHERE id = $1 AND user_id = $2",
    )
    .bind(id)
    .bind(user)
    .fetch_optional(&mut **conn)
    .await)?;
    Ok(row.is_some())
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
pub async fn counts(db: &Db, id: CampaignId) -> StoreResult<StatusCounts> {
    messages::counts_of_campaign(db, id).await
}

/// Brings a campaign's stored metrics in line with its messages, and marks it `completed`
/// once every message is final (sent or failed). One transaction holding the campaign's row:
/// two dispatchers finishing messages of one campaign at once cannot write counts out of order.
pub async fn refresh(db: &Db, id: CampaignId) -> StoreResult<()> {
    let now = Timestamp::now();
    let mut tx = db.begin().await?;
    let Some(mut metrics) = locked_metrics(&mut tx, id).await? else {
        return Err(StoreError::NotFound("campaign"));
    };
    let c = messages::counts_of_campaign_in(&mut tx, id).await?;
    let done = c.queued == 0 && c.sending == 0;
    // Only what the messages say is rewritten; delivered/opened/clicked/revenue are reported
    // by the platform and kept.
    metrics["sent"] = json!(c.sent);
    metrics["failed"] = json!(c.failed);
    on_tx!(&mut tx, conn => sqlx::query(
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
    .execute(&mut **conn)
    .await
    .map(|_| ()))?;
    tx.commit().await?;
    Ok(())
}

/// Back to `active` in `tx` (failed recipients are being retried): it completes again once
/// they are final.
pub async fn reopen(tx: &mut Tx, id: CampaignId) -> StoreResult<()> {
    on_tx!(tx, conn => sqlx::query(
        "UPDATE campaigns SET status = 'active', completed_at = NULL
         WHERE id = $1 AND status = 'completed'",
    )
    .bind(id)
    .execute(&mut **conn)
    .await
    .map(|_| ()))?;
    Ok(())
}

/// The campaign's metrics, its row locked until `tx` ends (on SQLite the transaction holds the
/// write lock already: [`Db::begin`]), so that two writers of its figures take turns.
async fn locked_metrics(tx: &mut Tx, id: CampaignId) -> sqlx::Result<Option<Value>> {
    let lock = match tx {
        Tx::Postgres(_) => "SELECT metrics FROM campaigns WHERE id = $1 FOR UPDATE",
        Tx::Sqlite(_) => "SELECT metrics FROM campaigns WHERE id = $1",
    };
    let row: Option<(Json<Value>,)> = on_tx!(tx, conn => sqlx::query_as(lock)
        .bind(id)
        .fetch_optional(&mut **conn)
        .await)?;
    Ok(row.map(|(Json(metrics),)| metrics))
}

/// Rewrites what the platform reported about `ids` (delivered, opened, revenueCents) from their
/// messages, in `tx`, the row locked as [`refresh`] locks it, so neither writer's figures
/// overwrite the other's.
pub async fn refresh_engagement(tx: &mut Tx, ids: &[CampaignId]) -> StoreResult<()> {
    let mut ids = ids.to_vec();
    ids.sort();
    ids.dedup();
    for id in ids {
        let Some(mut metrics) = locked_metrics(tx, id).await? else {
            continue;
        };
        let e = messages::engagement_of_campaign_in(tx, id).await?;
        metrics["delivered"] = json!(e.delivered);
        metrics["opened"] = json!(e.opened);
        metrics["revenueCents"] = json!(e.revenue_cents);
        on_tx!(tx, conn => sqlx::query("UPDATE campaigns SET metrics = $2 WHERE id = $1")
            .bind(id)
            .bind(Json(&metrics))
            .execute(&mut **conn)
            .await
            .map(|_| ()))?;
    }
    Ok(())
}

/// `user`'s campaigns created in `[since, until)`, newest first, at most `limit`.
pub async fn started_between(
    db: &Db,
    user: UserId,
    since: Timestamp,
    until: Timestamp,
    limit: i64,
) -> StoreResult<Vec<Campaign>> {
    Ok(on_db!(db, pool => sqlx::query_as::<_, Campaign>(
        "SELECT * FROM campaigns WHERE user_id = $1 AND created_at >= $2 AND created_at < $3
         ORDER BY created_at DESC, id DESC LIMIT $4",
    )
    .bind(user)
    .bind(since)
    .bind(until)
    .bind(limit)
    .fetch_all(pool)
    .await)?)
}

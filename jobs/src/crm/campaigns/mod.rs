//! Campaigns: one message to many fans. The only module that writes `campaigns`; its sent
//! and failed metrics are counted from the campaign's messages.
//!
//! Two kinds: the seeds' bulk campaign (at most [`MAX_RECIPIENTS`] fans by id, every message
//! stored with it), and a campaign to an audience ([`NewCampaign`]): a segment, a filter or
//! fans by id, resolved when it starts into a run's recipients ([`runs`], [`recipients`]),
//! whose messages are queued a few at a time, exclusions checked just before each.

pub mod recipients;
pub mod runs;

use chrono::{DateTime, Timelike, Utc};
use serde_json::{Value, json};
use sqlx::types::Json;

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{
    messages::{self, Outgoing, StatusCounts},
    segments::Filter,
};
use crate::{
    db::{Db, Listed, Page, StoreError, StoreResult, Tx},
    domain::{CampaignId, FanId, Line, ParseError, SegmentId, Timestamp, UserId},
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
        /// Every message is sent or failed (every recipient sent, failed or excluded).
        Completed = "completed",
        /// Stopped for good: the recipients not yet sent are `cancelled`.
        Cancelled = "cancelled",
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
    /// A campaign to an audience: what is re-checked before each message is queued.
    pub exclude: Option<Json<Exclude>>,
    /// When a scheduled campaign starts; a recurring one's next tick.
    pub starts_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
    /// A recurring campaign's schedule (five fields, minute first), read in `timezone`.
    pub cron: Option<String>,
    pub timezone: Option<String>,
}

impl Campaign {
    /// Whether it was sent to an audience (it has runs), not to the seeds' list of ids.
    pub fn has_audience(&self) -> bool {
        self.exclude.is_some()
    }
}

/// Who a campaign to an audience is for, resolved when it starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Audience {
    /// The fans of a saved segment, as its filter reads when the campaign starts.
    SegmentId(SegmentId),
    /// The fans a filter matches when the campaign starts.
    Filter(Box<Filter>),
    /// These fans.
    RecipientIds(Vec<FanId>),
}

/// Fans skipped when their message's turn comes (checked just before it is queued).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Exclude {
    /// The fans of this segment, as it reads then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment_id: Option<SegmentId>,
    /// Fans the creator messaged within these hours.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messaged_within_hours: Option<u32>,
    /// Fans with inbound messages not yet read.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unread_inbound: bool,
    /// Fans who bought a message of this campaign.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bought_campaign_id: Option<CampaignId>,
}

/// A campaign to an audience, already parsed.
#[derive(Debug, Clone)]
pub struct NewCampaign {
    pub name: Line,
    pub message: Outgoing,
    pub audience: Audience,
    pub exclude: Exclude,
    /// Starts then (`scheduled` until); `None`: now.
    pub starts_at: Option<Timestamp>,
    /// Recurs on this schedule, each tick a run of its own (from `starts_at` on, if given).
    pub recurring: Option<Recurring>,
}

/// A recurring campaign's schedule: a cron expression of five fields (minute, hour, day of
/// month, month, day of week) read in an IANA time zone.
#[derive(Debug, Clone)]
pub struct Recurring {
    expr: String,
    schedule: cron::Schedule,
    timezone: chrono_tz::Tz,
}

impl Recurring {
    /// Parses `expr` (five fields) in `timezone` (IANA, e.g. `Europe/Paris`; `UTC` when none).
    pub fn parse(expr: &str, timezone: Option<&str>) -> Result<Recurring, ParseError> {
        let fields = expr.split_whitespace().count();
        if fields != 5 {
            return Err(ParseError(format!(
                "a cron expression has five fields (minute hour day-of-month month day-of-week); \
                 this one has {fields}"
            )));
        }
        let schedule = cron::Schedule::from_str(&format!("0 {}", expr.trim()))
            .map_err(|e| ParseError(format!("not a cron expression: {e}")))?;
        let timezone = match timezone {
            None => chrono_tz::UTC,
            Some(tz) => tz
                .parse()
                .map_err(|_| ParseError(format!("{tz:?} is not an IANA time zone")))?,
        };
        Ok(Recurring {
            expr: expr.split_whitespace().collect::<Vec<_>>().join(" "),
            schedule,
            timezone,
        })
    }

    /// Reads a stored schedule back.
    pub fn of(c: &Campaign) -> Option<Recurring> {
        Recurring::parse(c.cron.as_deref()?, c.timezone.as_deref()).ok()
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    pub fn timezone(&self) -> &str {
        self.timezone.name()
    }

    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<Timestamp> {
        self.schedule
            .after(&t.with_timezone(&self.timezone))
            .next()
            .map(|at| Timestamp(at.with_timezone(&Utc)))
    }
}

/// Stores a campaign to an audience in `tx`: `scheduled` when it starts later, else `active`
/// (the caller starts its run in the same transaction).
pub async fn insert(
    tx: &mut Tx,
    user: UserId,
    new: &NewCampaign,
    now: Timestamp,
) -> StoreResult<Campaign> {
    let later = new.starts_at.filter(|at| at.0 > now.0);
    // A recurring campaign waits for its first tick at or after its start: ticks fall on
    // whole seconds, so the tick strictly after the second before the start's (rounded up)
    // second. (Not the second before the start itself: a start at 10:00:00.2 would take the
    // 10:00:00 tick, already past.)
    let later = match &new.recurring {
        Some(r) => {
            let from = later.unwrap_or(now).0;
            let whole = from.with_nanosecond(0).unwrap_or(from);
            let up = if whole < from {
                whole + chrono::TimeDelta::seconds(1)
            } else {
                whole
            };
            r.next_after(up - chrono::TimeDelta::seconds(1))
        }
        None => later,
    };
    let (status, started) = match later {
        Some(_) => (CampaignStatus::Scheduled, None),
        None => (CampaignStatus::Active, Some(now)),
    };
    let metrics = json!({ "delivered": 0, "opened": 0, "clicked": 0, "revenueCents": 0 });
    Ok(on_tx!(tx, conn => sqlx::query_as::<_, Campaign>(
        "INSERT INTO campaigns (user_id, name, type, status, template, target_audience, metrics,
                                created_at, started_at, exclude, starts_at, cron, timezone)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         RETURNING *",
    )
    .bind(user)
    .bind(new.name.as_str())
    .bind(CampaignType::BulkMessage)
    .bind(status)
    .bind(Json(new.message.template()))
    .bind(Json(&new.audience))
    .bind(Json(&metrics))
    .bind(now)
    .bind(started)
    .bind(Json(&new.exclude))
    .bind(later)
    .bind(new.recurring.as_ref().map(Recurring::expr))
    .bind(new.recurring.as_ref().map(Recurring::timezone))
    .fetch_one(&mut **conn)
    .await)?)
}

/// The campaign, its row locked until `tx` ends (on SQLite the transaction holds the write
/// lock already); `None` when it is not `user`'s.
pub async fn lock(tx: &mut Tx, user: UserId, id: CampaignId) -> StoreResult<Option<Campaign>> {
    let sql = match tx {
        Tx::Postgres(_) => "SELECT * FROM campaigns WHERE id = $1 AND user_id = $2 FOR UPDATE",
        Tx::Sqlite(_) => "SELECT * FROM campaigns WHERE id = $1 AND user_id = $2",
    };
    Ok(on_tx!(tx, conn => sqlx::query_as::<_, Campaign>(sql)
        .bind(id)
        .bind(user)
        .fetch_optional(&mut **conn)
        .await)?)
}

/// Moves the campaign to `status` in `tx`, recording when it started, completed or was
/// cancelled.
pub async fn set_status(
    tx: &mut Tx,
    id: CampaignId,
    status: CampaignStatus,
    now: Timestamp,
) -> StoreResult<()> {
    let at = |s: CampaignStatus| (status == s).then_some(now);
    on_tx!(tx, conn => sqlx::query(
        "UPDATE campaigns SET status = $2,
             started_at = COALESCE(started_at, $3),
             completed_at = COALESCE(completed_at, $4),
             cancelled_at = COALESCE(cancelled_at, $5)
         WHERE id = $1",
    )
    .bind(id)
    .bind(status)
    .bind(at(CampaignStatus::Active))
    .bind(at(CampaignStatus::Completed))
    .bind(at(CampaignStatus::Cancelled))
    .execute(&mut **conn)
    .await
    .map(|_| ()))?;
    Ok(())
}

/// Sets when the campaign next starts (a recurring campaign's next tick), in `tx`.
pub async fn set_starts_at(tx: &mut Tx, id: CampaignId, at: Option<Timestamp>) -> StoreResult<()> {
    on_tx!(tx, conn => sqlx::query("UPDATE campaigns SET starts_at = $2 WHERE id = $1")
        .bind(id)
        .bind(at)
        .execute(&mut **conn)
        .await
        .map(|_| ()))?;
    Ok(())
}

/// `completed` in `tx`, unless it recurs (a recurring campaign goes on to its next tick).
pub async fn complete_one_off(tx: &mut Tx, id: CampaignId, now: Timestamp) -> StoreResult<()> {
    on_tx!(tx, conn => sqlx::query(
        "UPDATE campaigns SET status = 'completed', completed_at = COALESCE(completed_at, $2)
         WHERE id = $1 AND cron IS NULL AND status = 'active'",
    )
    .bind(id)
    .bind(now)
    .execute(&mut **conn)
    .await
    .map(|_| ()))?;
    Ok(())
}

/// Campaigns whose start time has come: scheduled ones, and recurring ones at a tick (not
/// paused or cancelled); oldest first, at most `limit`.
pub async fn due(db: &Db, now: Timestamp, limit: i64) -> StoreResult<Vec<Campaign>> {
    Ok(on_db!(db, pool => sqlx::query_as::<_, Campaign>(
        "SELECT * FROM campaigns
         WHERE starts_at <= $1
           AND (status = 'scheduled' OR (status = 'active' AND cron IS NOT NULL))
         ORDER BY starts_at, id LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await)?)
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
    // A campaign to an audience is complete when its run is (see `campaign_feed`): between two
    // feeds none of its messages may be on their way while fans are still pending.
    let done = c.queued == 0 && c.sending == 0 && !recurs_or_runs(&mut tx, id).await?;
    // Only what the messages say is rewritten; delivered/opened/clicked/revenue are reported
    // by the platform and kept.
    metrics["sent"] = json!(c.sent);
    metrics["failed"] = json!(c.failed);
    on_tx!(&mut tx, conn => sqlx::query(
        "UPDATE campaigns SET
             metrics = $2,
             status = CASE WHEN $3 AND status = 'active' THEN 'completed' ELSE status END,
             completed_at = CASE WHEN $3 AND status = 'active' AND completed_at IS NULL THEN $4
                                 ELSE completed_at END
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

/// Whether the campaign recurs (it never completes) or has a run active or paused, in `tx`.
async fn recurs_or_runs(tx: &mut Tx, id: CampaignId) -> sqlx::Result<bool> {
    let (live,): (bool,) = on_tx!(tx, conn => sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM campaigns WHERE id = $1 AND cron IS NOT NULL)
             OR EXISTS (SELECT 1 FROM campaign_runs WHERE campaign_id = $1
                        AND status IN ('active', 'paused'))",
    )
    .bind(id)
    .fetch_one(&mut **conn)
    .await)?;
    Ok(live)
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

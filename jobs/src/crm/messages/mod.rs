//! Messages of a conversation: inbound ones recorded by a platform sync, outbound ones queued
//! for delivery. The only module that writes `messages`: an outbound message moves through
//! named transitions, `queued` → on the outbound queue → `sending` → `sent`, or `failed` with
//! a reason.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;

use super::conversations;
use crate::{
    db::{Db, Listed, Page, StoreError, StoreResult, Tx},
    domain::{
        CampaignId, Cents, ConversationId, FanId, HttpUrl, MessageId, ParseError, RunId, Text,
        Timestamp, UserId,
    },
    engine::JobId,
    idempotency::{self, Effect, Guard},
    on_db, on_tx,
    outbound::{OutboundBody, OutboundEntry},
    telemetry::{self, FailedBecause},
    text_enum,
};

pub const TEXT_MAX: usize = 5_000;
pub const ATTACHMENTS_MAX: usize = 20;
pub const EXTERNAL_ID_MAX: usize = 200;

text_enum! {
    /// Delivery state of a message. Inbound messages are `sent` from the start.
    pub enum MessageStatus as "message status" {
        Queued = "queued",
        Sending = "sending",
        Sent = "sent",
        Failed = "failed",
    }
}

text_enum! {
    pub enum Direction as "message direction" {
        /// From the fan.
        In = "in",
        /// To the fan.
        Out = "out",
    }
}

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
    pub direction: Direction,
    pub text: String,
    pub price_cents: i64,
    pub attachments: Json<Vec<Attachment>>,
    pub status: MessageStatus,
    pub error: Option<String>,
    pub attempts: i64,
    pub campaign_id: Option<CampaignId>,
    pub external_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    /// 1 (lowest) to 10; outbound messages are delivered highest first.
    pub priority: i64,
    /// When the platform reported it reached the fan, and that the fan read it.
    pub delivered_at: Option<DateTime<Utc>>,
    pub opened_at: Option<DateTime<Utc>>,
    /// Paid unlocks and tips the platform reported on it.
    pub revenue_cents: i64,
}

/// A parsed attachment: its kind is a short word, its URL http(s).
#[derive(Debug, Clone)]
pub struct NewAttachment {
    pub kind: String,
    pub url: HttpUrl,
}

/// `attachments` as the `attachments` column holds them (JSON), for statements that take
/// them as text.
pub fn attachments_json(attachments: &[NewAttachment]) -> String {
    serde_json::to_string(&stored(attachments)).expect("attachments serialize")
}

fn stored(attachments: &[NewAttachment]) -> Vec<Attachment> {
    attachments
        .iter()
        .map(|a| Attachment {
            kind: a.kind.clone(),
            url: a.url.as_str().to_owned(),
        })
        .collect()
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

/// One of `user`'s messages; `NotFound` when it is not theirs.
pub async fn get(db: &Db, user: UserId, id: MessageId) -> StoreResult<Message> {
    on_db!(db, pool => sqlx::query_as::<_, Message>(
        "SELECT * FROM messages WHERE id = $1 AND user_id = $2",
    )
    .bind(id)
    .bind(user)
    .fetch_optional(pool)
    .await)?
    .ok_or(StoreError::NotFound("message"))
}

/// The last message stored for a campaign (the one its completion estimate follows).
pub async fn last_of_campaign(db: &Db, campaign: CampaignId) -> StoreResult<Option<Message>> {
    Ok(on_db!(db, pool => sqlx::query_as::<_, Message>(
        "SELECT * FROM messages WHERE campaign_id = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(campaign)
    .fetch_optional(pool)
    .await)?)
}

/// A message of a campaign with its fan's handle and name: the campaign's recipients.
#[derive(Debug, Clone)]
pub struct Recipient {
    pub message: Message,
    pub handle: String,
    pub name: Option<String>,
}

/// The messages of one of `user`'s campaigns (one a recipient), oldest first, with each fan's
/// handle and name; `NotFound` when the campaign is not the user's.
pub async fn of_campaign(
    db: &Db,
    user: UserId,
    campaign: CampaignId,
    page: Page,
) -> StoreResult<Listed<Recipient>> {
    on_db!(db, pool => {
        let owned: Option<(CampaignId,)> =
            sqlx::query_as("SELECT id FROM campaigns WHERE id = $1 AND user_id = $2")
                .bind(campaign)
                .bind(user)
                .fetch_optional(pool)
                .await?;
        if owned.is_none() {
            return Err(StoreError::NotFound("campaign"));
        }
        let messages = sqlx::query_as::<_, Message>(
            "SELECT * FROM messages WHERE campaign_id = $1 AND user_id = $2
             ORDER BY id LIMIT $3 OFFSET $4",
        )
        .bind(campaign)
        .bind(user)
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(pool)
        .await?;
        let fans: Vec<(MessageId, String, Option<String>)> = sqlx::query_as(
            "SELECT m.id, f.handle, f.name FROM messages m JOIN fans f ON f.id = m.fan_id
             WHERE m.campaign_id = $1 AND m.user_id = $2 ORDER BY m.id LIMIT $3 OFFSET $4",
        )
        .bind(campaign)
        .bind(user)
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(pool)
        .await?;
        let mut names: HashMap<MessageId, (String, Option<String>)> =
            fans.into_iter().map(|(id, h, n)| (id, (h, n))).collect();
        let (total,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM messages WHERE campaign_id = $1 AND user_id = $2")
                .bind(campaign)
                .bind(user)
                .fetch_one(pool)
                .await?;
        let items = messages
            .into_iter()
            .map(|message| {
                let (handle, name) = names.remove(&message.id).unwrap_or_default();
                Recipient { message, handle, name }
            })
            .collect();
        Ok(Listed { items, total })
    })
}

/// Records an inbound message in `tx`, bumps the unread count and moves `last_message_at`
/// forward. Returns the message and `true` when it is new (a replayed `external_id` changes
/// nothing). (`crm::automations::triggers::inbound` calls it, with what a reply sets off.)
pub async fn record_inbound(
    tx: &mut Tx,
    user: UserId,
    conversation: ConversationId,
    msg: Inbound,
    key: Option<&Guard>,
) -> StoreResult<(Message, bool)> {
    let attachments = stored(&msg.attachments);
    let received = Timestamp(msg.received_at);
    let Some(fan) = conversations::fan_of(tx, user, conversation).await? else {
        return Err(StoreError::NotFound("conversation"));
    };
    let inserted = on_tx!(tx, conn => sqlx::query_as::<_, Message>(
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
    .fetch_optional(&mut **conn)
    .await)?;
    let result = match inserted {
        Some(message) => {
            conversations::touch_for_inbound(tx, conversation, received).await?;
            if let Some(key) = key {
                idempotency::record(tx, key, &Effect::Message(message.id)).await?;
            }
            (message, true)
        }
        None => {
            let existing = on_tx!(tx, conn => sqlx::query_as::<_, Message>(
                "SELECT * FROM messages WHERE conversation_id = $1 AND external_id = $2",
            )
            .bind(conversation)
            .bind(msg.external_id.as_deref())
            .fetch_one(&mut **conn)
            .await)?;
            (existing, false)
        }
    };
    Ok(result)
}

/// Priority of an outbound message: 1 (lowest) to 10, default 5.
pub const PRIORITY_DEFAULT: i64 = 5;
/// A reply in a conversation: the fan is waiting, so it goes before campaigns by default.
pub const PRIORITY_REPLY: i64 = 9;

/// An outbound message, parsed: what to send, not yet to whom.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub text: Text,
    pub price_cents: Cents,
    pub attachments: Vec<NewAttachment>,
    pub priority: i64,
}

/// How a campaign keeps its message ([`Outgoing::template`]) until each recipient's copy is
/// queued.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Template {
    content: String,
    media_urls: Vec<String>,
    price_cents: i64,
    priority: i64,
    attachments: Vec<Attachment>,
}

impl Outgoing {
    /// The message as a campaign's `template` (its first three fields are what clients read).
    pub fn template(&self) -> serde_json::Value {
        serde_json::to_value(Template {
            content: self.text.as_str().to_owned(),
            media_urls: self
                .attachments
                .iter()
                .map(|a| a.url.as_str().to_owned())
                .collect(),
            price_cents: self.price_cents.get(),
            priority: self.priority,
            attachments: stored(&self.attachments),
        })
        .expect("a template serializes")
    }

    /// The message a [`Outgoing::template`] holds.
    pub fn from_template(template: &serde_json::Value) -> Result<Outgoing, ParseError> {
        let t: Template = serde_json::from_value(template.clone())
            .map_err(|e| ParseError(format!("unreadable campaign template: {e}")))?;
        Ok(Outgoing {
            text: Text::parse(&t.content, TEXT_MAX)?,
            price_cents: Cents::new(t.price_cents)?,
            attachments: t
                .attachments
                .into_iter()
                .map(|a| {
                    Ok(NewAttachment {
                        kind: a.kind,
                        url: HttpUrl::parse(&a.url)?,
                    })
                })
                .collect::<Result<_, ParseError>>()?,
            priority: t.priority,
        })
    }
}

/// An outbound message to store: to whom, what, the job that puts it on the outbound queue,
/// and its campaign.
#[derive(Debug, Clone, Copy)]
pub struct NewQueued<'a> {
    pub user: UserId,
    pub fan: FanId,
    pub out: &'a Outgoing,
    pub job: &'a JobId,
    pub campaign: Option<CampaignId>,
    /// The campaign run it is for (a campaign to an audience).
    pub run: Option<RunId>,
    /// Its turn among the creator's campaign messages (see [`campaign_front`]); 0 for a
    /// one-to-one message.
    pub turn: i64,
    /// Its delivery lane ([`LANE_ONE_TO_ONE`], [`LANE_AUTOMATIONS`], [`LANE_CAMPAIGNS`]).
    pub lane: i16,
}

/// The delivery lanes of messages: one-to-one messages (replies, single sends) go before
/// automations, which go before campaigns, within each creator's rate.
pub const LANE_ONE_TO_ONE: i16 = 0;
pub const LANE_AUTOMATIONS: i16 = 1;
pub const LANE_CAMPAIGNS: i16 = 2;

/// Where the creator's campaigns stand (in `tx`): the earliest turn among their campaign
/// messages waiting for delivery, `None` when none waits. A campaign that starts or resumes
/// takes its turns from here, so it alternates with the others instead of going first until
/// it caught up with them.
pub async fn campaign_front(tx: &mut Tx, user: UserId) -> StoreResult<Option<i64>> {
    let (front,): (Option<i64>,) = on_tx!(tx, conn => sqlx::query_as(
        "SELECT MIN(turn) FROM messages WHERE user_id = $1 AND status = 'queued' AND lane = $2",
    )
    .bind(user)
    .bind(LANE_CAMPAIGNS)
    .fetch_one(&mut **conn)
    .await)?;
    Ok(front)
}

/// New → `queued` for each of `rows` (each a distinct job and fan), in `tx`, in two
/// statements whatever their number: opens the fans' conversations where needed and moves
/// their `last_message_at`. Per row, the stored message, or `None` when the fan is not the
/// row's user's.
pub async fn insert_queued(
    tx: &mut Tx,
    rows: &[NewQueued<'_>],
    now: Timestamp,
) -> sqlx::Result<Vec<Option<Message>>> {
    let mut pairs: Vec<(UserId, FanId)> = rows.iter().map(|r| (r.user, r.fan)).collect();
    pairs.sort_unstable();
    pairs.dedup();
    let conversations = conversations::touch_for_outbound(tx, &pairs, now).await?;
    let owned: Vec<(&NewQueued, ConversationId)> = rows
        .iter()
        .filter_map(|r| Some((r, *conversations.get(&(r.user, r.fan))?)))
        .collect();
    if owned.is_empty() {
        return Ok(vec![None; rows.len()]);
    }
    /// A stored row and the job it was stored for, to match it with its request.
    #[derive(sqlx::FromRow)]
    struct Inserted {
        job_id: JobId,
        #[sqlx(flatten)]
        message: Message,
    }
    let inserted: Vec<Inserted> = on_tx!(tx, conn => {
        let mut q = sqlx::QueryBuilder::new(INSERT_QUEUED);
        q.push_values(&owned, |mut row, (r, conversation)| {
            row.push_bind(r.user)
                .push_bind(*conversation)
                .push_bind(r.fan)
                .push("'out'")
                .push_bind(r.out.text.as_str())
                .push_bind(r.out.price_cents.get())
                .push_bind(Json(stored(&r.out.attachments)))
                .push("'queued'")
                .push("0")
                .push_bind(r.campaign)
                .push_bind(now)
                .push_bind(r.out.priority)
                .push_bind(r.job)
                .push_bind(r.run)
                .push_bind(r.lane)
                .push_bind(r.turn);
        });
        q.push(" RETURNING *");
        q.build_query_as().fetch_all(&mut **conn).await?
    });
    let mut by_key: HashMap<(&str, FanId), Message> = inserted
        .iter()
        .map(|i| ((i.job_id.0.as_str(), i.message.fan_id), i.message.clone()))
        .collect();
    Ok(rows
        .iter()
        .map(|r| by_key.remove(&(r.job.0.as_str(), r.fan)))
        .collect())
}

/// The insert of [`insert_queued`], and of [`insert_queued_sql`] (columns in this order).
const INSERT_QUEUED: &str = "INSERT INTO messages (user_id, conversation_id, fan_id, direction, \
     text, price_cents, attachments, status, attempts, campaign_id, created_at, priority, job_id, \
     run_id, lane, turn) ";

/// [`insert_queued`] as one part of a statement that stores other tables' rows in the same
/// round trip (`msg AS (…)` in its `WITH`; the PostgreSQL send path): a `queued` message for
/// each row of relation `from`, whose columns are `ord, user_id, conversation_id, fan_id,
/// text, price_cents, attachments` (JSON text)`, priority, job_id, campaign_id`, written at
/// `now` in `ord` order. Returns the stored rows (`RETURNING *`).
pub fn insert_queued_sql(from: &str, now: &str) -> String {
    format!(
        "{INSERT_QUEUED}SELECT user_id, conversation_id, fan_id, 'out', text, price_cents, \
         attachments::jsonb, 'queued', 0, campaign_id, {now}, priority, job_id, NULL, 0, 0 \
         FROM {from} ORDER BY ord RETURNING *"
    )
}

/// What travels of an outbound message: on the outbound queue, and to the platform.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Deliverable {
    pub id: MessageId,
    pub user_id: UserId,
    pub fan_id: FanId,
    pub text: String,
    pub attachments: Json<Vec<Attachment>>,
    pub priority: i64,
    pub campaign_id: Option<CampaignId>,
    /// See [`Deliverable::idempotency_key`]; read only where a delivery is made.
    #[sqlx(default)]
    pub key_generation: i64,
}

impl Deliverable {
    /// The key every delivery attempt carries: the message id, or `<id>-r<n>` after the
    /// n-th retry of a message the platform had rejected (its answer to the old key is final).
    pub fn idempotency_key(&self) -> String {
        match self.key_generation {
            0 => self.id.to_string(),
            n => format!("{}-r{n}", self.id),
        }
    }

    /// The body the seeds' consumer reads (ids as strings).
    pub fn body(&self) -> OutboundBody {
        OutboundBody {
            message_id: self.id.to_string(),
            user_id: self.user_id.to_string(),
            recipient_id: self.fan_id.to_string(),
            content: self.text.clone(),
            media_urls: self.attachments.0.iter().map(|a| a.url.clone()).collect(),
            priority: self.priority,
            campaign_id: self.campaign_id.map(|c| c.to_string()),
        }
    }

    /// The message as an entry of the outbound queue: its id is the deduplication key, its
    /// creator the FIFO group.
    pub fn entry(&self) -> OutboundEntry {
        OutboundEntry {
            id: self.id.to_string(),
            group: self.user_id.to_string(),
            body: serde_json::to_string(&self.body()).expect("the body serializes"),
        }
    }
}

/// A message of a send job, as the job's run finds it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobMessage {
    pub job_id: JobId,
    pub status: MessageStatus,
    /// On the outbound queue already (a run before this one put it there).
    pub on_queue: bool,
    #[sqlx(flatten)]
    pub message: Deliverable,
}

impl JobMessage {
    /// Still to put on the outbound queue.
    pub fn to_queue(&self) -> bool {
        self.status == MessageStatus::Queued && !self.on_queue
    }
}

/// Every message of `jobs`, in one query, oldest first.
pub async fn of_jobs(db: &Db, jobs: &[JobId]) -> StoreResult<Vec<JobMessage>> {
    if jobs.is_empty() {
        return Ok(vec![]);
    }
    Ok(on_db!(db, pool => {
        let mut q = sqlx::QueryBuilder::new(
            "SELECT job_id, status, enqueued_at IS NOT NULL AS on_queue,
                    id, user_id, fan_id, text, attachments, priority, campaign_id
             FROM messages WHERE job_id IN (",
        );
        crate::db::push_binds(&mut q, jobs);
        q.push(") ORDER BY id");
        q.build_query_as::<JobMessage>().fetch_all(pool).await
    })?)
}

/// `queued` → on the outbound queue: the queue accepted these messages (one statement for a
/// whole batch). Set once: a re-run of the job skips them.
pub async fn mark_on_queue(db: &Db, ids: &[MessageId]) -> StoreResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let now = Timestamp::now();
    on_db!(db, pool => {
        let mut q = sqlx::QueryBuilder::new("UPDATE messages SET enqueued_at = ");
        q.push_bind(now).push(" WHERE id IN (");
        crate::db::push_binds(&mut q, ids.iter().copied());
        q.push(")");
        q.build().execute(pool).await.map(|r| r.rows_affected())
    })
    .map(telemetry::messages_queued)?;
    Ok(())
}

/// `queued` → `failed`: the queue refused the message for good.
pub async fn fail_queued(db: &Db, id: MessageId, reason: &str) -> StoreResult<()> {
    on_db!(db, pool => sqlx::query(
        "UPDATE messages SET status = 'failed', error = $2, failed_at = $3
         WHERE id = $1 AND status = 'queued'",
    )
    .bind(id)
    .bind(reason)
    .bind(Timestamp::now())
    .execute(pool)
    .await
    .map(|r| telemetry::messages_failed(FailedBecause::NotQueued, r.rows_affected())))?;
    Ok(())
}

/// `queued` → `failed` for every message of `job` that never reached the outbound queue (its
/// job gave up), so that none stays queued forever.
pub async fn fail_unqueued_of_job(db: &Db, job: &JobId, reason: &str) -> StoreResult<u64> {
    let done = on_db!(db, pool => sqlx::query(
        "UPDATE messages SET status = 'failed', error = $2, failed_at = $3
         WHERE job_id = $1 AND status = 'queued' AND enqueued_at IS NULL",
    )
    .bind(job)
    .bind(reason)
    .bind(Timestamp::now())
    .execute(pool)
    .await
    .map(|r| r.rows_affected()))?;
    telemetry::messages_failed(FailedBecause::NotQueued, done);
    Ok(done)
}

/// `queued` → `sent` without the outbound queue (`RATE_LIMITER_ENABLED=false`: the messages
/// were logged instead of delivered).
pub async fn mark_sent_without_queue(db: &Db, ids: &[MessageId]) -> StoreResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let now = Timestamp::now();
    on_db!(db, pool => {
        let mut q = sqlx::QueryBuilder::new("UPDATE messages SET status = 'sent', sent_at = ");
        q.push_bind(now)
            .push(", attempts = attempts + 1 WHERE status = 'queued' AND id IN (");
        crate::db::push_binds(&mut q, ids.iter().copied());
        q.push(")");
        q.build().execute(pool).await.map(|_| ())
    })?;
    Ok(())
}

/// On the outbound queue → in the creator's schedule: the dispatcher received these
/// messages from the queue and holds them from now on (the queue's copies can go). Idempotent:
/// a message already in the schedule, sent or failed is left as it is. Returns how many moved.
pub async fn park(db: &Db, ids: &[MessageId]) -> StoreResult<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let now = Timestamp::now();
    let moved = on_db!(db, pool => {
        let mut q = sqlx::QueryBuilder::new("UPDATE messages SET ready_at = ");
        q.push_bind(now)
            .push(", enqueued_at = COALESCE(enqueued_at, ")
            .push_bind(now)
            .push(") WHERE status = 'queued' AND direction = 'out' AND ready_at IS NULL AND id IN (");
        crate::db::push_binds(&mut q, ids.iter().copied());
        q.push(")");
        q.build().execute(pool).await.map(|r| r.rows_affected())
    })?;
    Ok(moved)
}

/// Whether `campaign` still has messages on their way (queued or sending). Asked after a
/// message's final outcome has committed, so the last of several dispatchers to finish one
/// campaign's messages always sees none left.
pub async fn campaign_in_progress(db: &Db, campaign: CampaignId) -> StoreResult<bool> {
    let (busy,): (bool,) = on_db!(db, pool => sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM messages WHERE campaign_id = $1 AND status IN ('queued', 'sending'))",
    )
    .bind(campaign)
    .fetch_one(pool)
    .await)?;
    Ok(busy)
}

/// Message counts by delivery status.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusCounts {
    pub total: i64,
    pub queued: i64,
    pub sending: i64,
    pub sent: i64,
    pub failed: i64,
}

/// Live counts of one campaign's messages.
pub async fn counts_of_campaign(db: &Db, campaign: CampaignId) -> StoreResult<StatusCounts> {
    let rows: Vec<(MessageStatus, i64)> = on_db!(db, pool => sqlx::query_as(COUNTS_OF_CAMPAIGN).bind(campaign).fetch_all(pool).await)?;
    Ok(StatusCounts::of(rows))
}

/// [`counts_of_campaign`] inside `tx`.
pub async fn counts_of_campaign_in(tx: &mut Tx, campaign: CampaignId) -> StoreResult<StatusCounts> {
    let rows: Vec<(MessageStatus, i64)> = on_tx!(tx, conn => sqlx::query_as(COUNTS_OF_CAMPAIGN)
        .bind(campaign)
        .fetch_all(&mut **conn)
        .await)?;
    Ok(StatusCounts::of(rows))
}

const COUNTS_OF_CAMPAIGN: &str =
    "SELECT status, COUNT(*) FROM messages WHERE campaign_id = $1 GROUP BY status";

/// How many of a run's messages are on their way (queued or sending), in `tx`: what the
/// campaign keeps ahead of the dispatcher.
pub async fn on_the_way_of_run(tx: &mut Tx, run: RunId) -> StoreResult<i64> {
    let (n,): (i64,) = on_tx!(tx, conn => sqlx::query_as(
        "SELECT COUNT(*) FROM messages WHERE run_id = $1 AND status IN ('queued', 'sending')",
    )
    .bind(run)
    .fetch_one(&mut **conn)
    .await)?;
    Ok(n)
}

/// Takes back those of `ids` still queued and never tried, as [`withdraw_untried_of_run`]
/// does (an automation's enrollment ended before they went out); returns the ones taken.
pub async fn withdraw_untried(tx: &mut Tx, ids: &[MessageId]) -> StoreResult<Vec<MessageId>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let rows: Vec<(MessageId,)> = on_tx!(tx, conn => {
        let mut q = sqlx::QueryBuilder::new(
            "DELETE FROM messages WHERE status = 'queued' AND attempts = 0 AND id IN (",
        );
        crate::db::push_binds(&mut q, ids.iter().map(|m| m.0));
        q.push(") RETURNING id");
        q.build_query_as().fetch_all(&mut **conn).await
    })?;
    Ok(rows.into_iter().map(|(m,)| m).collect())
}

/// Takes back, in `tx`, a run's messages that no delivery attempt has touched (paused or
/// cancelled campaigns): they are deleted, so no dispatcher can claim them and no copy stays
/// to be seen twice; their queue copies are dropped when received (nothing to park). A
/// message being sent, or already tried once (the platform may have it), stays and settles.
/// Returns the fans whose message was taken back.
pub async fn withdraw_untried_of_run(tx: &mut Tx, run: RunId) -> StoreResult<Vec<FanId>> {
    let rows: Vec<(FanId,)> = on_tx!(tx, conn => sqlx::query_as(
        "DELETE FROM messages WHERE run_id = $1 AND status = 'queued' AND attempts = 0
         RETURNING fan_id",
    )
    .bind(run)
    .fetch_all(&mut **conn)
    .await)?;
    Ok(rows.into_iter().map(|(f,)| f).collect())
}

impl StatusCounts {
    fn of(rows: Vec<(MessageStatus, i64)>) -> Self {
        let mut c = StatusCounts::default();
        for (status, n) in rows {
            c.total += n;
            match status {
                MessageStatus::Queued => c.queued = n,
                MessageStatus::Sending => c.sending = n,
                MessageStatus::Sent => c.sent = n,
                MessageStatus::Failed => c.failed = n,
            }
        }
        c
    }
}

/// How many of the creator's waiting messages go out before `m`, in the dispatcher's order:
/// an earlier lane, or the same lane and a higher priority, or the same priority and an
/// earlier turn, or the same turn and older.
pub async fn ahead_of(db: &Db, m: &Message) -> StoreResult<i64> {
    Ok(ahead_of_many(db, &[m.id])
        .await?
        .pop()
        .map_or(0, |(_, n)| n))
}

/// [`ahead_of`] for each of `ids`, in one query: `(id, ahead)`.
pub async fn ahead_of_many(db: &Db, ids: &[MessageId]) -> StoreResult<Vec<(MessageId, i64)>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    Ok(on_db!(db, pool => {
        let mut q = sqlx::QueryBuilder::new(format!(
            "SELECT m.id, ({}) FROM messages m WHERE m.id IN (",
            ahead_sql("m", "messages")
        ));
        crate::db::push_binds(&mut q, ids.iter().copied());
        q.push(")");
        q.build_query_as().fetch_all(pool).await
    })?)
}

/// [`ahead_of`] as a query of a larger statement: how many queued messages of relation `from`
/// (`messages`, or rows just inserted) go out before message `m` (a row alias).
pub fn ahead_sql(m: &str, from: &str) -> String {
    format!(
        "SELECT COUNT(*) FROM {from} o \
         WHERE o.user_id = {m}.user_id AND o.direction = 'out' AND o.status = 'queued' \
           AND o.id <> {m}.id \
           AND (o.lane < {m}.lane OR (o.lane = {m}.lane \
            AND (o.priority > {m}.priority OR (o.priority = {m}.priority \
            AND (o.turn < {m}.turn OR (o.turn = {m}.turn \
            AND (o.created_at < {m}.created_at \
                 OR (o.created_at = {m}.created_at AND o.id < {m}.id))))))))"
    )
}

/// Which outbound messages are a creator's delivery backlog: not yet final.
const WAITING: &str = "direction = 'out' AND status IN ('queued', 'sending')";

/// [`backlog`] as a query of a larger statement, for the creator `user` (a column or a
/// parameter).
pub fn backlog_sql(user: &str) -> String {
    format!("SELECT COUNT(*) FROM messages WHERE user_id = {user} AND {WAITING}")
}

/// Outbound messages of `user` not yet final: the creator's delivery backlog.
pub async fn backlog(db: &Db, user: UserId) -> StoreResult<i64> {
    let (n,): (i64,) = on_db!(db, pool => sqlx::query_as(
        sqlx::AssertSqlSafe(backlog_sql("$1")),
    )
    .bind(user)
    .fetch_one(pool)
    .await)?;
    Ok(n)
}

/// [`backlog`] of each of `users` that has one, read in `tx` (so that what is stored next is
/// counted against the same figure).
pub async fn backlogs_in(tx: &mut Tx, users: &[UserId]) -> sqlx::Result<HashMap<UserId, i64>> {
    if users.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(UserId, i64)> = on_tx!(tx, conn => {
        let mut q = sqlx::QueryBuilder::new(format!(
            "SELECT user_id, COUNT(*) FROM messages WHERE {WAITING} AND user_id IN ("
        ));
        crate::db::push_binds(&mut q, users.iter().copied());
        q.push(") GROUP BY user_id");
        q.build_query_as().fetch_all(&mut **conn).await?
    });
    Ok(rows.into_iter().collect())
}

/// One creator's delivery backlog.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CreatorBacklog {
    pub user_id: UserId,
    /// Outbound messages queued or being delivered.
    pub waiting: i64,
    /// When the oldest of them was queued.
    pub oldest: DateTime<Utc>,
}

/// The creators with a backlog, largest first (then by user id), one page, and how many
/// creators have one.
pub async fn backlogs(db: &Db, page: Page) -> StoreResult<Listed<CreatorBacklog>> {
    on_db!(db, pool => {
        let items = sqlx::query_as::<_, CreatorBacklog>(
            "SELECT user_id, COUNT(*) AS waiting, MIN(created_at) AS oldest FROM messages
             WHERE direction = 'out' AND status IN ('queued', 'sending')
             GROUP BY user_id ORDER BY COUNT(*) DESC, user_id LIMIT $1 OFFSET $2",
        )
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(pool)
        .await?;
        let (total,): (i64,) = sqlx::query_as(
            "SELECT COUNT(DISTINCT user_id) FROM messages
             WHERE direction = 'out' AND status IN ('queued', 'sending')",
        )
        .fetch_one(pool)
        .await?;
        Ok(Listed { items, total })
    })
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

mod claims;
mod failed;
pub use claims::*;
pub use failed::*;

/// An outbound message as a platform event names it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboundRef {
    pub id: MessageId,
    pub fan_id: FanId,
    pub campaign_id: Option<CampaignId>,
    /// The platform's id of it, once delivered.
    pub external_id: Option<String>,
}

/// `user`'s outbound messages named by our `ids` or by the platform's `platform_ids`, read in
/// `tx`.
pub async fn outbound_named(
    tx: &mut Tx,
    user: UserId,
    ids: &[MessageId],
    platform_ids: &[&str],
) -> sqlx::Result<Vec<OutboundRef>> {
    if ids.is_empty() && platform_ids.is_empty() {
        return Ok(vec![]);
    }
    on_tx!(tx, conn => {
        let mut q = sqlx::QueryBuilder::new(
            "SELECT id, fan_id, campaign_id, external_id FROM messages WHERE user_id = ",
        );
        q.push_bind(user).push(" AND direction = 'out' AND (id IN (");
        crate::db::push_binds(&mut q, ids.iter().map(|m| m.0).chain([0]));
        q.push(") OR external_id IN (");
        crate::db::push_binds(&mut q, platform_ids.iter().copied().chain([""]));
        q.push("))");
        q.build_query_as().fetch_all(&mut **conn).await
    })
}

/// What the platform reported about one outbound message: it arrived (`delivered_at`), was
/// read (`opened_at`), was unlocked (`purchased_at`), or earned `revenue` (a paid unlock or a
/// tip on it).
#[derive(Debug, Clone, Copy, Default)]
pub struct Report {
    pub delivered_at: Option<Timestamp>,
    pub opened_at: Option<Timestamp>,
    pub purchased_at: Option<Timestamp>,
    pub revenue: Cents,
}

/// Records a [`Report`] on message `id`. The earliest report of each time wins, so reports in
/// any order agree.
pub async fn reported(tx: &mut Tx, id: MessageId, report: Report) -> sqlx::Result<()> {
    on_tx!(tx, conn => sqlx::query(
        "UPDATE messages SET
             delivered_at = CASE WHEN delivered_at IS NULL OR delivered_at > $2
                                 THEN COALESCE($2, delivered_at) ELSE delivered_at END,
             opened_at = CASE WHEN opened_at IS NULL OR opened_at > $3
                              THEN COALESCE($3, opened_at) ELSE opened_at END,
             purchased_at = CASE WHEN purchased_at IS NULL OR purchased_at > $4
                                 THEN COALESCE($4, purchased_at) ELSE purchased_at END,
             revenue_cents = revenue_cents + $5
         WHERE id = $1",
    )
    .bind(id)
    .bind(report.delivered_at)
    .bind(report.opened_at)
    .bind(report.purchased_at)
    .bind(report.revenue.get())
    .execute(&mut **conn)
    .await
    .map(|_| ()))
}

/// What the platform reported about a campaign's messages.
#[derive(Debug, Clone, Copy, Default, sqlx::FromRow)]
pub struct Engagement {
    pub delivered: i64,
    pub opened: i64,
    pub revenue_cents: i64,
}

/// [`Engagement`] of `campaign`'s messages, read in `tx`.
pub async fn engagement_of_campaign_in(
    tx: &mut Tx,
    campaign: CampaignId,
) -> sqlx::Result<Engagement> {
    on_tx!(tx, conn => sqlx::query_as(
        "SELECT COUNT(delivered_at) AS delivered, COUNT(opened_at) AS opened,
                CAST(COALESCE(SUM(revenue_cents), 0) AS BIGINT) AS revenue_cents
         FROM messages WHERE campaign_id = $1",
    )
    .bind(campaign)
    .fetch_one(&mut **conn)
    .await)
}

/// How many automated and campaign messages (lanes 1 and 2) each fan was sent since `since`:
/// what the daily cap counts.
pub async fn automated_since(
    tx: &mut Tx,
    fans: &[FanId],
    since: Timestamp,
) -> sqlx::Result<HashMap<FanId, i64>> {
    if fans.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(FanId, i64)> = on_tx!(tx, conn => {
        let mut q = sqlx::QueryBuilder::new(
            "SELECT fan_id, COUNT(*) FROM messages
             WHERE lane > 0 AND direction = 'out' AND created_at >= ",
        );
        q.push_bind(since).push(" AND fan_id IN (");
        crate::db::push_binds(&mut q, fans.iter().map(|f| f.0));
        q.push(") GROUP BY fan_id");
        q.build_query_as().fetch_all(&mut **conn).await
    })?;
    Ok(rows.into_iter().collect())
}

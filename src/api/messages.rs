//! Outbound messages: single sends, bulk campaigns, and the state of the outbound queue.

use chrono::{DateTime, Utc};
use fanqueue_jobs::{
    crm::{
        campaigns::{self, NewBulk},
        deliveries,
        messages::{self, Message, MessageStatus, NewAttachment, Outgoing, PRIORITY_DEFAULT},
    },
    domain::{CampaignId, Cents, FanId, MessageId, Text, UserId},
    idempotency::Effect,
    kinds::{
        SubmitError, bulk_send,
        send_message::{self, NewSend, Recipient, Retried},
    },
    outbound::OutboundQueue,
};
use poem::Request;
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
};
use serde::Deserialize;

use super::{
    body::JsonBody,
    error::ApiError,
    idempotency,
    ids::IdIn,
    rules::{CampaignName, In, Limit, MediaUrl, MessageText, Offset, page},
    state::{ApiTags, BearerAuth, State},
    words::Word,
};

pub struct MessagesApi {
    state: State,
}

impl MessagesApi {
    pub fn new(state: State) -> Self {
        MessagesApi { state }
    }
}

/// Media URLs a message may carry.
pub const MAX_MEDIA: usize = 20;

/// A message to one fan.
#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendIn {
    /// The fan's id (a number, or a string of digits).
    pub recipient_id: IdIn,
    /// The text: not blank, at most 5,000 characters, no control characters but line breaks
    /// and tabs.
    pub content: In<MessageText>,
    /// http(s) URLs of media to attach, at most 20.
    #[oai(nullable, validator(max_items = 20))]
    pub media_urls: Option<Vec<In<MediaUrl>>>,
    /// 1 (lowest) to 10; default 5.
    #[oai(validator(minimum(value = "1"), maximum(value = "10")))]
    #[oai(nullable)]
    pub priority: Option<i64>,
}

/// One message to many fans.
#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BulkIn {
    /// Fan ids (numbers, or strings of digits), 1 to 100 (duplicates are removed), all the
    /// caller's.
    #[oai(validator(min_items = 1, max_items = 100))]
    pub recipient_ids: Vec<IdIn>,
    /// As for a single send.
    pub content: In<MessageText>,
    #[oai(nullable, validator(max_items = 20))]
    pub media_urls: Option<Vec<In<MediaUrl>>>,
    /// One line of at most 200 characters (trimmed), no control characters.
    pub campaign_name: In<CampaignName>,
    #[oai(validator(minimum(value = "1"), maximum(value = "10")))]
    #[oai(nullable)]
    pub priority: Option<i64>,
}

/// A queued message.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct QueuedOut {
    pub message_id: i64,
    /// `queued`: stored, and its job will put it on the outbound queue.
    pub status: Word<MessageStatus>,
    pub queued_at: DateTime<Utc>,
    /// When the platform should get it: the creator's next free slot, then one slot per
    /// message ahead of it (higher priority, or as high and older).
    pub estimated_send_time: DateTime<Utc>,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct BulkOut {
    pub campaign_id: i64,
    pub total_recipients: i64,
    pub queued: i64,
    pub failed: i64,
    pub estimated_completion_time: DateTime<Utc>,
    /// `queued`: the campaign's messages are stored, and its job puts them on the queue.
    pub status: Word<MessageStatus>,
}

/// Whose messages [`QueueStatusOut`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum QueueScope {
    /// The caller's own messages.
    Creator,
    /// The whole outbound queue (an operator's token).
    Queue,
}

/// The delivery backlog the caller may see: a creator's own, or (operators) the whole queue.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct QueueStatusOut {
    /// `creator`: the counts are the caller's own messages; `queue`: the whole outbound queue
    /// (an operator's token).
    pub scope: QueueScope,
    /// Creator: their messages waiting for delivery. Queue: messages waiting on the outbound
    /// queue (null when it cannot be reached).
    #[oai(nullable)]
    pub queue_depth: Option<u64>,
    /// Creator: their messages being delivered now. Queue: received by a dispatcher, not yet
    /// deleted.
    #[oai(nullable)]
    pub messages_in_flight: Option<u64>,
    /// The dead-letter queue's count (operators only; null for a creator).
    #[oai(nullable)]
    pub dlq_count: Option<u64>,
    /// Creator: their failed messages (see `/api/onlyfans/messages/failed`).
    #[oai(skip_serializing_if_is_none)]
    pub failed: Option<u64>,
    /// Creator: when their backlog should have drained at the platform's rate, if it is not
    /// empty.
    #[oai(skip_serializing_if_is_none)]
    pub drained_by: Option<DateTime<Utc>>,
    /// When the caller's last outbound message was processed.
    #[oai(nullable)]
    pub last_processed_at: Option<DateTime<Utc>>,
    /// Why the counts are missing, if they are.
    #[oai(skip_serializing_if_is_none)]
    pub queue_error: Option<String>,
}

/// A failed outbound message.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct FailedOut {
    pub id: i64,
    /// The creator it was sent for.
    pub user_id: i64,
    pub fan_id: i64,
    pub conversation_id: i64,
    #[oai(nullable)]
    pub campaign_id: Option<i64>,
    pub content: String,
    pub priority: i64,
    /// Why it failed: the platform's answer, or what the system gave up on.
    #[oai(nullable)]
    pub reason: Option<String>,
    /// Delivery attempts made.
    pub attempts: i64,
    pub created_at: DateTime<Utc>,
    #[oai(nullable)]
    pub failed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct FailedPage {
    pub items: Vec<FailedOut>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

/// A failed message queued again.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct RetriedOut {
    pub message_id: i64,
    /// `queued`.
    pub status: Word<MessageStatus>,
    /// The job that puts it on the outbound queue again.
    pub job_id: String,
}

/// One creator's delivery backlog (operators).
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct CreatorBacklogOut {
    pub user_id: i64,
    /// Outbound messages queued or being delivered.
    pub waiting: i64,
    /// When the oldest of them was queued.
    pub oldest_queued_at: DateTime<Utc>,
    /// When the backlog should have drained at the platform's rate for one creator.
    pub drained_by: DateTime<Utc>,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct BacklogPage {
    pub items: Vec<CreatorBacklogOut>,
    /// Creators with a backlog.
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

#[derive(ApiResponse)]
enum BacklogsResponse {
    #[oai(status = 200)]
    Ok(Json<BacklogPage>),
}

#[derive(ApiResponse)]
enum FailedResponse {
    #[oai(status = 200)]
    Ok(Json<FailedPage>),
}

#[derive(ApiResponse)]
enum RetryResponse {
    /// Queued again with its job.
    #[oai(status = 202)]
    Accepted(Json<RetriedOut>),
}

#[derive(ApiResponse)]
enum SendResponse {
    /// Stored with its job; it will be delivered at the platform's rate.
    #[oai(status = 202)]
    Accepted(Json<QueuedOut>),
}

#[derive(ApiResponse)]
enum BulkResponse {
    /// The campaign, its messages and its job are stored.
    #[oai(status = 202)]
    Accepted(Json<BulkOut>),
}

#[derive(ApiResponse)]
enum StatusResponse {
    #[oai(status = 200)]
    Ok(Json<QueueStatusOut>),
}

/// Parses what makes an outbound message; field names are the request's.
pub fn outgoing(
    text: Text,
    price_cents: Option<i64>,
    attachments: Vec<NewAttachment>,
    priority: Option<i64>,
) -> Result<Outgoing, ApiError> {
    let priority = priority.unwrap_or(PRIORITY_DEFAULT);
    if !(1..=10).contains(&priority) {
        return Err(ApiError::invalid("priority", "must be between 1 and 10"));
    }
    Ok(Outgoing {
        text,
        price_cents: Cents::new(price_cents.unwrap_or(0))
            .map_err(|e| ApiError::invalid("priceCents", e))?,
        attachments,
        priority,
    })
}

pub(super) fn media(urls: Option<Vec<In<MediaUrl>>>) -> Result<Vec<NewAttachment>, ApiError> {
    let urls = urls.unwrap_or_default();
    if urls.len() > MAX_MEDIA {
        return Err(ApiError::invalid(
            "mediaUrls",
            format!("must hold at most {MAX_MEDIA} URLs"),
        ));
    }
    Ok(urls
        .into_iter()
        .map(|u| NewAttachment {
            kind: "media".into(),
            url: u.into_inner(),
        })
        .collect())
}

/// When `m` should reach the platform: the dispatcher's schedule for its creator (see
/// [`Pace::eta`](fanqueue_jobs::delivery::limiter::Pace::eta)).
pub async fn eta(state: &State, m: &Message) -> Result<DateTime<Utc>, ApiError> {
    let ahead = messages::ahead_of(&state.db, m).await?;
    let last = deliveries::last_started(&state.db, m.user_id).await?;
    Ok(state.pace.eta(m.created_at, last, ahead))
}

/// The answer to a bulk send whose first attempt created campaign `id` (its process
/// died before answering): the same campaign, counted from its stored messages.
async fn bulk_answered(state: &State, user: UserId, id: CampaignId) -> Result<BulkOut, ApiError> {
    let campaign = campaigns::get(&state.db, user, id).await?;
    let counts = campaigns::counts(&state.db, campaign.id).await?;
    let last = messages::last_of_campaign(&state.db, campaign.id).await?;
    Ok(BulkOut {
        campaign_id: campaign.id.0,
        total_recipients: counts.total,
        queued: counts.total,
        failed: 0,
        estimated_completion_time: match &last {
            Some(m) => eta(state, m).await?,
            None => Utc::now(),
        },
        status: Word(MessageStatus::Queued),
    })
}

/// A submission that stored nothing, as the client sees it.
pub fn submit_error(e: SubmitError) -> ApiError {
    match e {
        SubmitError::NotFound(what) => ApiError::not_found(what),
        SubmitError::NotOwned(ids) => ApiError::invalid(
            "recipientIds",
            format!(
                "these are not among your fans: {:?}",
                ids.iter().map(|f| f.0).collect::<Vec<_>>()
            ),
        ),
        SubmitError::BacklogFull {
            backlog,
            max,
            retry_after,
        } => ApiError::backlog_full(backlog, max, retry_after),
        SubmitError::Superseded => ApiError::key_in_use(),
        SubmitError::Enqueue(e) => e.into(),
    }
}

/// Queues one message (with whatever other sends arrive at the same time: see
/// [`Sends`](send_message::Sends)) and answers as the send routes do. A keyed request records
/// its message on its key; a repeat whose first attempt already stored its message answers
/// for that message instead.
pub async fn queue_one(
    state: &State,
    req: &Request,
    user: UserId,
    to: Recipient,
    out: Outgoing,
) -> Result<QueuedOut, ApiError> {
    if let Some(id) = idempotency::committed_as(req, Effect::message)? {
        let m = messages::get(&state.db, user, id).await?;
        return Ok(QueuedOut {
            message_id: m.id.0,
            status: Word(m.status),
            queued_at: m.created_at,
            estimated_send_time: eta(state, &m).await?,
        });
    }
    let key = idempotency::guard(req);
    let stored = state
        .sends
        .submit(NewSend { user, to, out, key })
        .await
        .map_err(submit_error)?;
    let m = stored.message;
    Ok(QueuedOut {
        message_id: m.id.0,
        status: Word(m.status),
        queued_at: m.created_at,
        estimated_send_time: state
            .pace
            .eta(m.created_at, stored.last_started, stored.ahead),
    })
}

#[OpenApi(tag = "ApiTags::Messages")]
impl MessagesApi {
    /// Send a message to a fan
    ///
    /// Stores the message (`queued`) and its delivery job in one transaction, opening the
    /// fan's conversation if needed, and answers 202. Delivery follows at the platform's rate
    /// (10 a minute per creator); `estimatedSendTime` accounts for the creator's backlog.
    #[oai(
        path = "/api/onlyfans/messages/send",
        method = "post",
        operation_id = "sendMessage"
    )]
    async fn send(
        &self,
        auth: BearerAuth,
        body: JsonBody<SendIn>,
        req: &Request,
    ) -> Result<SendResponse, ApiError> {
        let b = body.0;
        let out = outgoing(
            b.content.into_inner(),
            None,
            media(b.media_urls)?,
            b.priority,
        )?;
        let queued = queue_one(
            &self.state,
            req,
            auth.user(),
            Recipient::Fan(FanId(b.recipient_id.0)),
            out,
        )
        .await?;
        Ok(SendResponse::Accepted(Json(queued)))
    }

    /// Send a bulk campaign
    ///
    /// At most 100 recipients, all the caller's fans (otherwise 400 naming the others, and
    /// nothing is created). One campaign, one message per recipient and one `bulk_send` job
    /// are stored in one transaction; the job puts the messages on the outbound queue 10 at a
    /// time. 5 campaigns per hour per user.
    #[oai(
        path = "/api/messages/bulk",
        method = "post",
        operation_id = "sendBulk"
    )]
    async fn bulk(
        &self,
        auth: BearerAuth,
        body: JsonBody<BulkIn>,
        req: &Request,
    ) -> Result<BulkResponse, ApiError> {
        let user = auth.user();
        if let Some(id) = idempotency::committed_as(req, Effect::campaign)? {
            return Ok(BulkResponse::Accepted(Json(
                bulk_answered(&self.state, user, id).await?,
            )));
        }
        let b = body.0;
        let mut recipients: Vec<FanId> = Vec::with_capacity(b.recipient_ids.len());
        for id in &b.recipient_ids {
            if !recipients.contains(&FanId(id.0)) {
                recipients.push(FanId(id.0));
            }
        }
        if recipients.is_empty() {
            return Err(ApiError::invalid(
                "recipientIds",
                "must name at least one fan",
            ));
        }
        // Counted as sent, duplicates included, as the schema's `maxItems` says.
        if b.recipient_ids.len() > campaigns::MAX_RECIPIENTS {
            return Err(ApiError::invalid(
                "recipientIds",
                format!(
                    "must name at most {} fans (got {})",
                    campaigns::MAX_RECIPIENTS,
                    b.recipient_ids.len()
                ),
            ));
        }
        let name = b.campaign_name.into_inner();
        let message = outgoing(
            b.content.into_inner(),
            None,
            media(b.media_urls)?,
            b.priority,
        )?;
        super::state::charge(&self.state, self.state.quotas.campaigns, user).await?;
        let created = bulk_send::submit(
            &self.state.db,
            &self.state.jobs,
            self.state.backpressure,
            user,
            NewBulk {
                name,
                recipients,
                message,
            },
            idempotency::guard(req).as_ref(),
        )
        .await
        .map_err(submit_error)?;
        let n = created.message_ids.len() as i64;
        Ok(BulkResponse::Accepted(Json(BulkOut {
            campaign_id: created.campaign.id.0,
            total_recipients: n,
            queued: n,
            failed: 0,
            estimated_completion_time: eta(&self.state, &created.last).await?,
            status: Word(MessageStatus::Queued),
        })))
    }

    /// Backlogs per creator (operators)
    ///
    /// Every creator with messages waiting for delivery, largest backlog first: how many, the
    /// oldest's age, and when they should have drained at the platform's rate (10 a minute a
    /// creator). 403 for a creator's token (a creator's own backlog is in
    /// `/api/onlyfans/messages/status`).
    #[oai(
        path = "/api/onlyfans/messages/backlogs",
        method = "get",
        operation_id = "listCreatorBacklogs"
    )]
    async fn backlogs(
        &self,
        auth: BearerAuth,
        /// Creators per page, 1 to 200 (default 50).
        limit: Query<Option<Limit>>,
        /// Creators to skip (default 0).
        offset: Query<Option<Offset>>,
    ) -> Result<BacklogsResponse, ApiError> {
        auth.operator()?;
        let page = page(limit.0, offset.0);
        let listed = messages::backlogs(&self.state.db, page).await?;
        let users: Vec<UserId> = listed.items.iter().map(|b| b.user_id).collect();
        let last = deliveries::last_started_many(&self.state.db, &users).await?;
        let now = Utc::now();
        Ok(BacklogsResponse::Ok(Json(BacklogPage {
            items: listed
                .items
                .into_iter()
                .map(|b| CreatorBacklogOut {
                    user_id: b.user_id.0,
                    waiting: b.waiting,
                    oldest_queued_at: b.oldest,
                    drained_by: self.state.pace.eta(
                        now,
                        last.get(&b.user_id).copied(),
                        b.waiting - 1,
                    ),
                })
                .collect(),
            total: listed.total,
            limit: page.limit,
            offset: page.offset,
        })))
    }

    /// Outbound queue status
    ///
    /// Depth, in-flight and dead-letter counts of the outbound queue (SQS attributes, or the
    /// embedded queue's counts), and when the caller's last message was processed.
    #[oai(
        path = "/api/onlyfans/messages/status",
        method = "get",
        operation_id = "messageQueueStatus"
    )]
    async fn status(&self, auth: BearerAuth) -> Result<StatusResponse, ApiError> {
        let last = messages::last_processed_at(&self.state.db, auth.user()).await?;
        if !auth.is_operator() {
            let c = messages::counts_of_creator(&self.state.db, auth.user()).await?;
            let backlog = c.queued + c.sending;
            let drained_by = if backlog > 0 {
                let last_start = deliveries::last_started(&self.state.db, auth.user()).await?;
                Some(self.state.pace.eta(Utc::now(), last_start, backlog - 1))
            } else {
                None
            };
            return Ok(StatusResponse::Ok(Json(QueueStatusOut {
                scope: QueueScope::Creator,
                queue_depth: Some(c.queued as u64),
                messages_in_flight: Some(c.sending as u64),
                dlq_count: None,
                failed: Some(c.failed as u64),
                drained_by,
                last_processed_at: last,
                queue_error: None,
            })));
        }
        let mut out = QueueStatusOut {
            scope: QueueScope::Queue,
            queue_depth: None,
            messages_in_flight: None,
            dlq_count: None,
            failed: None,
            drained_by: None,
            last_processed_at: last,
            queue_error: None,
        };
        match self.state.outbound.counts().await {
            Ok(c) => {
                out.queue_depth = Some(c.depth);
                out.messages_in_flight = Some(c.in_flight);
                out.dlq_count = Some(c.dlq);
            }
            Err(e) => {
                tracing::warn!(error = %e, "outbound queue counts unavailable");
                out.queue_error = Some(e.to_string());
            }
        }
        Ok(StatusResponse::Ok(Json(out)))
    }

    /// Failed messages
    ///
    /// Outbound messages that failed, newest failure first, with the reason, the attempts,
    /// the campaign and the fan. A creator sees their own; an operator every creator's (or one
    /// creator's with `userId`).
    #[oai(
        path = "/api/onlyfans/messages/failed",
        method = "get",
        operation_id = "listFailedMessages"
    )]
    async fn failed(
        &self,
        auth: BearerAuth,
        /// Operators: only this creator's.
        #[oai(name = "userId", validator(minimum(value = "1")))]
        user_id: Query<Option<i64>>,
        /// Items per page, 1 to 200 (default 50).
        limit: Query<Option<Limit>>,
        /// Items to skip (default 0).
        offset: Query<Option<Offset>>,
    ) -> Result<FailedResponse, ApiError> {
        let page = page(limit.0, offset.0);
        let scope = auth.scope(user_id.0)?;
        let listed = messages::list_failed(&self.state.db, scope, page).await?;
        Ok(FailedResponse::Ok(Json(FailedPage {
            items: listed
                .items
                .into_iter()
                .map(|m| FailedOut {
                    id: m.id.0,
                    user_id: m.user_id.0,
                    fan_id: m.fan_id.0,
                    conversation_id: m.conversation_id.0,
                    campaign_id: m.campaign_id.map(|c| c.0),
                    content: m.text,
                    priority: m.priority,
                    reason: m.error,
                    attempts: m.attempts,
                    created_at: m.created_at,
                    failed_at: m.failed_at,
                })
                .collect(),
            total: listed.total,
            limit: page.limit,
            offset: page.offset,
        })))
    }

    /// Retry a failed message
    ///
    /// Puts one of the caller's failed messages back on its way: `queued` again, attempts
    /// and reason cleared, with a new job (202). 409 if the message is not failed.
    #[oai(
        path = "/api/onlyfans/messages/failed/:id/retry",
        method = "post",
        operation_id = "retryFailedMessage"
    )]
    async fn retry(
        &self,
        auth: BearerAuth,
        id: Path<i64>,
        req: &Request,
    ) -> Result<RetryResponse, ApiError> {
        let id = MessageId(id.0);
        let retried = match idempotency::committed_as(req, Effect::job)? {
            // The first attempt queued it again and died before answering.
            Some(job) => Retried::Queued(job),
            None => {
                let key = idempotency::guard(req);
                send_message::retry_failed(
                    &self.state.db,
                    &self.state.jobs,
                    auth.user(),
                    id,
                    key.as_ref(),
                )
                .await
                .map_err(submit_error)?
            }
        };
        match retried {
            Retried::Queued(job) => Ok(RetryResponse::Accepted(Json(RetriedOut {
                message_id: id.0,
                status: Word(MessageStatus::Queued),
                job_id: job.0,
            }))),
            Retried::NotFailed(status) => Err(ApiError::conflict(format!(
                "message {} is {status}, not failed: only failed messages are retried",
                id.0
            ))),
        }
    }
}

//! Outbound messages: single sends, bulk campaigns, and the state of the outbound queue.

use chrono::{DateTime, Utc};
use fanqueue_jobs::{
    crm::{
        campaigns::{self, NewBulk},
        deliveries,
        messages::{self, Message, NewAttachment, Outgoing, PRIORITY_DEFAULT},
    },
    domain::{Cents, FanId, HttpUrl, Line, Text, UserId},
    kinds::{
        SubmitError, bulk_send,
        send_message::{self, Recipient},
    },
    outbound::OutboundQueue,
};
use poem_openapi::{ApiResponse, Object, OpenApi, payload::Json};
use serde::Deserialize;

use super::{ApiError, ApiTags, BearerAuth, State, body::JsonBody};

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
    /// The fan's id.
    pub recipient_id: i64,
    #[oai(validator(max_length = 5000))]
    pub content: String,
    /// http(s) URLs of media to attach.
    pub media_urls: Option<Vec<String>>,
    /// 1 (lowest) to 10; default 5.
    #[oai(validator(minimum(value = "1"), maximum(value = "10")))]
    pub priority: Option<i64>,
}

/// One message to many fans.
#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BulkIn {
    /// Fan ids, at most 100 (duplicates are removed), all the caller's.
    pub recipient_ids: Vec<i64>,
    #[oai(validator(max_length = 5000))]
    pub content: String,
    pub media_urls: Option<Vec<String>>,
    #[oai(validator(max_length = 200))]
    pub campaign_name: String,
    #[oai(validator(minimum(value = "1"), maximum(value = "10")))]
    pub priority: Option<i64>,
}

/// A queued message.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct QueuedOut {
    pub message_id: i64,
    /// `queued`: stored, and its job will put it on the outbound queue.
    pub status: String,
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
    pub status: String,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct QueueStatusOut {
    /// Messages waiting on the outbound queue (null when the queue cannot be reached).
    pub queue_depth: Option<u64>,
    /// Received by a dispatcher, not yet deleted.
    pub messages_in_flight: Option<u64>,
    /// In the dead-letter queue.
    pub dlq_count: Option<u64>,
    /// When the caller's last outbound message was processed.
    pub last_processed_at: Option<DateTime<Utc>>,
    /// Why the counts are missing, if they are.
    #[oai(skip_serializing_if_is_none)]
    pub queue_error: Option<String>,
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
    text: (&str, &str),
    price_cents: Option<i64>,
    attachments: Vec<NewAttachment>,
    priority: Option<i64>,
) -> Result<Outgoing, ApiError> {
    let priority = priority.unwrap_or(PRIORITY_DEFAULT);
    if !(1..=10).contains(&priority) {
        return Err(ApiError::invalid("priority", "must be between 1 and 10"));
    }
    Ok(Outgoing {
        text: Text::parse(text.1, messages::TEXT_MAX).map_err(|e| ApiError::invalid(text.0, e))?,
        price_cents: Cents::new(price_cents.unwrap_or(0))
            .map_err(|e| ApiError::invalid("priceCents", e))?,
        attachments,
        priority,
    })
}

fn media(urls: Option<Vec<String>>) -> Result<Vec<NewAttachment>, ApiError> {
    let urls = urls.unwrap_or_default();
    if urls.len() > MAX_MEDIA {
        return Err(ApiError::invalid(
            "mediaUrls",
            format!("must hold at most {MAX_MEDIA} URLs"),
        ));
    }
    urls.iter()
        .enumerate()
        .map(|(i, u)| {
            Ok(NewAttachment {
                kind: "media".into(),
                url: HttpUrl::parse(u)
                    .map_err(|e| ApiError::invalid(&format!("mediaUrls[{i}]"), e))?,
            })
        })
        .collect()
}

/// When `m` should reach the platform: the dispatcher's schedule for its creator (see
/// [`Pace::eta`](fanqueue_jobs::delivery::limiter::Pace::eta)).
pub async fn eta(state: &State, m: &Message) -> Result<DateTime<Utc>, ApiError> {
    let ahead = messages::ahead_of(&state.db, m).await?;
    let last = deliveries::last_started(&state.db, m.user_id).await?;
    Ok(state.pace.eta(m.created_at, last, ahead))
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
        SubmitError::Enqueue(e) => {
            ApiError::internal(anyhow::Error::new(e).context("queueing the message"))
        }
    }
}

/// Queues one message and answers as the send routes do.
pub async fn queue_one(
    state: &State,
    user: UserId,
    to: Recipient,
    out: &Outgoing,
) -> Result<QueuedOut, ApiError> {
    let message = send_message::submit(&state.db, &state.jobs, user, to, out)
        .await
        .map_err(submit_error)?;
    Ok(QueuedOut {
        message_id: message.id.0,
        status: message.status.to_string(),
        queued_at: message.created_at,
        estimated_send_time: eta(state, &message).await?,
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
    ) -> Result<SendResponse, ApiError> {
        let b = body.0;
        let out = outgoing(
            ("content", &b.content),
            None,
            media(b.media_urls)?,
            b.priority,
        )?;
        let queued = queue_one(
            &self.state,
            auth.0,
            Recipient::Fan(FanId(b.recipient_id)),
            &out,
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
    ) -> Result<BulkResponse, ApiError> {
        let user = auth.0;
        let b = body.0;
        let mut recipients: Vec<FanId> = Vec::with_capacity(b.recipient_ids.len());
        for id in &b.recipient_ids {
            if !recipients.contains(&FanId(*id)) {
                recipients.push(FanId(*id));
            }
        }
        if recipients.is_empty() {
            return Err(ApiError::invalid(
                "recipientIds",
                "must name at least one fan",
            ));
        }
        if recipients.len() > campaigns::MAX_RECIPIENTS {
            return Err(ApiError::invalid(
                "recipientIds",
                format!(
                    "must name at most {} fans (got {})",
                    campaigns::MAX_RECIPIENTS,
                    recipients.len()
                ),
            ));
        }
        let name = Line::parse(&b.campaign_name, campaigns::NAME_MAX)
            .map_err(|e| ApiError::invalid("campaignName", e))?;
        let message = outgoing(
            ("content", &b.content),
            None,
            media(b.media_urls)?,
            b.priority,
        )?;
        super::charge(&self.state, self.state.quotas.campaigns, user).await?;
        let created = bulk_send::submit(
            &self.state.db,
            &self.state.jobs,
            user,
            NewBulk {
                name,
                recipients,
                message,
            },
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
            status: "queued".into(),
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
        let last = messages::last_processed_at(&self.state.db, auth.0).await?;
        let out = match self.state.outbound.counts().await {
            Ok(c) => QueueStatusOut {
                queue_depth: Some(c.depth),
                messages_in_flight: Some(c.in_flight),
                dlq_count: Some(c.dlq),
                last_processed_at: last,
                queue_error: None,
            },
            Err(e) => {
                tracing::warn!(error = %e, "outbound queue counts unavailable");
                QueueStatusOut {
                    queue_depth: None,
                    messages_in_flight: None,
                    dlq_count: None,
                    last_processed_at: last,
                    queue_error: Some(e.to_string()),
                }
            }
        };
        Ok(StatusResponse::Ok(Json(out)))
    }
}

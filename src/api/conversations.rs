//! `/api/crm/conversations`: threads with fans, their messages, inbound sync and read marks.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use fanqueue_jobs::{
    crm::{
        automations::triggers,
        conversations::{self, Conversation},
        deliveries,
        messages::{self, Direction, Inbound, Message, MessageStatus, NewAttachment},
    },
    domain::{Cents, ConversationId, FanId, MessageId, Platform},
    idempotency::Effect,
    kinds::send_message::Recipient,
};
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
};
use serde::Deserialize;

use super::{
    body::JsonBody,
    error::ApiError,
    ids::IdIn,
    rules::{In, Limit, MediaUrl, MessageText, Offset, page},
    state::{ApiTags, BearerAuth, State},
    words::Word,
};

pub struct ConversationsApi {
    state: State,
}

impl ConversationsApi {
    pub fn new(state: State) -> Self {
        ConversationsApi { state }
    }
}

/// The fan of a conversation, as a conversation list shows it.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ConversationFan {
    pub id: i64,
    #[oai(nullable)]
    pub name: Option<String>,
    pub handle: String,
    #[oai(nullable)]
    pub avatar_url: Option<String>,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ConversationOut {
    pub id: i64,
    pub fan_id: i64,
    pub platform: Word<Platform>,
    #[oai(nullable)]
    pub last_message_at: Option<DateTime<Utc>>,
    /// Inbound messages since the creator last marked the thread read.
    pub unread_count: i64,
    pub created_at: DateTime<Utc>,
    pub fan: ConversationFan,
}

impl From<Conversation> for ConversationOut {
    fn from(c: Conversation) -> Self {
        ConversationOut {
            id: c.id.0,
            fan_id: c.fan_id.0,
            platform: Word(c.platform),
            last_message_at: c.last_message_at,
            unread_count: c.unread_count,
            created_at: c.created_at,
            fan: ConversationFan {
                id: c.fan_id.0,
                name: c.fan_name,
                handle: c.fan_handle,
                avatar_url: c.fan_avatar_url,
            },
        }
    }
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ConversationPage {
    pub items: Vec<ConversationOut>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OpenConversation {
    /// The fan whose conversation to open (a number, or a string of digits).
    pub fan_id: IdIn,
}

#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct AttachmentIn {
    /// A short word such as image, video, audio or file (1 to 20 letters).
    #[oai(
        rename = "type",
        validator(
            pattern = r"^[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[A-Za-z]{1,20}[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
        )
    )]
    #[serde(rename = "type")]
    pub kind: String,
    /// An absolute http(s) URL with a host, no spaces, at most 2048 bytes.
    pub url: In<MediaUrl>,
}

#[derive(Debug, Object)]
pub struct AttachmentOut {
    #[oai(rename = "type")]
    pub kind: String,
    pub url: String,
}

/// A message the fan sent, reported by a platform sync.
#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundIn {
    /// Not blank, at most 5,000 characters, no control characters but line breaks and tabs.
    pub text: In<MessageText>,
    /// Price of paid content the fan unlocked, in cents.
    #[oai(
        nullable,
        validator(minimum(value = "0"), maximum(value = "100000000000"))
    )]
    pub price_cents: Option<i64>,
    /// At most 20.
    #[oai(nullable, validator(max_items = 20))]
    pub attachments: Option<Vec<AttachmentIn>>,
    /// The platform's id of the message; a sync that reports it again records nothing new.
    /// Not blank, at most 200 bytes, no control characters.
    #[oai(
        nullable,
        validator(
            max_length = 200,
            pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
        )
    )]
    pub external_id: Option<String>,
    /// When the fan sent it (default: now).
    #[oai(nullable)]
    pub received_at: Option<DateTime<Utc>>,
}

/// A message to the conversation's fan.
#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundIn {
    /// Not blank, at most 5,000 characters, no control characters but line breaks and tabs.
    pub text: In<MessageText>,
    /// Price of paid content, in cents.
    #[oai(
        nullable,
        validator(minimum(value = "0"), maximum(value = "100000000000"))
    )]
    pub price_cents: Option<i64>,
    /// At most 20.
    #[oai(nullable, validator(max_items = 20))]
    pub attachments: Option<Vec<AttachmentIn>>,
}

#[derive(ApiResponse)]
enum SendInConversationResponse {
    /// Stored with its job; it will be delivered at the platform's rate.
    #[oai(status = 202)]
    Accepted(Json<super::messages::QueuedOut>),
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct MessageOut {
    pub id: i64,
    pub conversation_id: i64,
    pub fan_id: i64,
    /// `in` (from the fan) or `out` (to the fan).
    pub direction: Word<Direction>,
    pub text: String,
    pub price_cents: i64,
    pub attachments: Vec<AttachmentOut>,
    pub status: Word<MessageStatus>,
    /// Why delivery failed, when it did.
    #[oai(nullable)]
    pub error: Option<String>,
    pub attempts: i64,
    #[oai(nullable)]
    pub campaign_id: Option<i64>,
    #[oai(nullable)]
    pub external_id: Option<String>,
    pub created_at: DateTime<Utc>,
    #[oai(nullable)]
    pub sent_at: Option<DateTime<Utc>>,
    /// When the platform reported it reached the fan (platform events).
    #[oai(skip_serializing_if_is_none)]
    pub delivered_at: Option<DateTime<Utc>>,
    /// When the platform reported the fan read it.
    #[oai(skip_serializing_if_is_none)]
    pub opened_at: Option<DateTime<Utc>>,
    /// Paid unlocks and tips the platform reported on it, in cents.
    pub revenue_cents: i64,
    /// An outbound message still waiting (queued or being delivered): when the platform should
    /// get it, at the creator's pace behind the messages ahead of it.
    #[oai(skip_serializing_if_is_none)]
    pub estimated_send_time: Option<DateTime<Utc>>,
}

impl From<Message> for MessageOut {
    fn from(m: Message) -> Self {
        MessageOut {
            id: m.id.0,
            conversation_id: m.conversation_id.0,
            fan_id: m.fan_id.0,
            direction: Word(m.direction),
            text: m.text,
            price_cents: m.price_cents,
            attachments: m
                .attachments
                .0
                .into_iter()
                .map(|a| AttachmentOut {
                    kind: a.kind,
                    url: a.url,
                })
                .collect(),
            status: Word(m.status),
            error: m.error,
            attempts: m.attempts,
            campaign_id: m.campaign_id.map(|c| c.0),
            external_id: m.external_id,
            created_at: m.created_at,
            sent_at: m.sent_at,
            delivered_at: m.delivered_at,
            opened_at: m.opened_at,
            revenue_cents: m.revenue_cents,
            estimated_send_time: None,
        }
    }
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct MessagePage {
    pub items: Vec<MessageOut>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

#[derive(ApiResponse)]
enum ListConversationsResponse {
    /// One page of the caller's conversations, newest `lastMessageAt` first.
    #[oai(status = 200)]
    Ok(Json<ConversationPage>),
}

#[derive(ApiResponse)]
enum OpenConversationResponse {
    /// The fan already had this conversation.
    #[oai(status = 200)]
    Existing(Json<ConversationOut>),
    /// The conversation was created.
    #[oai(status = 201)]
    Created(Json<ConversationOut>),
}

#[derive(ApiResponse)]
enum GetConversationResponse {
    #[oai(status = 200)]
    Ok(Json<ConversationOut>),
}

#[derive(ApiResponse)]
enum ListMessagesResponse {
    /// One page of the conversation's messages, oldest first.
    #[oai(status = 200)]
    Ok(Json<MessagePage>),
}

#[derive(ApiResponse)]
enum RecordInboundResponse {
    /// This `externalId` was recorded before; nothing changed.
    #[oai(status = 200)]
    AlreadyRecorded(Json<MessageOut>),
    /// Recorded; the conversation's unread count went up by one.
    #[oai(status = 201)]
    Recorded(Json<MessageOut>),
}

#[derive(ApiResponse)]
enum MarkReadResponse {
    /// The conversation, its unread count back to zero.
    #[oai(status = 200)]
    Ok(Json<ConversationOut>),
}

/// Parses the attachments of a message body (`type` a short word, `url` http(s)).
fn parse_attachments(raw: Option<Vec<AttachmentIn>>) -> Result<Vec<NewAttachment>, ApiError> {
    let attachments = raw.unwrap_or_default();
    if attachments.len() > messages::ATTACHMENTS_MAX {
        return Err(ApiError::invalid(
            "attachments",
            format!(
                "must hold at most {} attachments",
                messages::ATTACHMENTS_MAX
            ),
        ));
    }
    attachments
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let kind = a.kind.trim().to_ascii_lowercase();
            if kind.is_empty() || kind.len() > 20 || !kind.chars().all(|c| c.is_ascii_lowercase()) {
                return Err(ApiError::invalid(
                    &format!("attachments[{i}].type"),
                    "must be a short word such as image, video, audio or file",
                ));
            }
            Ok(NewAttachment {
                kind,
                url: a.url.into_inner(),
            })
        })
        .collect()
}

impl InboundIn {
    fn parse(self) -> Result<Inbound, ApiError> {
        let attachments = parse_attachments(self.attachments)?;
        let external_id = match self.external_id {
            Some(id)
                if id.trim().is_empty()
                    || id.len() > messages::EXTERNAL_ID_MAX
                    || id.chars().any(char::is_control) =>
            {
                return Err(ApiError::invalid(
                    "externalId",
                    format!(
                        "must be 1 to {} characters, none a control character",
                        messages::EXTERNAL_ID_MAX
                    ),
                ));
            }
            other => other,
        };
        Ok(Inbound {
            text: self.text.into_inner(),
            price_cents: Cents::new(self.price_cents.unwrap_or(0))
                .map_err(|e| ApiError::invalid("priceCents", e))?,
            attachments,
            external_id,
            received_at: self.received_at.unwrap_or_else(Utc::now),
        })
    }
}

#[OpenApi(prefix_path = "/api/crm/conversations", tag = "ApiTags::Conversations")]
impl ConversationsApi {
    /// List conversations
    ///
    /// The caller's conversations with each fan's name, handle and avatar, newest
    /// `lastMessageAt` first (threads without messages last). `limit` defaults to 50, at most 200.
    #[oai(path = "/", method = "get", operation_id = "listConversations")]
    async fn list(
        &self,
        auth: BearerAuth,
        /// Items per page, 1 to 200 (default 50).
        limit: Query<Option<Limit>>,
        /// Items to skip (default 0).
        offset: Query<Option<Offset>>,
    ) -> Result<ListConversationsResponse, ApiError> {
        let page = page(limit.0, offset.0);
        let listed = conversations::list(&self.state.db, auth.user(), page).await?;
        Ok(ListConversationsResponse::Ok(Json(ConversationPage {
            items: listed.items.into_iter().map(Into::into).collect(),
            total: listed.total,
            limit: page.limit,
            offset: page.offset,
        })))
    }

    /// Open a fan's conversation
    ///
    /// Returns the fan's conversation, creating it when the fan has none.
    #[oai(path = "/", method = "post", operation_id = "openConversation")]
    async fn open(
        &self,
        auth: BearerAuth,
        body: JsonBody<OpenConversation>,
    ) -> Result<OpenConversationResponse, ApiError> {
        let (conversation, created) =
            conversations::open_for_fan(&self.state.db, auth.user(), FanId(body.0.fan_id.0))
                .await?;
        Ok(if created {
            OpenConversationResponse::Created(Json(conversation.into()))
        } else {
            OpenConversationResponse::Existing(Json(conversation.into()))
        })
    }

    /// Get a conversation
    #[oai(path = "/:id", method = "get", operation_id = "getConversation")]
    async fn get(
        &self,
        auth: BearerAuth,
        id: Path<i64>,
    ) -> Result<GetConversationResponse, ApiError> {
        let c = conversations::get(&self.state.db, auth.user(), ConversationId(id.0)).await?;
        Ok(GetConversationResponse::Ok(Json(c.into())))
    }

    /// List a conversation's messages
    ///
    /// Oldest first. `limit` defaults to 50, at most 200.
    #[oai(path = "/:id/messages", method = "get", operation_id = "listMessages")]
    async fn messages(
        &self,
        auth: BearerAuth,
        id: Path<i64>,
        /// Items per page, 1 to 200 (default 50).
        limit: Query<Option<Limit>>,
        /// Items to skip (default 0).
        offset: Query<Option<Offset>>,
    ) -> Result<ListMessagesResponse, ApiError> {
        let page = page(limit.0, offset.0);
        let listed =
            messages::list(&self.state.db, auth.user(), ConversationId(id.0), page).await?;
        // Outbound messages still waiting get the time they should go, as the send answered.
        let waiting: Vec<MessageId> = listed
            .items
            .iter()
            .filter(|m| {
                m.direction == Direction::Out
                    && matches!(m.status, MessageStatus::Queued | MessageStatus::Sending)
            })
            .map(|m| m.id)
            .collect();
        let ahead: HashMap<MessageId, i64> = messages::ahead_of_many(&self.state.db, &waiting)
            .await?
            .into_iter()
            .collect();
        let last = if waiting.is_empty() {
            None
        } else {
            deliveries::last_started(&self.state.db, auth.user()).await?
        };
        Ok(ListMessagesResponse::Ok(Json(MessagePage {
            items: listed
                .items
                .into_iter()
                .map(|m| {
                    let eta = ahead
                        .get(&m.id)
                        .map(|&n| self.state.pace.eta(m.created_at, last, n));
                    let mut out = MessageOut::from(m);
                    out.estimated_send_time = eta;
                    out
                })
                .collect(),
            total: listed.total,
            limit: page.limit,
            offset: page.offset,
        })))
    }

    /// Send a message in a conversation
    ///
    /// Stores the message (`queued`) and its delivery job in one transaction, moves the
    /// conversation's `lastMessageAt`, and answers 202. A reply has priority 9: it goes out
    /// before the creator's campaigns (priority 5 unless they say otherwise).
    #[oai(
        path = "/:id/messages",
        method = "post",
        operation_id = "sendInConversation"
    )]
    async fn send(
        &self,
        auth: BearerAuth,
        id: Path<i64>,
        body: JsonBody<OutboundIn>,
        req: &poem::Request,
    ) -> Result<SendInConversationResponse, ApiError> {
        let b = body.0;
        let out = super::messages::outgoing(
            b.text.into_inner(),
            b.price_cents,
            parse_attachments(b.attachments)?,
            Some(messages::PRIORITY_REPLY),
        )?;
        let queued = super::messages::queue_one(
            &self.state,
            req,
            auth.user(),
            Recipient::Conversation(ConversationId(id.0)),
            out,
        )
        .await?;
        Ok(SendInConversationResponse::Accepted(Json(queued)))
    }

    /// Record an inbound message
    ///
    /// What a platform sync calls when a fan writes: stores the message, raises the unread
    /// count and moves `lastMessageAt`. Replaying the same `externalId` changes nothing.
    #[oai(
        path = "/:id/inbound",
        method = "post",
        operation_id = "recordInboundMessage"
    )]
    async fn inbound(
        &self,
        auth: BearerAuth,
        id: Path<i64>,
        body: JsonBody<InboundIn>,
        req: &poem::Request,
    ) -> Result<RecordInboundResponse, ApiError> {
        let inbound = body.0.parse()?;
        let (message, created) = match super::idempotency::committed_as(req, Effect::message)? {
            // The first attempt recorded it and died before answering.
            Some(id) => (messages::get(&self.state.db, auth.user(), id).await?, true),
            None => {
                let key = super::idempotency::guard(req);
                triggers::inbound(
                    &self.state.db,
                    auth.user(),
                    ConversationId(id.0),
                    inbound,
                    key.as_ref(),
                )
                .await?
            }
        };
        Ok(if created {
            RecordInboundResponse::Recorded(Json(message.into()))
        } else {
            RecordInboundResponse::AlreadyRecorded(Json(message.into()))
        })
    }

    /// Mark a conversation read
    ///
    /// Resets its unread count to zero.
    #[oai(
        path = "/:id/read",
        method = "post",
        operation_id = "markConversationRead"
    )]
    async fn mark_read(
        &self,
        auth: BearerAuth,
        id: Path<i64>,
    ) -> Result<MarkReadResponse, ApiError> {
        let c = conversations::mark_read(&self.state.db, auth.user(), ConversationId(id.0)).await?;
        Ok(MarkReadResponse::Ok(Json(c.into())))
    }
}

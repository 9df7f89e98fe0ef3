//! `POST /api/onlyfans/events`: what a platform sync reports (deliveries, opens, paid unlocks,
//! tips, subscriptions), applied once each.

use chrono::{DateTime, Duration, Utc};
use fanqueue_jobs::{
    crm::{
        events::{self, EventKind, ID_MAX, MAX_BATCH, MessageRef, Outcome, PlatformEvent},
        fans::FanRef,
    },
    domain::{Cents, FanId, MessageId},
};
use poem_openapi::{ApiResponse, Enum, Object, OpenApi, payload::Json};
use serde::Deserialize;

use super::{
    body::JsonBody,
    error::ApiError,
    ids::IdIn,
    rules::{FanHandle, In},
    state::{ApiTags, BearerAuth, State},
};

pub struct EventsApi {
    state: State,
}

impl EventsApi {
    pub fn new(state: State) -> Self {
        EventsApi { state }
    }
}

#[derive(Debug, Clone, Copy, Enum, Deserialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// The message reached the fan (`messageId` or `platformMessageId`).
    Delivered,
    /// The fan read the message (`messageId` or `platformMessageId`); it counts as delivered.
    Opened,
    /// The fan unlocked a paid message (`amountCents`; the message, when given, earns it).
    Purchased,
    /// The fan tipped (`amountCents`; on a message, when given).
    Tip,
    /// The fan subscribed or renewed (`amountCents`).
    Subscription,
    /// The fan's subscription ended (no amount).
    #[oai(rename = "subscription_expired")]
    #[serde(rename = "subscription_expired")]
    SubscriptionExpired,
    /// The fan turned renewal off: still subscribed until the period ends (no amount).
    #[oai(rename = "subscription_renewal_off")]
    #[serde(rename = "subscription_renewal_off")]
    SubscriptionRenewalOff,
}

impl From<EventType> for EventKind {
    fn from(t: EventType) -> Self {
        match t {
            EventType::Delivered => EventKind::Delivered,
            EventType::Opened => EventKind::Opened,
            EventType::Purchased => EventKind::Purchased,
            EventType::Tip => EventKind::Tip,
            EventType::Subscription => EventKind::Subscription,
            EventType::SubscriptionExpired => EventKind::SubscriptionExpired,
            EventType::SubscriptionRenewalOff => EventKind::SubscriptionRenewalOff,
        }
    }
}

/// One event. The fan is named by `fanId` or `fanHandle` (one of them); `delivered` and
/// `opened` name our message by `messageId` or the platform's `platformMessageId`; the
/// others carry `amountCents`.
#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventIn {
    /// The platform's id of the event (1 to 200 printable ASCII characters, no spaces):
    /// sending it again changes nothing.
    #[oai(validator(pattern = r"^[!-~]{1,200}$"))]
    pub id: String,
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub kind: EventType,
    /// When it happened (RFC 3339), at most a day ahead of the server's clock.
    pub at: DateTime<Utc>,
    /// The fan's id (a number, or a string of digits).
    pub fan_id: Option<IdIn>,
    /// The fan's handle on OnlyFans (`@name` or `name`, 1 to 64 letters, digits, `_`, `.` or
    /// `-`), matched without case.
    pub fan_handle: Option<In<FanHandle>>,
    /// Our id of the outbound message (a number, or a string of digits).
    pub message_id: Option<IdIn>,
    /// The platform's id of the outbound message, as its answer to the delivery gave it (1 to
    /// 200 printable ASCII characters, no spaces).
    #[oai(validator(pattern = r"^[!-~]{1,200}$"))]
    pub platform_message_id: Option<String>,
    /// What the fan paid, in cents (purchased, tip, subscription).
    #[oai(validator(minimum(value = "1"), maximum(value = "100000000000")))]
    pub amount_cents: Option<i64>,
    /// When the subscription period ends (it renews or expires then; RFC 3339), on a
    /// `subscription` or `subscription_renewal_off` event: `subscription_expiring` automations
    /// count their days from it.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A batch of events.
#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventsIn {
    /// 1 to 500 events.
    #[oai(validator(min_items = 1, max_items = 500))]
    pub events: Vec<EventIn>,
}

/// What became of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum EventStatus {
    /// Recorded.
    Applied,
    /// Its id was applied before: nothing changed.
    Duplicate,
    /// It names no fan or message of yours: nothing changed, and it may be sent again.
    Rejected,
}

/// What became of one event.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct EventResultOut {
    pub id: String,
    pub status: EventStatus,
    /// Why it was rejected.
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<String>,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct EventsOut {
    pub applied: i64,
    pub duplicates: i64,
    pub rejected: i64,
    /// One per event, in the batch's order.
    pub results: Vec<EventResultOut>,
}

#[derive(ApiResponse)]
enum EventsResponse {
    /// Each event's outcome; the applied ones are committed.
    #[oai(status = 200)]
    Ok(Json<EventsOut>),
}

/// How far ahead of the server's clock an event's time may be (clock skew).
const FUTURE_SLACK: Duration = Duration::days(1);

/// 1 to [`ID_MAX`] printable ASCII characters, no spaces: what the document's pattern says.
fn printable(s: &str) -> bool {
    (1..=ID_MAX).contains(&s.len()) && s.bytes().all(|b| (b'!'..=b'~').contains(&b))
}

fn parse(i: usize, e: EventIn, now: DateTime<Utc>) -> Result<PlatformEvent, ApiError> {
    let field = |name: &str| format!("events[{i}].{name}");
    let kind = EventKind::from(e.kind);
    if !printable(&e.id) {
        return Err(ApiError::invalid(
            &field("id"),
            format!("must be 1 to {ID_MAX} printable ASCII characters, without spaces"),
        ));
    }
    let id = e.id.as_str();
    if e.at > now + FUTURE_SLACK {
        return Err(ApiError::invalid(&field("at"), "is more than a day ahead"));
    }
    let fan = match (e.fan_id, e.fan_handle) {
        // An id that names no fan (0, say) is that event's rejection, not the batch's.
        (Some(IdIn(id)), None) => FanRef::Id(FanId(id)),
        (None, Some(h)) => FanRef::Handle(h.into_inner()),
        _ => {
            return Err(ApiError::invalid(
                &field("fanId"),
                "or `fanHandle` names the fan: exactly one of them",
            ));
        }
    };
    let message = match (e.message_id, e.platform_message_id) {
        (None, None) => None,
        (Some(IdIn(id)), None) => Some(MessageRef::Ours(MessageId(id))),
        (None, Some(p)) if printable(&p) => Some(MessageRef::Platform(p)),
        (None, Some(_)) => {
            return Err(ApiError::invalid(
                &field("platformMessageId"),
                format!("must be 1 to {ID_MAX} printable ASCII characters, without spaces"),
            ));
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                &field("messageId"),
                "and `platformMessageId` both name the message: give one",
            ));
        }
    };
    if kind.needs_message() && message.is_none() {
        return Err(ApiError::invalid(
            &field("messageId"),
            format!("or `platformMessageId` is required for a `{kind}` event"),
        ));
    }
    let amount = match (kind.carries_amount(), e.amount_cents) {
        (true, Some(c)) if c > 0 => {
            Some(Cents::new(c).map_err(|err| ApiError::invalid(&field("amountCents"), err))?)
        }
        (true, _) => {
            return Err(ApiError::invalid(
                &field("amountCents"),
                format!("must be a positive amount for a `{kind}` event"),
            ));
        }
        (false, None) => None,
        (false, Some(_)) => {
            return Err(ApiError::invalid(
                &field("amountCents"),
                format!("is not part of a `{kind}` event"),
            ));
        }
    };
    let ends_at = match (kind, e.expires_at) {
        (_, None) => None,
        (EventKind::Subscription | EventKind::SubscriptionRenewalOff, Some(t)) => Some(t),
        (_, Some(_)) => {
            return Err(ApiError::invalid(
                &field("expiresAt"),
                format!("is not part of a `{kind}` event"),
            ));
        }
    };
    Ok(PlatformEvent {
        id: id.to_owned(),
        kind,
        at: e.at,
        fan,
        message,
        amount,
        ends_at,
    })
}

#[OpenApi(prefix_path = "/api/onlyfans/events", tag = "ApiTags::Events")]
impl EventsApi {
    /// Report platform events
    ///
    /// A batch of at most 500 events the platform reported for the caller: message
    /// deliveries and opens, paid unlocks, tips and subscriptions. Each is applied once (an
    /// event id sent again is a `duplicate`): messages get `deliveredAt`/`openedAt`, their
    /// campaigns' `delivered`, `opened` and `revenueCents` follow, fans gain the amounts in
    /// `valueCents` (recorded in their value history) and a later last-seen time. An event
    /// naming no fan or message of the caller is `rejected` on its own; the others apply.
    #[oai(path = "/", method = "post", operation_id = "reportEvents")]
    async fn report(
        &self,
        auth: BearerAuth,
        body: JsonBody<EventsIn>,
    ) -> Result<EventsResponse, ApiError> {
        let batch = body.0.events;
        if batch.is_empty() || batch.len() > MAX_BATCH {
            return Err(ApiError::invalid(
                "events",
                format!("must hold 1 to {MAX_BATCH} events"),
            ));
        }
        let now = Utc::now();
        let parsed = batch
            .into_iter()
            .enumerate()
            .map(|(i, e)| parse(i, e, now))
            .collect::<Result<Vec<_>, _>>()?;
        let outcomes = events::apply(&self.state.db, auth.user(), &parsed).await?;
        let mut out = EventsOut {
            applied: 0,
            duplicates: 0,
            rejected: 0,
            results: Vec::with_capacity(parsed.len()),
        };
        for (e, outcome) in parsed.into_iter().zip(outcomes) {
            let (status, error) = match outcome {
                Outcome::Applied => {
                    out.applied += 1;
                    (EventStatus::Applied, None)
                }
                Outcome::Duplicate => {
                    out.duplicates += 1;
                    (EventStatus::Duplicate, None)
                }
                Outcome::Rejected(why) => {
                    out.rejected += 1;
                    (EventStatus::Rejected, Some(why))
                }
            };
            out.results.push(EventResultOut {
                id: e.id,
                status,
                error,
            });
        }
        Ok(EventsResponse::Ok(Json(out)))
    }
}

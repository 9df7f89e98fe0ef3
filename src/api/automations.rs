//! `/api/crm/automations`: lifecycle automations (a trigger, then waits, sends and conditions
//! per enrolled fan), their enrollments and their funnel; and each fan's timeline of what the
//! automations did to them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use fanqueue_jobs::{
    crm::automations::{
        self, Automation, AutomationStatus,
        definition::{
            Audience, Condition, Definition, Otherwise, QuietHours, Send, Step, Trigger, Variant,
            Wait,
        },
        enrollments::{Enrollment, EnrollmentStatus, StepRow},
        report::{self, Funnel},
    },
    domain::{AutomationId, CampaignId, FanId, MessageId, SegmentId},
    idempotency::Effect,
};
use poem_openapi::{
    ApiResponse, Object, OpenApi, Union,
    param::{Path, Query},
    payload::Json,
};
use serde::Deserialize;

use super::{
    body::JsonBody,
    error::ApiError,
    idempotency,
    ids::IdIn,
    messages::{media, outgoing},
    rules::{AutomationName, In, Limit, MediaUrl, MessageText, Offset, page},
    segments::{FilterIn, FilterOut},
    state::{ApiTags, BearerAuth, State},
};

pub struct AutomationsApi {
    state: State,
}

impl AutomationsApi {
    pub fn new(state: State) -> Self {
        AutomationsApi { state }
    }
}

/// No parameters.
#[derive(Debug, Clone, Default, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct Nothing {}

/// The kinds of trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, poem_openapi::Enum, Deserialize)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum TriggerType {
    /// A `subscription` event for a fan with no subscription on record.
    Subscription,
    /// A `subscription` event for a fan whose subscription had expired.
    Resubscription,
    /// `daysBefore` days (or fewer) before a subscription with renewal off ends (the
    /// `expiresAt` of its events); checked daily, once per subscription period.
    SubscriptionExpiring,
    /// A `subscription_expired` event.
    SubscriptionExpired,
    /// A `purchased` event (of `messageId` or of a message of `campaignId`, when given).
    Purchased,
    /// A `tip` event.
    Tip,
    /// An inbound message (containing `keyword`, without case, when given).
    Inbound,
    /// A fan created through the API (an import does not fire it yet).
    FanCreated,
    /// Not seen (nor created) for `days` days; checked daily, once per inactivity spell.
    Inactive,
}

/// What enrolls a fan: `{"type": "subscription"}`, `{"type": "subscription_expiring",
/// "daysBefore": 3}`, `{"type": "inactive", "days": 14}`, `{"type": "inbound", "keyword":
/// "price"}`… Each parameter belongs to one type (another type's is a 422). Event triggers
/// fire once per event id.
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TriggerIn {
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub kind: TriggerType,
    /// `subscription_expiring`: 1 to 3650 days before the end.
    #[oai(
        nullable,
        skip_serializing_if_is_none,
        validator(minimum(value = "1"), maximum(value = "3650"))
    )]
    pub days_before: Option<u32>,
    /// `purchased`: only purchases of this message of the caller's.
    #[oai(nullable, skip_serializing_if_is_none)]
    pub message_id: Option<IdIn>,
    /// `purchased`: only purchases of a message of this campaign of the caller's.
    #[oai(nullable, skip_serializing_if_is_none)]
    pub campaign_id: Option<IdIn>,
    /// `inbound`: only messages containing this (1 to 100 characters, not blank).
    #[oai(
        nullable,
        skip_serializing_if_is_none,
        validator(min_length = 1, max_length = 100)
    )]
    pub keyword: Option<String>,
    /// `inactive`: 1 to 3650 days without being seen.
    #[oai(
        nullable,
        skip_serializing_if_is_none,
        validator(minimum(value = "1"), maximum(value = "3650"))
    )]
    pub days: Option<u32>,
}

impl TriggerIn {
    fn parse(self) -> Result<Trigger, ApiError> {
        use TriggerType as T;
        let given = [
            (
                "daysBefore",
                self.days_before.is_some(),
                T::SubscriptionExpiring,
            ),
            ("messageId", self.message_id.is_some(), T::Purchased),
            ("campaignId", self.campaign_id.is_some(), T::Purchased),
            ("keyword", self.keyword.is_some(), T::Inbound),
            ("days", self.days.is_some(), T::Inactive),
        ];
        if let Some((field, _, _)) = given.iter().find(|(_, set, of)| *set && *of != self.kind) {
            return Err(ApiError::unusable(
                &format!("trigger.{field}"),
                "is not a parameter of this trigger type",
            ));
        }
        let required = |field: &str, v: Option<u32>| {
            v.ok_or_else(|| {
                ApiError::unusable(
                    &format!("trigger.{field}"),
                    "is required for this trigger type",
                )
            })
        };
        Ok(match self.kind {
            T::Subscription => Trigger::Subscription,
            T::Resubscription => Trigger::Resubscription,
            T::SubscriptionExpiring => Trigger::SubscriptionExpiring {
                days_before: required("daysBefore", self.days_before)?,
            },
            T::SubscriptionExpired => Trigger::SubscriptionExpired,
            T::Purchased => Trigger::Purchased {
                message_id: self.message_id.map(|i| MessageId(i.0)),
                campaign_id: self.campaign_id.map(|i| CampaignId(i.0)),
            },
            T::Tip => Trigger::Tip,
            T::Inbound => Trigger::Inbound {
                keyword: self.keyword.map(|k| k.trim().to_owned()),
            },
            T::FanCreated => Trigger::FanCreated,
            T::Inactive => Trigger::Inactive {
                days: required("days", self.days)?,
            },
        })
    }

    fn of(t: &Trigger) -> TriggerIn {
        let mut out = TriggerIn {
            kind: TriggerType::Subscription,
            days_before: None,
            message_id: None,
            campaign_id: None,
            keyword: None,
            days: None,
        };
        out.kind = match t {
            Trigger::Subscription => TriggerType::Subscription,
            Trigger::Resubscription => TriggerType::Resubscription,
            Trigger::SubscriptionExpiring { days_before } => {
                out.days_before = Some(*days_before);
                TriggerType::SubscriptionExpiring
            }
            Trigger::SubscriptionExpired => TriggerType::SubscriptionExpired,
            Trigger::Purchased {
                message_id,
                campaign_id,
            } => {
                out.message_id = message_id.map(|m| IdIn(m.0));
                out.campaign_id = campaign_id.map(|c| IdIn(c.0));
                TriggerType::Purchased
            }
            Trigger::Tip => TriggerType::Tip,
            Trigger::Inbound { keyword } => {
                out.keyword = keyword.clone();
                TriggerType::Inbound
            }
            Trigger::FanCreated => TriggerType::FanCreated,
            Trigger::Inactive { days } => {
                out.days = Some(*days);
                TriggerType::Inactive
            }
        };
        out
    }
}

/// How long to wait: `{"seconds": n}`, or `{"minSeconds": a, "maxSeconds": b}` for a time
/// drawn between them (once per enrollment). At most a year.
#[derive(Debug, Clone, Default, Object, Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaitIn {
    #[oai(
        nullable,
        skip_serializing_if_is_none,
        validator(minimum(value = "0"), maximum(value = "31622400"))
    )]
    pub seconds: Option<u64>,
    #[oai(
        nullable,
        skip_serializing_if_is_none,
        validator(minimum(value = "0"), maximum(value = "31622400"))
    )]
    pub min_seconds: Option<u64>,
    #[oai(
        nullable,
        skip_serializing_if_is_none,
        validator(minimum(value = "0"), maximum(value = "31622400"))
    )]
    pub max_seconds: Option<u64>,
}

/// One version of a send's message, and its share of the enrollments.
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VariantIn {
    /// 1 to 50 characters, different from the step's other variants.
    #[oai(validator(min_length = 1, max_length = 50))]
    pub name: String,
    /// Its share: enrollments go to variants in proportion to their weights (0 to 1000).
    #[oai(validator(minimum(value = "0"), maximum(value = "1000")))]
    pub weight: u32,
    pub content: In<MessageText>,
    #[oai(nullable, skip_serializing_if_is_none, validator(max_items = 20))]
    pub media_urls: Option<Vec<In<MediaUrl>>>,
    #[oai(
        nullable,
        skip_serializing_if_is_none,
        validator(minimum(value = "0"), maximum(value = "100000000000"))
    )]
    pub price_cents: Option<i64>,
}

/// A message to the fan, through the automations lane (after one-to-one replies, before
/// campaigns).
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendStepIn {
    /// The text (when the step has no variants, or for none of them: the variants' own).
    pub content: In<MessageText>,
    #[oai(nullable, skip_serializing_if_is_none, validator(max_items = 20))]
    pub media_urls: Option<Vec<In<MediaUrl>>>,
    /// The price to unlock it, in cents (0: free).
    #[oai(
        nullable,
        skip_serializing_if_is_none,
        validator(minimum(value = "0"), maximum(value = "100000000000"))
    )]
    pub price_cents: Option<i64>,
    /// A/B: each enrollment gets one of these, by weight, the same one every time.
    #[oai(nullable, skip_serializing_if_is_none, validator(max_items = 10))]
    pub variants: Option<Vec<VariantIn>>,
}

/// A check on the fan at that moment: a segment filter.
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConditionIn {
    pub filter: FilterIn,
    /// When the filter does not hold: `exit` ends the enrollment (`exited: condition`),
    /// `continue` skips the step right after the condition and goes on.
    #[oai(rename = "else")]
    #[serde(rename = "else")]
    pub otherwise: OtherwiseIn,
}

#[derive(Debug, Clone, Copy, poem_openapi::Enum, Deserialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum OtherwiseIn {
    Exit,
    Continue,
}

#[derive(Debug, Clone, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct WaitStep {
    pub wait: WaitIn,
}
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct SendStep {
    pub send: SendStepIn,
}
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct ConditionStep {
    pub condition: ConditionIn,
}
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct ExitStep {
    pub exit: Nothing,
}

/// One step: `{"wait": …}`, `{"send": …}`, `{"condition": …}` or `{"exit": {}}`.
#[derive(Debug, Clone, Union, Deserialize)]
#[oai(one_of)]
#[serde(untagged)]
pub enum StepIn {
    Wait(WaitStep),
    Send(SendStep),
    Condition(ConditionStep),
    Exit(ExitStep),
}

/// Hours when nothing is sent: a send due then waits until `to`.
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuietHoursIn {
    /// `HH:MM`, 24-hour.
    #[oai(validator(max_length = 5))]
    pub from: String,
    /// `HH:MM`; before `from` spans midnight.
    #[oai(validator(max_length = 5))]
    pub to: String,
    /// IANA time zone, e.g. `Europe/Paris`.
    #[oai(validator(max_length = 64))]
    pub timezone: String,
}

/// Who may be enrolled: a segment's fans or a filter's, checked when the trigger fires.
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AutomationAudienceIn {
    #[oai(nullable, skip_serializing_if_is_none)]
    pub segment_id: Option<IdIn>,
    #[oai(nullable, skip_serializing_if_is_none)]
    pub filter: Option<FilterIn>,
}

/// An automation's definition as the API reads and writes it.
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateAutomation {
    pub name: In<AutomationName>,
    pub trigger: TriggerIn,
    /// 1 to 50 steps, run in order.
    #[oai(validator(min_items = 1, max_items = 50))]
    pub steps: Vec<StepIn>,
    /// A fan who writes in ends its enrollment (`exited: replied`) before any pending send.
    #[oai(nullable)]
    pub stop_on_reply: Option<bool>,
    /// A fan is enrolled at most once, ever.
    #[oai(nullable)]
    pub once_per_fan: Option<bool>,
    /// A fan enrolled within this many hours (1 to 87600) is not enrolled again.
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "87600")))]
    pub cooldown_hours: Option<u32>,
    #[oai(nullable)]
    pub quiet_hours: Option<QuietHoursIn>,
    #[oai(nullable)]
    pub audience: Option<AutomationAudienceIn>,
}

/// Changes: a name alone renames; a `trigger` and `steps` (with the rules) store a new version
/// that new enrollments take (running ones keep theirs).
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateAutomation {
    #[oai(nullable)]
    pub name: Option<In<AutomationName>>,
    #[oai(nullable)]
    pub trigger: Option<TriggerIn>,
    #[oai(nullable, validator(min_items = 1, max_items = 50))]
    pub steps: Option<Vec<StepIn>>,
    #[oai(nullable)]
    pub stop_on_reply: Option<bool>,
    #[oai(nullable)]
    pub once_per_fan: Option<bool>,
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "87600")))]
    pub cooldown_hours: Option<u32>,
    #[oai(nullable)]
    pub quiet_hours: Option<QuietHoursIn>,
    #[oai(nullable)]
    pub audience: Option<AutomationAudienceIn>,
}

/// The parts of a definition both bodies carry.
struct Parts {
    trigger: TriggerIn,
    steps: Vec<StepIn>,
    stop_on_reply: Option<bool>,
    once_per_fan: Option<bool>,
    cooldown_hours: Option<u32>,
    quiet_hours: Option<QuietHoursIn>,
    audience: Option<AutomationAudienceIn>,
}

impl Parts {
    fn parse(self) -> Result<Definition, ApiError> {
        let steps = self
            .steps
            .into_iter()
            .enumerate()
            .map(|(i, s)| step(i, s))
            .collect::<Result<Vec<_>, _>>()?;
        let quiet_hours = self
            .quiet_hours
            .map(|q| {
                QuietHours::parse(&q.from, &q.to, &q.timezone)
                    .map_err(|e| ApiError::unusable("quietHours", e.0))
            })
            .transpose()?;
        let audience = match self.audience {
            None => None,
            Some(AutomationAudienceIn {
                segment_id: Some(id),
                filter: None,
            }) => Some(Audience::SegmentId(SegmentId(id.0))),
            Some(AutomationAudienceIn {
                segment_id: None,
                filter: Some(f),
            }) => Some(Audience::Filter(Box::new(f.parse()?))),
            Some(_) => {
                return Err(ApiError::unusable(
                    "audience",
                    "give one of segmentId and filter",
                ));
            }
        };
        let d = Definition {
            trigger: self.trigger.parse()?,
            steps,
            stop_on_reply: self.stop_on_reply.unwrap_or(false),
            once_per_fan: self.once_per_fan.unwrap_or(false),
            cooldown_hours: self.cooldown_hours,
            quiet_hours,
            audience,
        };
        d.check()
            .map_err(|(field, why)| ApiError::unusable(&field, why))?;
        Ok(d)
    }
}

fn step(i: usize, s: StepIn) -> Result<Step, ApiError> {
    Ok(match s {
        StepIn::Wait(WaitStep { wait }) => Step::Wait(match wait {
            WaitIn {
                seconds: Some(seconds),
                min_seconds: None,
                max_seconds: None,
            } => Wait::Exactly { seconds },
            WaitIn {
                seconds: None,
                min_seconds: Some(min_seconds),
                max_seconds: Some(max_seconds),
            } => Wait::Between {
                min_seconds,
                max_seconds,
            },
            _ => {
                return Err(ApiError::unusable(
                    &format!("steps[{i}].wait"),
                    "give seconds, or minSeconds and maxSeconds",
                ));
            }
        }),
        StepIn::Send(SendStep { send }) => {
            let field = format!("steps[{i}].send");
            let message = template(&field, send.content, send.media_urls, send.price_cents)?;
            let variants = send
                .variants
                .unwrap_or_default()
                .into_iter()
                .map(|v| {
                    if v.name.trim().is_empty() {
                        return Err(ApiError::unusable(
                            &format!("{field}.variants"),
                            "names must not be blank",
                        ));
                    }
                    Ok(Variant {
                        name: v.name.trim().to_owned(),
                        weight: v.weight,
                        template: template(&field, v.content, v.media_urls, v.price_cents)?,
                    })
                })
                .collect::<Result<Vec<_>, ApiError>>()?;
            Step::Send(Box::new(Send {
                template: message,
                variants,
            }))
        }
        StepIn::Condition(ConditionStep { condition }) => Step::Condition(Box::new(Condition {
            filter: condition.filter.parse()?,
            otherwise: match condition.otherwise {
                OtherwiseIn::Exit => Otherwise::Exit,
                OtherwiseIn::Continue => Otherwise::Continue,
            },
        })),
        StepIn::Exit(_) => Step::Exit {},
    })
}

fn template(
    field: &str,
    content: In<MessageText>,
    media_urls: Option<Vec<In<MediaUrl>>>,
    price_cents: Option<i64>,
) -> Result<serde_json::Value, ApiError> {
    if let Some(p) = price_cents
        && !(0..=100_000_000_000).contains(&p)
    {
        return Err(ApiError::unusable(
            &format!("{field}.priceCents"),
            "must be 0 to 100000000000",
        ));
    }
    Ok(outgoing(content.into_inner(), price_cents, media(media_urls)?, None)?.template())
}

/// A send's message as the API shows it.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct SendShown {
    pub content: String,
    #[oai(skip_serializing_if_is_none)]
    pub media_urls: Option<Vec<String>>,
    #[oai(skip_serializing_if_is_none)]
    pub price_cents: Option<i64>,
    #[oai(skip_serializing_if_is_none)]
    pub variants: Option<Vec<VariantShown>>,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct VariantShown {
    pub name: String,
    pub weight: u32,
    pub content: String,
    #[oai(skip_serializing_if_is_none)]
    pub media_urls: Option<Vec<String>>,
    #[oai(skip_serializing_if_is_none)]
    pub price_cents: Option<i64>,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ConditionShown {
    pub filter: FilterOut,
    #[oai(rename = "else")]
    pub otherwise: OtherwiseIn,
}

#[derive(Debug, Object)]
pub struct SendShownStep {
    pub send: SendShown,
}

#[derive(Debug, Object)]
pub struct ConditionShownStep {
    pub condition: ConditionShown,
}

/// One step as stored.
#[derive(Debug, Union)]
#[oai(one_of)]
pub enum StepShown {
    Wait(WaitStep),
    Send(SendShownStep),
    Condition(ConditionShownStep),
    Exit(ExitStep),
}

/// Who may be enrolled, as stored.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct AudienceShown {
    #[oai(skip_serializing_if_is_none)]
    pub segment_id: Option<i64>,
    #[oai(skip_serializing_if_is_none)]
    pub filter: Option<FilterOut>,
}

/// A stored template's text, media and price.
fn shown(t: &serde_json::Value) -> (String, Option<Vec<String>>, Option<i64>) {
    let content = t["content"].as_str().unwrap_or_default().to_owned();
    let media: Vec<String> = t["mediaUrls"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let price = t["priceCents"].as_i64().filter(|p| *p > 0);
    (content, (!media.is_empty()).then_some(media), price)
}

fn step_shown(s: &Step) -> StepShown {
    match s {
        Step::Wait(Wait::Exactly { seconds }) => StepShown::Wait(WaitStep {
            wait: WaitIn {
                seconds: Some(*seconds),
                ..WaitIn::default()
            },
        }),
        Step::Wait(Wait::Between {
            min_seconds,
            max_seconds,
        }) => StepShown::Wait(WaitStep {
            wait: WaitIn {
                seconds: None,
                min_seconds: Some(*min_seconds),
                max_seconds: Some(*max_seconds),
            },
        }),
        Step::Send(s) => {
            let (content, media_urls, price_cents) = shown(&s.template);
            let variants = s
                .variants
                .iter()
                .map(|v| {
                    let (content, media_urls, price_cents) = shown(&v.template);
                    VariantShown {
                        name: v.name.clone(),
                        weight: v.weight,
                        content,
                        media_urls,
                        price_cents,
                    }
                })
                .collect::<Vec<_>>();
            StepShown::Send(SendShownStep {
                send: SendShown {
                    content,
                    media_urls,
                    price_cents,
                    variants: (!variants.is_empty()).then_some(variants),
                },
            })
        }
        Step::Condition(c) => StepShown::Condition(ConditionShownStep {
            condition: ConditionShown {
                filter: FilterOut::from(&c.filter),
                otherwise: match c.otherwise {
                    Otherwise::Exit => OtherwiseIn::Exit,
                    Otherwise::Continue => OtherwiseIn::Continue,
                },
            },
        }),
        Step::Exit {} => StepShown::Exit(ExitStep { exit: Nothing {} }),
    }
}

/// A step's or a variant's figures.
#[derive(Debug, Clone, Default, Object)]
#[oai(rename_all = "camelCase")]
pub struct Figures {
    /// Messages queued.
    pub messages: i64,
    /// Of them, handed to the platform.
    pub sent: i64,
    pub delivered: i64,
    pub opened: i64,
    /// Messages unlocked (`purchased` events naming them).
    pub purchases: i64,
    /// Revenue of `purchased` and `tip` events naming these messages.
    pub revenue_cents: i64,
}

/// A variant's figures.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct VariantOut {
    pub name: String,
    #[oai(flatten)]
    pub figures: Figures,
    /// Purchases per message (0 to 1).
    pub conversion: f64,
    pub revenue_per_recipient_cents: f64,
}

/// A step's funnel.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct StepOut {
    /// Its place, from 0.
    pub step: i32,
    /// `wait`, `send`, `condition` or `exit`.
    pub kind: String,
    /// Enrollments that went through it.
    pub entered: i64,
    /// Enrollments waiting at it now.
    pub waiting: i64,
    /// Outcomes: `waited`, `sent`, `capped`, `withdrawn`, `passed`, `failed`, `exited`.
    pub outcomes: BTreeMap<String, i64>,
    #[oai(flatten)]
    pub figures: Figures,
    /// Per variant, for a send with variants.
    pub variants: Vec<VariantOut>,
}

/// An automation's funnel.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct MetricsOut {
    pub enrolled: i64,
    pub active: i64,
    pub completed: i64,
    pub exited: i64,
    /// Exits by reason: `replied`, `condition`, `exit_step`, `deleted`.
    pub exited_by: BTreeMap<String, i64>,
    #[oai(flatten)]
    pub figures: Figures,
    pub steps: Vec<StepOut>,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct AutomationOut {
    pub id: i64,
    pub name: String,
    /// `active` or `paused`.
    pub status: String,
    /// Its definition's version: an edit of the trigger or steps adds one.
    pub version: i32,
    pub trigger: TriggerIn,
    pub steps: Vec<StepShown>,
    pub stop_on_reply: bool,
    pub once_per_fan: bool,
    #[oai(skip_serializing_if_is_none)]
    pub cooldown_hours: Option<u32>,
    #[oai(skip_serializing_if_is_none)]
    pub quiet_hours: Option<QuietHoursIn>,
    #[oai(skip_serializing_if_is_none)]
    pub audience: Option<AudienceShown>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub metrics: MetricsOut,
}

fn figures(f: &report::Figures) -> Figures {
    Figures {
        messages: f.messages,
        sent: f.sent,
        delivered: f.delivered,
        opened: f.opened,
        purchases: f.purchases,
        revenue_cents: f.revenue_cents,
    }
}

impl AutomationOut {
    fn of(a: Automation, funnel: Funnel) -> Self {
        let d = &a.definition.0;
        let metrics = MetricsOut {
            enrolled: funnel.enrolled,
            active: funnel.active,
            completed: funnel.completed,
            exited: funnel.exited_by.values().sum(),
            exited_by: funnel.exited_by.clone(),
            figures: figures(&funnel.figures),
            steps: funnel
                .steps
                .iter()
                .enumerate()
                .map(|(i, s)| StepOut {
                    step: i as i32,
                    kind: d.steps.get(i).map_or("?", Step::kind).to_owned(),
                    entered: s.entered,
                    waiting: s.waiting,
                    outcomes: s.outcomes.clone(),
                    figures: figures(&s.figures),
                    variants: s
                        .variants
                        .iter()
                        .map(|(name, f)| VariantOut {
                            name: name.clone(),
                            figures: figures(f),
                            conversion: ratio(f.purchases, f.messages),
                            revenue_per_recipient_cents: ratio(f.revenue_cents, f.messages),
                        })
                        .collect(),
                })
                .collect(),
        };
        AutomationOut {
            id: a.id.0,
            name: a.name,
            status: a.status.to_string(),
            version: a.version,
            trigger: TriggerIn::of(&d.trigger),
            steps: d.steps.iter().map(step_shown).collect(),
            stop_on_reply: d.stop_on_reply,
            once_per_fan: d.once_per_fan,
            cooldown_hours: d.cooldown_hours,
            quiet_hours: d.quiet_hours.as_ref().map(|q| QuietHoursIn {
                from: q.from.format("%H:%M").to_string(),
                to: q.to.format("%H:%M").to_string(),
                timezone: q.timezone.clone(),
            }),
            audience: d.audience.as_ref().map(|a| match a {
                Audience::SegmentId(id) => AudienceShown {
                    segment_id: Some(id.0),
                    filter: None,
                },
                Audience::Filter(f) => AudienceShown {
                    segment_id: None,
                    filter: Some(FilterOut::from(&**f)),
                },
            }),
            created_at: a.created_at,
            updated_at: a.updated_at,
            metrics,
        }
    }
}

fn ratio(a: i64, b: i64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct AutomationPage {
    pub items: Vec<AutomationOut>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

/// A step an enrollment went through.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct EnrollmentStepOut {
    pub step: i32,
    pub kind: String,
    pub outcome: String,
    /// Why a send waited first: `quiet_hours` or `daily_cap`.
    #[oai(skip_serializing_if_is_none)]
    pub held_by: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub message_id: Option<i64>,
    /// The message's status now (`queued`, `sending`, `sent`, `failed`).
    #[oai(skip_serializing_if_is_none)]
    pub message_status: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub variant: Option<String>,
    pub at: DateTime<Utc>,
}

impl From<StepRow> for EnrollmentStepOut {
    fn from(s: StepRow) -> Self {
        EnrollmentStepOut {
            step: s.step,
            kind: s.kind,
            outcome: s.outcome,
            held_by: s.held_by,
            message_id: s.message_id.map(|m| m.0),
            message_status: s.message_status,
            variant: s.variant,
            at: s.at,
        }
    }
}

/// One fan going through an automation.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct EnrollmentOut {
    pub id: i64,
    pub automation_id: i64,
    #[oai(skip_serializing_if_is_none)]
    pub automation_name: Option<String>,
    pub fan_id: i64,
    /// The definition version it runs.
    pub version: i32,
    /// `active`, `completed` or `exited`.
    pub status: String,
    /// Why it exited: `replied`, `condition`, `exit_step`, `deleted`.
    #[oai(skip_serializing_if_is_none)]
    pub exit_reason: Option<String>,
    /// The step it is at (or ended at).
    pub step: i32,
    /// When its current step runs.
    #[oai(skip_serializing_if_is_none)]
    pub due_at: Option<DateTime<Utc>>,
    /// Why its current send waits: `quiet_hours` or `daily_cap`.
    #[oai(skip_serializing_if_is_none)]
    pub held_by: Option<String>,
    pub created_at: DateTime<Utc>,
    #[oai(skip_serializing_if_is_none)]
    pub finished_at: Option<DateTime<Utc>>,
    pub steps: Vec<EnrollmentStepOut>,
}

fn enrollment_out(e: Enrollment, name: Option<String>, steps: &mut Vec<StepRow>) -> EnrollmentOut {
    let mine: Vec<EnrollmentStepOut> = steps
        .extract_if(.., |s| s.enrollment_id == e.id)
        .map(EnrollmentStepOut::from)
        .collect();
    EnrollmentOut {
        id: e.id.0,
        automation_id: e.automation_id.0,
        automation_name: name,
        fan_id: e.fan_id.0,
        version: e.version,
        status: e.status.to_string(),
        exit_reason: e.exit_reason,
        step: e.step,
        due_at: e.due_at,
        held_by: e.held_by,
        created_at: e.created_at,
        finished_at: e.finished_at,
        steps: mine,
    }
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct EnrollmentPage {
    pub items: Vec<EnrollmentOut>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

#[derive(ApiResponse)]
enum ListResponse {
    #[oai(status = 200)]
    Ok(Json<AutomationPage>),
}

#[derive(ApiResponse)]
enum CreateResponse {
    /// The automation is stored and armed.
    #[oai(status = 201)]
    Created(Json<AutomationOut>),
}

#[derive(ApiResponse)]
enum GetResponse {
    #[oai(status = 200)]
    Ok(Json<AutomationOut>),
}

#[derive(ApiResponse)]
enum DeleteResponse {
    /// Gone: it enrolls no one, and its running enrollments ended (`exited: deleted`).
    #[oai(status = 204)]
    Deleted,
}

#[derive(ApiResponse)]
enum EnrollmentsResponse {
    #[oai(status = 200)]
    Ok(Json<EnrollmentPage>),
}

#[derive(Debug, Clone, Copy, poem_openapi::Enum, Deserialize)]
#[oai(rename_all = "lowercase")]
pub enum EnrollmentStatusIn {
    Active,
    Completed,
    Exited,
}

#[OpenApi(prefix_path = "/api/crm", tag = "ApiTags::Automations")]
impl AutomationsApi {
    /// List automations
    ///
    /// The caller's automations, newest first, each with its funnel.
    #[oai(
        path = "/automations",
        method = "get",
        operation_id = "listAutomations"
    )]
    async fn list(
        &self,
        auth: BearerAuth,
        /// Per page, 1 to 200 (default 50).
        limit: Query<Option<Limit>>,
        /// To skip (default 0).
        offset: Query<Option<Offset>>,
    ) -> Result<ListResponse, ApiError> {
        let page = page(limit.0, offset.0);
        let db = &self.state.db;
        let listed = automations::list(db, auth.user(), page).await?;
        let mut items = Vec::with_capacity(listed.items.len());
        for a in listed.items {
            let funnel = report::funnel(db, &a).await?;
            items.push(AutomationOut::of(a, funnel));
        }
        Ok(ListResponse::Ok(Json(AutomationPage {
            items,
            total: listed.total,
            limit: page.limit,
            offset: page.offset,
        })))
    }

    /// Create an automation
    ///
    /// A trigger, steps and rules; armed at once (`active`).
    #[oai(
        path = "/automations",
        method = "post",
        operation_id = "createAutomation"
    )]
    async fn create(
        &self,
        auth: BearerAuth,
        body: JsonBody<CreateAutomation>,
        req: &poem::Request,
    ) -> Result<CreateResponse, ApiError> {
        let b = body.0;
        let db = &self.state.db;
        let definition = Parts {
            trigger: b.trigger,
            steps: b.steps,
            stop_on_reply: b.stop_on_reply,
            once_per_fan: b.once_per_fan,
            cooldown_hours: b.cooldown_hours,
            quiet_hours: b.quiet_hours,
            audience: b.audience,
        }
        .parse()?;
        self.owned(auth.user(), &definition).await?;
        let a = match idempotency::committed_as(req, Effect::automation)? {
            Some(id) => automations::get(db, auth.user(), id).await?,
            None => {
                let key = idempotency::guard(req);
                let name = b.name.into_inner();
                automations::create(db, auth.user(), name, definition, key.as_ref()).await?
            }
        };
        let funnel = report::funnel(db, &a).await?;
        Ok(CreateResponse::Created(Json(AutomationOut::of(a, funnel))))
    }

    /// Get an automation
    ///
    /// With its funnel: enrollments by status and exit reason; per step and variant what
    /// went through, was sent, delivered, opened and bought, and the revenue.
    #[oai(
        path = "/automations/:id",
        method = "get",
        operation_id = "getAutomation"
    )]
    async fn get(&self, auth: BearerAuth, id: Path<i64>) -> Result<GetResponse, ApiError> {
        self.answer(automations::get(&self.state.db, auth.user(), AutomationId(id.0)).await?)
            .await
    }

    /// Update an automation
    ///
    /// A new name, and/or a new definition: `trigger` and `steps` together (the rules with
    /// them). Running enrollments keep the version they started with.
    #[oai(
        path = "/automations/:id",
        method = "put",
        operation_id = "updateAutomation"
    )]
    async fn update(
        &self,
        auth: BearerAuth,
        id: Path<i64>,
        body: JsonBody<UpdateAutomation>,
    ) -> Result<GetResponse, ApiError> {
        let b = body.0;
        let definition = match (b.trigger, b.steps) {
            (Some(trigger), Some(steps)) => Some(
                Parts {
                    trigger,
                    steps,
                    stop_on_reply: b.stop_on_reply,
                    once_per_fan: b.once_per_fan,
                    cooldown_hours: b.cooldown_hours,
                    quiet_hours: b.quiet_hours,
                    audience: b.audience,
                }
                .parse()?,
            ),
            (None, None)
                if b.stop_on_reply.is_none()
                    && b.once_per_fan.is_none()
                    && b.cooldown_hours.is_none()
                    && b.quiet_hours.is_none()
                    && b.audience.is_none() =>
            {
                None
            }
            _ => {
                return Err(ApiError::unusable(
                    "steps",
                    "a new definition gives trigger and steps together (and its rules)",
                ));
            }
        };
        if let Some(d) = &definition {
            self.owned(auth.user(), d).await?;
        }
        let name = b.name.map(In::into_inner);
        let a = automations::update(
            &self.state.db,
            auth.user(),
            AutomationId(id.0),
            name,
            definition,
        )
        .await?;
        self.answer(a).await
    }

    /// Delete an automation
    #[oai(
        path = "/automations/:id",
        method = "delete",
        operation_id = "deleteAutomation"
    )]
    async fn delete(&self, auth: BearerAuth, id: Path<i64>) -> Result<DeleteResponse, ApiError> {
        automations::delete(&self.state.db, auth.user(), AutomationId(id.0)).await?;
        Ok(DeleteResponse::Deleted)
    }

    /// Pause an automation
    ///
    /// Enrolls no one and holds running enrollments where they are until resumed. Pausing a
    /// paused automation changes nothing.
    #[oai(
        path = "/automations/:id/pause",
        method = "post",
        operation_id = "pauseAutomation"
    )]
    async fn pause(&self, auth: BearerAuth, id: Path<i64>) -> Result<GetResponse, ApiError> {
        let a = automations::set_status(
            &self.state.db,
            auth.user(),
            AutomationId(id.0),
            AutomationStatus::Paused,
        )
        .await?;
        self.answer(a).await
    }

    /// Resume an automation
    ///
    /// Enrolls again; steps that came due while paused run now.
    #[oai(
        path = "/automations/:id/resume",
        method = "post",
        operation_id = "resumeAutomation"
    )]
    async fn resume(&self, auth: BearerAuth, id: Path<i64>) -> Result<GetResponse, ApiError> {
        let a = automations::set_status(
            &self.state.db,
            auth.user(),
            AutomationId(id.0),
            AutomationStatus::Active,
        )
        .await?;
        self.answer(a).await
    }

    /// List an automation's enrollments
    ///
    /// Newest first, each with the steps it went through.
    #[oai(
        path = "/automations/:id/enrollments",
        method = "get",
        operation_id = "listEnrollments"
    )]
    async fn enrollments(
        &self,
        auth: BearerAuth,
        id: Path<i64>,
        /// Only these.
        status: Query<Option<EnrollmentStatusIn>>,
        /// Per page, 1 to 200 (default 50).
        limit: Query<Option<Limit>>,
        /// To skip (default 0).
        offset: Query<Option<Offset>>,
    ) -> Result<EnrollmentsResponse, ApiError> {
        let page = page(limit.0, offset.0);
        let status = status.0.map(|s| match s {
            EnrollmentStatusIn::Active => EnrollmentStatus::Active,
            EnrollmentStatusIn::Completed => EnrollmentStatus::Completed,
            EnrollmentStatusIn::Exited => EnrollmentStatus::Exited,
        });
        let (listed, mut steps) = report::enrollments(
            &self.state.db,
            auth.user(),
            AutomationId(id.0),
            status,
            page,
        )
        .await?;
        Ok(EnrollmentsResponse::Ok(Json(EnrollmentPage {
            items: listed
                .items
                .into_iter()
                .map(|e| enrollment_out(e, None, &mut steps))
                .collect(),
            total: listed.total,
            limit: page.limit,
            offset: page.offset,
        })))
    }

    /// A fan's timeline
    ///
    /// What each automation did to this fan and when (newest enrollment first): every step,
    /// with the message a send queued and its status.
    #[oai(
        path = "/fans/:id/timeline",
        method = "get",
        operation_id = "fanTimeline"
    )]
    async fn timeline(
        &self,
        auth: BearerAuth,
        id: Path<i64>,
        /// Per page, 1 to 200 (default 50).
        limit: Query<Option<Limit>>,
        /// To skip (default 0).
        offset: Query<Option<Offset>>,
    ) -> Result<EnrollmentsResponse, ApiError> {
        let page = page(limit.0, offset.0);
        let (listed, mut steps) =
            report::timeline(&self.state.db, auth.user(), FanId(id.0), page).await?;
        Ok(EnrollmentsResponse::Ok(Json(EnrollmentPage {
            items: listed
                .items
                .into_iter()
                .map(|e| enrollment_out(e.enrollment, Some(e.automation_name), &mut steps))
                .collect(),
            total: listed.total,
            limit: page.limit,
            offset: page.offset,
        })))
    }
}

impl AutomationsApi {
    async fn answer(&self, a: Automation) -> Result<GetResponse, ApiError> {
        let funnel = report::funnel(&self.state.db, &a).await?;
        Ok(GetResponse::Ok(Json(AutomationOut::of(a, funnel))))
    }

    /// A definition may only name the caller's own segment, message and campaign: another's
    /// is not found (404), as any id of another creator's.
    async fn owned(
        &self,
        user: fanqueue_jobs::domain::UserId,
        d: &Definition,
    ) -> Result<(), ApiError> {
        report::check_owned(&self.state.db, user, d).await?;
        Ok(())
    }
}

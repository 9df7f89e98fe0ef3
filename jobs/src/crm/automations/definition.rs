//! What an automation does, as stored (one JSON document a version): its trigger, its steps
//! and its rules. Parsed and checked once at the edge; an enrollment keeps the version it
//! started with, so a stored definition is only ever read back, never reinterpreted.

use chrono::{DateTime, Datelike, NaiveTime, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::{
    crm::segments::Filter,
    domain::{CampaignId, MessageId, ParseError, SegmentId},
};

/// Steps an automation has, at most.
pub const MAX_STEPS: usize = 50;
/// Variants a send step has, at most.
pub const MAX_VARIANTS: usize = 10;
/// The longest wait: a year.
pub const MAX_WAIT_SECONDS: u64 = 366 * 24 * 3600;
/// The longest inactivity or notice a daily trigger looks for.
pub const MAX_DAYS: u32 = 3650;
/// The longest keyword an inbound trigger looks for.
pub const KEYWORD_MAX: usize = 100;

/// What enrolls a fan. Each fires once per event id (or, for the daily ones, once per fan and
/// subscription period or inactivity spell).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Trigger {
    /// A `subscription` event for a fan who had no subscription on record.
    Subscription,
    /// A `subscription` event for a fan whose subscription had expired.
    Resubscription,
    /// `daysBefore` days (or fewer) before a subscription with renewal off ends (the end an
    /// event's `expiresAt` gave); a daily check.
    #[serde(rename_all = "camelCase")]
    SubscriptionExpiring { days_before: u32 },
    /// A `subscription_expired` event.
    SubscriptionExpired,
    /// A `purchased` event, of this message or campaign when given.
    #[serde(rename_all = "camelCase")]
    Purchased {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_id: Option<MessageId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        campaign_id: Option<CampaignId>,
    },
    /// A `tip` event.
    Tip,
    /// An inbound message, containing `keyword` (without case) when given.
    Inbound {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keyword: Option<String>,
    },
    /// A fan created, through the API or an import (with its batch).
    FanCreated,
    /// Not seen for `days` days; a daily check, once per fan per inactivity spell.
    Inactive { days: u32 },
}

/// The word a trigger is stored under (`automations.trigger_type`), which the events look
/// automations up by.
impl Trigger {
    pub fn word(&self) -> &'static str {
        match self {
            Trigger::Subscription => "subscription",
            Trigger::Resubscription => "resubscription",
            Trigger::SubscriptionExpiring { .. } => "subscription_expiring",
            Trigger::SubscriptionExpired => "subscription_expired",
            Trigger::Purchased { .. } => "purchased",
            Trigger::Tip => "tip",
            Trigger::Inbound { .. } => "inbound",
            Trigger::FanCreated => "fan_created",
            Trigger::Inactive { .. } => "inactive",
        }
    }

    /// Whether a daily check (not an event) fires it.
    pub fn is_daily(&self) -> bool {
        matches!(
            self,
            Trigger::SubscriptionExpiring { .. } | Trigger::Inactive { .. }
        )
    }
}

/// How long a wait step waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, rename_all = "camelCase")]
pub enum Wait {
    Exactly {
        seconds: u64,
    },
    #[serde(rename_all = "camelCase")]
    Between {
        min_seconds: u64,
        max_seconds: u64,
    },
}

impl Wait {
    /// The wait for one enrollment: `roll` (0..1, drawn once) picks within a range.
    pub fn span(self, roll: f64) -> TimeDelta {
        let seconds = match self {
            Wait::Exactly { seconds } => seconds,
            Wait::Between {
                min_seconds,
                max_seconds,
            } => min_seconds + ((max_seconds - min_seconds) as f64 * roll).round() as u64,
        };
        TimeDelta::seconds(seconds as i64)
    }
}

/// One version of a send's message: its template (see `Outgoing::template`) and its share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Variant {
    pub name: String,
    pub weight: u32,
    pub template: serde_json::Value,
}

/// A send step: one message, or one of its variants picked by weight, stable per enrollment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Send {
    /// The message when the step has no variants.
    pub template: serde_json::Value,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<Variant>,
}

impl Send {
    /// The variant `roll` (0..1, the enrollment's for this step) lands on, by weight: its
    /// name and template; the step's own message when it has none.
    pub fn pick(&self, roll: f64) -> (Option<&str>, &serde_json::Value) {
        let total: u64 = self.variants.iter().map(|v| u64::from(v.weight)).sum();
        if total == 0 {
            return (None, &self.template);
        }
        let mut left = (roll * total as f64) as u64;
        for v in &self.variants {
            if left < u64::from(v.weight) {
                return (Some(v.name.as_str()), &v.template);
            }
            left -= u64::from(v.weight);
        }
        let last = self.variants.last().expect("a variant");
        (Some(last.name.as_str()), &last.template)
    }
}

/// What a condition step does when its filter does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Otherwise {
    /// The enrollment ends (`exited: condition`).
    Exit,
    /// The step right after the condition is skipped, and the enrollment goes on.
    Continue,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    pub filter: Filter,
    #[serde(rename = "else")]
    pub otherwise: Otherwise,
}

/// One step. Stored as `{"wait": …}`, `{"send": …}`, `{"condition": …}` or `{"exit": {}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Wait(Wait),
    Send(Box<Send>),
    Condition(Box<Condition>),
    Exit {},
}

impl Step {
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Wait(_) => "wait",
            Step::Send(_) => "send",
            Step::Condition(_) => "condition",
            Step::Exit {} => "exit",
        }
    }
}

/// Hours in a time zone when nothing is sent: a send due then waits for `to`. `from` after
/// `to` spans midnight (22:00 to 08:00).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuietHours {
    pub from: NaiveTime,
    pub to: NaiveTime,
    pub timezone: String,
}

impl QuietHours {
    pub fn parse(from: &str, to: &str, timezone: &str) -> Result<QuietHours, ParseError> {
        let time = |field: &str, raw: &str| {
            NaiveTime::parse_from_str(raw, "%H:%M")
                .map_err(|_| ParseError(format!("quietHours.{field} must be HH:MM (24-hour)")))
        };
        let q = QuietHours {
            from: time("from", from)?,
            to: time("to", to)?,
            timezone: timezone.to_owned(),
        };
        if q.from == q.to {
            return Err(ParseError("quietHours.from and .to must differ".into()));
        }
        q.zone()?;
        Ok(q)
    }

    fn zone(&self) -> Result<Tz, ParseError> {
        self.timezone
            .parse()
            .map_err(|_| ParseError(format!("unknown time zone {:?}", self.timezone)))
    }

    /// When a send due at `at` may go: `at` itself outside the quiet hours, else their end.
    pub fn release(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        let Ok(tz) = self.zone() else { return at };
        let local = at.with_timezone(&tz);
        let t = NaiveTime::from_hms_opt(local.hour(), local.minute(), local.second())
            .unwrap_or(local.time());
        let quiet = if self.from < self.to {
            t >= self.from && t < self.to
        } else {
            t >= self.from || t < self.to
        };
        if !quiet {
            return at;
        }
        // The end is today's `to`, or tomorrow's when `to` is already behind (before midnight
        // in a window that spans it).
        let mut day = local.date_naive();
        if t >= self.to {
            day = day.succ_opt().unwrap_or(day);
        }
        let end = day.and_time(self.to);
        // A `to` that a clock change skips or repeats: the earliest instant at or after it.
        match tz.from_local_datetime(&end) {
            chrono::LocalResult::Single(e) | chrono::LocalResult::Ambiguous(e, _) => {
                e.with_timezone(&Utc)
            }
            // In a gap (clocks moved forward over `to`): the first instant after it.
            chrono::LocalResult::None => tz
                .from_local_datetime(&(end + TimeDelta::hours(1)))
                .earliest()
                .map_or(at, |e| e.with_timezone(&Utc)),
        }
    }
}

/// Who may be enrolled: the fans of a segment or a filter, checked when the trigger fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Audience {
    SegmentId(SegmentId),
    Filter(Box<Filter>),
}

/// An automation's definition: one version of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Definition {
    pub trigger: Trigger,
    pub steps: Vec<Step>,
    /// A fan who writes in ends the enrollment (`exited: replied`), before any pending send.
    #[serde(default)]
    pub stop_on_reply: bool,
    /// A fan is enrolled at most once, ever.
    #[serde(default)]
    pub once_per_fan: bool,
    /// A fan enrolled within these hours is not enrolled again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_hours: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<QuietHours>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<Audience>,
}

impl Definition {
    /// Checks what the types cannot: bounds, a non-empty step list, variants' weights.
    pub fn check(&self) -> Result<(), (String, String)> {
        let bad = |field: String, why: &str| Err((field, why.to_owned()));
        if self.steps.is_empty() || self.steps.len() > MAX_STEPS {
            return bad("steps".into(), &format!("must hold 1 to {MAX_STEPS} steps"));
        }
        match &self.trigger {
            Trigger::SubscriptionExpiring { days_before: d } if !(1..=MAX_DAYS).contains(d) => {
                return bad(
                    "trigger.daysBefore".into(),
                    &format!("must be 1 to {MAX_DAYS}"),
                );
            }
            Trigger::Inactive { days } if !(1..=MAX_DAYS).contains(days) => {
                return bad("trigger.days".into(), &format!("must be 1 to {MAX_DAYS}"));
            }
            Trigger::Inbound { keyword: Some(k) }
                if k.trim().is_empty() || k.chars().count() > KEYWORD_MAX =>
            {
                return bad(
                    "trigger.keyword".into(),
                    &format!("must be 1 to {KEYWORD_MAX} characters, not blank"),
                );
            }
            _ => {}
        }
        for (i, step) in self.steps.iter().enumerate() {
            match step {
                Step::Wait(Wait::Exactly { seconds }) if *seconds > MAX_WAIT_SECONDS => {
                    return bad(
                        format!("steps[{i}].wait.seconds"),
                        &format!("must be at most {MAX_WAIT_SECONDS}"),
                    );
                }
                Step::Wait(Wait::Between {
                    min_seconds,
                    max_seconds,
                }) if min_seconds > max_seconds || *max_seconds > MAX_WAIT_SECONDS => {
                    return bad(
                        format!("steps[{i}].wait"),
                        &format!(
                            "minSeconds must be at most maxSeconds, and both at most {MAX_WAIT_SECONDS}"
                        ),
                    );
                }
                Step::Send(send) => {
                    if send.variants.len() > MAX_VARIANTS {
                        return bad(
                            format!("steps[{i}].send.variants"),
                            &format!("must hold at most {MAX_VARIANTS} variants"),
                        );
                    }
                    if !send.variants.is_empty() && send.variants.iter().all(|v| v.weight == 0) {
                        return bad(
                            format!("steps[{i}].send.variants"),
                            "needs a variant with a weight above 0",
                        );
                    }
                    let mut names: Vec<&str> =
                        send.variants.iter().map(|v| v.name.as_str()).collect();
                    names.sort_unstable();
                    if names.windows(2).any(|w| w[0] == w[1]) {
                        return bad(
                            format!("steps[{i}].send.variants"),
                            "names must differ from each other",
                        );
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A number in 0..1 drawn from `seed` and `salt`, the same every time (splitmix64): an
/// enrollment's variant and random wait, so that re-running a step picks what it picked.
pub fn roll(seed: i64, salt: u64) -> f64 {
    let mut z = (seed as u64).wrapping_add(salt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The start of the UTC day after `at`: when a send the daily cap held may go.
pub fn next_day(at: DateTime<Utc>) -> DateTime<Utc> {
    let d = at.date_naive().succ_opt().unwrap_or(at.date_naive());
    Utc.with_ymd_and_hms(d.year(), d.month(), d.day(), 0, 0, 0)
        .single()
        .unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_definition_reads_back_as_the_api_writes_it() {
        let d: Definition = serde_json::from_value(serde_json::json!({
            "trigger": {"type": "subscription_expiring", "daysBefore": 3},
            "steps": [
                {"wait": {"minSeconds": 60, "maxSeconds": 120}},
                {"wait": {"seconds": 5}},
                {"send": {"template": {"content": "hi"}, "variants": [
                    {"name": "a", "weight": 1, "template": {"content": "a"}}]}},
                {"condition": {"filter": {"subscribed": false}, "else": "exit"}},
                {"exit": {}}
            ],
            "stopOnReply": true,
            "quietHours": {"from": "22:00:00", "to": "08:00:00", "timezone": "Europe/Paris"}
        }))
        .unwrap();
        assert_eq!(d.trigger, Trigger::SubscriptionExpiring { days_before: 3 });
        assert_eq!(
            d.steps[0],
            Step::Wait(Wait::Between {
                min_seconds: 60,
                max_seconds: 120
            })
        );
        assert_eq!(d.steps[1], Step::Wait(Wait::Exactly { seconds: 5 }));
        assert_eq!(d.steps[4], Step::Exit {});
        let back: Definition = serde_json::from_value(serde_json::to_value(&d).unwrap()).unwrap();
        assert_eq!(back, d);
        assert!(d.check().is_ok());
    }

    #[test]
    fn quiet_hours_move_a_send_to_their_end_in_their_time_zone() {
        let q = QuietHours::parse("22:00", "08:00", "Europe/Paris").unwrap();
        // 21:30 UTC is 22:30 in Paris in winter: quiet until 08:00 Paris, 07:00 UTC.
        assert_eq!(
            q.release(at("2026-12-07T21:30:00Z")),
            at("2026-12-08T07:00:00Z")
        );
        // 03:00 UTC is 04:00 in Paris: the same morning's end.
        assert_eq!(
            q.release(at("2026-12-08T03:00:00Z")),
            at("2026-12-08T07:00:00Z")
        );
        // Noon is not quiet.
        assert_eq!(
            q.release(at("2026-12-08T12:00:00Z")),
            at("2026-12-08T12:00:00Z")
        );
        let day = QuietHours::parse("12:00", "14:00", "UTC").unwrap();
        assert_eq!(
            day.release(at("2026-12-08T13:59:00Z")),
            at("2026-12-08T14:00:00Z")
        );
        assert_eq!(
            day.release(at("2026-12-08T14:00:00Z")),
            at("2026-12-08T14:00:00Z")
        );
        assert!(QuietHours::parse("25:00", "08:00", "UTC").is_err());
        assert!(QuietHours::parse("22:00", "08:00", "Mars/Base").is_err());
        assert!(QuietHours::parse("08:00", "08:00", "UTC").is_err());
    }

    #[test]
    fn variants_split_by_weight_and_stay_put_per_enrollment() {
        let t = |s: &str| serde_json::json!({ "content": s });
        let send = Send {
            template: t("base"),
            variants: vec![
                Variant {
                    name: "a".into(),
                    weight: 1,
                    template: t("a"),
                },
                Variant {
                    name: "b".into(),
                    weight: 3,
                    template: t("b"),
                },
            ],
        };
        let a = (1..=10_000)
            .filter(|e| send.pick(roll(*e, 2)).0 == Some("a"))
            .count();
        assert!(
            (2_300..=2_700).contains(&a),
            "{a} of 10,000 got a (weight 1 of 4)"
        );
        assert_eq!(send.pick(roll(42, 2)), send.pick(roll(42, 2)));
        let none = Send {
            template: t("base"),
            variants: vec![],
        };
        assert_eq!(none.pick(0.5), (None, &t("base")));
    }

    #[test]
    fn waits_fall_within_their_range() {
        let w = Wait::Between {
            min_seconds: 10,
            max_seconds: 20,
        };
        for e in 0..1000 {
            let s = w.span(roll(e, 0)).num_seconds();
            assert!((10..=20).contains(&s));
        }
        assert_eq!(Wait::Exactly { seconds: 7 }.span(0.9).num_seconds(), 7);
        assert_eq!(
            next_day(at("2026-12-07T21:30:00Z")),
            at("2026-12-08T00:00:00Z")
        );
    }
}

//! A segment's filter: a kind of fan ("spent over $100 in 30 days, not seen for 14"), parsed
//! once into [`Filter`] and turned into SQL by [`Filter::to_sql`] alone, every value a bound
//! parameter. Every field present must hold; an empty filter is every fan of the creator.

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{CampaignId, Cents, MessageId, ParseError, Platform, Tags, Timestamp};

/// The longest look-back of `…Days` and `…Hours` fields: ten years.
pub const MAX_DAYS: u32 = 3650;
pub const MAX_HOURS: u32 = MAX_DAYS * 24;

/// Spend in a window: at least `cents` in the last `days` days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpentInLastDays {
    pub cents: Cents,
    pub days: u32,
}

/// A kind of fan. Stored as this JSON (camelCase, the API's field names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Filter {
    /// At least one of these tags (compared without case).
    #[serde(skip_serializing_if = "Tags::is_empty")]
    pub tags_any: Tags,
    /// Every one of these tags.
    #[serde(skip_serializing_if = "Tags::is_empty")]
    pub tags_all: Tags,
    /// None of these tags.
    #[serde(skip_serializing_if = "Tags::is_empty")]
    pub tags_none: Tags,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Lifetime value at least / at most.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_value_cents: Option<Cents>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_value_cents: Option<Cents>,
    /// Spent at least this much in the window: paid unlocks, tips and subscriptions the
    /// platform's events reported (imports and edits set a lifetime value, not dated spend).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spent_cents_in_last_days: Option<SpentInLastDays>,
    /// Last seen before / at or after this time (a fan never seen matches neither).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen_before: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen_after: Option<DateTime<Utc>>,
    /// Not seen for this many days (a fan never seen is inactive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inactive_days: Option<u32>,
    /// Subscribed (the last subscription event was a subscription, a renewal or renewal
    /// turned off) or not (expired, or no subscription event at all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribed: Option<bool>,
    /// Wrote to the creator within this many hours.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_inbound_within_hours: Option<u32>,
    /// Was messaged by the creator (queued, sending or sent) within this many hours.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_outbound_within_hours: Option<u32>,
    /// Has unread inbound messages (true) or none (false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unread_inbound: Option<bool>,
    /// Unlocked this paid message / a message of this campaign / none of this campaign's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bought_message_id: Option<MessageId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bought_campaign_id: Option<CampaignId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_bought_campaign_id: Option<CampaignId>,
}

/// A value bound to one placeholder of a filter's SQL.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Int(i64),
    Text(String),
    At(Timestamp),
}

/// The SQL dialect a filter is written for: they differ in reading a JSON list of tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

/// A condition over the fans table aliased `f`, for `WHERE f.user_id = $1 AND …`; its
/// placeholders continue from `$2`, in the order of `params`.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub sql: String,
    pub params: Vec<Param>,
}

impl Filter {
    /// Checks what serde cannot: windows within [`MAX_DAYS`], a spend of at least a cent. (An
    /// empty value range is a fair question: it matches no fan.)
    pub fn validate(&self) -> Result<(), ParseError> {
        let window = |name: &str, v: Option<u32>, max: u32| match v {
            Some(n) if n == 0 || n > max => {
                Err(ParseError(format!("{name} must be between 1 and {max}")))
            }
            _ => Ok(()),
        };
        window(
            "spentCentsInLastDays.days",
            self.spent_cents_in_last_days.map(|s| s.days),
            MAX_DAYS,
        )?;
        window("inactiveDays", self.inactive_days, MAX_DAYS)?;
        window(
            "lastInboundWithinHours",
            self.last_inbound_within_hours,
            MAX_HOURS,
        )?;
        window(
            "lastOutboundWithinHours",
            self.last_outbound_within_hours,
            MAX_HOURS,
        )?;
        if self
            .spent_cents_in_last_days
            .is_some_and(|s| s.cents.get() == 0)
        {
            return Err(ParseError(
                "spentCentsInLastDays.cents must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The filter as a condition on `f` (a row of `fans`) of user `$1`, evaluated at `now`.
    /// Every value is a parameter; the only text that varies is how many placeholders a list
    /// of tags takes.
    pub fn to_sql(&self, dialect: Dialect, now: DateTime<Utc>) -> Condition {
        self.and_to(Condition::everyone(), dialect, now)
    }

    /// [`Filter::to_sql`] added to `w`: what `w` says and what this filter says, the
    /// placeholders going on from `w`'s.
    pub fn and_to(&self, mut w: Condition, dialect: Dialect, now: DateTime<Utc>) -> Condition {
        if !self.tags_any.is_empty() {
            let has = w.has_tag(dialect, self.tags_any.as_slice());
            w.and(&has);
        }
        if !self.tags_all.is_empty() {
            let has = w.has_every_tag(dialect, self.tags_all.as_slice());
            w.and(&has);
        }
        if !self.tags_none.is_empty() {
            let has = w.has_tag(dialect, self.tags_none.as_slice());
            w.and(&format!("NOT {has}"));
        }
        if let Some(p) = self.platform {
            let p = w.bind(Param::Text(p.as_str().to_owned()));
            w.and(&format!("f.platform = {p}"));
        }
        if let Some(min) = self.min_value_cents {
            let min = w.bind(Param::Int(min.get()));
            w.and(&format!("f.value_cents >= {min}"));
        }
        if let Some(max) = self.max_value_cents {
            let max = w.bind(Param::Int(max.get()));
            w.and(&format!("f.value_cents <= {max}"));
        }
        if let Some(s) = self.spent_cents_in_last_days {
            let since = w.bind(Param::At(ago(now, TimeDelta::days(s.days.into()))));
            let cents = w.bind(Param::Int(s.cents.get()));
            // Summed as doubles: PostgreSQL sums a BIGINT into a NUMERIC, a fifth slower over
            // the window's rows, and a double holds every sum of cents below 2^53 exactly.
            w.and(&format!(
                "f.id IN (SELECT v.fan_id FROM fan_value_changes v
                          WHERE v.user_id = $1 AND v.at >= {since} AND v.delta_cents > 0
                            AND v.source IN ('purchased', 'tip', 'subscription')
                          GROUP BY v.fan_id
                          HAVING SUM(CAST(v.delta_cents AS DOUBLE PRECISION)) >= {cents})"
            ));
        }
        if let Some(t) = self.last_seen_before {
            let t = w.bind(Param::At(Timestamp(t)));
            w.and(&format!("f.last_seen_at < {t}"));
        }
        if let Some(t) = self.last_seen_after {
            let t = w.bind(Param::At(Timestamp(t)));
            w.and(&format!("f.last_seen_at >= {t}"));
        }
        if let Some(days) = self.inactive_days {
            let t = w.bind(Param::At(ago(now, TimeDelta::days(days.into()))));
            w.and(&format!("(f.last_seen_at IS NULL OR f.last_seen_at < {t})"));
        }
        match self.subscribed {
            Some(true) => w.and("f.subscription IN ('active', 'renewal_off')"),
            Some(false) => w.and("(f.subscription IS NULL OR f.subscription = 'expired')"),
            None => {}
        }
        if let Some(hours) = self.last_inbound_within_hours {
            let t = w.bind(Param::At(ago(now, TimeDelta::hours(hours.into()))));
            w.and(&format!(
                "f.id IN (SELECT m.fan_id FROM messages m
                          WHERE m.user_id = $1 AND m.direction = 'in' AND m.created_at >= {t})"
            ));
        }
        if let Some(hours) = self.last_outbound_within_hours {
            let t = w.bind(Param::At(ago(now, TimeDelta::hours(hours.into()))));
            w.and(&format!(
                "f.id IN (SELECT m.fan_id FROM messages m
                          WHERE m.user_id = $1 AND m.direction = 'out' AND m.created_at >= {t}
                            AND m.status <> 'failed')"
            ));
        }
        if let Some(unread) = self.unread_inbound {
            let not = if unread { "" } else { "NOT " };
            w.and(&format!(
                "f.id {not}IN (SELECT c.fan_id FROM conversations c
                               WHERE c.user_id = $1 AND c.unread_count > 0)"
            ));
        }
        if let Some(id) = self.bought_message_id {
            let id = w.bind(Param::Int(id.0));
            w.and(&format!(
                "f.id IN (SELECT m.fan_id FROM messages m
                          WHERE m.user_id = $1 AND m.id = {id} AND m.purchased_at IS NOT NULL)"
            ));
        }
        if let Some(id) = self.bought_campaign_id {
            let bought = w.bought_campaign(id);
            w.and(&format!("f.id IN ({bought})"));
        }
        if let Some(id) = self.not_bought_campaign_id {
            let bought = w.bought_campaign(id);
            w.and(&format!("f.id NOT IN ({bought})"));
        }
        w
    }
}

fn ago(now: DateTime<Utc>, span: TimeDelta) -> Timestamp {
    Timestamp(now - span)
}

impl Condition {
    /// Every fan (of the user `$1` names).
    pub fn everyone() -> Condition {
        Condition {
            sql: String::from("TRUE"),
            params: vec![],
        }
    }

    /// Also: `f` carries `tag` (compared without case).
    pub fn and_tag(&mut self, dialect: Dialect, tag: &str) {
        let has = self.has_tag(dialect, &[tag.to_owned()]);
        self.and(&has);
    }

    /// Also: `f`'s handle or lower-cased name is LIKE `pattern` (`\` escapes).
    pub fn and_like(&mut self, pattern: String) {
        let p = self.bind(Param::Text(pattern));
        self.and(&format!(
            "(f.handle LIKE {p} ESCAPE '\\' OR lower(f.name) LIKE {p} ESCAPE '\\')"
        ));
    }

    /// Binds `p` and returns its placeholder (`$1` is the user).
    pub(crate) fn bind(&mut self, p: Param) -> String {
        self.params.push(p);
        format!("${}", self.params.len() + 1)
    }

    /// Also: `condition` (fixed SQL over `f`; input only as placeholders from [`Self::bind`]).
    pub(crate) fn and(&mut self, condition: &str) {
        self.sql.push_str(" AND ");
        self.sql.push_str(condition);
    }

    /// Whether `f` carries one of `tags`, compared without case. On PostgreSQL through the
    /// lower-cased tags' GIN index (`fans_tags_lower`); on SQLite row by row.
    fn has_tag(&mut self, dialect: Dialect, tags: &[String]) -> String {
        let list = self.bind_lowered(tags);
        match dialect {
            Dialect::Postgres => format!("(lower(f.tags::text)::jsonb ?| ARRAY[{list}]::text[])"),
            Dialect::Sqlite => format!(
                "EXISTS (SELECT 1 FROM json_each(f.tags) t WHERE lower(t.value) IN ({list}))"
            ),
        }
    }

    /// Whether `f` carries every one of `tags`, compared without case.
    fn has_every_tag(&mut self, dialect: Dialect, tags: &[String]) -> String {
        match dialect {
            Dialect::Postgres => {
                let list = self.bind_lowered(tags);
                format!("(lower(f.tags::text)::jsonb ?& ARRAY[{list}]::text[])")
            }
            Dialect::Sqlite => {
                let each: Vec<String> = tags
                    .iter()
                    .map(|t| self.has_tag(dialect, std::slice::from_ref(t)))
                    .collect();
                format!("({})", each.join(" AND "))
            }
        }
    }

    /// Binds each tag, lower case; their placeholders, comma-separated.
    fn bind_lowered(&mut self, tags: &[String]) -> String {
        let list: Vec<String> = tags
            .iter()
            .map(|t| self.bind(Param::Text(t.to_lowercase())))
            .collect();
        list.join(", ")
    }

    /// The fans of `$1` who unlocked a message of campaign `id`.
    fn bought_campaign(&mut self, id: CampaignId) -> String {
        let id = self.bind(Param::Int(id.0));
        format!(
            "SELECT m.fan_id FROM messages m
             WHERE m.user_id = $1 AND m.campaign_id = {id} AND m.purchased_at IS NOT NULL"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_is_a_parameter_and_the_placeholders_follow_the_user() {
        let filter: Filter = serde_json::from_value(serde_json::json!({
            "tagsAny": ["VIP", "whale"],
            "tagsNone": ["x'); DROP TABLE fans; --"],
            "minValueCents": 100,
            "inactiveDays": 14,
        }))
        .unwrap();
        let now = Utc::now();
        let c = filter.to_sql(Dialect::Postgres, now);
        assert!(!c.sql.contains("DROP"), "{}", c.sql);
        assert_eq!(
            c.params,
            vec![
                Param::Text("vip".into()),
                Param::Text("whale".into()),
                Param::Text("x'); drop table fans; --".into()),
                Param::Int(100),
                Param::At(Timestamp(now - TimeDelta::days(14))),
            ]
        );
        for n in 2..=6 {
            assert!(c.sql.contains(&format!("${n}")), "${n} in {}", c.sql);
        }
        assert!(!c.sql.contains("$7"));
    }

    #[test]
    fn unknown_fields_empty_windows_and_free_spend_are_refused_and_the_json_round_trips() {
        let unknown = serde_json::from_value::<Filter>(serde_json::json!({ "tagAny": ["a"] }));
        assert!(unknown.is_err());
        let zero: Filter =
            serde_json::from_value(serde_json::json!({ "inactiveDays": 0 })).unwrap();
        assert!(zero.validate().is_err());
        let free: Filter = serde_json::from_value(
            serde_json::json!({ "spentCentsInLastDays": { "cents": 0, "days": 7 } }),
        )
        .unwrap();
        assert!(free.validate().is_err());
        let f: Filter = serde_json::from_value(serde_json::json!({
            "spentCentsInLastDays": { "cents": 100, "days": 30 },
            "subscribed": false,
        }))
        .unwrap();
        let back = serde_json::to_value(&f).unwrap();
        assert_eq!(
            back,
            serde_json::json!({ "spentCentsInLastDays": { "cents": 100, "days": 30 }, "subscribed": false })
        );
        assert_eq!(
            Filter::default().to_sql(Dialect::Sqlite, Utc::now()).sql,
            "TRUE"
        );
    }
}

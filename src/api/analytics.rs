//! `GET /api/crm/analytics`: the creator's dashboard figures (the seeds' requirement 9).

use chrono::{Datelike, Duration, Months, NaiveDate, Utc};
use fanqueue_jobs::crm::analytics::{self, MAX_PERIODS, Period, Range, Report};
use poem_openapi::{ApiResponse, Enum, Object, OpenApi, param::Query, payload::Json};

use super::{
    error::ApiError,
    state::{ApiTags, BearerAuth, State},
};

pub struct AnalyticsApi {
    state: State,
}

impl AnalyticsApi {
    pub fn new(state: State) -> Self {
        AnalyticsApi { state }
    }
}

#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "lowercase")]
pub enum PeriodIn {
    Day,
    Week,
    Month,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct TopFanOut {
    pub id: i64,
    pub handle: String,
    #[oai(skip_serializing_if_is_none)]
    pub name: Option<String>,
    pub value_cents: i64,
}

/// One period's figures.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct PeriodOut {
    /// The period's first day (UTC; weeks start on Monday).
    pub start: NaiveDate,
    /// Net change of the fans' lifetime value in the period: platform events (paid unlocks,
    /// tips, subscriptions), edits and imports.
    pub revenue_cents: i64,
    /// Outbound messages delivered to the platform.
    pub sent: i64,
    /// Outbound messages that failed.
    pub failed: i64,
}

/// How one campaign did. Rates are fractions of its recipients (0 to 1).
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct CampaignPerformanceOut {
    pub id: i64,
    pub name: String,
    pub created_at: chrono::DateTime<Utc>,
    pub recipients: i64,
    pub sent: i64,
    pub failed: i64,
    pub delivered: i64,
    pub opened: i64,
    pub revenue_cents: i64,
    pub delivered_rate: f64,
    pub opened_rate: f64,
    /// Revenue per recipient, in cents.
    pub revenue_per_recipient_cents: f64,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct AnalyticsOut {
    pub period: PeriodIn,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub total_fans: i64,
    /// Fans seen in the last `activeDays` days.
    pub active_fans: i64,
    pub active_days: i64,
    /// The sum of the fans' lifetime values.
    pub lifetime_value_cents: i64,
    /// The 10 fans of highest value, highest first.
    pub top_fans: Vec<TopFanOut>,
    /// Every period from the one holding `from` to the one holding `to`, oldest first.
    pub periods: Vec<PeriodOut>,
    /// Campaigns created from `from` to `to`, newest first (at most 50).
    pub campaigns: Vec<CampaignPerformanceOut>,
}

#[derive(ApiResponse)]
enum AnalyticsResponse {
    #[oai(status = 200)]
    Ok(Json<AnalyticsOut>),
}

/// The years a range may cover: the databases' timestamps and chrono's dates hold them all.
const EARLIEST: i32 = 1970;
const LATEST: i32 = 9999;

fn rate(part: i64, whole: i64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn out(period: PeriodIn, range: Range, active_days: i64, r: Report) -> AnalyticsOut {
    AnalyticsOut {
        period,
        from: range.from,
        to: range.to,
        total_fans: r.total_fans,
        active_fans: r.active_fans,
        active_days,
        lifetime_value_cents: r.lifetime_value_cents,
        top_fans: r
            .top_fans
            .into_iter()
            .map(|f| TopFanOut {
                id: f.id.0,
                handle: f.handle,
                name: f.name,
                value_cents: f.value_cents,
            })
            .collect(),
        periods: r
            .periods
            .into_iter()
            .map(|p| PeriodOut {
                start: p.start,
                revenue_cents: p.revenue_cents,
                sent: p.sent,
                failed: p.failed,
            })
            .collect(),
        campaigns: r
            .campaigns
            .into_iter()
            .map(|c| CampaignPerformanceOut {
                delivered_rate: rate(c.delivered, c.recipients),
                opened_rate: rate(c.opened, c.recipients),
                revenue_per_recipient_cents: rate(c.revenue_cents, c.recipients),
                id: c.id.0,
                name: c.name,
                created_at: c.created_at,
                recipients: c.recipients,
                sent: c.sent,
                failed: c.failed,
                delivered: c.delivered,
                opened: c.opened,
                revenue_cents: c.revenue_cents,
            })
            .collect(),
    }
}

#[OpenApi(prefix_path = "/api/crm/analytics", tag = "ApiTags::Analytics")]
impl AnalyticsApi {
    /// Analytics
    ///
    /// The caller's figures: total and active fans, lifetime value, the top 10 fans, revenue
    /// and messages sent and failed per day, week or month (UTC), and how each campaign of the
    /// range did. `to` defaults to today, `from` to 30 days, 12 weeks or 12 months before it;
    /// at most 400 periods.
    #[oai(path = "/", method = "get", operation_id = "getAnalytics")]
    async fn get(
        &self,
        auth: BearerAuth,
        /// day (default), week or month.
        period: Query<Option<PeriodIn>>,
        /// First day (YYYY-MM-DD, UTC).
        from: Query<Option<NaiveDate>>,
        /// Last day, included (YYYY-MM-DD, UTC).
        to: Query<Option<NaiveDate>>,
        /// A fan is active when seen in this many last days: 1 to 3650, default 30.
        #[oai(
            name = "activeDays",
            validator(minimum(value = "1"), maximum(value = "3650"))
        )]
        active_days: Query<Option<i64>>,
    ) -> Result<AnalyticsResponse, ApiError> {
        let asked = period.0.unwrap_or(PeriodIn::Day);
        let period = match asked {
            PeriodIn::Day => Period::Day,
            PeriodIn::Week => Period::Week,
            PeriodIn::Month => Period::Month,
        };
        let now = Utc::now();
        let to = to.0.unwrap_or(now.date_naive());
        let from = match from.0 {
            Some(from) => from,
            None => match period {
                Period::Day => to - Duration::days(29),
                Period::Week => to - Duration::weeks(11),
                Period::Month => to
                    .checked_sub_months(Months::new(11))
                    .ok_or_else(|| ApiError::invalid("to", "is too early"))?,
            },
        };
        for (name, day) in [("from", from), ("to", to)] {
            if !(EARLIEST..=LATEST).contains(&day.year()) {
                return Err(ApiError::invalid(
                    name,
                    format!("must be in the years {EARLIEST} to {LATEST}"),
                ));
            }
        }
        if from > to {
            return Err(ApiError::invalid("from", "must not be after `to`"));
        }
        let active_days = active_days.0.unwrap_or(30);
        if !(1..=3650).contains(&active_days) {
            return Err(ApiError::invalid(
                "activeDays",
                "must be between 1 and 3650",
            ));
        }
        let range = Range {
            period,
            from,
            to,
            active_since: now - Duration::days(active_days),
        };
        if range.periods().len() > MAX_PERIODS {
            return Err(ApiError::invalid(
                "from",
                format!(
                    "and `to` must span at most {MAX_PERIODS} {}s",
                    period.as_str()
                ),
            ));
        }
        let report = analytics::report(&self.state.db, auth.user(), range).await?;
        Ok(AnalyticsResponse::Ok(Json(out(
            asked,
            range,
            active_days,
            report,
        ))))
    }
}

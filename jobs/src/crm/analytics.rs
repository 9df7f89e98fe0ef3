//! The creator's figures (the seeds' requirement 9): fans, lifetime value, top fans, revenue
//! and messages per day, week or month, and how campaigns did. Read-only, across the tables
//! of the other CRM modules; every figure comes from an index or a rollup, never from reading
//! every fan or every value change (100,000 fans and a million changes answer in milliseconds).

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use serde_json::Value;

use super::{
    campaigns::{self, Campaign},
    fans::blocks,
};
use crate::{
    db::{Db, StoreResult},
    domain::{CampaignId, FanId, Timestamp, UserId},
    on_db, text_enum,
};

text_enum! {
    /// The length of the periods figures are grouped by (UTC; weeks start on Monday).
    pub enum Period as "period" {
        Day = "day",
        Week = "week",
        Month = "month",
    }
}

impl Period {
    /// The first day of the period holding `day`.
    pub fn start_of(self, day: NaiveDate) -> NaiveDate {
        match self {
            Period::Day => day,
            Period::Week => day - Duration::days(day.weekday().num_days_from_monday().into()),
            Period::Month => day.with_day(1).expect("every month has a first day"),
        }
    }

    /// The first day of the period after the one starting on `start`.
    pub fn next(self, start: NaiveDate) -> NaiveDate {
        match self {
            Period::Day => start + Duration::days(1),
            Period::Week => start + Duration::days(7),
            Period::Month => start
                .checked_add_months(chrono::Months::new(1))
                .expect("dates are far from chrono's end"),
        }
    }
}

/// At most this many periods a report.
pub const MAX_PERIODS: usize = 400;
/// How many fans the top list holds.
pub const TOP_FANS: i64 = 10;
/// How many campaigns (the newest started in the range) a report shows.
pub const MAX_CAMPAIGNS: i64 = 50;

/// What a report covers: the days `from` to `to` (inclusive) grouped by `period`, and fans
/// counted active when seen since `active_since`.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    pub period: Period,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub active_since: DateTime<Utc>,
}

impl Range {
    /// The periods of the range, by their first day (the first may start before `from`); no
    /// more than one past [`MAX_PERIODS`], so that a range of a thousand years costs nothing
    /// to refuse.
    pub fn periods(&self) -> Vec<NaiveDate> {
        let mut out = vec![];
        let mut start = self.period.start_of(self.from);
        while start <= self.to && out.len() <= MAX_PERIODS {
            out.push(start);
            start = self.period.next(start);
        }
        out
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TopFan {
    pub id: FanId,
    pub handle: String,
    pub name: Option<String>,
    pub value_cents: i64,
}

/// One period's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeriodFigures {
    pub start: NaiveDate,
    /// Net change of the fans' lifetime value in the period (events, edits, imports).
    pub revenue_cents: i64,
    /// Outbound messages delivered to the platform in the period.
    pub sent: i64,
    /// Outbound messages that failed in the period.
    pub failed: i64,
}

/// How one campaign did, from its stored metrics.
#[derive(Debug, Clone)]
pub struct CampaignFigures {
    pub id: CampaignId,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub recipients: i64,
    pub sent: i64,
    pub failed: i64,
    pub delivered: i64,
    pub opened: i64,
    pub revenue_cents: i64,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub total_fans: i64,
    pub active_fans: i64,
    pub lifetime_value_cents: i64,
    pub top_fans: Vec<TopFan>,
    pub periods: Vec<PeriodFigures>,
    pub campaigns: Vec<CampaignFigures>,
}

fn midnight(day: NaiveDate) -> Timestamp {
    Timestamp(Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).expect("midnight exists")))
}

/// `user`'s report over `range`.
pub async fn report(db: &Db, user: UserId, range: Range) -> StoreResult<Report> {
    let periods = range.periods();
    let first = *periods.first().unwrap_or(&range.from);
    let (since, until) = (midnight(first), midnight(range.to + Duration::days(1)));
    let total_fans = blocks::start(db, user, 0).await?.total;
    let (sent_sql, failed_sql) = match db {
        Db::Postgres(_) => (
            "SELECT (sent_at AT TIME ZONE 'UTC')::date, COUNT(*) FROM messages
             WHERE user_id = $1 AND direction = 'out' AND status = 'sent'
               AND sent_at >= $2 AND sent_at < $3
             GROUP BY 1",
            "SELECT (failed_at AT TIME ZONE 'UTC')::date, COUNT(*) FROM messages
             WHERE user_id = $1 AND failed_at >= $2 AND failed_at < $3 AND status = 'failed'
             GROUP BY 1",
        ),
        Db::Sqlite(_) => (
            "SELECT date(sent_at), COUNT(*) FROM messages
             WHERE user_id = $1 AND direction = 'out' AND status = 'sent'
               AND sent_at >= $2 AND sent_at < $3
             GROUP BY 1",
            "SELECT date(failed_at), COUNT(*) FROM messages
             WHERE user_id = $1 AND failed_at >= $2 AND failed_at < $3 AND status = 'failed'
             GROUP BY 1",
        ),
    };
    let (fans, top_fans, revenue, sent, failed) = on_db!(db, pool => {
        let fans: (i64, i64) = sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(value_cents), 0) AS BIGINT),
                    (SELECT COUNT(*) FROM fans WHERE user_id = $1 AND last_seen_at >= $2)
             FROM fans WHERE user_id = $1",
        )
        .bind(user)
        .bind(Timestamp(range.active_since))
        .fetch_one(pool)
        .await?;
        let top: Vec<TopFan> = sqlx::query_as(
            "SELECT id, handle, name, value_cents FROM fans WHERE user_id = $1
             ORDER BY value_cents DESC, id LIMIT $2",
        )
        .bind(user)
        .bind(TOP_FANS)
        .fetch_all(pool)
        .await?;
        let revenue: Vec<(NaiveDate, i64)> = sqlx::query_as(
            "SELECT day, revenue_cents FROM revenue_days WHERE user_id = $1 AND day >= $2 AND day <= $3",
        )
        .bind(user)
        .bind(first)
        .bind(range.to)
        .fetch_all(pool)
        .await?;
        let sent: Vec<(NaiveDate, i64)> = sqlx::query_as(sent_sql)
            .bind(user)
            .bind(since)
            .bind(until)
            .fetch_all(pool)
            .await?;
        let failed: Vec<(NaiveDate, i64)> = sqlx::query_as(failed_sql)
            .bind(user)
            .bind(since)
            .bind(until)
            .fetch_all(pool)
            .await?;
        (fans, top, revenue, sent, failed)
    });
    let mut figures: Vec<PeriodFigures> = periods
        .iter()
        .map(|&start| PeriodFigures {
            start,
            ..Default::default()
        })
        .collect();
    let mut add = |day: NaiveDate, f: &dyn Fn(&mut PeriodFigures)| {
        let start = range.period.start_of(day);
        if let Some(p) = figures.iter_mut().find(|p| p.start == start) {
            f(p);
        }
    };
    for (day, cents) in revenue {
        add(day, &|p| p.revenue_cents += cents);
    }
    for (day, n) in sent {
        add(day, &|p| p.sent += n);
    }
    for (day, n) in failed {
        add(day, &|p| p.failed += n);
    }
    let campaigns = campaigns::started_between(db, user, since, until, MAX_CAMPAIGNS)
        .await?
        .into_iter()
        .map(campaign_figures)
        .collect();
    Ok(Report {
        total_fans,
        active_fans: fans.1,
        lifetime_value_cents: fans.0,
        top_fans,
        periods: figures,
        campaigns,
    })
}

fn campaign_figures(c: Campaign) -> CampaignFigures {
    let metric = |k: &str| c.metrics.0.get(k).and_then(Value::as_i64).unwrap_or(0);
    CampaignFigures {
        id: c.id,
        recipients: c
            .target_audience
            .0
            .get("recipientIds")
            .and_then(Value::as_array)
            .map_or(0, |ids| ids.len() as i64),
        sent: metric("sent"),
        failed: metric("failed"),
        delivered: metric("delivered"),
        opened: metric("opened"),
        revenue_cents: metric("revenueCents"),
        created_at: c.created_at,
        name: c.name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn periods_start_on_mondays_and_first_days_and_cover_the_range() {
        let range = |period, from, to| Range {
            period,
            from: day(from),
            to: day(to),
            active_since: Utc::now(),
        };
        assert_eq!(
            range(Period::Week, "2026-12-02", "2026-12-14").periods(),
            vec![day("2026-11-30"), day("2026-12-07"), day("2026-12-14")]
        );
        assert_eq!(
            range(Period::Month, "2026-11-15", "2027-01-01").periods(),
            vec![day("2026-11-01"), day("2026-12-01"), day("2027-01-01")]
        );
        assert_eq!(
            range(Period::Day, "2026-12-01", "2026-12-03")
                .periods()
                .len(),
            3
        );
    }
}

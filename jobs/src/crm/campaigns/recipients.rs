//! Who a campaign run is for, each fan once, and where each stands: `pending`, `queued` (its
//! message is stored), `excluded` (with the reason) or `cancelled`. The only module that
//! writes `campaign_recipients`.

use sqlx::AssertSqlSafe;

use crate::{
    crm::{
        messages::{MessageStatus, StatusCounts},
        segments::{Condition, bind_condition},
    },
    db::{Db, StoreError, StoreResult, Tx, push_binds},
    domain::{CampaignId, FanId, RunId, UserId},
    on_db, on_tx, text_enum,
};

text_enum! {
    pub enum RecipientStatus as "recipient status" {
        Pending = "pending",
        Queued = "queued",
        Excluded = "excluded",
        Cancelled = "cancelled",
    }
}

text_enum! {
    /// Why a recipient was skipped, checked just before its message would have been queued.
    pub enum Exclusion as "exclusion reason" {
        /// The creator messaged the fan within the campaign's `messagedWithinHours`.
        MessagedRecently = "messaged_recently",
        /// The fan has inbound messages the creator has not read.
        UnreadInbound = "unread_inbound",
        /// The fan is in the campaign's excluded segment.
        ExcludedSegment = "excluded_segment",
        /// The fan bought a message of the campaign's `boughtCampaignId`.
        BoughtCampaign = "bought_campaign",
        /// The fan was sent `MAX_AUTOMATED_PER_FAN_PER_DAY` automated and campaign messages
        /// today (UTC).
        DailyCap = "daily_cap",
    }
}

/// Adds the fans `condition` matches now (the caller's own) to the run, `pending`, in `tx`.
/// Returns how many.
pub async fn resolve(
    tx: &mut Tx,
    run: RunId,
    user: UserId,
    condition: &Condition,
) -> StoreResult<i64> {
    let Condition { sql, params } = condition;
    let sql = format!(
        "INSERT INTO campaign_recipients (run_id, fan_id, status)
         SELECT ${}, f.id, 'pending' FROM fans f WHERE f.user_id = $1 AND {sql}",
        params.len() + 2
    );
    let added = on_tx!(tx, conn => bind_condition!(sqlx::query(AssertSqlSafe(sql)), user, params)
        .bind(run)
        .execute(&mut **conn)
        .await
        .map(|r| r.rows_affected()))?;
    Ok(added as i64)
}

/// Adds these fans (those that are the caller's) to the run, `pending`, in `tx`.
pub async fn resolve_ids(
    tx: &mut Tx,
    run: RunId,
    user: UserId,
    fans: &[FanId],
) -> StoreResult<i64> {
    if fans.is_empty() {
        return Ok(0);
    }
    let added = on_tx!(tx, conn => {
        let mut q = sqlx::QueryBuilder::new(
            "INSERT INTO campaign_recipients (run_id, fan_id, status) SELECT ",
        );
        q.push_bind(run)
            .push(", f.id, 'pending' FROM fans f WHERE f.user_id = ")
            .push_bind(user)
            .push(" AND f.id IN (");
        push_binds(&mut q, fans.iter().copied());
        q.push(") ON CONFLICT DO NOTHING");
        q.build().execute(&mut **conn).await.map(|r| r.rows_affected())
    })?;
    Ok(added as i64)
}

/// The run's next `n` pending fans, in fan order (the order the run goes through them).
pub async fn next_pending(tx: &mut Tx, run: RunId, n: i64) -> StoreResult<Vec<FanId>> {
    let rows: Vec<(FanId,)> = on_tx!(tx, conn => sqlx::query_as(
        "SELECT fan_id FROM campaign_recipients WHERE run_id = $1 AND status = 'pending'
         ORDER BY fan_id LIMIT $2",
    )
    .bind(run)
    .bind(n)
    .fetch_all(&mut **conn)
    .await)?;
    Ok(rows.into_iter().map(|(f,)| f).collect())
}

/// Marks `excluded` with `reason`, in `tx`, the run's pending fans among `fans`.
pub async fn exclude_fans(
    tx: &mut Tx,
    run: RunId,
    fans: &[FanId],
    reason: Exclusion,
) -> sqlx::Result<()> {
    if fans.is_empty() {
        return Ok(());
    }
    on_tx!(tx, conn => {
        let mut q = sqlx::QueryBuilder::new("UPDATE campaign_recipients SET status = 'excluded', reason = ");
        q.push_bind(reason)
            .push(" WHERE status = 'pending' AND run_id = ")
            .push_bind(run)
            .push(" AND fan_id IN (");
        push_binds(&mut q, fans.iter().map(|f| f.0));
        q.push(")");
        q.build().execute(&mut **conn).await.map(|_| ())
    })
}

/// Marks `excluded` with `reason`, in `tx`, the run's pending fans in `[first, last]` that
/// `condition` matches now. Returns those fans.
pub async fn exclude(
    tx: &mut Tx,
    run: RunId,
    user: UserId,
    (first, last): (FanId, FanId),
    reason: Exclusion,
    condition: &Condition,
) -> StoreResult<Vec<FanId>> {
    let Condition { sql, params } = condition;
    let n = params.len() + 1;
    let sql = format!(
        "UPDATE campaign_recipients SET status = 'excluded', reason = ${}
         WHERE run_id = ${} AND status = 'pending' AND fan_id BETWEEN ${} AND ${}
           AND fan_id IN (SELECT f.id FROM fans f WHERE f.user_id = $1 AND {sql})
         RETURNING fan_id",
        n + 1,
        n + 2,
        n + 3,
        n + 4
    );
    let rows: Vec<(FanId,)> = on_tx!(tx, conn => bind_condition!(sqlx::query_as(AssertSqlSafe(sql)), user, params)
        .bind(reason)
        .bind(run)
        .bind(first)
        .bind(last)
        .fetch_all(&mut **conn)
        .await)?;
    Ok(rows.into_iter().map(|(f,)| f).collect())
}

/// Moves these fans of the run from `from` to `to`, in `tx`. Returns how many moved.
pub async fn set(
    tx: &mut Tx,
    run: RunId,
    fans: &[FanId],
    from: RecipientStatus,
    to: RecipientStatus,
) -> StoreResult<u64> {
    if fans.is_empty() {
        return Ok(0);
    }
    Ok(on_tx!(tx, conn => {
        let mut q = sqlx::QueryBuilder::new("UPDATE campaign_recipients SET status = ");
        q.push_bind(to)
            .push(" WHERE run_id = ")
            .push_bind(run)
            .push(" AND status = ")
            .push_bind(from)
            .push(" AND fan_id IN (");
        push_binds(&mut q, fans.iter().copied());
        q.push(")");
        q.build().execute(&mut **conn).await.map(|r| r.rows_affected())
    })?)
}

/// Every pending fan of the run → `cancelled`, in `tx`. Returns how many.
pub async fn cancel_pending(tx: &mut Tx, run: RunId) -> StoreResult<u64> {
    Ok(on_tx!(tx, conn => sqlx::query(
        "UPDATE campaign_recipients SET status = 'cancelled' WHERE run_id = $1 AND status = 'pending'",
    )
    .bind(run)
    .execute(&mut **conn)
    .await
    .map(|r| r.rows_affected()))?)
}

/// Whether the run has fans still pending, in `tx`.
pub async fn any_pending(tx: &mut Tx, run: RunId) -> StoreResult<bool> {
    let (any,): (bool,) = on_tx!(tx, conn => sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM campaign_recipients WHERE run_id = $1 AND status = 'pending')",
    )
    .bind(run)
    .fetch_one(&mut **conn)
    .await)?;
    Ok(any)
}

/// Where a run's (or a campaign's) recipients stand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub audience: i64,
    pub pending: i64,
    pub queued: i64,
    pub excluded: i64,
    pub cancelled: i64,
    /// Excluded fans by reason.
    pub excluded_by: Vec<(Exclusion, i64)>,
}

impl Counts {
    fn of(rows: Vec<(RecipientStatus, Option<Exclusion>, i64)>) -> Self {
        let mut c = Counts::default();
        for (status, reason, n) in rows {
            c.audience += n;
            match status {
                RecipientStatus::Pending => c.pending += n,
                RecipientStatus::Queued => c.queued += n,
                RecipientStatus::Cancelled => c.cancelled += n,
                RecipientStatus::Excluded => {
                    c.excluded += n;
                    if let Some(reason) = reason {
                        c.excluded_by.push((reason, n));
                    }
                }
            }
        }
        c.excluded_by.sort_by_key(|(reason, _)| reason.as_str());
        c
    }
}

/// Whose recipients: one run's, or all of a campaign's runs'.
#[derive(Debug, Clone, Copy)]
pub enum Of {
    Run(RunId),
    Campaign(CampaignId),
}

/// Where the recipients stand and how their messages do, read in one statement (one
/// snapshot: a feed committing meanwhile cannot count a recipient both pending and queued).
pub async fn progress(db: &Db, of: Of) -> StoreResult<(Counts, StatusCounts)> {
    let (recipients, messages, id) = match of {
        Of::Run(run) => (
            "SELECT 'r', status, reason, COUNT(*) FROM campaign_recipients WHERE run_id = $1
             GROUP BY status, reason",
            "SELECT 'm', status, NULL, COUNT(*) FROM messages WHERE run_id = $1 GROUP BY status",
            run.0,
        ),
        Of::Campaign(campaign) => (
            "SELECT 'r', r.status, r.reason, COUNT(*) FROM campaign_recipients r
             JOIN campaign_runs u ON u.id = r.run_id
             WHERE u.campaign_id = $1 GROUP BY r.status, r.reason",
            "SELECT 'm', status, NULL, COUNT(*) FROM messages WHERE campaign_id = $1
             GROUP BY status",
            campaign.0,
        ),
    };
    let sql = format!("{recipients} UNION ALL {messages}");
    let rows: Vec<(String, String, Option<String>, i64)> = on_db!(db, pool => sqlx::query_as(AssertSqlSafe(sql))
        .bind(id)
        .fetch_all(pool)
        .await)?;
    let mut who = vec![];
    let mut sent = StatusCounts::default();
    for (side, status, reason, n) in rows {
        if side == "r" {
            let reason = reason
                .as_deref()
                .map(Exclusion::parse)
                .transpose()
                .map_err(decode)?;
            who.push((RecipientStatus::parse(&status).map_err(decode)?, reason, n));
        } else {
            sent.total += n;
            match MessageStatus::parse(&status).map_err(decode)? {
                MessageStatus::Queued => sent.queued += n,
                MessageStatus::Sending => sent.sending += n,
                MessageStatus::Sent => sent.sent += n,
                MessageStatus::Failed => sent.failed += n,
            }
        }
    }
    Ok((Counts::of(who), sent))
}

fn decode(e: crate::domain::UnknownValue) -> StoreError {
    StoreError::Sql(sqlx::Error::Decode(Box::new(e)))
}

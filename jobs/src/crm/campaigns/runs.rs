//! Campaign runs: one occurrence of a campaign to an audience (a one-off campaign has one, a
//! recurring one a run per tick). The only module that writes `campaign_runs`.

use chrono::{DateTime, Utc};

use crate::{
    db::{Db, Listed, Page, StoreResult, Tx},
    domain::{CampaignId, RunId, Timestamp, UserId},
    on_db, on_tx, text_enum,
};

text_enum! {
    pub enum RunStatus as "campaign run status" {
        /// Its recipients are being queued and delivered.
        Active = "active",
        Paused = "paused",
        /// Every recipient is sent, failed or excluded.
        Completed = "completed",
        Cancelled = "cancelled",
        /// A recurring campaign's tick that came while its previous run was still going.
        Skipped = "skipped",
    }
}

/// A run as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Run {
    pub id: RunId,
    pub campaign_id: CampaignId,
    pub user_id: UserId,
    /// The occurrence it is for: the campaign's start time, or its recurring tick.
    pub tick: DateTime<Utc>,
    pub status: RunStatus,
    /// How many fans the audience held when the run started; `None` until resolved.
    pub audience: Option<i64>,
    /// A `campaign_feed` job is stored or running for it.
    pub feeding: bool,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The turn its next message takes (see `messages::campaign_front`).
    pub next_turn: i64,
}

/// Stores the run of `campaign` for `tick`, in `tx` (its feed not stored yet); `None` when that
/// tick has its run already (another scheduler started it).
pub async fn insert(
    tx: &mut Tx,
    campaign: CampaignId,
    user: UserId,
    tick: Timestamp,
    status: RunStatus,
    now: Timestamp,
) -> StoreResult<Option<Run>> {
    let done = matches!(status, RunStatus::Skipped).then_some(now);
    Ok(on_tx!(tx, conn => sqlx::query_as::<_, Run>(
        "INSERT INTO campaign_runs (campaign_id, user_id, tick, status, started_at, completed_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (campaign_id, tick) DO NOTHING
         RETURNING *",
    )
    .bind(campaign)
    .bind(user)
    .bind(tick)
    .bind(status)
    .bind(now)
    .bind(done)
    .fetch_optional(&mut **conn)
    .await)?)
}

/// The run as it is now.
pub async fn get(db: &Db, id: RunId) -> StoreResult<Option<Run>> {
    Ok(
        on_db!(db, pool => sqlx::query_as::<_, Run>("SELECT * FROM campaign_runs WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await)?,
    )
}

/// The run, its row locked until `tx` ends (on SQLite the transaction holds the write lock
/// already), so that its feeder, its dispatchers and pause/resume/cancel take turns.
pub async fn lock(tx: &mut Tx, id: RunId) -> StoreResult<Option<Run>> {
    let sql = match tx {
        Tx::Postgres(_) => "SELECT * FROM campaign_runs WHERE id = $1 FOR UPDATE",
        Tx::Sqlite(_) => "SELECT * FROM campaign_runs WHERE id = $1",
    };
    Ok(on_tx!(tx, conn => sqlx::query_as::<_, Run>(sql)
        .bind(id)
        .fetch_optional(&mut **conn)
        .await)?)
}

/// The campaign's run that is active or paused (at most one).
const LIVE: &str = "SELECT * FROM campaign_runs
    WHERE campaign_id = $1 AND status IN ('active', 'paused') ORDER BY id DESC LIMIT 1";

/// [`LIVE`] as it is now, without a lock: for a caller that only goes on (and locks) when
/// there is something to do.
pub async fn live(db: &Db, campaign: CampaignId) -> StoreResult<Option<Run>> {
    Ok(on_db!(db, pool => sqlx::query_as::<_, Run>(LIVE)
        .bind(campaign)
        .fetch_optional(pool)
        .await)?)
}

/// [`LIVE`], locked as [`lock`] locks a run.
pub async fn lock_live(tx: &mut Tx, campaign: CampaignId) -> StoreResult<Option<Run>> {
    let sql = match tx {
        Tx::Postgres(_) => format!("{LIVE} FOR UPDATE"),
        Tx::Sqlite(_) => LIVE.to_owned(),
    };
    Ok(
        on_tx!(tx, conn => sqlx::query_as::<_, Run>(sqlx::AssertSqlSafe(sql))
        .bind(campaign)
        .fetch_optional(&mut **conn)
        .await)?,
    )
}

/// Moves the run to `status` in `tx` (a final status records when).
pub async fn set_status(
    tx: &mut Tx,
    id: RunId,
    status: RunStatus,
    now: Timestamp,
) -> StoreResult<()> {
    let done = matches!(status, RunStatus::Completed | RunStatus::Cancelled).then_some(now);
    on_tx!(tx, conn => sqlx::query(
        "UPDATE campaign_runs SET status = $2, completed_at = COALESCE(completed_at, $3)
         WHERE id = $1",
    )
    .bind(id)
    .bind(status)
    .bind(done)
    .execute(&mut **conn)
    .await
    .map(|_| ()))?;
    Ok(())
}

/// Records the resolved audience's size in `tx`.
pub async fn set_audience(tx: &mut Tx, id: RunId, audience: i64) -> StoreResult<()> {
    on_tx!(tx, conn => sqlx::query("UPDATE campaign_runs SET audience = $2 WHERE id = $1")
        .bind(id)
        .bind(audience)
        .execute(&mut **conn)
        .await
        .map(|_| ()))?;
    Ok(())
}

/// Records in `tx` the turn the run's next message takes.
pub async fn set_next_turn(tx: &mut Tx, id: RunId, next_turn: i64) -> StoreResult<()> {
    on_tx!(tx, conn => sqlx::query("UPDATE campaign_runs SET next_turn = $2 WHERE id = $1")
        .bind(id)
        .bind(next_turn)
        .execute(&mut **conn)
        .await
        .map(|_| ()))?;
    Ok(())
}

/// Records in `tx` whether a feed job is stored or running for the run.
pub async fn set_feeding(tx: &mut Tx, id: RunId, feeding: bool) -> StoreResult<()> {
    on_tx!(tx, conn => sqlx::query("UPDATE campaign_runs SET feeding = $2 WHERE id = $1")
        .bind(id)
        .bind(feeding)
        .execute(&mut **conn)
        .await
        .map(|_| ()))?;
    Ok(())
}

/// A campaign's runs, newest first.
pub async fn of_campaign(db: &Db, campaign: CampaignId, page: Page) -> StoreResult<Listed<Run>> {
    on_db!(db, pool => {
        let items = sqlx::query_as::<_, Run>(
            "SELECT * FROM campaign_runs WHERE campaign_id = $1 ORDER BY tick DESC, id DESC
             LIMIT $2 OFFSET $3",
        )
        .bind(campaign)
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(pool)
        .await?;
        let (total,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM campaign_runs WHERE campaign_id = $1")
                .bind(campaign)
                .fetch_one(pool)
                .await?;
        Ok(Listed { items, total })
    })
}

/// How many runs of `user`'s are active now (they share the creator's campaign slots).
pub async fn active_count(db: &Db, user: UserId) -> StoreResult<i64> {
    let (n,): (i64,) = on_db!(db, pool => sqlx::query_as(
        "SELECT COUNT(*) FROM campaign_runs WHERE user_id = $1 AND status = 'active'",
    )
    .bind(user)
    .fetch_one(pool)
    .await)?;
    Ok(n)
}

/// Active runs with no feed job: what the sweep looks at, so a run whose refill was never
/// stored (a crash between a delivery and its refill) does not stall.
pub async fn active_unfed(db: &Db, limit: i64) -> StoreResult<Vec<Run>> {
    Ok(on_db!(db, pool => sqlx::query_as::<_, Run>(
        "SELECT * FROM campaign_runs WHERE status = 'active' AND NOT feeding ORDER BY id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await)?)
}

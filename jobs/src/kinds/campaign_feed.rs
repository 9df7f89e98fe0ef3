//! The `campaign_feed` job kind: keeps a campaign run's next messages ahead of the dispatcher,
//! a few at a time, so that a campaign to 100,000 fans starts at once, holds little memory and
//! never fills its creator's backlog. Also where a run starts, pauses, resumes and is
//! cancelled, since each of those stores or stops a feed.
//!
//! A feed job runs rounds, each one transaction holding the run's row: the first resolves the
//! audience (the fans it matches now become the run's `pending` recipients); each later one
//! tops the run's messages on their way up to its `ahead` (the `CAMPAIGN_AHEAD` setting): it takes the next pending fans,
//! marks `excluded` (with the reason) those an exclusion matches now, stores a message for
//! each of the others (`queued`, under one `bulk_send` job that puts them on the outbound
//! queue). A recipient leaves `pending` in the transaction that stores its message, so it gets
//! one whatever crashes or repeats. The job ends when enough is on its way; the dispatcher
//! stores the next one when the run's messages on their way fall under half of it
//! ([`after_delivery`]), and the sweep stores one for an active run that has none.

use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::Instrument;

use super::{Deps, SubmitError, bulk_send::BulkSend};
use crate::{
    crm::{
        automations::DailyCap,
        campaigns::{
            self, Audience, Campaign, CampaignStatus, NewCampaign, Recurring,
            recipients::{self, Exclusion, RecipientStatus},
            runs::{self, Run, RunStatus},
        },
        fans,
        messages::{self, NewQueued, Outgoing},
        segments::{self, Condition, Filter},
    },
    db::{Db, StoreError, StoreResult, Tx},
    domain::{CampaignId, FanId, RunId, Timestamp, UserId},
    engine::{
        JobBackend, JobError, JobId, JobKind, JobRecord, NewJob, Outcome, RetryPolicy, RunContext,
    },
    idempotency::{self, Effect, Guard},
};

#[derive(Clone)]
pub struct CampaignFeed {
    db: Db,
    backend: JobBackend,
    ahead: i64,
    daily_cap: u32,
}

impl CampaignFeed {
    pub fn new(deps: &Deps) -> Self {
        CampaignFeed {
            db: deps.db.clone(),
            backend: deps.jobs.clone(),
            ahead: deps.campaign_ahead.max(1),
            daily_cap: deps.daily_cap_per_fan,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    run_id: RunId,
}

/// What a feed job did: its result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FeedResult {
    /// Recipients whose message it stored.
    pub recipients_queued: i64,
    /// Recipients it skipped, an exclusion matching them.
    pub recipients_excluded: i64,
    /// The audience's size, when this job resolved it.
    pub audience_resolved: Option<i64>,
}

/// What a round leaves to do.
enum Round {
    More,
    Done,
}

impl JobKind for CampaignFeed {
    const NAME: &'static str = "campaign_feed";
    /// A failing round (the database away) is tried again; the run stays `active` and the sweep
    /// stores a new feed if this one gives up.
    const RETRY: RetryPolicy = RetryPolicy {
        max_attempts: 10,
        first_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(60),
    };
    const CONCURRENCY: usize = 8;

    async fn run(&self, job: &JobRecord, ctx: &RunContext) -> Result<Outcome, JobError> {
        let Payload { run_id } = serde_json::from_value(job.payload.0.clone())
            .map_err(|e| JobError::Permanent(format!("unreadable job payload: {e}")))?;
        let mut fed = FeedResult::default();
        let span = tracing::info_span!("campaign_feed", job_id = %job.id, user_id = job.user_id.0, run_id = run_id.0);
        async {
            loop {
                ctx.check_shutdown()?;
                match self.round(run_id, &mut fed).await.map_err(transient)? {
                    Round::More => continue,
                    Round::Done => return Ok::<_, JobError>(()),
                }
            }
        }
        .instrument(span)
        .await?;
        Ok(Outcome::Succeeded(
            serde_json::to_value(fed).expect("a feed result serializes"),
        ))
    }

    async fn give_up(&self, job: &JobRecord, reason: &str) {
        let Ok(Payload { run_id }) = serde_json::from_value(job.payload.0.clone()) else {
            return;
        };
        let stopped = async {
            let mut tx = self.db.begin().await?;
            runs::set_feeding(&mut tx, run_id, false).await?;
            tx.commit().await?;
            StoreResult::Ok(())
        };
        if let Err(e) = stopped.await {
            tracing::error!(run_id = run_id.0, error = %e, reason, "a feed gave up and could not say so");
        }
    }
}

fn transient(e: impl Into<anyhow::Error>) -> JobError {
    JobError::Transient(e.into())
}

/// A campaign's exclusions as the filters that find them, read now (a segment as it is now;
/// one deleted since excludes no one).
async fn exclusions(db: &Db, c: &Campaign) -> StoreResult<Vec<(Exclusion, Filter)>> {
    let Some(exclude) = c.exclude.as_ref().map(|e| &e.0) else {
        return Ok(vec![]);
    };
    let mut out = vec![];
    if let Some(hours) = exclude.messaged_within_hours {
        let f = Filter {
            last_outbound_within_hours: Some(hours),
            ..Filter::default()
        };
        out.push((Exclusion::MessagedRecently, f));
    }
    if exclude.unread_inbound {
        let f = Filter {
            unread_inbound: Some(true),
            ..Filter::default()
        };
        out.push((Exclusion::UnreadInbound, f));
    }
    if let Some(id) = exclude.bought_campaign_id {
        let f = Filter {
            bought_campaign_id: Some(id),
            ..Filter::default()
        };
        out.push((Exclusion::BoughtCampaign, f));
    }
    if let Some(id) = exclude.segment_id {
        match segments::get(db, c.user_id, id).await {
            Ok(s) => out.push((Exclusion::ExcludedSegment, s.filter.0)),
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

impl CampaignFeed {
    /// One transaction of the run's feed.
    async fn round(&self, id: RunId, fed: &mut FeedResult) -> Result<Round, SubmitError> {
        let Some(run) = runs::get(&self.db, id).await? else {
            return Ok(Round::Done);
        };
        let campaign = campaigns::get(&self.db, run.user_id, run.campaign_id).await?;
        // Read before the transaction (which holds SQLite's one write lock, and must not wait
        // for another connection): the audience's segment, the exclusions.
        let audience = match run.audience {
            None => Some(self.audience(&campaign).await?),
            Some(_) => None,
        };
        let excluded_by = exclusions(&self.db, &campaign).await?;
        let now = Timestamp::now();
        let mut tx = self.db.begin().await?;
        // The campaign's row first, as every writer of both takes them (see `after_delivery`).
        campaigns::lock(&mut tx, run.user_id, run.campaign_id).await?;
        let Some(run) = runs::lock(&mut tx, id).await? else {
            return Ok(Round::Done);
        };
        if run.status != RunStatus::Active {
            runs::set_feeding(&mut tx, run.id, false).await?;
            tx.commit().await?;
            return Ok(Round::Done);
        }
        if run.audience.is_none()
            && let Some(audience) = audience
        {
            let n = match audience {
                Resolve::Fans(ids) => {
                    recipients::resolve_ids(&mut tx, run.id, run.user_id, &ids).await?
                }
                Resolve::Matching(condition) => {
                    recipients::resolve(&mut tx, run.id, run.user_id, &condition).await?
                }
                Resolve::Nobody => 0,
            };
            runs::set_audience(&mut tx, run.id, n).await?;
            tx.commit().await?;
            fed.audience_resolved = Some(n);
            tracing::info!(audience = n, "campaign audience resolved");
            return Ok(Round::More);
        }
        let on_the_way = messages::on_the_way_of_run(&mut tx, run.id).await?;
        let need = self.ahead - on_the_way;
        if need <= 0 {
            runs::set_feeding(&mut tx, run.id, false).await?;
            tx.commit().await?;
            return Ok(Round::Done);
        }
        let mut window = recipients::next_pending(&mut tx, run.id, need).await?;
        let (Some(&first), Some(&last)) = (window.first(), window.last()) else {
            if on_the_way == 0 {
                complete(&mut tx, &run, now).await?;
            }
            runs::set_feeding(&mut tx, run.id, false).await?;
            tx.commit().await?;
            return Ok(Round::Done);
        };
        for (reason, filter) in &excluded_by {
            let condition = filter.to_sql(segments::dialect(&self.db), now.0);
            let out = recipients::exclude(
                &mut tx,
                run.id,
                run.user_id,
                (first, last),
                *reason,
                &condition,
            )
            .await?;
            fed.recipients_excluded += out.len() as i64;
            window.retain(|f| !out.contains(f));
        }
        if self.daily_cap > 0 {
            // Counted and sent under the window's cap locks: a scheduler counting one of these
            // fans now finishes first, and one counting later sees this campaign's message.
            DailyCap::hold(&mut tx, &window).await?;
            let today =
                messages::automated_since(&mut tx, &window, DailyCap::day_start(now)).await?;
            let capped: Vec<FanId> = window
                .iter()
                .copied()
                .filter(|f| {
                    today
                        .get(f)
                        .is_some_and(|n| *n >= i64::from(self.daily_cap))
                })
                .collect();
            recipients::exclude_fans(&mut tx, run.id, &capped, Exclusion::DailyCap).await?;
            fed.recipients_excluded += capped.len() as i64;
            window.retain(|f| !capped.contains(f));
        }
        let job = JobId::generate();
        let queued = if window.is_empty() {
            None
        } else {
            let out = Outgoing::from_template(&campaign.template.0)
                .map_err(|e| StoreError::Conflict(e.to_string()))?;
            // Turns go on from the run's last, or from where the creator's campaigns stand
            // when they are further on (this run started or resumed after them).
            let front = messages::campaign_front(&mut tx, run.user_id).await?;
            let first_turn = front.map_or(run.next_turn, |f| f.max(run.next_turn));
            let rows: Vec<NewQueued> = window
                .iter()
                .zip(first_turn..)
                .map(|(fan, turn)| NewQueued {
                    user: run.user_id,
                    fan: *fan,
                    out: &out,
                    job: &job,
                    campaign: Some(run.campaign_id),
                    run: Some(run.id),
                    turn,
                    lane: messages::LANE_CAMPAIGNS,
                })
                .collect();
            runs::set_next_turn(&mut tx, run.id, first_turn + rows.len() as i64).await?;
            let stored = messages::insert_queued(&mut tx, &rows, now).await?;
            let ids: Vec<_> = stored.iter().flatten().map(|m| m.id).collect();
            recipients::set(
                &mut tx,
                run.id,
                &window,
                RecipientStatus::Pending,
                RecipientStatus::Queued,
            )
            .await?;
            let new_job = NewJob::of::<BulkSend>(
                job,
                run.user_id,
                json!({ "campaignId": run.campaign_id.0, "runId": run.id.0, "messageIds": ids }),
            )
            .with_total(ids.len() as i64);
            self.backend.enqueue(&mut tx, &new_job).await?;
            Some(new_job)
        };
        tx.commit().await?;
        if let Some(job) = queued {
            self.backend.after_commit(&self.db, &job).await;
            fed.recipients_queued += job.total.unwrap_or(0);
            tracing::debug!(job_id = %job.id, messages = job.total, "campaign messages queued");
        }
        Ok(Round::More)
    }

    /// Who the campaign's audience is now.
    async fn audience(&self, c: &Campaign) -> StoreResult<Resolve> {
        let filter = match serde_json::from_value::<Audience>(c.target_audience.0.clone()) {
            Ok(Audience::RecipientIds(ids)) => return Ok(Resolve::Fans(ids)),
            Ok(Audience::Filter(f)) => *f,
            Ok(Audience::SegmentId(id)) => match segments::get(&self.db, c.user_id, id).await {
                Ok(s) => s.filter.0,
                // Deleted before the campaign started: no one.
                Err(StoreError::NotFound(_)) => return Ok(Resolve::Nobody),
                Err(e) => return Err(e),
            },
            Err(e) => {
                tracing::error!(campaign_id = c.id.0, error = %e, "unreadable campaign audience");
                return Ok(Resolve::Nobody);
            }
        };
        Ok(Resolve::Matching(
            filter.to_sql(segments::dialect(&self.db), Utc::now()),
        ))
    }
}

/// A campaign's audience, ready to be added to a run.
enum Resolve {
    Fans(Vec<crate::domain::FanId>),
    Matching(Condition),
    Nobody,
}

/// The run is over (nothing pending, nothing on its way): `completed`, and a one-off campaign
/// with it (a recurring one waits for its next tick).
async fn complete(tx: &mut Tx, run: &Run, now: Timestamp) -> StoreResult<()> {
    runs::set_status(tx, run.id, RunStatus::Completed, now).await?;
    campaigns::complete_one_off(tx, run.campaign_id, now).await?;
    tracing::info!(
        campaign_id = run.campaign_id.0,
        run_id = run.id.0,
        "campaign run completed"
    );
    Ok(())
}

/// Starts a run of `campaign` for `tick` in `tx`: the run (`active`, its feed stored) and its
/// first feed job. `None` when that tick has its run already. Call
/// [`JobBackend::after_commit`] with the job once `tx` committed.
pub async fn start_run(
    tx: &mut Tx,
    backend: &JobBackend,
    campaign: &Campaign,
    tick: Timestamp,
    now: Timestamp,
) -> StoreResult<Option<(Run, NewJob)>> {
    let Some(run) = runs::insert(
        tx,
        campaign.id,
        campaign.user_id,
        tick,
        RunStatus::Active,
        now,
    )
    .await?
    else {
        return Ok(None);
    };
    let job = store_feed(tx, backend, &run).await?;
    Ok(Some((run, job)))
}

/// Stores the run's next feed job in `tx`, the run marked as fed until the job says
/// otherwise. Call [`JobBackend::after_commit`] with the job once `tx` committed.
async fn store_feed(tx: &mut Tx, backend: &JobBackend, run: &Run) -> StoreResult<NewJob> {
    runs::set_feeding(tx, run.id, true).await?;
    let job = NewJob::of::<CampaignFeed>(
        JobId::generate(),
        run.user_id,
        json!({ "campaignId": run.campaign_id.0, "runId": run.id.0 }),
    );
    backend.enqueue(tx, &job).await.map_err(store_error)?;
    Ok(job)
}

fn store_error(e: crate::engine::EnqueueError) -> StoreError {
    match e {
        crate::engine::EnqueueError::Sql(e) => StoreError::Sql(e),
        other => StoreError::Conflict(other.to_string()),
    }
}

/// A created campaign to an audience, and its run when it started at once.
pub struct Created {
    pub campaign: Campaign,
    pub run: Option<Run>,
}

/// Creates a campaign to an audience, in one transaction: the campaign, and when it starts now
/// its run and first feed. Segments it names must be the caller's, and so must fans it names.
pub async fn create(
    db: &Db,
    backend: &JobBackend,
    user: UserId,
    new: NewCampaign,
    key: Option<&Guard>,
) -> Result<Created, SubmitError> {
    for id in [
        match &new.audience {
            Audience::SegmentId(id) => Some(*id),
            _ => None,
        },
        new.exclude.segment_id,
    ]
    .into_iter()
    .flatten()
    {
        segments::get(db, user, id).await?;
    }
    let now = Timestamp::now();
    let mut tx = db.begin().await?;
    if let Audience::RecipientIds(ids) = &new.audience {
        let missing = fans::not_owned(&mut tx, user, ids).await?;
        if !missing.is_empty() {
            return Err(SubmitError::NotOwned(missing));
        }
    }
    let campaign = campaigns::insert(&mut tx, user, &new, now).await?;
    let started = if campaign.status == CampaignStatus::Active {
        start_run(&mut tx, backend, &campaign, now, now).await?
    } else {
        None
    };
    if let Some(key) = key {
        idempotency::record(&mut tx, key, &Effect::Campaign(campaign.id)).await?;
    }
    tx.commit().await?;
    let run = match started {
        Some((run, job)) => {
            backend.after_commit(db, &job).await;
            Some(run)
        }
        None => None,
    };
    tracing::info!(user_id = user.0, campaign_id = campaign.id.0, status = %campaign.status, "campaign to an audience created");
    Ok(Created { campaign, run })
}

/// Starts a campaign whose time (`now`, as the clock reads it) has come, once however many
/// schedulers try, in one transaction holding its row: a scheduled one becomes `active` with
/// its run; a recurring one gets a run for the tick, or, while its previous run is still going,
/// a `skipped` run for it, and its next tick. A tick missed by more than [`LATE`] (the clock
/// was down, the campaign paused) starts nothing. `false` when there was nothing to start
/// (another scheduler did it, or the campaign changed meanwhile).
pub async fn start_due(
    db: &Db,
    backend: &JobBackend,
    user: UserId,
    id: CampaignId,
    now: Timestamp,
) -> StoreResult<bool> {
    let mut tx = db.begin().await?;
    let Some(campaign) = campaigns::lock(&mut tx, user, id).await? else {
        return Ok(false);
    };
    let Some(at) = campaign.starts_at.filter(|at| *at <= now.0) else {
        return Ok(false);
    };
    let recurring = Recurring::of(&campaign);
    let mut started = None;
    match (campaign.status, &recurring) {
        (CampaignStatus::Scheduled, None) => {
            campaigns::set_status(&mut tx, id, CampaignStatus::Active, now).await?;
            campaigns::set_starts_at(&mut tx, id, None).await?;
            started = start_run(&mut tx, backend, &campaign, Timestamp(at), now).await?;
        }
        (CampaignStatus::Scheduled | CampaignStatus::Active, Some(r)) => {
            campaigns::set_status(&mut tx, id, CampaignStatus::Active, now).await?;
            if now.0 - at > LATE {
                tracing::warn!(campaign_id = id.0, tick = %at, "a tick missed long ago starts nothing");
            } else if runs::lock_live(&mut tx, id).await?.is_some() {
                runs::insert(&mut tx, id, user, Timestamp(at), RunStatus::Skipped, now).await?;
                tracing::info!(campaign_id = id.0, tick = %at, "tick skipped: the previous run is still going");
            } else {
                started = start_run(&mut tx, backend, &campaign, Timestamp(at), now).await?;
            }
            campaigns::set_starts_at(&mut tx, id, r.next_after(at.max(now.0))).await?;
        }
        _ => return Ok(false),
    }
    tx.commit().await?;
    if let Some((run, job)) = started {
        backend.after_commit(db, &job).await;
        tracing::info!(user_id = user.0, campaign_id = id.0, run_id = run.id.0, tick = %at, "campaign run started");
    }
    Ok(true)
}

/// How late a recurring campaign's tick may start.
pub const LATE: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// Asked after a delivery of a campaign message is final (and by the sweep for active runs
/// with no feed): stores the run's next feed when fewer than half of `ahead` of its messages
/// are on their way and fans are pending, or completes the run when nothing is left. One
/// transaction holding the run's row, so two dispatchers store one feed. Returns whether it
/// stored a feed.
pub async fn after_delivery(
    db: &Db,
    backend: &JobBackend,
    ahead: i64,
    campaign: CampaignId,
) -> StoreResult<bool> {
    // A look without a lock first: a seeds' bulk campaign (no run) or a paused one needs
    // nothing, and on SQLite a write transaction is the one write lock. (Whether a feed is
    // running is read under the lock only: a feed finishing meanwhile must be waited for.)
    let active = |run: &Run| run.status == RunStatus::Active;
    let Some(looked) = runs::live(db, campaign).await?.filter(active) else {
        return Ok(false);
    };
    let now = Timestamp::now();
    let mut tx = db.begin().await?;
    // The campaign's row, then its run's: the order every transaction that writes both takes
    // (the clock's start, pause and resume lock the campaign first), so none of them waits
    // for another in a circle.
    campaigns::lock(&mut tx, looked.user_id, campaign).await?;
    let Some(run) = runs::lock_live(&mut tx, campaign).await? else {
        return Ok(false);
    };
    if !active(&run) || run.feeding {
        return Ok(false);
    }
    let on_the_way = messages::on_the_way_of_run(&mut tx, run.id).await?;
    let unresolved = run.audience.is_none();
    if !unresolved && on_the_way >= ahead / 2 {
        return Ok(false);
    }
    let mut job = None;
    if unresolved || recipients::any_pending(&mut tx, run.id).await? {
        job = Some(store_feed(&mut tx, backend, &run).await?);
    } else if on_the_way == 0 {
        complete(&mut tx, &run, now).await?;
    }
    tx.commit().await?;
    let stored = job.is_some();
    if let Some(job) = job {
        backend.after_commit(db, &job).await;
    }
    Ok(stored)
}

/// What pause, resume and cancel ask of a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// No message of it leaves after this beyond one already out; its untried messages are
    /// taken back and their fans wait, pending.
    Pause,
    /// Goes on with the fans not yet sent.
    Resume,
    /// Stops for good: the fans not yet sent are `cancelled`.
    Cancel,
}

/// Pauses, resumes or cancels one of `user`'s campaigns to an audience, in one transaction
/// holding the campaign's and its run's rows. Asking for the state it is in already changes
/// nothing; asking what its state does not allow (resuming a completed campaign) is a
/// conflict. Returns the campaign as it is now.
pub async fn control(
    db: &Db,
    backend: &JobBackend,
    user: UserId,
    id: CampaignId,
    what: Control,
) -> StoreResult<Campaign> {
    use CampaignStatus as S;
    let now = Timestamp::now();
    let mut tx = db.begin().await?;
    let campaign = campaigns::lock(&mut tx, user, id)
        .await?
        .ok_or(StoreError::NotFound("campaign"))?;
    if !campaign.has_audience() {
        return Err(StoreError::Conflict(
            "only a campaign to an audience (POST /api/crm/campaigns) can be paused, resumed or cancelled".into(),
        ));
    }
    let target = match (what, campaign.status) {
        (Control::Pause, S::Paused)
        | (Control::Resume, S::Active)
        | (Control::Cancel, S::Cancelled) => {
            return Ok(campaign);
        }
        (Control::Pause, S::Active) => S::Paused,
        (Control::Resume, S::Paused) => S::Active,
        (Control::Cancel, S::Active | S::Paused | S::Scheduled | S::Draft) => S::Cancelled,
        (_, status) => {
            return Err(StoreError::Conflict(format!(
                "the campaign is {status}: it cannot be {}",
                match what {
                    Control::Pause => "paused",
                    Control::Resume => "resumed",
                    Control::Cancel => "cancelled",
                }
            )));
        }
    };
    let mut job = None;
    if let Some(run) = runs::lock_live(&mut tx, id).await? {
        match target {
            S::Paused | S::Cancelled => {
                let back = messages::withdraw_untried_of_run(&mut tx, run.id).await?;
                recipients::set(
                    &mut tx,
                    run.id,
                    &back,
                    RecipientStatus::Queued,
                    RecipientStatus::Pending,
                )
                .await?;
                let status = if target == S::Paused {
                    RunStatus::Paused
                } else {
                    recipients::cancel_pending(&mut tx, run.id).await?;
                    RunStatus::Cancelled
                };
                runs::set_status(&mut tx, run.id, status, now).await?;
                tracing::info!(run_id = run.id.0, taken_back = back.len(), %status, "campaign run stopped");
            }
            _ => {
                runs::set_status(&mut tx, run.id, RunStatus::Active, now).await?;
                job = Some(store_feed(&mut tx, backend, &run).await?);
            }
        }
    }
    // A recurring campaign resumes at its next tick from now (the ticks while paused are not
    // made up for).
    if target == S::Active
        && let Some(r) = Recurring::of(&campaign)
    {
        campaigns::set_starts_at(&mut tx, id, r.next_after(now.0)).await?;
    }
    campaigns::set_status(&mut tx, id, target, now).await?;
    tx.commit().await?;
    if let Some(job) = job {
        backend.after_commit(db, &job).await;
    }
    tracing::info!(user_id = user.0, campaign_id = id.0, status = %target, "campaign controlled");
    campaigns::get(db, user, id).await
}

/// Runs still `active` with no feed: each is looked at as after a delivery, so one whose
/// refill was never stored (a crash between a delivery and its refill, a feed that gave up)
/// goes on. Returns how many feeds this stored.
pub async fn restore_feeds(db: &Db, backend: &JobBackend, ahead: i64) -> StoreResult<u64> {
    let mut stored = 0;
    for run in runs::active_unfed(db, 1_000).await? {
        if after_delivery(db, backend, ahead, run.campaign_id).await? {
            stored += 1;
        }
    }
    Ok(stored)
}

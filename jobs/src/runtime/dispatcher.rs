//! The dispatcher service: delivers messages to the platform at each creator's rate, in
//! priority order, exactly once in effect, with any number of replicas.
//!
//! Two loops:
//! - **Intake** takes messages off the outbound queue (SQS long polling, batches of 10, or the
//!   embedded queue) and parks each in its creator's schedule, which is the `messages` table
//!   itself, ordered by priority then age. The queue's copy is deleted once that is committed,
//!   so a message is received about once however long it then waits: waiting never raises its
//!   receive count toward the DLQ, and no backlog depends on the queue's 12-hour visibility.
//! - **Lanes**, one per creator with work in this process: take the creator's next slot from
//!   the shared [`DeliveryLimiter`], then claim the creator's next message (a row lock, so
//!   replicas never take the same one), deliver it with its id as idempotency key, and record
//!   the outcome. A creator's lane only ever waits for that creator's own slots, so one
//!   creator's backlog never holds up another's.
//!
//! A message is `sending` under a lease while its request is out; if its dispatcher dies, the
//! lease runs out and another takes it over with the same idempotency key, so the platform
//! applies it once. A `sent` message that comes off the queue again (a redelivery, a
//! standard-queue duplicate) is deleted without a send.
//!
//! A dispatcher that stalls between its slot and its request (SIGSTOP, a long pause) must not
//! send on a claim or a slot that has lapsed meanwhile: right before each request it checks
//! that its claim still holds for the whole request (fenced on the attempt, one read) and that
//! the limiter still counts its slot (one limiter call, which also counts the delivery from
//! now). If either has lapsed it sends nothing, gives the message back to the schedule
//! uncharged and takes a new slot. Recording the outcome is fenced on the attempt too.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use chrono::Utc;
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    crm::{
        campaigns, deliveries,
        deliveries::AttemptOutcome,
        messages::{self, Claim, Settled},
    },
    db::Db,
    delivery::{
        limiter::{DeliveryLimiter, Slot, Ticket, WINDOW},
        platform::{Attempt, Platform},
    },
    domain::UserId,
    engine::JobBackend,
    kinds::campaign_feed,
    outbound::{MAX_BATCH, Outbound, OutboundQueue, addressed},
    telemetry,
};

/// How the dispatcher runs.
#[derive(Debug, Clone, Copy)]
pub struct DispatchConfig {
    /// Delivery attempts per message before it is failed and dead-lettered.
    pub max_attempts: u32,
    /// Deliveries in flight at once in this process.
    pub concurrency: usize,
    /// Receive loops of the intake; each holds at most one batch of 10.
    pub intake_loops: usize,
    /// A running campaign's messages kept queued ahead of delivery: under half of it, a
    /// delivery stores the campaign's next feed.
    pub campaign_ahead: i64,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            max_attempts: 5,
            concurrency: 64,
            intake_loops: 4,
            campaign_ahead: 20,
        }
    }
}

/// How long a received message stays hidden from other dispatchers while it is parked (a
/// few milliseconds' work). Also how long a batch whose receive answer was lost (a network
/// cut) waits before it can be received again.
const INTAKE_VISIBILITY: Duration = Duration::from_secs(20);
/// Long-polling wait of one receive.
const INTAKE_WAIT: Duration = Duration::from_secs(10);
/// How often a process looks for creators with due work it has no lane for (another
/// replica's intake parked it, a retry came due, a dispatcher died).
const DISCOVERY: Duration = Duration::from_secs(2);
/// Waits after a failing step (the database, the queue or Redis unreachable).
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A lane with nothing due sleeps at most this long before looking again.
const IDLE_RECHECK: Duration = Duration::from_secs(30);

pub struct Dispatcher {
    db: Db,
    /// Where a campaign's next feed is stored when its messages on their way run low.
    jobs: JobBackend,
    outbound: Outbound,
    limiter: DeliveryLimiter,
    platform: Platform,
    config: DispatchConfig,
    /// Bounds the deliveries in flight; taken before a slot, so that a slot is used at once.
    permits: Semaphore,
    totals: Totals,
}

/// What this process did, logged when it stops (receives per delivery tell whether waiting
/// costs queue receives).
#[derive(Default)]
struct Totals {
    received: AtomicU64,
    parked: AtomicU64,
    attempts: AtomicU64,
    delivered: AtomicU64,
    /// Claims given back unsent: their claim or slot lapsed before the request.
    given_back: AtomicU64,
}

/// What one lane step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// An attempt was made and recorded.
    Attempted,
    /// A message was claimed, but its claim or its slot had lapsed before the request (the
    /// dispatcher stalled): nothing was sent and the message is back in the schedule.
    GaveBack,
    /// The creator has no free slot for this long.
    Wait(Duration),
    /// Nothing is due for the creator; the next thing comes due then (or never).
    Idle(Option<chrono::DateTime<Utc>>),
    /// Asked to stop before anything was claimed: the slot was given back.
    Stopped,
}

/// What one [`Dispatcher::run_once`] pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// Messages taken off the queue into the schedule.
    pub parked: usize,
    /// Delivery attempts made (and recorded).
    pub attempted: usize,
}

fn backoff(after_failures: u32) -> Duration {
    BACKOFF_FIRST
        .saturating_mul(2u32.saturating_pow(after_failures.min(10)))
        .min(BACKOFF_MAX)
}

impl Dispatcher {
    pub fn new(
        db: Db,
        jobs: JobBackend,
        outbound: Outbound,
        limiter: DeliveryLimiter,
        platform: Platform,
        config: DispatchConfig,
    ) -> Self {
        let permits = Semaphore::new(config.concurrency.max(1));
        Dispatcher {
            db,
            jobs,
            outbound,
            limiter,
            platform,
            config,
            permits,
            totals: Totals::default(),
        }
    }

    /// Runs until `cancel`, then finishes the deliveries in flight (each is recorded).
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let this = Arc::new(self);
        tracing::info!(
            platform = this.platform.url(),
            limiter = this.limiter.backend_name(),
            per_minute = this.limiter.pace().per_minute,
            "dispatcher running"
        );
        let (parked_tx, mut parked_rx) = tokio::sync::mpsc::unbounded_channel::<UserId>();
        let mut intake = JoinSet::new();
        for _ in 0..this.config.intake_loops.max(1) {
            let (this, cancel, parked_tx) = (this.clone(), cancel.clone(), parked_tx.clone());
            intake.spawn(async move { this.intake_loop(cancel, parked_tx).await });
        }
        let mut lanes: JoinSet<UserId> = JoinSet::new();
        let mut running: HashSet<UserId> = HashSet::new();
        let mut discovery = tokio::time::interval(DISCOVERY);
        discovery.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let start_lane =
            |creator: UserId, lanes: &mut JoinSet<UserId>, running: &mut HashSet<UserId>| {
                if running.insert(creator) {
                    let (this, cancel) = (this.clone(), cancel.clone());
                    let span = tracing::info_span!("lane", user_id = creator.0);
                    lanes.spawn(
                        async move {
                            this.lane(creator, cancel).await;
                            creator
                        }
                        .instrument(span),
                    );
                }
            };
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(creator) = parked_rx.recv() => start_lane(creator, &mut lanes, &mut running),
                Some(done) = lanes.join_next() => {
                    if let Ok(creator) = done {
                        running.remove(&creator);
                    }
                }
                _ = discovery.tick() => match messages::creators_due(&this.db, 10_000).await {
                    Ok(creators) => {
                        for creator in creators {
                            start_lane(creator, &mut lanes, &mut running);
                        }
                    }
                    Err(e) => tracing::warn!(error = format!("{e:#}"), "looking for due deliveries failed"),
                },
            }
        }
        // Lanes and intake see the cancellation themselves: each finishes what it holds.
        while lanes.join_next().await.is_some() {}
        while intake.join_next().await.is_some() {}
        let t = &this.totals;
        tracing::info!(
            received = t.received.load(Relaxed),
            parked = t.parked.load(Relaxed),
            attempts = t.attempts.load(Relaxed),
            delivered = t.delivered.load(Relaxed),
            given_back = t.given_back.load(Relaxed),
            "dispatcher stopped"
        );
        Ok(())
    }

    /// One pass without timers, for tests: takes everything visible off the queue, then gives
    /// every creator with due work one step.
    pub async fn run_once(&self) -> anyhow::Result<Pass> {
        let mut pass = Pass::default();
        loop {
            let parked = self.intake_once(Duration::ZERO).await?;
            if parked.is_empty() {
                break;
            }
            pass.parked += parked.len();
        }
        for creator in messages::creators_due(&self.db, 10_000).await? {
            if self.step(creator, &CancellationToken::new()).await? == Step::Attempted {
                pass.attempted += 1;
            }
        }
        Ok(pass)
    }

    async fn intake_loop(
        &self,
        cancel: CancellationToken,
        parked: tokio::sync::mpsc::UnboundedSender<UserId>,
    ) {
        let mut failures = 0;
        loop {
            // After a failure, receive again only once the database answers: a receive whose
            // messages cannot be parked raises their receive count toward the DLQ for nothing.
            let step = if failures > 0
                && let Err(e) = self.db.ping().await
            {
                Err(anyhow::Error::new(e).context("the database does not answer"))
            } else {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    step = self.intake_once(INTAKE_WAIT) => step,
                }
            };
            match step {
                Ok(creators) => {
                    failures = 0;
                    for creator in creators {
                        let _ = parked.send(creator);
                    }
                }
                Err(e) => {
                    let wait = backoff(failures);
                    failures += 1;
                    tracing::warn!(error = format!("{e:#}"), retry_in = ?wait, "taking messages off the outbound queue failed");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// Receives one batch, parks its messages and deletes the queue's copies; returns the
    /// creators of the messages received (their lanes have work).
    async fn intake_once(&self, wait: Duration) -> anyhow::Result<Vec<UserId>> {
        let received = self
            .outbound
            .receive(MAX_BATCH, INTAKE_VISIBILITY, wait)
            .await?;
        self.totals
            .received
            .fetch_add(received.len() as u64, Relaxed);
        let mut ids = Vec::with_capacity(received.len());
        let mut creators = Vec::with_capacity(received.len());
        let mut receipts = Vec::with_capacity(received.len());
        for r in received {
            match addressed(&r.body) {
                Some((id, creator)) => {
                    ids.push(id);
                    creators.push(creator);
                    receipts.push(r.receipt);
                }
                // Left on the queue: after its maximum receives it moves to the DLQ, where
                // an operator sees it.
                None => tracing::error!(
                    receive_count = r.receive_count,
                    body = %r.body.chars().take(200).collect::<String>(),
                    "unreadable message on the outbound queue"
                ),
            }
        }
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let moved = messages::park(&self.db, &ids).await?;
        self.totals.parked.fetch_add(moved, Relaxed);
        self.outbound.delete_batch(&receipts).await?;
        tracing::debug!(received = ids.len(), parked = moved, "intake batch");
        creators.sort_unstable();
        creators.dedup();
        Ok(creators)
    }

    /// Delivers the creator's due messages, one slot at a time, until none is left.
    async fn lane(&self, creator: UserId, cancel: CancellationToken) {
        let mut failures = 0;
        while !cancel.is_cancelled() {
            let wait = match self.step(creator, &cancel).await {
                Ok(Step::Stopped) => return,
                Ok(Step::Attempted | Step::GaveBack) => {
                    failures = 0;
                    continue;
                }
                Ok(Step::Wait(d)) => {
                    failures = 0;
                    d
                }
                Ok(Step::Idle(None)) => return,
                Ok(Step::Idle(Some(due))) => (due - Utc::now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .min(IDLE_RECHECK),
                Err(e) => {
                    let wait = backoff(failures);
                    failures += 1;
                    tracing::warn!(error = format!("{e:#}"), retry_in = ?wait, "delivery step failed; no message was charged");
                    wait
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One step for one creator: a slot, the next due message, one attempt, its record.
    ///
    /// `stop` is looked at once more between the slot and the claim: waiting for a permit
    /// and a slot can outlast a SIGTERM, and a stopping dispatcher must not start new
    /// deliveries, only finish those already out (a step begun before the signal would
    /// otherwise send one more message per lane after it).
    pub async fn step(&self, creator: UserId, stop: &CancellationToken) -> anyhow::Result<Step> {
        let _permit = self.permits.acquire().await?;
        // The lease counts from before the slot is taken, so a claim never outlives the
        // latest arrival the limiter logs for its slot (`max_flight` after it), and the
        // limiter remembers that slot for a whole window more: no valid claim has a forgotten
        // slot.
        let lease = Utc::now() + self.limiter.pace().max_flight;
        let slot = match self.limiter.reserve(creator).await? {
            Slot::Unknown => {
                self.seed(creator).await?;
                self.limiter.reserve(creator).await?
            }
            slot => slot,
        };
        let ticket = match slot {
            Slot::Go(ticket) => ticket,
            Slot::Wait(d) => {
                telemetry::limiter_waited(d);
                return Ok(Step::Wait(d));
            }
            // Lost again at once (Redis restarting): look again shortly.
            Slot::Unknown => return Ok(Step::Wait(BACKOFF_FIRST)),
        };
        if stop.is_cancelled() {
            if let Err(e) = self.limiter.cancel(&ticket).await {
                tracing::warn!(error = format!("{e:#}"), "could not give a slot back");
            }
            return Ok(Step::Stopped);
        }
        let claim = match messages::claim_next(&self.db, creator, lease).await {
            Ok(Some(claim)) => claim,
            Ok(None) => {
                self.limiter.cancel(&ticket).await?;
                return Ok(Step::Idle(messages::next_due(&self.db, creator).await?));
            }
            Err(e) => {
                if let Err(undo) = self.limiter.cancel(&ticket).await {
                    tracing::warn!(error = format!("{undo:#}"), "could not give a slot back");
                }
                return Err(e.into());
            }
        };
        let span = tracing::info_span!(
            "delivery",
            message_id = claim.message.id.0,
            campaign_id = claim.message.campaign_id.map(|c| c.0),
            attempt = claim.attempt,
        );
        let body = serde_json::to_string(&claim.message.body())?;
        if !self
            .still_holds(&claim, &ticket)
            .instrument(span.clone())
            .await?
        {
            self.totals.given_back.fetch_add(1, Relaxed);
            return Ok(Step::GaveBack);
        }
        let called = std::time::Instant::now();
        let attempt = self
            .platform
            .deliver(&claim.message.idempotency_key(), &body)
            .instrument(span.clone())
            .await;
        telemetry::platform_call(attempt.label(), called.elapsed());
        self.totals.attempts.fetch_add(1, Relaxed);
        if matches!(attempt, Attempt::Delivered { .. }) {
            self.totals.delivered.fetch_add(1, Relaxed);
        }
        // Whatever happens next, the platform has answered: the delivery arrived by now.
        if let Err(e) = self.limiter.finished(&ticket).await {
            tracing::warn!(
                error = format!("{e:#}"),
                "could not record a delivery's end in the limiter (it counts as late as possible)"
            );
        }
        self.record(creator, &claim, attempt)
            .instrument(span)
            .await?;
        Ok(Step::Attempted)
    }

    /// The fence, right before the request: whether the claim still holds for the whole
    /// request and the limiter still counts the slot. When not, nothing may be sent: the
    /// slot and the message are given back (the message only if this attempt still holds it)
    /// and `false` is returned. The limiter is asked last, since confirming the slot counts
    /// the delivery as leaving now.
    async fn still_holds(&self, claim: &Claim, ticket: &Ticket) -> anyhow::Result<bool> {
        let until = Utc::now() + self.platform.timeout();
        let held = match messages::holds(&self.db, claim, until).await {
            Ok(held) => held,
            Err(e) => {
                // Unknown: nothing is sent; the lease runs out and the message is taken over.
                if let Err(undo) = self.limiter.cancel(ticket).await {
                    tracing::warn!(error = format!("{undo:#}"), "could not give a slot back");
                }
                return Err(e.into());
            }
        };
        if !held {
            tracing::warn!(
                "the claim lapsed before its request (a stall outlasted its lease); nothing sent, message given back"
            );
            if let Err(e) = self.limiter.cancel(ticket).await {
                tracing::warn!(error = format!("{e:#}"), "could not give a slot back");
            }
            messages::give_back(&self.db, claim).await?;
            return Ok(false);
        }
        let counted = match self.limiter.confirm(ticket).await {
            Ok(counted) => counted,
            Err(e) => {
                // Unknown whether the slot counts: nothing is sent.
                messages::give_back(&self.db, claim).await?;
                return Err(e);
            }
        };
        if !counted {
            tracing::warn!(
                "the delivery slot lapsed before its request (a stall outlasted the limiter's memory of it); nothing sent, message given back"
            );
            messages::give_back(&self.db, claim).await?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Gives the limiter the creator's recent attempts, as the database logged them.
    async fn seed(&self, creator: UserId) -> anyhow::Result<()> {
        let since = Utc::now() - WINDOW - self.limiter.pace().max_flight;
        let past = deliveries::started_since(&self.db, creator, since).await?;
        tracing::info!(
            user_id = creator.0,
            recent = past.len(),
            "delivery window seeded from the attempt log"
        );
        self.limiter.seed(creator, &past).await
    }

    /// Records how an attempt ended and does what follows from it.
    async fn record(&self, creator: UserId, claim: &Claim, attempt: Attempt) -> anyhow::Result<()> {
        let settled = match &attempt {
            Attempt::Delivered {
                status,
                platform_id,
            } => Settled::Delivered {
                http_status: *status,
                platform_id: platform_id.as_deref(),
            },
            Attempt::RateLimited {
                status,
                retry_after,
            } => {
                // Every replica holds this creator's slots for the platform's wait; the
                // attempt is not charged to the message. Should the pause not reach Redis, the
                // limiter is unreachable and gives no slot to anyone meanwhile.
                if let Err(e) = self.limiter.pause(creator, *retry_after).await {
                    tracing::warn!(error = format!("{e:#}"), "could not pause the creator");
                }
                Settled::RateLimited {
                    http_status: *status,
                }
            }
            Attempt::Rejected { status, reason } => Settled::Failed {
                outcome: AttemptOutcome::Rejected,
                http_status: Some(*status),
                reason,
            },
            Attempt::Failed { status, reason }
                if claim.attempt >= i64::from(self.config.max_attempts) =>
            {
                Settled::Failed {
                    outcome: AttemptOutcome::Failed,
                    http_status: *status,
                    reason,
                }
            }
            Attempt::Failed { status, reason } => Settled::Retry {
                http_status: *status,
                reason,
                next_attempt_at: Utc::now()
                    + backoff(u32::try_from(claim.attempt).unwrap_or(0).saturating_sub(1))
                        .max(Duration::from_secs(1)),
            },
        };
        let applied = messages::settle(&self.db, claim, settled.clone()).await?;
        if !applied {
            tracing::info!("the message was taken over meanwhile; its new attempt records it");
            return Ok(());
        }
        match &settled {
            Settled::Delivered { .. } => tracing::debug!("delivered"),
            Settled::RateLimited { .. } => {
                tracing::warn!(?attempt, "the platform asked to slow down; creator paused")
            }
            Settled::Retry { reason, .. } => tracing::warn!(%reason, "attempt failed; will retry"),
            Settled::Failed {
                outcome, reason, ..
            } => {
                tracing::warn!(%reason, %outcome, "message failed");
                if *outcome == AttemptOutcome::Failed
                    && let Err(e) = self
                        .outbound
                        .dead_letter(&claim.message.entry(), reason)
                        .await
                {
                    tracing::error!(error = %e, "could not put a failed message in the DLQ (it is recorded failed)");
                }
            }
        }
        // A campaign's live counts come from its messages; its row is brought up to date
        // (and completed) once none of them is on its way. A campaign to an audience gets its
        // next messages when few are left on their way.
        if let Some(campaign) = claim.message.campaign_id
            && matches!(settled, Settled::Delivered { .. } | Settled::Failed { .. })
        {
            campaign_feed::after_delivery(
                &self.db,
                &self.jobs,
                self.config.campaign_ahead,
                campaign,
            )
            .await?;
            if !messages::campaign_in_progress(&self.db, campaign).await? {
                campaigns::refresh(&self.db, campaign).await?;
            }
        }
        Ok(())
    }
}

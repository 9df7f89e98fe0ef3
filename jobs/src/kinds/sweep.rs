//! The `sweep` job kind: reconciles the dead-letter queue with the messages, puts stuck
//! messages back on their way and prunes what has served its time. Fired on a schedule by
//! the sweeper service ([`runtime::Sweeper`](crate::runtime::Sweeper)), one job per tick
//! whatever the number of sweepers: a tick's job id is made from the tick's time, so a second
//! sweeper's submission of the same tick is refused by the records' primary key.
//!
//! Every step is idempotent, so a sweep right after another changes nothing:
//! - **DLQ**: each copy's message is looked up. A message already final (the dispatcher failed
//!   it when its attempts ran out, and dead-lettered it with the reason) only gets the reason
//!   when its row lacks one. A message not final reached the DLQ because the queue gave up on
//!   its receives (a transient failure, not the platform's answer): it is re-driven to the
//!   queue, up to `max_redrives` times, then failed with the reason. The copy is deleted only
//!   after that is committed.
//! - **Stuck**: a message on the queue past `stuck_after` while a dispatcher ran all along is
//!   sent to the queue again (up to `max_redrives`, then failed); a `sending` message whose
//!   lease ran out that long ago goes back to its creator's schedule (its next attempt carries
//!   the same idempotency key).
//! - **Prune**: final job records, finished apalis tasks, delivery attempts, dead processes
//!   and expired idempotency keys, older than the retention, in batches of
//!   `db::PRUNE_BATCH` rows (no statement holds its locks long) for at most `PRUNE_WITHIN`
//!   per table.

use std::{collections::BTreeSet, time::Duration};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Deps, SweepConfig, campaign_feed};
use crate::{
    crm::{
        campaigns, deliveries,
        messages::{self, MessageStatus},
    },
    db::{Db, is_unique_violation},
    domain::{CampaignId, MessageId, UserId},
    engine::{
        EnqueueError, JobBackend, JobError, JobId, JobKind, JobRecord, NewJob, Outcome,
        RetryPolicy, RunContext, StoredBy, processes, record,
    },
    idempotency,
    outbound::{MAX_BATCH, Outbound, OutboundEntry, OutboundQueue, addressed},
};

/// DLQ copies read per sweep at most (the rest waits for the next tick).
const DLQ_PER_SWEEP: usize = 10_000;
/// How long a read DLQ copy stays hidden from another reader.
const DLQ_VISIBILITY: Duration = Duration::from_secs(120);
/// Stuck messages handled per sweep at most.
const STUCK_PER_SWEEP: i64 = 10_000;
/// How long one sweep prunes one table (in batches of `db::PRUNE_BATCH` rows); what is left
/// goes at the next sweep.
const PRUNE_WITHIN: Duration = Duration::from_secs(20);

/// What one sweep did: the job's result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepReport {
    /// DLQ copies read.
    pub dlq_read: u64,
    /// Messages recorded `failed` (or given their reason) from the DLQ.
    pub dlq_recorded: u64,
    /// DLQ copies of messages already final, deleted.
    pub dlq_already_final: u64,
    /// DLQ copies put back on the queue.
    pub dlq_redriven: u64,
    /// DLQ copies that are not a message of ours, left for an operator.
    pub dlq_unreadable: u64,
    /// Messages stuck on the queue, sent to it again.
    pub stuck_requeued: u64,
    /// Messages stuck on the queue past their re-drives, failed.
    pub stuck_failed: u64,
    /// `sending` messages whose lease ran out long ago, back in their schedule.
    pub leases_reclaimed: u64,
    pub pruned_jobs: u64,
    /// Finished apalis tasks (see `JobBackend::prune_finished`).
    pub pruned_tasks: u64,
    pub pruned_attempts: u64,
    pub pruned_processes: u64,
    /// Idempotency keys past their 24 hours.
    pub pruned_idempotency_keys: u64,
    /// Active campaign runs that had no feed and needed one, given one.
    pub campaign_feeds_restored: u64,
}

impl SweepReport {
    /// Whether the sweep changed anything (a second sweep in a row should not).
    pub fn changed_anything(&self) -> bool {
        let idle = SweepReport {
            dlq_unreadable: self.dlq_unreadable,
            dlq_read: self.dlq_unreadable,
            ..SweepReport::default()
        };
        *self != idle
    }
}

#[derive(Clone)]
pub struct Sweep {
    db: Db,
    jobs: JobBackend,
    outbound: Outbound,
    config: SweepConfig,
    campaign_ahead: i64,
}

impl Sweep {
    pub fn new(deps: &Deps) -> Self {
        Sweep {
            db: deps.db.clone(),
            jobs: deps.jobs.clone(),
            outbound: deps.outbound.clone(),
            config: deps.sweep,
            campaign_ahead: deps.campaign_ahead,
        }
    }

    /// One whole sweep.
    pub async fn sweep(&self, ctx: &RunContext) -> Result<SweepReport, JobError> {
        let mut report = SweepReport::default();
        let mut campaigns = BTreeSet::new();
        self.dead_letters(&mut report, &mut campaigns, ctx).await?;
        self.stuck(&mut report, &mut campaigns).await?;
        for campaign in campaigns {
            if !messages::campaign_in_progress(&self.db, campaign).await? {
                campaigns::refresh(&self.db, campaign).await?;
            }
        }
        report.campaign_feeds_restored =
            campaign_feed::restore_feeds(&self.db, &self.jobs, self.campaign_ahead).await?;
        let before = Utc::now() - self.config.retention;
        // Each table in batches, within its own share of the sweep's time.
        let deadline = || std::time::Instant::now() + PRUNE_WITHIN;
        report.pruned_jobs = record::prune_final(&self.db, before, deadline()).await?;
        report.pruned_tasks = self
            .jobs
            .prune_finished(before, deadline())
            .await
            .map_err(|e| JobError::Transient(e.into()))?;
        report.pruned_attempts = deliveries::prune(&self.db, before, deadline()).await?;
        let gone = Utc::now() - chrono::TimeDelta::days(1);
        report.pruned_processes = processes::prune(&self.db, gone, deadline()).await?;
        let expired = Utc::now() - idempotency::RETENTION;
        report.pruned_idempotency_keys = idempotency::prune(&self.db, expired, deadline()).await?;
        Ok(report)
    }

    async fn dead_letters(
        &self,
        report: &mut SweepReport,
        touched: &mut BTreeSet<CampaignId>,
        ctx: &RunContext,
    ) -> Result<(), JobError> {
        let queue_error = |e: crate::outbound::QueueError| JobError::Transient(e.into());
        while (report.dlq_read as usize) < DLQ_PER_SWEEP {
            ctx.check_shutdown()?;
            let copies = self
                .outbound
                .receive_dead(MAX_BATCH, DLQ_VISIBILITY)
                .await
                .map_err(queue_error)?;
            if copies.is_empty() {
                break;
            }
            report.dlq_read += copies.len() as u64;
            let parsed: Vec<Option<(MessageId, UserId)>> =
                copies.iter().map(|c| addressed(&c.body)).collect();
            let ids: Vec<MessageId> = parsed.iter().flatten().map(|(id, _)| *id).collect();
            let rows = messages::dead_lettered(&self.db, &ids).await?;
            let mut done = Vec::new();
            for (copy, parsed) in copies.iter().zip(&parsed) {
                let Some((id, creator)) = parsed else {
                    report.dlq_unreadable += 1;
                    tracing::error!(body = %copy.body.chars().take(200).collect::<String>(), "unreadable message in the DLQ; left for an operator");
                    continue;
                };
                let span =
                    tracing::info_span!("dead_letter", message_id = id.0, user_id = creator.0);
                let _enter = span.enter();
                let Some(row) = rows.iter().find(|r| r.id == *id) else {
                    // Its message is gone (its fan was deleted): nothing to record.
                    report.dlq_already_final += 1;
                    done.push(copy.receipt.clone());
                    continue;
                };
                let reason = copy.reason.clone().unwrap_or_else(|| {
                    "the outbound queue gave up after its maximum receives".into()
                });
                match row.status {
                    MessageStatus::Sent => report.dlq_already_final += 1,
                    MessageStatus::Failed => {
                        if messages::record_dlq_reason(&self.db, *id, &reason).await? {
                            report.dlq_recorded += 1;
                        } else {
                            report.dlq_already_final += 1;
                        }
                    }
                    MessageStatus::Queued | MessageStatus::Sending
                        if row.redrives < self.config.max_redrives =>
                    {
                        let entry = OutboundEntry {
                            id: id.to_string(),
                            group: creator.to_string(),
                            body: copy.body.clone(),
                        };
                        messages::count_redrives(&self.db, &[*id]).await?;
                        self.outbound
                            .redrive(copy, &entry)
                            .await
                            .map_err(queue_error)?;
                        tracing::info!(redrives = row.redrives + 1, %reason, "re-driven from the DLQ");
                        report.dlq_redriven += 1;
                        continue;
                    }
                    MessageStatus::Queued | MessageStatus::Sending => {
                        let reason = format!(
                            "in the dead-letter queue after {} re-drives: {reason}",
                            row.redrives
                        );
                        if messages::fail_unfinished(&self.db, *id, &reason).await? {
                            report.dlq_recorded += 1;
                            tracing::warn!(%reason, "message failed from the DLQ");
                            touched.extend(row.campaign_id);
                        }
                    }
                }
                done.push(copy.receipt.clone());
            }
            // Only now, with every outcome committed.
            for chunk in done.chunks(MAX_BATCH) {
                self.outbound
                    .delete_dead(chunk)
                    .await
                    .map_err(queue_error)?;
            }
        }
        Ok(())
    }

    async fn stuck(
        &self,
        report: &mut SweepReport,
        touched: &mut BTreeSet<CampaignId>,
    ) -> Result<(), JobError> {
        let before = Utc::now() - self.config.stuck_after;
        report.leases_reclaimed = messages::reclaim_expired(&self.db, before).await?;
        // Without a dispatcher running all that time, waiting on the queue is not being stuck.
        if !processes::dispatcher_running_since(&self.db, before).await? {
            return Ok(());
        }
        let stuck = messages::stuck_on_queue(&self.db, before, STUCK_PER_SWEEP).await?;
        let (again, give_up): (Vec<_>, Vec<_>) = stuck
            .into_iter()
            .partition(|(_, redrives)| *redrives < self.config.max_redrives);
        for chunk in again.chunks(MAX_BATCH) {
            let entries: Vec<OutboundEntry> = chunk.iter().map(|(m, _)| m.entry()).collect();
            let outcome = self
                .outbound
                .send_batch(&entries)
                .await
                .map_err(|e| JobError::Transient(e.into()))?;
            let sent: Vec<MessageId> = chunk
                .iter()
                .map(|(m, _)| m.id)
                .filter(|id| !outcome.failed.iter().any(|(f, _)| *f == id.to_string()))
                .collect();
            messages::count_redrives(&self.db, &sent).await?;
            report.stuck_requeued += sent.len() as u64;
        }
        for (m, redrives) in give_up {
            let reason = format!(
                "on the outbound queue for over {}s and never taken off it, after {redrives} re-queues",
                self.config.stuck_after.as_secs()
            );
            if messages::fail_unfinished(&self.db, m.id, &reason).await? {
                report.stuck_failed += 1;
                touched.extend(m.campaign_id);
            }
        }
        Ok(())
    }
}

impl JobKind for Sweep {
    /// Also the name of its queue.
    const NAME: &'static str = "sweep";
    /// A failed sweep runs once more; the next tick sweeps anyway.
    const RETRY: RetryPolicy = RetryPolicy {
        max_attempts: 2,
        first_backoff: Duration::from_secs(10),
        max_backoff: Duration::from_secs(10),
    };
    const CONCURRENCY: usize = 1;
    const STORED_BY: StoredBy = StoredBy::Schedule;

    async fn run(&self, job: &JobRecord, ctx: &RunContext) -> Result<Outcome, JobError> {
        let report = self.sweep(ctx).await?;
        tracing::info!(job_id = %job.id, ?report, "sweep done");
        Ok(Outcome::Succeeded(json!(report)))
    }
}

/// The job id of the sweep of `tick`: the same on every sweeper.
pub fn tick_id(tick: DateTime<Utc>) -> JobId {
    // The random part of a ULID, fixed: the id is the tick's time and nothing else.
    const SWEEP: u128 = 0x5EE9_0000_0000_0000_0000;
    let ms = u64::try_from(tick.timestamp_millis()).unwrap_or(0);
    JobId(ulid::Ulid::from_parts(ms, SWEEP).to_string())
}

/// Stores the sweep job of `tick`; `None` when another sweeper stored it first.
pub async fn submit(
    db: &Db,
    backend: &JobBackend,
    tick: DateTime<Utc>,
) -> Result<Option<JobId>, EnqueueError> {
    let job = NewJob::of::<Sweep>(tick_id(tick), UserId::SYSTEM, json!({ "tick": tick }));
    let mut tx = db.begin().await?;
    match backend.enqueue(&mut tx, &job).await {
        Ok(()) => {}
        Err(EnqueueError::Sql(e)) if is_unique_violation(&e) => return Ok(None),
        Err(e) => return Err(e),
    }
    match tx.commit().await {
        Ok(()) => {}
        Err(e) if is_unique_violation(&e) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    backend.after_commit(db, &job).await;
    Ok(Some(job.id))
}

//! What the `send_message` and `bulk_send` kinds both do: put their jobs' queued messages on
//! the outbound queue in batches of 10, retrying refused entries alone.
//!
//! A group of jobs runs together: their messages are read in one query and packed 10 to a
//! `SendMessageBatch` across jobs (a campaign's hundred make ten full batches of their own;
//! single sends share theirs), several batches are in flight at once, and each wave of
//! accepted messages is marked on the queue in one statement.
//!
//! A message is marked on the queue right after the queue accepted it, so a re-run (after a
//! crash, a retry or a shutdown) sends only what is not there yet. What remains is the window
//! between the queue's acceptance and that mark: the embedded queue and SQS FIFO queues drop
//! the second copy themselves (the message id is their deduplication key); on a standard SQS
//! queue the consumer skips a message already sent (the id is its idempotency key).

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::Deps;
use crate::{
    crm::{
        campaigns,
        messages::{self, Deliverable, JobMessage, MessageStatus},
    },
    db::Db,
    domain::{CampaignId, MessageId},
    engine::{JobError, JobRecord, Outcome, RunContext, record},
    outbound::{
        ENQUEUE_BACKOFF, MAX_BATCH, Outbound, OutboundEntry, OutboundQueue, Sent, send_with_retries,
    },
};

/// `SendMessageBatch` calls in flight at once; the next wave starts when a wave is answered
/// and marked.
const WAVE: usize = 4;

/// The part of a send job's payload these batches read.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    campaign_id: Option<CampaignId>,
}

/// Where messages go, shared by both send kinds.
#[derive(Clone)]
pub struct OutboundBatches {
    db: Db,
    outbound: Outbound,
    /// `false`: messages skip the queue, are logged and marked sent.
    rate_limiter_enabled: bool,
}

fn payload(job: &JobRecord) -> Result<Payload, JobError> {
    serde_json::from_value(job.payload.0.clone())
        .map_err(|e| JobError::Permanent(format!("unreadable job payload: {e}")))
}

/// One job of the group, as its run goes.
#[derive(Default)]
struct Run {
    /// Its messages, in all.
    total: i64,
    /// Its messages still to put on the queue.
    todo: Vec<Deliverable>,
    /// On the queue (still queued), sent, failed: the job's messages as they stand.
    queued: i64,
    sent: i64,
    failed: i64,
    refused: usize,
    calls: u32,
    /// The queue itself kept failing: why.
    unsent: Option<String>,
}

impl Run {
    fn tally(&mut self, m: &JobMessage) {
        self.total += 1;
        match m.status {
            MessageStatus::Queued if !m.on_queue => self.todo.push(m.message.clone()),
            MessageStatus::Queued | MessageStatus::Sending => self.queued += 1,
            MessageStatus::Sent => self.sent += 1,
            MessageStatus::Failed => self.failed += 1,
        }
    }

    fn result(&self) -> serde_json::Value {
        serde_json::to_value(SendResult {
            queued: self.queued,
            sent: self.sent,
            failed: self.failed,
            refused_this_run: self.refused as u64,
            send_message_batch_calls: self.calls,
        })
        .expect("the result serializes")
    }
}

/// The result of a `send_message` or `bulk_send` job: its messages as they stood when it put
/// the last of them on the outbound queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SendResult {
    /// On the outbound queue (or being delivered).
    pub queued: i64,
    /// Already delivered.
    pub sent: i64,
    /// Failed (refused by the queue, or earlier).
    pub failed: i64,
    /// Entries the queue refused during this run.
    pub refused_this_run: u64,
    /// `SendMessageBatch` calls this run made.
    pub send_message_batch_calls: u32,
}

/// Up to [`MAX_BATCH`] entries for one call, and the jobs (indexes) they belong to.
struct Chunk {
    entries: Vec<OutboundEntry>,
    jobs: BTreeSet<usize>,
}

/// Packs the jobs' messages into calls: each job's full batches of 10 on their own, then the
/// rest of every job together, 10 a call.
fn pack(runs: &[Run]) -> Vec<Chunk> {
    let mut chunks = vec![];
    let mut rest: Vec<(usize, &Deliverable)> = vec![];
    for (i, run) in runs.iter().enumerate() {
        let full = run.todo.len() / MAX_BATCH * MAX_BATCH;
        for batch in run.todo[..full].chunks(MAX_BATCH) {
            chunks.push(Chunk {
                entries: batch.iter().map(Deliverable::entry).collect(),
                jobs: BTreeSet::from([i]),
            });
        }
        rest.extend(run.todo[full..].iter().map(|m| (i, m)));
    }
    for batch in rest.chunks(MAX_BATCH) {
        chunks.push(Chunk {
            entries: batch.iter().map(|(_, m)| m.entry()).collect(),
            jobs: batch.iter().map(|(i, _)| *i).collect(),
        });
    }
    chunks
}

impl OutboundBatches {
    pub fn new(deps: &Deps) -> Self {
        OutboundBatches {
            db: deps.db.clone(),
            outbound: deps.outbound.clone(),
            rate_limiter_enabled: deps.rate_limiter_enabled,
        }
    }

    /// Runs (or resumes) one send job.
    pub async fn run(&self, job: &JobRecord, ctx: &RunContext) -> Result<Outcome, JobError> {
        let mut outcomes = self.run_batch(std::slice::from_ref(job), ctx).await;
        outcomes.pop().unwrap_or(Err(JobError::Interrupted))
    }

    /// Runs (or resumes) a group of send jobs; one outcome per job, in order.
    pub async fn run_batch(
        &self,
        jobs: &[JobRecord],
        ctx: &RunContext,
    ) -> Vec<Result<Outcome, JobError>> {
        let span = tracing::info_span!("outbound_batches", jobs = jobs.len());
        match self.send_all(jobs, ctx).instrument(span).await {
            Ok(outcomes) => outcomes,
            Err(e) => {
                let reason = format!("{:#}", anyhow::Error::new(e));
                jobs.iter()
                    .map(|_| Err(JobError::Transient(anyhow::anyhow!("{reason}"))))
                    .collect()
            }
        }
    }

    async fn send_all(
        &self,
        jobs: &[JobRecord],
        ctx: &RunContext,
    ) -> Result<Vec<Result<Outcome, JobError>>, crate::db::StoreError> {
        let payloads: Vec<Result<Payload, JobError>> = jobs.iter().map(payload).collect();
        let ids: Vec<_> = jobs.iter().map(|j| j.id.clone()).collect();
        let index: HashMap<&str, usize> = jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (j.id.0.as_str(), i))
            .collect();
        let mut runs: Vec<Run> = jobs.iter().map(|_| Run::default()).collect();
        for m in messages::of_jobs(&self.db, &ids).await? {
            if let Some(&i) = index.get(m.job_id.0.as_str())
                && payloads[i].is_ok()
            {
                runs[i].tally(&m);
            }
        }

        let mut interrupted = false;
        if !self.rate_limiter_enabled {
            let all: Vec<MessageId> = runs
                .iter()
                .flat_map(|r| r.todo.iter().map(|m| m.id))
                .collect();
            for m in runs.iter().flat_map(|r| &r.todo) {
                tracing::info!(
                    message_id = m.id.0,
                    user_id = m.user_id.0,
                    recipient_id = m.fan_id.0,
                    content = %m.text,
                    "rate limiter disabled: message logged instead of queued"
                );
            }
            messages::mark_sent_without_queue(&self.db, &all).await?;
            for run in &mut runs {
                run.sent += run.todo.len() as i64;
                run.todo.clear();
            }
        } else {
            interrupted = self.send_waves(jobs, &mut runs, ctx).await?;
        }

        let touched: BTreeSet<CampaignId> = payloads
            .iter()
            .filter_map(|p| p.as_ref().ok().and_then(|p| p.campaign_id))
            .collect();
        for campaign in touched {
            campaigns::refresh(&self.db, campaign).await?;
        }

        Ok(payloads
            .into_iter()
            .zip(runs)
            .map(|(payload, run)| {
                payload?;
                if let Some(e) = run.unsent {
                    return Err(JobError::Transient(anyhow::anyhow!("{e}")));
                }
                if interrupted && !run.todo.is_empty() {
                    return Err(JobError::Interrupted);
                }
                Ok(Outcome::Succeeded(run.result()))
            })
            .collect())
    }

    /// Sends the runs' messages, [`WAVE`] calls at a time; after each wave, marks what the
    /// queue accepted and fails what it refused. Stops early when the queue keeps failing (the
    /// jobs concerned say why) or the worker is shutting down (returns `true`).
    async fn send_waves(
        &self,
        jobs: &[JobRecord],
        runs: &mut [Run],
        ctx: &RunContext,
    ) -> Result<bool, crate::db::StoreError> {
        let chunks = pack(runs);
        let owner: HashMap<MessageId, usize> = runs
            .iter()
            .enumerate()
            .flat_map(|(i, r)| r.todo.iter().map(move |m| (m.id, i)))
            .collect();
        let id_of = |entry: &str| entry.parse().ok().map(MessageId);
        for wave in chunks.chunks(WAVE) {
            if ctx.shutdown.is_cancelled() {
                return Ok(true);
            }
            let sent: Vec<Sent> = futures::future::join_all(wave.iter().map(|chunk| {
                send_with_retries(&chunk.entries, &ENQUEUE_BACKOFF, |batch| {
                    let queue = self.outbound.clone();
                    async move { queue.send_batch(&batch).await }
                })
            }))
            .await;
            let accepted: Vec<MessageId> = sent
                .iter()
                .flat_map(|s| &s.accepted)
                .filter_map(|id| id_of(id))
                .collect();
            messages::mark_on_queue(&self.db, &accepted).await?;
            let mut settled: HashSet<MessageId> = accepted.iter().copied().collect();
            for &id in &accepted {
                if let Some(&i) = owner.get(&id) {
                    runs[i].queued += 1;
                }
            }
            let mut failing = false;
            for (chunk, sent) in wave.iter().zip(&sent) {
                for &i in &chunk.jobs {
                    runs[i].calls += sent.calls;
                }
                for (entry, reason) in &sent.refused {
                    let Some(id) = id_of(entry) else { continue };
                    messages::fail_queued(&self.db, id, reason).await?;
                    settled.insert(id);
                    if let Some(&i) = owner.get(&id) {
                        runs[i].failed += 1;
                        runs[i].refused += 1;
                    }
                }
                if let Some(e) = &sent.unsent {
                    failing = true;
                    for &i in &chunk.jobs {
                        runs[i].unsent = Some(e.to_string());
                    }
                }
                tracing::debug!(
                    queued = sent.accepted.len(),
                    refused = sent.refused.len(),
                    calls = sent.calls,
                    "batch sent"
                );
            }
            let moved: BTreeSet<usize> = wave.iter().flat_map(|c| c.jobs.iter().copied()).collect();
            for i in moved {
                let run = &mut runs[i];
                run.todo.retain(|m| !settled.contains(&m.id));
                // A job of many batches (a campaign) shows how far it is.
                if run.total > MAX_BATCH as i64 {
                    let done = run.total - run.todo.len() as i64;
                    record::set_progress(&self.db, &jobs[i].id, done, run.total).await?;
                }
            }
            if failing {
                // The queue keeps failing: the jobs not sent yet run again later.
                for run in runs.iter_mut() {
                    if !run.todo.is_empty() && run.unsent.is_none() {
                        run.unsent = Some("the outbound queue kept failing; not tried".into());
                    }
                }
                return Ok(false);
            }
        }
        Ok(false)
    }

    /// The job gave up: its messages not on the queue are failed with the reason, so none
    /// stays queued forever.
    pub async fn give_up(&self, job: &JobRecord, reason: &str) {
        let result: Result<(), JobError> = async {
            messages::fail_unqueued_of_job(
                &self.db,
                &job.id,
                &format!("not queued for delivery: {reason}"),
            )
            .await?;
            if let Ok(Payload {
                campaign_id: Some(id),
            }) = payload(job)
            {
                campaigns::refresh(&self.db, id).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "could not fail the messages of a job that gave up");
        }
    }
}

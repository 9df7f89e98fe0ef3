//! What the `send_message` and `bulk_send` kinds both do: put a job's queued messages on the
//! outbound queue in batches of 10, retrying refused entries alone.
//!
//! A message is marked on the queue right after the queue accepted it, so a re-run (after a
//! crash, a retry or a shutdown) sends only what is not there yet. What remains is the window
//! between the queue's acceptance and that mark: the embedded queue and SQS FIFO queues drop
//! the second copy themselves (the message id is their deduplication key); on a standard SQS
//! queue the consumer skips a message already sent (the id is its idempotency key).

use serde::Deserialize;
use serde_json::json;
use tracing::Instrument;

use super::Deps;
use crate::{
    crm::{
        campaigns,
        messages::{self, Deliverable},
    },
    db::Db,
    domain::{CampaignId, MessageId},
    engine::{JobError, JobRecord, Outcome, RunContext, record},
    outbound::{
        ENQUEUE_BACKOFF, MAX_BATCH, Outbound, OutboundEntry, OutboundQueue, send_with_retries,
    },
};

/// The part of a send job's payload the fan-out reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    campaign_id: Option<CampaignId>,
}

/// Where messages go, shared by both send kinds.
#[derive(Clone)]
pub struct FanOut {
    db: Db,
    outbound: Outbound,
    /// `false`: messages skip the queue, are logged and marked sent.
    rate_limiter_enabled: bool,
}

fn ids(raw: &[String]) -> Vec<MessageId> {
    raw.iter()
        .filter_map(|id| id.parse().ok().map(MessageId))
        .collect()
}

fn payload(job: &JobRecord) -> Result<Payload, JobError> {
    serde_json::from_value(job.payload.0.clone())
        .map_err(|e| JobError::Permanent(format!("unreadable job payload: {e}")))
}

impl FanOut {
    pub fn new(deps: &Deps) -> Self {
        FanOut {
            db: deps.db.clone(),
            outbound: deps.outbound.clone(),
            rate_limiter_enabled: deps.rate_limiter_enabled,
        }
    }

    async fn refresh_campaign(&self, payload: &Payload) -> Result<(), JobError> {
        if let Some(id) = payload.campaign_id {
            campaigns::refresh(&self.db, id).await?;
        }
        Ok(())
    }

    /// Runs (or resumes) a send job.
    pub async fn run(&self, job: &JobRecord, ctx: &RunContext) -> Result<Outcome, JobError> {
        let payload = payload(job)?;
        let span = tracing::info_span!("fan_out", campaign_id = payload.campaign_id.map(|c| c.0));
        self.send_all(job, ctx, &payload).instrument(span).await
    }

    async fn send_all(
        &self,
        job: &JobRecord,
        ctx: &RunContext,
        payload: &Payload,
    ) -> Result<Outcome, JobError> {
        let todo = messages::unqueued_of_job(&self.db, &job.id).await?;
        // Progress counts the job's messages that are on the queue or final.
        let total = messages::count_of_job(&self.db, &job.id).await?;
        let mut done = total - todo.len() as i64;
        record::set_progress(&self.db, &job.id, done, total).await?;
        let mut calls = 0u32;
        let mut refused = 0usize;
        if !self.rate_limiter_enabled {
            for m in &todo {
                tracing::info!(
                    message_id = m.id.0,
                    user_id = m.user_id.0,
                    recipient_id = m.fan_id.0,
                    content = %m.text,
                    "rate limiter disabled: message logged instead of queued"
                );
                messages::mark_sent_without_queue(&self.db, m.id).await?;
            }
        } else {
            for chunk in todo.chunks(MAX_BATCH) {
                ctx.check_shutdown()?;
                let entries: Vec<OutboundEntry> = chunk.iter().map(Deliverable::entry).collect();
                let sent = send_with_retries(&entries, &ENQUEUE_BACKOFF, |batch| {
                    let queue = self.outbound.clone();
                    async move { queue.send_batch(&batch).await }
                })
                .await;
                calls += sent.calls;
                messages::mark_on_queue(&self.db, &ids(&sent.accepted)).await?;
                for (id, reason) in &sent.refused {
                    if let Ok(id) = id.parse() {
                        messages::fail_queued(&self.db, MessageId(id), reason).await?;
                        refused += 1;
                    }
                }
                tracing::info!(
                    queued = sent.accepted.len(),
                    refused = sent.refused.len(),
                    calls = sent.calls,
                    "batch sent"
                );
                done += (sent.accepted.len() + sent.refused.len()) as i64;
                record::set_progress(&self.db, &job.id, done, total).await?;
                if let Some(e) = sent.unsent {
                    self.refresh_campaign(payload).await?;
                    return Err(JobError::Transient(anyhow::anyhow!("{e}")));
                }
            }
        }
        self.refresh_campaign(payload).await?;
        let (queued, sent, failed) = messages::tally_of_job(&self.db, &job.id).await?;
        Ok(Outcome::Succeeded(json!({
            "queued": queued,
            "sent": sent,
            "failed": failed,
            "refusedThisRun": refused,
            "sendMessageBatchCalls": calls,
        })))
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
            if let Ok(payload) = payload(job) {
                self.refresh_campaign(&payload).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "could not fail the messages of a job that gave up");
        }
    }
}

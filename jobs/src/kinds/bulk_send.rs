//! The `bulk_send` job kind: puts a campaign's messages on the outbound queue, 10 a batch.
//! Submitted with the campaign and its messages in one transaction.

use std::time::Duration;

use serde_json::json;

use super::{Backpressure, Deps, SubmitError, outbound_batches::OutboundBatches};
use crate::{
    crm::{
        campaigns::{self, Campaign, NewBulk},
        fans,
        messages::{self, Message, NewQueued, Requeue},
    },
    db::Db,
    domain::{CampaignId, MessageId, Timestamp, UserId},
    engine::{
        JobBackend, JobError, JobId, JobKind, JobRecord, NewJob, Outcome, RetryPolicy, RunContext,
    },
    idempotency::{self, Effect, Guard},
    telemetry,
};

#[derive(Clone)]
pub struct BulkSend(OutboundBatches);

impl BulkSend {
    pub fn new(deps: &Deps) -> Self {
        BulkSend(OutboundBatches::new(deps))
    }
}

impl JobKind for BulkSend {
    /// Also the name of its queue.
    const NAME: &'static str = "bulk_send";
    /// A run retries a failing call itself (1 s, 2 s, 4 s); the job then runs twice more
    /// before its remaining messages are failed.
    const RETRY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        first_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(10),
    };
    const CONCURRENCY: usize = 64;
    const BATCH: usize = 16;

    async fn run(&self, job: &JobRecord, ctx: &RunContext) -> Result<Outcome, JobError> {
        self.0.run(job, ctx).await
    }

    async fn run_batch(
        &self,
        jobs: &[JobRecord],
        ctx: &RunContext,
    ) -> Vec<Result<Outcome, JobError>> {
        self.0.run_batch(jobs, ctx).await
    }

    async fn give_up(&self, job: &JobRecord, reason: &str) {
        self.0.give_up(job, reason).await
    }
}

/// The created campaign and its messages' ids.
pub struct Created {
    pub campaign: Campaign,
    pub message_ids: Vec<MessageId>,
    /// The campaign's last message in delivery order (its send time ends the campaign).
    pub last: Message,
}

/// Creates the campaign (`active`), one queued message per recipient (opening conversations
/// where needed) and the `bulk_send` job, all in one transaction. Recipients that are not the
/// caller's fans refuse the whole campaign, and so does a backlog the campaign would take past
/// `limit`.
pub async fn submit(
    db: &Db,
    backend: &JobBackend,
    limit: Backpressure,
    user: UserId,
    bulk: NewBulk,
    key: Option<&Guard>,
) -> Result<Created, SubmitError> {
    let now = Timestamp::now();
    let job = JobId::generate();
    let mut tx = db.begin().await?;
    let backlog = messages::backlogs_in(&mut tx, &[user]).await?;
    limit.admit(
        backlog.get(&user).copied().unwrap_or(0),
        bulk.recipients.len() as i64,
    )?;
    let missing = fans::not_owned(&mut tx, user, &bulk.recipients).await?;
    if !missing.is_empty() {
        return Err(SubmitError::NotOwned(missing));
    }
    let campaign = campaigns::insert_active(&mut tx, user, &bulk, now).await?;
    // Its turns start where the creator's campaigns stand: it alternates with those sending.
    let front = messages::campaign_front(&mut tx, user).await?.unwrap_or(0);
    let rows: Vec<NewQueued> = bulk
        .recipients
        .iter()
        .zip(front..)
        .map(|(fan, turn)| NewQueued {
            user,
            fan: *fan,
            out: &bulk.message,
            job: &job,
            campaign: Some(campaign.id),
            run: None,
            turn,
            lane: messages::LANE_CAMPAIGNS,
        })
        .collect();
    let mut message_ids = Vec::with_capacity(bulk.recipients.len());
    let mut last = None;
    for (fan, message) in bulk
        .recipients
        .iter()
        .zip(messages::insert_queued(&mut tx, &rows, now).await?)
    {
        let message = message.ok_or(SubmitError::NotOwned(vec![*fan]))?;
        message_ids.push(message.id);
        last = Some(message);
    }
    let last = last.ok_or(SubmitError::NotFound("recipient"))?;
    let new_job = NewJob::of::<BulkSend>(
        job,
        user,
        json!({ "campaignId": campaign.id.0, "messageIds": message_ids }),
    )
    .with_total(message_ids.len() as i64);
    backend.enqueue(&mut tx, &new_job).await?;
    if let Some(key) = key {
        idempotency::record(&mut tx, key, &Effect::Campaign(campaign.id)).await?;
    }
    tx.commit().await?;
    backend.after_commit(db, &new_job).await;
    telemetry::campaign_created(message_ids.len());
    tracing::info!(
        job_id = %new_job.id,
        campaign_id = campaign.id.0,
        recipients = message_ids.len(),
        "campaign queued"
    );
    Ok(Created {
        campaign,
        message_ids,
        last,
    })
}

/// Puts every failed message of one of `user`'s campaigns back on its way, once: `queued`
/// again under one new `bulk_send` job, the campaign `active` again, in one transaction.
/// Returns the job (none when nothing had failed) and the messages queued again.
pub async fn retry_failed(
    db: &Db,
    backend: &JobBackend,
    user: UserId,
    campaign: CampaignId,
    key: Option<&Guard>,
) -> Result<(Option<JobId>, Vec<MessageId>), SubmitError> {
    let job = JobId::generate();
    let mut tx = db.begin().await?;
    if !campaigns::owned(&mut tx, user, campaign).await? {
        return Err(SubmitError::NotFound("campaign"));
    }
    let moved = messages::requeue_failed(&mut tx, user, Requeue::Campaign(campaign), &job).await?;
    if moved.is_empty() {
        return Ok((None, moved));
    }
    campaigns::reopen(&mut tx, campaign).await?;
    let new_job = NewJob::of::<BulkSend>(
        job,
        user,
        json!({ "campaignId": campaign.0, "messageIds": moved, "retry": true }),
    )
    .with_total(moved.len() as i64);
    backend.enqueue(&mut tx, &new_job).await?;
    if let Some(key) = key {
        idempotency::record(&mut tx, key, &Effect::Job(new_job.id.clone())).await?;
    }
    tx.commit().await?;
    backend.after_commit(db, &new_job).await;
    tracing::info!(job_id = %new_job.id, campaign_id = campaign.0, messages = moved.len(), "failed recipients queued again");
    Ok((Some(new_job.id), moved))
}

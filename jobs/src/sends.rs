//! The `send_message` and `bulk_send` jobs: put a job's queued messages on the outbound queue
//! in batches of 10, retrying refused entries alone.
//!
//! A message is marked `enqueued_at` right after the queue accepted it, so a re-run (after a
//! crash, or a retry) sends only what is not there yet. What remains is the window between
//! the queue's acceptance and that mark: the embedded queue and SQS FIFO queues drop the
//! second copy themselves (the message id is their deduplication key); on a standard SQS
//! queue the consumer skips a message already sent (the id is its idempotency key).

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use sqlx::types::Json;

use crate::{
    campaigns,
    db::Db,
    domain::{CampaignId, Timestamp},
    jobs::{JobRecord, RetryPolicy},
    messages::Attachment,
    on_db,
    outbound::{
        ENQUEUE_BACKOFF, MAX_BATCH, OutboundBody, OutboundEntry, OutboundQueue, send_with_retries,
    },
    worker::{Deps, JobError, Outcome},
};

/// A run retries a failing call itself (1 s, 2 s, 4 s); the job then runs twice more before
/// its messages are failed.
pub const RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 3,
    first_backoff: Duration::from_secs(1),
    max_backoff: Duration::from_secs(10),
};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    campaign_id: Option<i64>,
}

/// A message still to put on the queue.
#[derive(Debug, sqlx::FromRow)]
struct Pending {
    id: i64,
    user_id: i64,
    fan_id: i64,
    text: String,
    attachments: Json<Vec<Attachment>>,
    priority: i64,
    campaign_id: Option<i64>,
}

fn entry(m: &Pending) -> OutboundEntry {
    let body = OutboundBody {
        message_id: m.id.to_string(),
        user_id: m.user_id.to_string(),
        recipient_id: m.fan_id.to_string(),
        content: m.text.clone(),
        media_urls: m.attachments.0.iter().map(|a| a.url.clone()).collect(),
        priority: m.priority,
        campaign_id: m.campaign_id.map(|c| c.to_string()),
    };
    OutboundEntry {
        id: m.id.to_string(),
        group: m.user_id.to_string(),
        body: serde_json::to_string(&body).expect("the body serializes"),
    }
}

async fn pending(db: &Db, job: &str) -> Result<Vec<Pending>, JobError> {
    Ok(on_db!(db, pool => sqlx::query_as::<_, Pending>(
        "SELECT id, user_id, fan_id, text, attachments, priority, campaign_id FROM messages
         WHERE job_id = $1 AND status = 'queued' AND enqueued_at IS NULL ORDER BY id",
    )
    .bind(job)
    .fetch_all(pool)
    .await)?)
}

/// One statement for the batch's accepted messages.
async fn mark_enqueued(db: &Db, ids: &[i64]) -> Result<(), JobError> {
    if ids.is_empty() {
        return Ok(());
    }
    let now = Timestamp::now();
    on_db!(db, pool => {
        let mut q = sqlx::QueryBuilder::new("UPDATE messages SET attempts = attempts + 1, enqueued_at = ");
        q.push_bind(now).push(" WHERE id IN (");
        let mut list = q.separated(", ");
        for id in ids {
            list.push_bind(*id);
        }
        q.push(")");
        q.build().execute(pool).await.map(|_| ())
    })?;
    Ok(())
}

async fn mark_failed(db: &Db, id: i64, reason: &str) -> Result<(), JobError> {
    on_db!(db, pool => sqlx::query(
        "UPDATE messages SET status = 'failed', error = $2, attempts = attempts + 1
         WHERE id = $1 AND status = 'queued'",
    )
    .bind(id)
    .bind(reason)
    .execute(pool)
    .await
    .map(|_| ()))?;
    Ok(())
}

/// With `RATE_LIMITER_ENABLED=false` nothing goes through the queue: each message is logged
/// and marked sent.
async fn mark_sent_locally(db: &Db, m: &Pending) -> Result<(), JobError> {
    tracing::info!(
        message_id = m.id,
        user_id = m.user_id,
        recipient_id = m.fan_id,
        content = %m.text,
        "rate limiter disabled: message logged instead of queued"
    );
    let now = Timestamp::now();
    on_db!(db, pool => sqlx::query(
        "UPDATE messages SET status = 'sent', sent_at = $2, attempts = attempts + 1 WHERE id = $1",
    )
    .bind(m.id)
    .bind(now)
    .execute(pool)
    .await
    .map(|_| ()))?;
    Ok(())
}

async fn refresh_campaign(db: &Db, payload: &Payload) -> Result<(), JobError> {
    if let Some(id) = payload.campaign_id {
        campaigns::refresh(db, CampaignId(id)).await?;
    }
    Ok(())
}

/// Runs (or resumes) a send job.
pub async fn run(deps: &Deps, record: &JobRecord) -> Result<Outcome, JobError> {
    let payload: Payload = serde_json::from_value(record.payload.0.clone())
        .map_err(|e| JobError::Permanent(format!("unreadable job payload: {e}")))?;
    let todo = pending(&deps.db, &record.id).await?;
    let job = crate::jobs::JobId(record.id.clone());
    // Progress counts the job's messages that are on the queue or final.
    let (total,): (i64,) = on_db!(&deps.db, pool => sqlx::query_as("SELECT COUNT(*) FROM messages WHERE job_id = $1")
        .bind(&record.id)
        .fetch_one(pool)
        .await)?;
    let mut done = total - todo.len() as i64;
    crate::jobs::set_progress(&deps.db, &job, done, total).await?;
    let mut calls = 0u32;
    let mut refused = 0usize;
    if !deps.rate_limiter_enabled {
        for m in &todo {
            mark_sent_locally(&deps.db, m).await?;
        }
    } else {
        for chunk in todo.chunks(MAX_BATCH) {
            let entries: Vec<OutboundEntry> = chunk.iter().map(entry).collect();
            let sent = send_with_retries(&entries, &ENQUEUE_BACKOFF, |batch| {
                let queue = deps.outbound.clone();
                async move { queue.send_batch(&batch).await }
            })
            .await;
            calls += sent.calls;
            let accepted: Vec<i64> = sent
                .accepted
                .iter()
                .filter_map(|id| id.parse().ok())
                .collect();
            mark_enqueued(&deps.db, &accepted).await?;
            for (id, reason) in &sent.refused {
                if let Ok(id) = id.parse() {
                    mark_failed(&deps.db, id, reason).await?;
                    refused += 1;
                }
            }
            tracing::info!(
                queued = accepted.len(),
                refused = sent.refused.len(),
                calls = sent.calls,
                "batch sent"
            );
            done += (accepted.len() + sent.refused.len()) as i64;
            crate::jobs::set_progress(&deps.db, &job, done, total).await?;
            if let Some(e) = sent.unsent {
                refresh_campaign(&deps.db, &payload).await?;
                return Err(JobError::Transient(anyhow::anyhow!("{e}")));
            }
        }
    }
    refresh_campaign(&deps.db, &payload).await?;
    let (queued, sent, failed) = tally(&deps.db, &record.id).await?;
    Ok(Outcome::Succeeded(json!({
        "queued": queued,
        "sent": sent,
        "failed": failed,
        "refusedThisRun": refused,
        "sendMessageBatchCalls": calls,
    })))
}

/// The job's messages: on the queue (queued), sent, failed.
async fn tally(db: &Db, job: &str) -> Result<(i64, i64, i64), JobError> {
    Ok(on_db!(db, pool => sqlx::query_as(
        "SELECT COALESCE(SUM(CASE WHEN status = 'queued' AND enqueued_at IS NOT NULL THEN 1 ELSE 0 END), 0),
                COALESCE(SUM(CASE WHEN status = 'sent' THEN 1 ELSE 0 END), 0),
                COALESCE(SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END), 0)
         FROM messages WHERE job_id = $1",
    )
    .bind(job)
    .fetch_one(pool)
    .await)?)
}

/// The job gave up: its messages not on the queue are failed with the reason, so none stays
/// queued forever.
pub async fn give_up(deps: &Deps, record: &JobRecord, reason: &str) {
    let result: Result<(), JobError> = async {
        for m in pending(&deps.db, &record.id).await? {
            mark_failed(
                &deps.db,
                m.id,
                &format!("not queued for delivery: {reason}"),
            )
            .await?;
        }
        if let Ok(payload) = serde_json::from_value::<Payload>(record.payload.0.clone()) {
            refresh_campaign(&deps.db, &payload).await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "could not fail the messages of a job that gave up");
    }
}

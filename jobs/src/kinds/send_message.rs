//! The `send_message` job kind: puts one message (a single send, or a reply in a
//! conversation) on the outbound queue. Submitted with its message in one transaction.

use std::time::Duration;

use serde_json::json;

use super::{Deps, SubmitError, fan_out::FanOut};
use crate::{
    crm::{
        conversations,
        messages::{self, Message, MessageStatus, Outgoing, Requeue},
    },
    db::Db,
    domain::{ConversationId, FanId, MessageId, Timestamp, UserId},
    engine::{
        JobBackend, JobError, JobId, JobKind, JobRecord, NewJob, Outcome, RetryPolicy, RunContext,
    },
};

#[derive(Clone)]
pub struct SendMessage(FanOut);

impl SendMessage {
    pub fn new(deps: &Deps) -> Self {
        SendMessage(FanOut::new(deps))
    }
}

impl JobKind for SendMessage {
    /// Also the name of its queue.
    const NAME: &'static str = "send_message";
    /// A run retries a failing call itself (1 s, 2 s, 4 s); the job then runs twice more
    /// before its message is failed.
    const RETRY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        first_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(10),
    };
    const CONCURRENCY: usize = 4;

    async fn run(&self, job: &JobRecord, ctx: &RunContext) -> Result<Outcome, JobError> {
        self.0.run(job, ctx).await
    }

    async fn give_up(&self, job: &JobRecord, reason: &str) {
        self.0.give_up(job, reason).await
    }
}

/// Where a single message goes: to a fan (the send route) or into a conversation.
#[derive(Debug, Clone, Copy)]
pub enum Recipient {
    Fan(FanId),
    Conversation(ConversationId),
}

/// Stores one outbound message (`queued`) and its `send_message` job in one transaction.
pub async fn submit(
    db: &Db,
    backend: &JobBackend,
    user: UserId,
    to: Recipient,
    out: &Outgoing,
) -> Result<Message, SubmitError> {
    let now = Timestamp::now();
    let job = JobId::generate();
    let mut tx = db.begin().await?;
    let fan = match to {
        Recipient::Fan(fan) => fan,
        Recipient::Conversation(c) => conversations::fan_of(&mut tx, user, c)
            .await?
            .ok_or(SubmitError::NotFound("conversation"))?,
    };
    let message = messages::insert_queued(&mut tx, user, fan, out, &job, None, now)
        .await?
        .ok_or(SubmitError::NotFound("fan"))?;
    let new_job = NewJob::of::<SendMessage>(job, user, json!({ "messageIds": [message.id.0] }));
    backend.enqueue(&mut tx, &new_job).await?;
    tx.commit().await?;
    backend.after_commit(db, &new_job).await;
    tracing::info!(job_id = %new_job.id, message_id = message.id.0, "message queued");
    Ok(message)
}

/// What a retry of one failed message did.
#[derive(Debug)]
pub enum Retried {
    /// Back to `queued` under this new `send_message` job.
    Queued(JobId),
    /// The message is not failed: it is in this state.
    NotFailed(MessageStatus),
}

/// Puts one of `user`'s failed messages back on its way: `queued` again (attempts and error
/// cleared) with a new `send_message` job, in one transaction.
pub async fn retry_failed(
    db: &Db,
    backend: &JobBackend,
    user: UserId,
    id: MessageId,
) -> Result<Retried, SubmitError> {
    let job = JobId::generate();
    let mut tx = db.begin().await?;
    let (status, campaign) = messages::status_of(&mut tx, user, id)
        .await?
        .ok_or(SubmitError::NotFound("message"))?;
    if status != MessageStatus::Failed {
        return Ok(Retried::NotFailed(status));
    }
    let moved = messages::requeue_failed(&mut tx, user, Requeue::Messages(&[id]), &job).await?;
    if moved.is_empty() {
        return Ok(Retried::NotFailed(status));
    }
    if let Some(c) = campaign {
        crate::crm::campaigns::reopen(&mut tx, c).await?;
    }
    let mut payload = json!({ "messageIds": [id.0], "retry": true });
    if let Some(c) = campaign {
        payload["campaignId"] = json!(c.0);
    }
    let new_job = NewJob::of::<SendMessage>(job, user, payload);
    backend.enqueue(&mut tx, &new_job).await?;
    tx.commit().await?;
    backend.after_commit(db, &new_job).await;
    tracing::info!(job_id = %new_job.id, message_id = id.0, "failed message queued again");
    Ok(Retried::Queued(new_job.id))
}

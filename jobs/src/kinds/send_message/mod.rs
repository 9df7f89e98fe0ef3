//! The `send_message` job kind: puts one message (a single send, or a reply in a
//! conversation) on the outbound queue. Submitted with its message in one transaction;
//! concurrent sends share theirs ([`Sends`]).

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};

use serde_json::json;

mod one_statement;
#[cfg(test)]
mod tests;

use super::{Backpressure, Deps, SubmitError, outbound_batches::OutboundBatches};
use crate::{
    crm::{
        conversations, deliveries,
        messages::{self, Message, MessageStatus, NewQueued, Outgoing, Requeue},
    },
    db::Db,
    domain::{ConversationId, FanId, MessageId, Timestamp, UserId},
    engine::{
        EnqueueError, JobBackend, JobError, JobId, JobKind, JobRecord, NewJob, Outcome,
        RetryPolicy, RunContext,
        backend::Store,
        group::{Grouped, Limits},
    },
    idempotency::{self, Effect, Guard},
};

#[derive(Clone)]
pub struct SendMessage(OutboundBatches);

impl SendMessage {
    pub fn new(deps: &Deps) -> Self {
        SendMessage(OutboundBatches::new(deps))
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
    const CONCURRENCY: usize = 512;
    const BATCH: usize = 256;

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

/// Where a single message goes: to a fan (the send route) or into a conversation.
#[derive(Debug, Clone, Copy)]
pub enum Recipient {
    Fan(FanId),
    Conversation(ConversationId),
}

/// One message to store: who sends it, to whom, what, and the `Idempotency-Key` its stored
/// message is recorded under (in the same transaction).
#[derive(Debug, Clone)]
pub struct NewSend {
    pub user: UserId,
    pub to: Recipient,
    pub out: Outgoing,
    pub key: Option<Guard>,
}

/// A stored send, with what its delivery estimate needs: how many of the creator's waiting
/// messages go before it, and when the creator's latest delivery started.
#[derive(Debug, Clone)]
pub struct Stored {
    pub message: Message,
    pub ahead: i64,
    pub last_started: Option<DateTime<Utc>>,
}

/// Stores one outbound message (`queued`) and its `send_message` job in one transaction.
pub async fn submit(
    db: &Db,
    backend: &JobBackend,
    user: UserId,
    to: Recipient,
    out: &Outgoing,
) -> Result<Message, SubmitError> {
    let send = NewSend {
        user,
        to,
        out: out.clone(),
        key: None,
    };
    let mut stored = store(db, backend, None, std::slice::from_ref(&send)).await?;
    stored
        .pop()
        .unwrap_or(Err(SubmitError::NotFound("fan")))
        .map(|s| s.message)
}

/// The API's intake for sends: requests arriving together are stored together, each message
/// with its own `send_message` job, in one transaction, and each request is answered once
/// that transaction committed. A thousand sends a second cost tens of transactions instead of
/// a thousand.
#[derive(Clone)]
pub struct Sends {
    groups: Grouped<NewSend, Result<Stored, SubmitError>>,
}

impl Sends {
    /// Sends stored in one transaction at most, one transaction at a time: while it commits,
    /// the next group gathers. More in flight only split the same load into smaller groups and
    /// cost more CPU (BENCHMARKS.md, the load bench).
    const GROUP: Limits = Limits {
        max: 128,
        parallel: 1,
        waiting: 4096,
        spacing: Duration::ZERO,
    };

    /// Sends of a creator past `limit`'s backlog are refused (`BacklogFull`), storing nothing.
    /// The intake stores on connections of its own that run [`one_statement`] on its generic
    /// plan ([`Db::generic_plans`]): planning that statement cost more than running it.
    pub fn start(db: Db, backend: JobBackend, limit: Backpressure) -> Self {
        let db = db.generic_plans(Self::GROUP.parallel.try_into().unwrap_or(1));
        let groups = Grouped::start(Self::GROUP, move |sends: Vec<NewSend>| {
            let (db, backend) = (db.clone(), backend.clone());
            async move { submit_many(&db, &backend, Some(limit), &sends).await }
        });
        Sends { groups }
    }

    /// Stores `send`; answers once it is committed.
    pub async fn submit(&self, send: NewSend) -> Result<Stored, SubmitError> {
        self.groups
            .call(send)
            .await
            .map_err(|e| SubmitError::Enqueue(EnqueueError::Backend(e.into())))?
    }
}

/// Stores `sends` in one transaction, with what their estimates need; one answer per send.
/// If the transaction fails, each send is tried again alone, so that one bad send (or a clash
/// with another transaction) never sinks the others and each gets its own answer.
pub async fn submit_many(
    db: &Db,
    backend: &JobBackend,
    limit: Option<Backpressure>,
    sends: &[NewSend],
) -> Vec<Result<Stored, SubmitError>> {
    match store(db, backend, limit, sends).await {
        Ok(stored) => stored,
        Err(e) if sends.len() > 1 => {
            tracing::warn!(sends = sends.len(), error = %e, "a group of sends failed; storing each alone");
            let mut alone = Vec::with_capacity(sends.len());
            for send in sends {
                alone.push(
                    match store(db, backend, limit, std::slice::from_ref(send)).await {
                        Ok(mut one) => one.pop().unwrap_or(Err(SubmitError::NotFound("fan"))),
                        Err(e) => Err(e),
                    },
                );
            }
            alone
        }
        Err(e) => vec![Err(e)],
    }
}

/// Stores `sends` in one transaction, with what their estimates need: in one statement when
/// the jobs run from the same PostgreSQL ([`one_statement`]), else in [`store_all`] and two reads.
async fn store(
    db: &Db,
    backend: &JobBackend,
    limit: Option<Backpressure>,
    sends: &[NewSend],
) -> Result<Vec<Result<Stored, SubmitError>>, SubmitError> {
    if let (Db::Postgres(pool), Store::Postgres(_)) = (db, &backend.store) {
        return one_statement::store(db, pool, backend, limit, sends).await;
    }
    let stored = store_all(db, backend, limit, sends).await?;
    Ok(with_estimates(db, stored).await)
}

/// The keys of `sends` with the messages they stored, to record in their transaction.
fn recorded<'a>(
    sends: &'a [NewSend],
    stored: impl Iterator<Item = Option<&'a Message>>,
) -> Vec<(&'a Guard, Effect)> {
    sends
        .iter()
        .zip(stored)
        .filter_map(|(send, message)| Some((send.key.as_ref()?, Effect::Message(message?.id))))
        .collect()
}

/// Once the sends' transaction committed: their jobs' workers look now, and each stored
/// message (in the order of `jobs`) is logged as queued.
async fn announce<'a>(
    db: &Db,
    backend: &JobBackend,
    jobs: &[NewJob],
    messages: impl Iterator<Item = &'a Message>,
) {
    backend.after_commit_many(db, jobs).await;
    for (job, m) in jobs.iter().zip(messages) {
        tracing::info!(job_id = %job.id, message_id = m.id.0, user_id = m.user_id.0, "message queued");
    }
}

/// The `send_message` job of a single send: its one message ([`one_statement`] writes the
/// same record).
fn job_of(job: JobId, user: UserId, message: MessageId) -> NewJob {
    NewJob::of::<SendMessage>(job, user, json!({ "messageIds": [message.0] })).with_total(1)
}

/// Stores the messages of `sends` (`queued`) and their jobs in one transaction. Per send, its
/// message, or why nothing was stored for it; `Err` when the transaction failed. With a
/// `limit`, a send that would take its creator's backlog past it is refused.
async fn store_all(
    db: &Db,
    backend: &JobBackend,
    limit: Option<Backpressure>,
    sends: &[NewSend],
) -> Result<Vec<Result<Message, SubmitError>>, SubmitError> {
    let now = Timestamp::now();
    let jobs: Vec<JobId> = sends.iter().map(|_| JobId::generate()).collect();
    let mut tx = db.begin().await?;
    let mut refused: HashMap<usize, SubmitError> = HashMap::new();
    if let Some(limit) = limit {
        let mut users: Vec<UserId> = sends.iter().map(|s| s.user).collect();
        users.sort_unstable();
        users.dedup();
        let mut backlog = messages::backlogs_in(&mut tx, &users).await?;
        for (i, send) in sends.iter().enumerate() {
            let n = backlog.entry(send.user).or_default();
            match limit.admit(*n, 1) {
                Ok(()) => *n += 1,
                Err(e) => {
                    refused.insert(i, e);
                }
            }
        }
    }
    // Replies name a conversation: its fan, when the conversation is the sender's.
    let mut asked: HashMap<UserId, Vec<ConversationId>> = HashMap::new();
    for send in sends {
        if let Recipient::Conversation(c) = send.to {
            asked.entry(send.user).or_default().push(c);
        }
    }
    let mut fan_of: HashMap<(UserId, ConversationId), FanId> = HashMap::new();
    for (user, ids) in &asked {
        for (c, fan) in conversations::fans_of(&mut tx, *user, ids).await? {
            fan_of.insert((*user, c), fan);
        }
    }
    let fans: Vec<Option<FanId>> = sends
        .iter()
        .enumerate()
        .map(|(i, s)| match s.to {
            _ if refused.contains_key(&i) => None,
            Recipient::Fan(fan) => Some(fan),
            Recipient::Conversation(c) => fan_of.get(&(s.user, c)).copied(),
        })
        .collect();
    let rows: Vec<NewQueued> = sends
        .iter()
        .zip(&fans)
        .zip(&jobs)
        .filter_map(|((s, fan), job)| {
            Some(NewQueued {
                user: s.user,
                fan: (*fan)?,
                out: &s.out,
                job,
                campaign: None,
                run: None,
                turn: 0,
                lane: messages::LANE_ONE_TO_ONE,
            })
        })
        .collect();
    let mut inserted = messages::insert_queued(&mut tx, &rows, now)
        .await?
        .into_iter();
    let mut answers = Vec::with_capacity(sends.len());
    let mut new_jobs = vec![];
    for (i, ((send, fan), job)) in sends.iter().zip(&fans).zip(jobs).enumerate() {
        let answer = match fan {
            None if refused.contains_key(&i) => {
                Err(refused.remove(&i).expect("a refusal of this send"))
            }
            None => Err(SubmitError::NotFound("conversation")),
            Some(_) => match inserted.next().flatten() {
                None => Err(SubmitError::NotFound("fan")),
                Some(message) => {
                    new_jobs.push(job_of(job, send.user, message.id));
                    Ok(message)
                }
            },
        };
        answers.push(answer);
    }
    backend.enqueue_many(&mut tx, &new_jobs).await?;
    idempotency::record_many(
        &mut tx,
        &recorded(sends, answers.iter().map(|a| a.as_ref().ok())),
    )
    .await?;
    tx.commit().await?;
    announce(db, backend, &new_jobs, answers.iter().flatten()).await;
    Ok(answers)
}

/// Adds to each stored message what its estimate needs, read after the commit in two queries.
/// The estimate is a guess: if the reads fail, the messages are still stored and answered,
/// with no backlog counted.
async fn with_estimates(
    db: &Db,
    stored: Vec<Result<Message, SubmitError>>,
) -> Vec<Result<Stored, SubmitError>> {
    let ids: Vec<MessageId> = stored.iter().flatten().map(|m| m.id).collect();
    let mut users: Vec<UserId> = stored.iter().flatten().map(|m| m.user_id).collect();
    users.sort_unstable();
    users.dedup();
    let reads = async {
        let ahead: HashMap<MessageId, i64> = messages::ahead_of_many(db, &ids)
            .await?
            .into_iter()
            .collect();
        let last = deliveries::last_started_many(db, &users).await?;
        Ok::<_, crate::db::StoreError>((ahead, last))
    };
    let (ahead, last) = reads.await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "could not read the backlog for send estimates");
        Default::default()
    });
    stored
        .into_iter()
        .map(|r| {
            r.map(|message| Stored {
                ahead: ahead.get(&message.id).copied().unwrap_or(0),
                last_started: last.get(&message.user_id).copied(),
                message,
            })
        })
        .collect()
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
    key: Option<&Guard>,
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
    let new_job = NewJob::of::<SendMessage>(job, user, payload).with_total(1);
    backend.enqueue(&mut tx, &new_job).await?;
    if let Some(key) = key {
        idempotency::record(&mut tx, key, &Effect::Job(new_job.id.clone())).await?;
    }
    tx.commit().await?;
    backend.after_commit(db, &new_job).await;
    tracing::info!(job_id = %new_job.id, message_id = id.0, "failed message queued again");
    Ok(Retried::Queued(new_job.id))
}

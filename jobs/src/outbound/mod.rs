//! The outbound queue between the send jobs and the dispatcher: AWS SQS in the distributed
//! deployment, an SQL table with the same semantics in the embedded default.
//!
//! Both honour the contract the dispatcher relies on: a received message stays invisible for
//! the visibility timeout and comes back if not deleted; each receive raises its receive
//! count; past the maximum receives it moves to the dead-letter queue; depth, in-flight and
//! DLQ counts are observable.

mod embedded;
mod sqs;

use std::{future::Future, time::Duration};

use serde::{Deserialize, Serialize};

use crate::domain::{MessageId, UserId};

pub use embedded::EmbeddedQueue;
pub use sqs::SqsQueue;

/// SQS takes at most 10 entries a `SendMessageBatch`.
pub const MAX_BATCH: usize = 10;

/// The body on the queue (SPEC section 5; the seeds' consumer reads these names). Ids are
/// strings, as the seeds' consumer expects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundBody {
    pub message_id: String,
    pub user_id: String,
    pub recipient_id: String,
    pub content: String,
    pub media_urls: Vec<String>,
    pub priority: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
}

/// The message and creator a queue body is for; `None` when it is not one of ours.
pub fn addressed(body: &str) -> Option<(MessageId, UserId)> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Ids {
        message_id: String,
        user_id: String,
    }
    let ids: Ids = serde_json::from_str(body).ok()?;
    Some((
        MessageId(ids.message_id.parse().ok()?),
        UserId(ids.user_id.parse().ok()?),
    ))
}

/// One entry of a batch: the message id (the entry id, and the deduplication key), the
/// creator it is delivered for (the FIFO group), and the JSON body.
#[derive(Debug, Clone)]
pub struct OutboundEntry {
    pub id: String,
    pub group: String,
    pub body: String,
}

/// The entries of a batch the queue refused, each with its reason; the rest were accepted.
#[derive(Debug, Clone, Default)]
pub struct BatchOutcome {
    pub failed: Vec<(String, String)>,
}

/// A message handed to a consumer.
#[derive(Debug, Clone)]
pub struct Received {
    /// Needed to delete it (or change its visibility) while this receive holds it.
    pub receipt: String,
    pub body: String,
    /// Receives so far, this one included.
    pub receive_count: u32,
}

/// A message read from the dead-letter queue.
#[derive(Debug, Clone)]
pub struct DeadCopy {
    /// Needed to delete or re-drive it while this receive holds it.
    pub receipt: String,
    pub body: String,
    /// Why it failed, when whoever dead-lettered it said so (the dispatcher does; a queue
    /// that moved it after too many receives does not).
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Waiting to be received.
    pub depth: u64,
    /// Received and not yet deleted or visible again.
    pub in_flight: u64,
    /// In the dead-letter queue.
    pub dlq: u64,
}

/// The whole call failed (the queue is unreachable or refused the request).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct QueueError(pub String);

/// What the send jobs and the dispatcher need of a queue.
pub trait OutboundQueue {
    /// Sends at most [`MAX_BATCH`] entries; a whole-call failure is an `Err`, entries refused
    /// inside a successful call are in the outcome.
    fn send_batch(
        &self,
        entries: &[OutboundEntry],
    ) -> impl Future<Output = Result<BatchOutcome, QueueError>> + Send;
    /// Receives up to `max` visible messages and hides them for `visibility`, waiting up to
    /// `wait` for one to arrive when none is visible (SQS long polling).
    fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Received>, QueueError>> + Send;
    /// Deletes a received message (it was handled).
    fn delete(&self, receipt: &str) -> impl Future<Output = Result<(), QueueError>> + Send;
    /// Deletes up to [`MAX_BATCH`] received messages in one call.
    fn delete_batch(
        &self,
        receipts: &[String],
    ) -> impl Future<Output = Result<(), QueueError>> + Send;
    /// Puts a message straight into the dead-letter queue with the reason it failed (its
    /// delivery attempts are used up).
    fn dead_letter(
        &self,
        entry: &OutboundEntry,
        reason: &str,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;
    /// Receives up to `max` messages of the dead-letter queue and hides them for `visibility`
    /// (no wait: the sweeper reads what is there).
    fn receive_dead(
        &self,
        max: usize,
        visibility: Duration,
    ) -> impl Future<Output = Result<Vec<DeadCopy>, QueueError>> + Send;
    /// Deletes received DLQ messages (their outcome is recorded).
    fn delete_dead(
        &self,
        receipts: &[String],
    ) -> impl Future<Output = Result<(), QueueError>> + Send;
    /// Moves a received DLQ message back to the main queue, its receive count starting over.
    fn redrive(
        &self,
        copy: &DeadCopy,
        entry: &OutboundEntry,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;
    fn counts(&self) -> impl Future<Output = Result<QueueCounts, QueueError>> + Send;
}

/// The configured queue.
#[derive(Clone, Debug)]
pub enum Outbound {
    Sqs(SqsQueue),
    Embedded(EmbeddedQueue),
}

impl Outbound {
    pub fn name(&self) -> &'static str {
        match self {
            Outbound::Sqs(_) => "sqs",
            Outbound::Embedded(_) => "embedded",
        }
    }
}

impl OutboundQueue for Outbound {
    async fn send_batch(&self, entries: &[OutboundEntry]) -> Result<BatchOutcome, QueueError> {
        match self {
            Outbound::Sqs(q) => q.send_batch(entries).await,
            Outbound::Embedded(q) => q.send_batch(entries).await,
        }
    }

    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Received>, QueueError> {
        match self {
            Outbound::Sqs(q) => q.receive(max, visibility, wait).await,
            Outbound::Embedded(q) => q.receive(max, visibility, wait).await,
        }
    }

    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        match self {
            Outbound::Sqs(q) => q.delete(receipt).await,
            Outbound::Embedded(q) => q.delete(receipt).await,
        }
    }

    async fn delete_batch(&self, receipts: &[String]) -> Result<(), QueueError> {
        match self {
            Outbound::Sqs(q) => q.delete_batch(receipts).await,
            Outbound::Embedded(q) => q.delete_batch(receipts).await,
        }
    }

    async fn dead_letter(&self, entry: &OutboundEntry, reason: &str) -> Result<(), QueueError> {
        match self {
            Outbound::Sqs(q) => q.dead_letter(entry, reason).await,
            Outbound::Embedded(q) => q.dead_letter(entry, reason).await,
        }
    }

    async fn receive_dead(
        &self,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<DeadCopy>, QueueError> {
        match self {
            Outbound::Sqs(q) => q.receive_dead(max, visibility).await,
            Outbound::Embedded(q) => q.receive_dead(max, visibility).await,
        }
    }

    async fn delete_dead(&self, receipts: &[String]) -> Result<(), QueueError> {
        match self {
            Outbound::Sqs(q) => q.delete_dead(receipts).await,
            Outbound::Embedded(q) => q.delete_dead(receipts).await,
        }
    }

    async fn redrive(&self, copy: &DeadCopy, entry: &OutboundEntry) -> Result<(), QueueError> {
        match self {
            Outbound::Sqs(q) => q.redrive(copy, entry).await,
            Outbound::Embedded(q) => q.redrive(copy, entry).await,
        }
    }

    async fn counts(&self) -> Result<QueueCounts, QueueError> {
        match self {
            Outbound::Sqs(q) => q.counts().await,
            Outbound::Embedded(q) => q.counts().await,
        }
    }
}

/// Waits between tries of a refused entry (or a failed call): the first try, then one after
/// each of these (SPEC: 1 s, 2 s, 4 s).
pub const ENQUEUE_BACKOFF: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];

/// The outcome of sending one batch with retries.
#[derive(Debug, Default)]
pub struct Sent {
    /// Entry ids now on the queue.
    pub accepted: Vec<String>,
    /// Entry ids refused after every try, with the last reason.
    pub refused: Vec<(String, String)>,
    /// `SendMessageBatch` calls made.
    pub calls: u32,
    /// The call itself kept failing: the entries neither accepted nor refused were not sent
    /// (their job runs again later), and this is why.
    pub unsent: Option<QueueError>,
}

/// Sends `entries` (at most [`MAX_BATCH`]), retrying only the entries that failed, after each
/// of `backoff`'s waits. If the call itself still fails after the last wait, the entries not
/// yet accepted are left unsent and [`Sent::unsent`] says why.
pub async fn send_with_retries<F, Fut>(
    entries: &[OutboundEntry],
    backoff: &[Duration],
    mut send: F,
) -> Sent
where
    F: FnMut(Vec<OutboundEntry>) -> Fut,
    Fut: Future<Output = Result<BatchOutcome, QueueError>>,
{
    debug_assert!(entries.len() <= MAX_BATCH);
    let mut sent = Sent::default();
    let mut pending: Vec<OutboundEntry> = entries.to_vec();
    let mut waits = backoff.iter();
    loop {
        sent.calls += 1;
        let outcome = send(pending.clone()).await;
        match outcome {
            Ok(outcome) => {
                let failed: Vec<&(String, String)> = outcome.failed.iter().collect();
                for e in &pending {
                    if !failed.iter().any(|(id, _)| id == &e.id) {
                        sent.accepted.push(e.id.clone());
                    }
                }
                if failed.is_empty() {
                    return sent;
                }
                match waits.next() {
                    Some(wait) => {
                        tracing::warn!(
                            refused = failed.len(),
                            ?wait,
                            "queue refused some entries; retrying them"
                        );
                        pending.retain(|e| failed.iter().any(|(id, _)| id == &e.id));
                        tokio::time::sleep(*wait).await;
                    }
                    None => {
                        sent.refused = outcome.failed;
                        return sent;
                    }
                }
            }
            Err(e) => match waits.next() {
                Some(wait) => {
                    tracing::warn!(error = %e, ?wait, "SendMessageBatch failed; retrying");
                    tokio::time::sleep(*wait).await;
                }
                None => {
                    sent.unsent = Some(e);
                    return sent;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn entries(n: usize) -> Vec<OutboundEntry> {
        (0..n)
            .map(|i| OutboundEntry {
                id: i.to_string(),
                group: "1".into(),
                body: "{}".into(),
            })
            .collect()
    }

    const NO_WAIT: [Duration; 3] = [Duration::ZERO; 3];

    #[tokio::test]
    async fn refused_entries_alone_are_retried_until_accepted() {
        let calls: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
        let seen = calls.clone();
        let sent = send_with_retries(&entries(10), &NO_WAIT, move |batch| {
            let seen = seen.clone();
            async move {
                let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
                let n = {
                    let mut s = seen.lock().unwrap();
                    s.push(ids.clone());
                    s.len()
                };
                // Entry 3 is refused twice inside a successful call, then accepted.
                let failed = if n <= 2 && ids.contains(&"3".to_string()) {
                    vec![("3".to_string(), "Throttled".to_string())]
                } else {
                    vec![]
                };
                Ok(BatchOutcome { failed })
            }
        })
        .await;
        assert_eq!(sent.calls, 3);
        assert_eq!(sent.accepted.len(), 10);
        assert!(sent.refused.is_empty());
        let calls = calls.lock().unwrap();
        assert_eq!(calls[1], ["3"], "only the refused entry is sent again");
    }

    #[tokio::test]
    async fn an_entry_refused_every_time_is_reported_with_the_reason() {
        let sent = send_with_retries(&entries(2), &NO_WAIT, |batch| async move {
            let failed = batch
                .iter()
                .filter(|e| e.id == "1")
                .map(|e| (e.id.clone(), "InvalidMessageContents".to_string()))
                .collect();
            Ok(BatchOutcome { failed })
        })
        .await;
        assert_eq!(sent.calls, 4, "the first try and three retries");
        assert_eq!(sent.accepted, ["0"]);
        assert_eq!(
            sent.refused,
            [("1".to_string(), "InvalidMessageContents".to_string())]
        );
    }

    #[tokio::test]
    async fn a_call_that_keeps_failing_leaves_the_rest_unsent_with_the_reason() {
        let mut calls = 0;
        let sent = send_with_retries(&entries(3), &NO_WAIT, |batch| {
            calls += 1;
            let first = calls == 1;
            async move {
                if first {
                    // Entry 0 accepted, 1 and 2 refused; then the queue becomes unreachable.
                    Ok(BatchOutcome {
                        failed: batch
                            .iter()
                            .skip(1)
                            .map(|e| (e.id.clone(), "Throttled".into()))
                            .collect(),
                    })
                } else {
                    Err(QueueError("connection refused".into()))
                }
            }
        })
        .await;
        assert_eq!(calls, 4);
        assert_eq!(sent.accepted, ["0"], "what was accepted stays known");
        assert!(sent.refused.is_empty());
        assert!(sent.unsent.unwrap().0.contains("refused"));
    }

    #[test]
    fn the_body_has_the_seeds_field_names() {
        let body = OutboundBody {
            message_id: "42".into(),
            user_id: "1".into(),
            recipient_id: "7".into(),
            content: "hi".into(),
            media_urls: vec![],
            priority: 5,
            campaign_id: None,
        };
        let v = serde_json::to_value(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"messageId":"42","userId":"1","recipientId":"7","content":"hi","mediaUrls":[],"priority":5})
        );
    }
}

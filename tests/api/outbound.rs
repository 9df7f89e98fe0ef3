//! The outbound queue's contract, on both implementations: the embedded queue (SQLite and
//! PostgreSQL) and SQS (the emulator, with a redrive policy to a DLQ).

use std::time::Duration;

use fanqueue_jobs::{
    db::Db,
    outbound::{EmbeddedQueue, OutboundEntry, OutboundQueue, QueueCounts, SqsQueue},
};

use crate::helpers::{Backend, TestDb, aws_endpoint, eventually, sqs_queues};

fn entry(id: &str) -> OutboundEntry {
    OutboundEntry {
        id: id.into(),
        group: "1".into(),
        body: format!("{{\"messageId\":\"{id}\"}}"),
    }
}

/// Visibility, receive counts, delete, and the move to the DLQ after `max_receives`.
async fn honours_the_queue_contract(q: &impl OutboundQueue, max_receives: u32) {
    let sent = q.send_batch(&[entry("1"), entry("2")]).await.unwrap();
    assert!(sent.failed.is_empty());
    assert_eq!(
        q.counts().await.unwrap(),
        QueueCounts {
            depth: 2,
            in_flight: 0,
            dlq: 0
        }
    );

    // Received: hidden for the visibility timeout, counted as in flight.
    let got = q
        .receive(10, Duration::from_secs(3), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|m| m.receive_count == 1));
    assert_eq!(
        q.counts().await.unwrap(),
        QueueCounts {
            depth: 0,
            in_flight: 2,
            dlq: 0
        }
    );
    assert!(
        q.receive(10, Duration::from_secs(1), Duration::ZERO)
            .await
            .unwrap()
            .is_empty(),
        "hidden while in flight"
    );

    // Deleted: gone for good.
    let one = got.iter().find(|m| m.body.contains("\"1\"")).unwrap();
    q.delete(&one.receipt).await.unwrap();
    assert_eq!(q.counts().await.unwrap().in_flight, 1);

    // The other is never deleted: it comes back after each timeout, with its receive count
    // going up, until it has been handed out `max_receives` times; then it goes to the DLQ.
    let receives = std::cell::Cell::new(1);
    let (within, every) = (Duration::from_secs(60), Duration::from_millis(200));
    eventually("the message in the DLQ", within, every, || async {
        let got = q
            .receive(10, Duration::from_secs(1), Duration::ZERO)
            .await
            .unwrap();
        if let Some(m) = got.first() {
            receives.set(receives.get() + 1);
            assert_eq!(m.receive_count, receives.get(), "each receive counts");
            assert!(
                receives.get() <= max_receives,
                "handed out more than {max_receives} times"
            );
        } else if receives.get() == max_receives {
            let c = q.counts().await.unwrap();
            if c.dlq == 1 {
                assert_eq!((c.depth, c.in_flight), (0, 0));
                return Ok(());
            }
        }
        Err(format!("{} receives", receives.get()))
    })
    .await;
}

async fn embedded(backend: Backend) -> (TestDb, EmbeddedQueue) {
    let (guard, url) = TestDb::create(backend).await;
    let db = Db::connect(&url).await.unwrap();
    db.migrate().await.unwrap();
    (guard, EmbeddedQueue::new(db, 3))
}

#[tokio::test]
async fn the_embedded_queue_on_sqlite_has_sqs_semantics() {
    let (_guard, q) = embedded(Backend::Sqlite).await;
    honours_the_queue_contract(&q, 3).await;
}

#[tokio::test]
async fn the_embedded_queue_on_postgres_has_sqs_semantics() {
    let (_guard, q) = embedded(Backend::Postgres).await;
    honours_the_queue_contract(&q, 3).await;
}

#[tokio::test]
async fn sqs_with_a_redrive_policy_has_the_same_semantics() {
    let (url, dlq) = sqs_queues(false, 3).await;
    let q = SqsQueue::new(&url, Some(&dlq), Some(&aws_endpoint()))
        .await
        .unwrap();
    q.check().await.unwrap();
    honours_the_queue_contract(&q, 3).await;
}

#[tokio::test]
async fn the_embedded_queue_keeps_one_copy_of_a_message_sent_twice() {
    let (_guard, q) = embedded(Backend::Sqlite).await;
    q.send_batch(&[entry("7"), entry("8")]).await.unwrap();
    q.send_batch(&[entry("7")]).await.unwrap();
    assert_eq!(q.counts().await.unwrap().depth, 2);
}

#[tokio::test]
async fn a_fifo_sqs_queue_keeps_one_copy_of_a_message_sent_twice() {
    let (url, dlq) = sqs_queues(true, 3).await;
    let q = SqsQueue::new(&url, Some(&dlq), Some(&aws_endpoint()))
        .await
        .unwrap();
    q.send_batch(&[entry("7"), entry("8")]).await.unwrap();
    q.send_batch(&[entry("7")]).await.unwrap();
    assert_eq!(
        q.counts().await.unwrap().depth,
        2,
        "the message id is the deduplication id"
    );
}

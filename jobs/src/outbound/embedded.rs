//! The embedded outbound queue: rows of `outbound_queue` in the application's own database,
//! so queued messages survive restarts with everything else.

use std::time::Duration;

use super::{
    BatchOutcome, DeadCopy, OutboundEntry, OutboundQueue, QueueCounts, QueueError, Received,
};
use crate::{db::Db, domain::Timestamp, on_db};

#[derive(Clone, Debug)]
pub struct EmbeddedQueue {
    db: Db,
    /// Receives after which a message goes to the dead-letter queue (SQS's `maxReceiveCount`).
    max_receives: u32,
}

fn sql_error(e: sqlx::Error) -> QueueError {
    QueueError(format!("embedded queue: {e}"))
}

/// How often a waiting receive looks again.
const POLL: Duration = Duration::from_millis(100);

impl EmbeddedQueue {
    pub fn new(db: Db, max_receives: u32) -> Self {
        EmbeddedQueue {
            db,
            max_receives: max_receives.max(1),
        }
    }

    /// The dialect's pieces of a receive: PostgreSQL skips rows another receiver holds
    /// (SQLite has one writer at a time, so a row never goes to two), and each receive gets a
    /// fresh receipt.
    fn pick_and_receipt(&self) -> (&'static str, &'static str) {
        match &self.db {
            Db::Postgres(_) => (
                "FOR UPDATE SKIP LOCKED",
                "md5(random()::text || clock_timestamp()::text || id::text)",
            ),
            Db::Sqlite(_) => ("", "lower(hex(randomblob(16)))"),
        }
    }

    /// Deletes received messages of the main queue (`dead` false) or of the DLQ by receipt.
    async fn delete_received(&self, dead: bool, receipts: &[String]) -> Result<(), QueueError> {
        if receipts.is_empty() {
            return Ok(());
        }
        on_db!(&self.db, pool => {
            let mut q = sqlx::QueryBuilder::new("DELETE FROM outbound_queue WHERE dead = ");
            q.push_bind(dead).push(" AND receipt IN (");
            crate::db::push_binds(&mut q, receipts);
            q.push(")");
            q.build().execute(pool).await.map(|_| ())
        })
        .map_err(sql_error)
    }

    /// One receive, without waiting, in one statement. Like SQS: a message received
    /// `max_receives` times goes to the DLQ when it comes up again instead of being handed out.
    async fn receive_now(
        &self,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<Received>, QueueError> {
        let now = Timestamp::now();
        let until = Timestamp(now.0 + chrono::TimeDelta::from_std(visibility).unwrap_or_default());
        let max_receives = i64::from(self.max_receives);
        // Deleting needs the receipt, so a receiver whose visibility ran out cannot delete
        // another's copy.
        let (pick, receipt) = self.pick_and_receipt();
        let sql = format!(
            "WITH picked AS MATERIALIZED (
                 SELECT id FROM outbound_queue WHERE NOT dead AND visible_at <= $1
                 ORDER BY visible_at, id LIMIT $2 {pick}
             )
             UPDATE outbound_queue SET
                 dead = receive_count >= $3,
                 receive_count = CASE WHEN receive_count >= $3 THEN receive_count ELSE receive_count + 1 END,
                 visible_at = CASE WHEN receive_count >= $3 THEN visible_at ELSE $4 END,
                 receipt = CASE WHEN receive_count >= $3 THEN NULL ELSE {receipt} END
             WHERE id IN (SELECT id FROM picked)
             RETURNING id, dead, body, receive_count, receipt"
        );
        let mut rows: Vec<(i64, bool, String, i64, Option<String>)> = on_db!(&self.db, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(now)
                .bind(max as i64)
                .bind(max_receives)
                .bind(until)
                .fetch_all(pool)
                .await
                .map_err(sql_error)?
        });
        rows.sort_unstable_by_key(|(id, ..)| *id);
        Ok(rows
            .into_iter()
            .filter_map(|(_, dead, body, count, receipt)| {
                Some(Received {
                    receipt: receipt.filter(|_| !dead)?,
                    body,
                    receive_count: count as u32,
                })
            })
            .collect())
    }
}

impl OutboundQueue for EmbeddedQueue {
    /// All entries in one statement; an entry whose message is already on the queue is
    /// accepted without a second copy (the message id is the deduplication key).
    async fn send_batch(&self, entries: &[OutboundEntry]) -> Result<BatchOutcome, QueueError> {
        if entries.is_empty() {
            return Ok(BatchOutcome::default());
        }
        let now = Timestamp::now();
        on_db!(&self.db, pool => {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO outbound_queue (body, dedup_key, visible_at, created_at) ",
            );
            q.push_values(entries, |mut row, e| {
                row.push_bind(&e.body)
                    .push_bind(&e.id)
                    .push_bind(now)
                    .push_bind(now);
            });
            q.push(" ON CONFLICT (dedup_key) DO NOTHING");
            q.build().execute(pool).await.map(|_| ())
        })
        .map_err(sql_error)?;
        Ok(BatchOutcome::default())
    }

    /// Polls every [`POLL`] until a message is visible or `wait` has passed.
    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Received>, QueueError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let got = self.receive_now(max, visibility).await?;
            if !got.is_empty() || tokio::time::Instant::now() + POLL > deadline {
                return Ok(got);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        self.delete_batch(&[receipt.to_owned()]).await
    }

    async fn delete_batch(&self, receipts: &[String]) -> Result<(), QueueError> {
        self.delete_received(false, receipts).await
    }

    /// One row per message: a message dead-lettered again replaces its earlier row.
    async fn dead_letter(&self, entry: &OutboundEntry, reason: &str) -> Result<(), QueueError> {
        let now = Timestamp::now();
        on_db!(&self.db, pool => sqlx::query(
            "INSERT INTO outbound_queue (dead, body, dedup_key, visible_at, created_at, last_error)
             VALUES (TRUE, $1, $2, $3, $3, $4)
             ON CONFLICT (dedup_key) DO UPDATE SET dead = TRUE, body = EXCLUDED.body,
                 last_error = EXCLUDED.last_error, receipt = NULL",
        )
        .bind(&entry.body)
        .bind(&entry.id)
        .bind(now)
        .bind(reason)
        .execute(pool)
        .await
        .map(|_| ()))
        .map_err(sql_error)
    }

    async fn receive_dead(
        &self,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<DeadCopy>, QueueError> {
        let now = Timestamp::now();
        let until = Timestamp(now.0 + chrono::TimeDelta::from_std(visibility).unwrap_or_default());
        let (pick, receipt) = self.pick_and_receipt();
        let sql = format!(
            "WITH picked AS MATERIALIZED (
                 SELECT id FROM outbound_queue WHERE dead AND visible_at <= $1
                 ORDER BY visible_at, id LIMIT $2 {pick}
             )
             UPDATE outbound_queue SET visible_at = $3, receipt = {receipt}
             WHERE id IN (SELECT id FROM picked)
             RETURNING id, body, receipt, last_error"
        );
        let mut rows: Vec<(i64, String, String, Option<String>)> = on_db!(&self.db, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(now)
                .bind(max as i64)
                .bind(until)
                .fetch_all(pool)
                .await
                .map_err(sql_error)?
        });
        rows.sort_unstable_by_key(|(id, ..)| *id);
        Ok(rows
            .into_iter()
            .map(|(_, body, receipt, reason)| DeadCopy {
                receipt,
                body,
                reason,
            })
            .collect())
    }

    async fn delete_dead(&self, receipts: &[String]) -> Result<(), QueueError> {
        self.delete_received(true, receipts).await
    }

    /// In place: the row leaves the DLQ, visible now, its receive count back to zero.
    async fn redrive(&self, copy: &DeadCopy, _entry: &OutboundEntry) -> Result<(), QueueError> {
        let now = Timestamp::now();
        on_db!(&self.db, pool => sqlx::query(
            "UPDATE outbound_queue SET dead = FALSE, receive_count = 0, visible_at = $2,
                 receipt = NULL
             WHERE dead AND receipt = $1",
        )
        .bind(&copy.receipt)
        .bind(now)
        .execute(pool)
        .await
        .map(|_| ()))
        .map_err(sql_error)
    }

    async fn counts(&self) -> Result<QueueCounts, QueueError> {
        let now = Timestamp::now();
        let (depth, in_flight, dlq): (i64, i64, i64) = on_db!(&self.db, pool => sqlx::query_as(
            "SELECT COALESCE(SUM(CASE WHEN NOT dead AND visible_at <= $1 THEN 1 ELSE 0 END), 0),
                    COALESCE(SUM(CASE WHEN NOT dead AND visible_at > $1 THEN 1 ELSE 0 END), 0),
                    COALESCE(SUM(CASE WHEN dead THEN 1 ELSE 0 END), 0)
             FROM outbound_queue",
        )
        .bind(now)
        .fetch_one(pool)
        .await)
        .map_err(sql_error)?;
        Ok(QueueCounts {
            depth: depth as u64,
            in_flight: in_flight as u64,
            dlq: dlq as u64,
        })
    }
}

//! AWS SQS through aws-sdk-sqs (any SQS-compatible endpoint, e.g. the moto emulator).

use std::time::Duration;

use anyhow::Context;
use aws_sdk_sqs::{
    Client,
    types::{
        DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
        QueueAttributeName, SendMessageBatchRequestEntry,
    },
};

use super::{
    BatchOutcome, DeadCopy, OutboundEntry, OutboundQueue, QueueCounts, QueueError, Received,
};

#[derive(Clone, Debug)]
pub struct SqsQueue {
    client: Client,
    url: String,
    dlq_url: Option<String>,
    /// A `.fifo` queue: entries carry the creator as group and the message id as
    /// deduplication id, so SQS itself drops a re-sent message (within its 5-minute window).
    fifo: bool,
}

fn sdk_error<E: std::error::Error>(what: &str, e: E) -> QueueError {
    let mut msg = format!("SQS {what}: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    QueueError(msg)
}

impl SqsQueue {
    /// A client for `url`; `endpoint` overrides AWS's (an emulator). Region and credentials
    /// come from the usual AWS environment and config chain.
    pub async fn new(
        url: &str,
        dlq_url: Option<&str>,
        endpoint: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(endpoint) = endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let config = loader.load().await;
        anyhow::ensure!(
            config.region().is_some(),
            "SQS needs a region: set AWS_REGION"
        );
        let sqs_config = aws_sdk_sqs::config::Builder::from(&config)
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_timeout(Duration::from_secs(20))
                    .build(),
            )
            .build();
        let queue = SqsQueue {
            client: Client::from_conf(sqs_config),
            url: url.to_owned(),
            dlq_url: dlq_url.map(str::to_owned),
            fifo: url.ends_with(".fifo"),
        };
        Ok(queue)
    }

    /// Checks that the queue answers (used at start, so a typo in the URL fails loudly).
    pub async fn check(&self) -> anyhow::Result<()> {
        self.client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(|e| sdk_error("GetQueueAttributes", e))
            .with_context(|| format!("reaching the SQS queue {}", self.url))?;
        Ok(())
    }

    async fn attribute_count(
        &self,
        url: &str,
        names: &[QueueAttributeName],
    ) -> Result<Vec<u64>, QueueError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .set_attribute_names(Some(names.to_vec()))
            .send()
            .await
            .map_err(|e| sdk_error("GetQueueAttributes", e))?;
        let attrs = out.attributes();
        Ok(names
            .iter()
            .map(|n| {
                attrs
                    .and_then(|a| a.get(n))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            })
            .collect())
    }

    /// One `DeleteMessageBatch` on the queue at `url`.
    async fn delete_batch_from(&self, url: &str, receipts: &[String]) -> Result<(), QueueError> {
        if receipts.is_empty() {
            return Ok(());
        }
        let entries = receipts
            .iter()
            .enumerate()
            .map(|(i, r)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(r)
                    .build()
                    .map_err(|e| QueueError(format!("building an SQS delete entry: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = self
            .client
            .delete_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| sdk_error("DeleteMessageBatch", e))?;
        match out.failed().first() {
            Some(f) => Err(QueueError(format!(
                "SQS refused to delete {} of {} messages: {}",
                out.failed().len(),
                receipts.len(),
                f.code()
            ))),
            None => Ok(()),
        }
    }

    fn dlq(&self) -> Result<&str, QueueError> {
        self.dlq_url
            .as_deref()
            .ok_or_else(|| QueueError("no dead-letter queue configured (SQS_DLQ_URL)".into()))
    }
}

impl OutboundQueue for SqsQueue {
    async fn send_batch(&self, entries: &[OutboundEntry]) -> Result<BatchOutcome, QueueError> {
        let entries = entries
            .iter()
            .map(|e| {
                let mut b = SendMessageBatchRequestEntry::builder()
                    .id(&e.id)
                    .message_body(&e.body);
                if self.fifo {
                    b = b.message_group_id(&e.group).message_deduplication_id(&e.id);
                }
                b.build()
                    .map_err(|err| QueueError(format!("building an SQS entry: {err}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = self
            .client
            .send_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| sdk_error("SendMessageBatch", e))?;
        let failed = out
            .failed()
            .iter()
            .map(|f| {
                let reason = format!(
                    "SQS refused the message: {}{}",
                    f.code(),
                    f.message().map(|m| format!(": {m}")).unwrap_or_default()
                );
                (f.id().to_owned(), reason)
            })
            .collect();
        Ok(BatchOutcome { failed })
    }

    /// Long polling: waits up to `wait` (SQS allows 20 s) for a message to arrive.
    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Received>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .visibility_timeout(visibility.as_secs().min(43_200) as i32)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| sdk_error("ReceiveMessage", e))?;
        Ok(out
            .messages()
            .iter()
            .map(|m| Received {
                receipt: m.receipt_handle().unwrap_or_default().to_owned(),
                body: m.body().unwrap_or_default().to_owned(),
                receive_count: m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1),
            })
            .collect())
    }

    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| sdk_error("DeleteMessage", e))?;
        Ok(())
    }

    /// One `DeleteMessageBatch`; an entry SQS refuses is an error (its message comes back
    /// after the visibility timeout and is found already handled).
    async fn delete_batch(&self, receipts: &[String]) -> Result<(), QueueError> {
        self.delete_batch_from(&self.url, receipts).await
    }

    /// Sends the body to the DLQ with the reason as the `error` message attribute.
    async fn dead_letter(&self, entry: &OutboundEntry, reason: &str) -> Result<(), QueueError> {
        let Some(dlq) = &self.dlq_url else {
            return Err(QueueError(
                "no dead-letter queue configured (SQS_DLQ_URL)".into(),
            ));
        };
        let error = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(reason.chars().take(1_000).collect::<String>())
            .build()
            .map_err(|e| QueueError(format!("building an SQS attribute: {e}")))?;
        let mut send = self
            .client
            .send_message()
            .queue_url(dlq)
            .message_body(&entry.body)
            .message_attributes("error", error);
        if dlq.ends_with(".fifo") {
            send = send
                .message_group_id(&entry.group)
                .message_deduplication_id(&entry.id);
        }
        send.send()
            .await
            .map_err(|e| sdk_error("SendMessage (DLQ)", e))?;
        Ok(())
    }

    async fn receive_dead(
        &self,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<DeadCopy>, QueueError> {
        let dlq = self.dlq()?;
        let out = self
            .client
            .receive_message()
            .queue_url(dlq)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .visibility_timeout(visibility.as_secs().min(43_200) as i32)
            .wait_time_seconds(0)
            .message_attribute_names("error")
            .send()
            .await
            .map_err(|e| sdk_error("ReceiveMessage (DLQ)", e))?;
        Ok(out
            .messages()
            .iter()
            .map(|m| DeadCopy {
                receipt: m.receipt_handle().unwrap_or_default().to_owned(),
                body: m.body().unwrap_or_default().to_owned(),
                reason: m
                    .message_attributes()
                    .and_then(|a| a.get("error"))
                    .and_then(|v| v.string_value())
                    .map(str::to_owned),
            })
            .collect())
    }

    async fn delete_dead(&self, receipts: &[String]) -> Result<(), QueueError> {
        let dlq = self.dlq()?.to_owned();
        self.delete_batch_from(&dlq, receipts).await
    }

    /// A copy on the main queue first, then the DLQ's deleted: a crash between the two leaves
    /// a duplicate, which the dispatcher skips, never a loss.
    async fn redrive(&self, copy: &DeadCopy, entry: &OutboundEntry) -> Result<(), QueueError> {
        let outcome = self.send_batch(std::slice::from_ref(entry)).await?;
        if let Some((_, reason)) = outcome.failed.first() {
            return Err(QueueError(reason.clone()));
        }
        self.delete_dead(std::slice::from_ref(&copy.receipt)).await
    }

    async fn counts(&self) -> Result<QueueCounts, QueueError> {
        let main = self
            .attribute_count(
                &self.url,
                &[
                    QueueAttributeName::ApproximateNumberOfMessages,
                    QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                ],
            )
            .await?;
        let dlq = match &self.dlq_url {
            Some(url) => {
                self.attribute_count(url, &[QueueAttributeName::ApproximateNumberOfMessages])
                    .await?[0]
            }
            None => 0,
        };
        Ok(QueueCounts {
            depth: main[0],
            in_flight: main[1],
            dlq,
        })
    }
}

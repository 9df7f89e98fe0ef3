//! The SQS/S3 emulator and the platform simulator.

#[allow(unused_imports)]
use super::*;

pub fn aws_endpoint() -> String {
    std::env::var("TEST_AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:5055".into())
}

/// A fresh SQS queue pair on the emulator: the main queue redrives to its DLQ after
/// `max_receives` receives. Returns (queue URL, DLQ URL).
pub async fn sqs_queues(fifo: bool, max_receives: u32) -> (String, String) {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let client = sqs_client().await;
    let base = format!("fq-test-{}", uuid::Uuid::new_v4().simple());
    let suffix = if fifo { ".fifo" } else { "" };
    let mut dlq = client
        .create_queue()
        .queue_name(format!("{base}-dlq{suffix}"));
    if fifo {
        dlq = dlq.attributes(A::FifoQueue, "true");
    }
    let dlq_url = dlq
        .send()
        .await
        .expect("the S3/SQS emulator creates a DLQ")
        .queue_url()
        .unwrap()
        .to_owned();
    let arn = client
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(A::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&A::QueueArn]
        .clone();
    let redrive =
        json!({ "deadLetterTargetArn": arn, "maxReceiveCount": max_receives.to_string() })
            .to_string();
    let mut main = client
        .create_queue()
        .queue_name(format!("{base}{suffix}"))
        .attributes(A::RedrivePolicy, redrive)
        .attributes(A::VisibilityTimeout, "30");
    if fifo {
        main = main.attributes(A::FifoQueue, "true");
    }
    let url = main
        .send()
        .await
        .expect("the emulator creates a queue")
        .queue_url()
        .unwrap()
        .to_owned();
    (url, dlq_url)
}

pub async fn sqs_client() -> aws_sdk_sqs::Client {
    assert!(
        std::env::var("AWS_ACCESS_KEY_ID").is_ok(),
        "SQS tests need AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_REGION for the emulator (scripts/test sets them)"
    );
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(aws_endpoint())
        .load()
        .await;
    aws_sdk_sqs::Client::new(&config)
}

/// The platform stand-in, in this process on a random port, until dropped.
pub struct Sim {
    pub base: String,
    client: reqwest::Client,
    stop: tokio_util::sync::CancellationToken,
}

impl Sim {
    /// A stand-in enforcing `per_minute` deliveries per creator.
    pub async fn start(per_minute: u32) -> Sim {
        let sim =
            fanqueue::platform_sim::PlatformSim::bind("127.0.0.1:0".parse().unwrap(), per_minute)
                .await
                .expect("the platform stand-in binds");
        let base = format!("http://127.0.0.1:{}", sim.port());
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(sim.run(stop.clone()));
        Sim {
            base,
            client: reqwest::Client::new(),
            stop,
        }
    }

    /// Where the dispatcher posts messages.
    pub fn messages_url(&self) -> String {
        format!("{}/messages", self.base)
    }

    /// Every accepted delivery, in arrival order.
    pub async fn deliveries(&self) -> Vec<Value> {
        let resp = self
            .client
            .get(format!("{}/deliveries", self.base))
            .send()
            .await
            .expect("the stand-in answers");
        json_of(resp, StatusCode::OK).await["items"]
            .as_array()
            .expect("a list of deliveries")
            .clone()
    }

    pub async fn stats(&self) -> Value {
        let resp = self
            .client
            .get(format!("{}/stats", self.base))
            .send()
            .await
            .expect("the stand-in answers");
        json_of(resp, StatusCode::OK).await
    }

    /// Injects faults (see `POST /faults`).
    pub async fn faults(&self, faults: Value) {
        let resp = self
            .client
            .post(format!("{}/faults", self.base))
            .json(&faults)
            .send()
            .await
            .expect("the stand-in answers");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "faults set");
    }

    /// Clears every injected fault (`DELETE /faults`).
    pub async fn clear_faults(&self) {
        let resp = self
            .client
            .delete(format!("{}/faults", self.base))
            .send()
            .await
            .expect("the stand-in answers");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "faults cleared");
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Tweak: the dispatcher delivers to `url` at `per_minute` per creator, each attempt timing
/// out after a second.
pub fn with_platform(url: &str, per_minute: u32) -> impl FnOnce(&mut Settings) + use<> {
    let url = url.to_owned();
    move |s: &mut Settings| {
        s.delivery.platform_api_url = Some(url);
        s.delivery.delivery_rate_per_minute = per_minute;
        s.delivery.platform_timeout_ms = 1_000;
    }
}

/// Tweak: outbound messages go to this SQS queue on the emulator.
pub fn with_sqs(url: &str, dlq: &str) -> impl FnOnce(&mut Settings) + use<> {
    let (url, dlq) = (url.to_owned(), dlq.to_owned());
    move |s: &mut Settings| {
        s.outbound.sqs_queue_url = Some(url);
        s.outbound.sqs_dlq_url = Some(dlq);
        s.aws_endpoint_url = Some(aws_endpoint());
    }
}

/// Reads every message off `queue` with a boto3 consumer (the emulator's Python client),
/// deleting as it goes; returns the bodies as JSON.
pub fn boto3_drain(queue: &str) -> Vec<Value> {
    let python = std::env::var("TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = r#"
import json, os, sys, boto3
sqs = boto3.client("sqs", endpoint_url=sys.argv[1], region_name=os.environ.get("AWS_REGION", "us-east-1"))
empty = 0
while empty < 3:
    got = sqs.receive_message(QueueUrl=sys.argv[2], MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
    if not got:
        empty += 1
        continue
    empty = 0
    for m in got:
        print(m["Body"])
        sqs.delete_message(QueueUrl=sys.argv[2], ReceiptHandle=m["ReceiptHandle"])
"#;
    let out = Command::new(&python)
        .args(["-c", script, &aws_endpoint(), queue])
        .output()
        .unwrap_or_else(|e| panic!("running the boto3 consumer with {python}: {e}"));
    assert!(
        out.status.success(),
        "boto3 consumer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON body"))
        .collect()
}

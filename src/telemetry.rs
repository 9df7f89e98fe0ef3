//! Logs and metrics.
//!
//! Logs: JSON lines on stderr by default (what log pipelines parse), `LOG_FORMAT=pretty` for
//! people; `RUST_LOG` picks the level (default info). Spans carry `user_id`, `job_id`,
//! `message_id` and `campaign_id` where they apply, and JSON lines include them.
//!
//! Metrics: one recorder per process, installed by [`metrics`]. It feeds Prometheus (rendered
//! on `/metrics`) and, with `CLOUDWATCH_NAMESPACE`, the seeds' CloudWatch metrics as
//! embedded-metric-format lines on stdout, written by the [`CloudWatchEmf`] service.

use std::{
    io::Write,
    sync::{Arc, OnceLock},
    time::Duration,
};

use fanqueue_jobs::{
    outbound::{Outbound, OutboundQueue},
    telemetry as names,
};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::{
    layers::FanoutBuilder,
    registry::{AtomicStorage, Registry},
};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::settings::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,poem=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init(),
    };
    // A second init (tests spawning several apps) keeps the first subscriber.
    let _ = result;
}

/// HTTP metrics, recorded by the API's request middleware.
pub const HTTP_REQUESTS: &str = "fanqueue_http_requests_total";
pub const HTTP_DURATION: &str = "fanqueue_http_request_duration_seconds";
pub const HTTP_SHED: &str = "fanqueue_http_requests_shed_total";

/// Bucket bounds of the `_seconds` histograms: from a fast request to an hour in the queue.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
];
/// Bucket bounds of recipients per campaign (at most 100 today).
const RECIPIENT_BUCKETS: &[f64] = &[1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0];

/// The process's metrics: the Prometheus view, and the CloudWatch one when configured.
#[derive(Clone)]
pub struct Metrics {
    prometheus: PrometheusHandle,
    emf: Option<Arc<EmfRecorder>>,
}

impl Metrics {
    /// The Prometheus text exposition, with the outbound queue's gauges read now (so that a
    /// scrape sees the queue as it is, not as it was at the last refresh).
    pub async fn render(&self, outbound: &Outbound) -> String {
        refresh_queue_gauges(outbound).await;
        self.prometheus.run_upkeep();
        self.prometheus.render()
    }

    pub fn cloudwatch(&self) -> Option<Arc<EmfRecorder>> {
        self.emf.clone()
    }
}

/// Reads the outbound queue's counts into their gauges; a queue that does not answer within a
/// second leaves them as they were (and is logged), so a scrape never hangs on it.
async fn refresh_queue_gauges(outbound: &Outbound) {
    match tokio::time::timeout(Duration::from_secs(1), outbound.counts()).await {
        Ok(Ok(counts)) => names::queue_counts(&counts),
        Ok(Err(e)) => tracing::warn!(error = %e, "could not read the outbound queue's counts"),
        Err(_) => tracing::warn!("the outbound queue's counts took over a second; skipped"),
    }
}

/// Installs the process's recorder on first call and returns it ever after. With
/// `cloudwatch_namespace` the seeds' metrics are also kept for [`CloudWatchEmf`]; the first
/// call decides (tests that start several apps in one process share one recorder).
pub fn metrics(cloudwatch_namespace: Option<&str>) -> Metrics {
    static INSTALLED: OnceLock<Metrics> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let (recorder, metrics) = build(cloudwatch_namespace);
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
            }
            names::describe();
            metrics::describe_counter!(
                HTTP_REQUESTS,
                Unit::Count,
                "HTTP requests by route template, method and status."
            );
            metrics::describe_histogram!(
                HTTP_DURATION,
                Unit::Seconds,
                "HTTP request durations by route template and method."
            );
            metrics::describe_counter!(
                HTTP_SHED,
                Unit::Count,
                "API requests answered 503 at the door because the server was full."
            );
            metrics
        })
        .clone()
}

/// The recorder (Prometheus, fanned out to the CloudWatch view when asked) and its handles.
fn build(cloudwatch_namespace: Option<&str>) -> (impl Recorder + Sync + 'static, Metrics) {
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(names::CAMPAIGN_RECIPIENTS.into()),
                RECIPIENT_BUCKETS,
            )
        })
        .expect("bucket lists are not empty")
        .build_recorder();
    let handle = prometheus.handle();
    let emf = cloudwatch_namespace.map(|ns| Arc::new(EmfRecorder::new(ns)));
    let mut fanout = FanoutBuilder::default().add_recorder(prometheus);
    if let Some(emf) = &emf {
        fanout = fanout.add_recorder(EmfView(emf.clone()));
    }
    (
        fanout.build(),
        Metrics {
            prometheus: handle,
            emf,
        },
    )
}

/// The seeds' CloudWatch metrics (developer guide, namespace `Huntaze/OnlyFans`), each fed by
/// one of ours: name, unit, and a factor from our unit to theirs.
const SEED_METRICS: &[(&str, &str, &str, f64)] = &[
    (
        names::MESSAGES_QUEUED,
        "onlyfans.message.queued",
        "Count",
        1.0,
    ),
    (
        names::MESSAGES_SENT,
        "onlyfans.message.processed",
        "Count",
        1.0,
    ),
    (
        names::MESSAGES_FAILED,
        "onlyfans.message.failed",
        "Count",
        1.0,
    ),
    (names::QUEUE_DEPTH, "onlyfans.queue.depth", "Count", 1.0),
    (names::QUEUE_DLQ, "onlyfans.dlq.count", "Count", 1.0),
    (
        names::PLATFORM_CALL,
        "onlyfans.processing.time",
        "Milliseconds",
        1000.0,
    ),
    (names::CAMPAIGNS, "onlyfans.bulk.campaign", "Count", 1.0),
    (
        names::CAMPAIGN_RECIPIENTS,
        "onlyfans.bulk.recipients",
        "Count",
        1.0,
    ),
];

/// EMF allows at most 100 values per metric in one document.
const EMF_MAX_VALUES: usize = 100;

/// The CloudWatch view: the seed metrics only, labels summed away (one series each), kept
/// until [`EmfRecorder::document`] takes them.
pub struct EmfRecorder {
    namespace: String,
    registry: Registry<Key, AtomicStorage>,
}

impl EmfRecorder {
    fn new(namespace: &str) -> Self {
        EmfRecorder {
            namespace: namespace.to_owned(),
            registry: Registry::atomic(),
        }
    }

    /// One EMF document with what changed since the last one: counters as deltas (reset),
    /// gauges as they stand, histogram values recorded meanwhile. `None` when there is nothing.
    pub fn document(&self, timestamp_ms: i64) -> Option<Value> {
        let mut values = Map::new();
        let mut defs = Vec::new();
        let unit_of = |name: &str| {
            SEED_METRICS
                .iter()
                .find(|m| m.1 == name)
                .map_or(("Count", 1.0), |m| (m.2, m.3))
        };
        self.registry.visit_counters(|key, counter| {
            let delta = counter.swap(0, std::sync::atomic::Ordering::Relaxed);
            if delta > 0 {
                values.insert(key.name().to_owned(), json!(delta));
            }
        });
        self.registry.visit_gauges(|key, gauge| {
            let v = f64::from_bits(gauge.load(std::sync::atomic::Ordering::Relaxed));
            values.insert(key.name().to_owned(), json!(v));
        });
        self.registry.visit_histograms(|key, bucket| {
            let factor = unit_of(key.name()).1;
            let mut taken = Vec::new();
            bucket.clear_with(|vs| taken.extend(vs.iter().map(|v| v * factor)));
            if !taken.is_empty() {
                taken.truncate(EMF_MAX_VALUES);
                values.insert(key.name().to_owned(), json!(taken));
            }
        });
        if values.is_empty() {
            return None;
        }
        for name in values.keys() {
            defs.push(json!({ "Name": name, "Unit": unit_of(name).0 }));
        }
        values.insert("Service".into(), json!("fanqueue"));
        values.insert(
            "_aws".into(),
            json!({
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": self.namespace,
                    "Dimensions": [["Service"]],
                    "Metrics": defs,
                }],
            }),
        );
        Some(Value::Object(values))
    }

    fn seed_key(key: &Key) -> Option<Key> {
        SEED_METRICS
            .iter()
            .find(|m| m.0 == key.name())
            .map(|m| Key::from_static_name(m.1))
    }
}

/// [`EmfRecorder`] as a recorder: a seed metric's series, or a no-op for the others.
struct EmfView(Arc<EmfRecorder>);

impl Recorder for EmfView {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        EmfRecorder::seed_key(key).map_or_else(Counter::noop, |k| {
            self.0
                .registry
                .get_or_create_counter(&k, |c| Counter::from_arc(c.clone()))
        })
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        EmfRecorder::seed_key(key).map_or_else(Gauge::noop, |k| {
            self.0
                .registry
                .get_or_create_gauge(&k, |g| Gauge::from_arc(g.clone()))
        })
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        EmfRecorder::seed_key(key).map_or_else(Histogram::noop, |k| {
            self.0
                .registry
                .get_or_create_histogram(&k, |h| Histogram::from_arc(h.clone()))
        })
    }
}

/// How often the CloudWatch lines are written: CloudWatch's standard resolution.
pub const EMF_INTERVAL: Duration = Duration::from_secs(60);

/// Writes the seeds' CloudWatch metrics as one EMF line on stdout every [`EMF_INTERVAL`], and
/// a last one when stopped, so nothing counted is lost at shutdown.
pub struct CloudWatchEmf {
    recorder: Arc<EmfRecorder>,
    outbound: Outbound,
}

impl CloudWatchEmf {
    pub fn new(recorder: Arc<EmfRecorder>, outbound: Outbound) -> Self {
        CloudWatchEmf { recorder, outbound }
    }

    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(EMF_INTERVAL);
        tick.tick().await;
        loop {
            let stopping = tokio::select! {
                _ = cancel.cancelled() => true,
                _ = tick.tick() => false,
            };
            if let Some(doc) = self.run_once().await {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{doc}")?;
                out.flush()?;
            }
            if stopping {
                return Ok(());
            }
        }
    }

    /// Refreshes the queue gauges and takes the document to write (`None` when nothing
    /// changed).
    pub async fn run_once(&self) -> Option<Value> {
        refresh_queue_gauges(&self.outbound).await;
        self.recorder
            .document(chrono::Utc::now().timestamp_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cloudwatch_view_carries_the_seed_metrics_once_each() {
        let (recorder, metrics) = build(Some("Huntaze/OnlyFans"));
        metrics::with_local_recorder(&recorder, || {
            names::messages_queued(3);
            names::messages_queued(2);
            names::messages_failed(names::FailedBecause::Rejected, 1);
            names::messages_failed(names::FailedBecause::Swept, 2);
            names::platform_call("delivered", Duration::from_millis(40));
            names::job("send_message", "queued");
        });
        let emf = metrics.cloudwatch().unwrap();
        let doc = emf.document(1_700_000_000_000).expect("a document");
        assert_eq!(doc["onlyfans.message.queued"], 5);
        assert_eq!(doc["onlyfans.message.failed"], 3, "reasons summed: {doc}");
        assert_eq!(doc["onlyfans.processing.time"], json!([40.0]));
        assert_eq!(doc["Service"], "fanqueue");
        let aws = &doc["_aws"];
        assert_eq!(aws["Timestamp"], 1_700_000_000_000i64);
        assert_eq!(aws["CloudWatchMetrics"][0]["Namespace"], "Huntaze/OnlyFans");
        let defs = aws["CloudWatchMetrics"][0]["Metrics"].as_array().unwrap();
        let named: Vec<&str> = defs.iter().map(|d| d["Name"].as_str().unwrap()).collect();
        assert_eq!(
            named,
            [
                "onlyfans.message.failed",
                "onlyfans.message.queued",
                "onlyfans.processing.time"
            ],
            "only the seed metrics, each declared once: {doc}"
        );
        assert!(
            defs.iter()
                .any(|d| d["Name"] == "onlyfans.processing.time" && d["Unit"] == "Milliseconds")
        );
        // Counters are deltas: nothing new, no document.
        assert_eq!(emf.document(1_700_000_060_000), None);

        // The Prometheus view has every metric, labels kept.
        let text = metrics.prometheus.render();
        assert!(
            text.contains(r#"fanqueue_messages_failed_total{reason="rejected"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"fanqueue_jobs_total{kind="send_message",status="queued"} 1"#),
            "{text}"
        );
        assert!(text.contains("fanqueue_messages_queued_total 5"), "{text}");
    }
}

//! The metrics fanqueue records, named once here: every counter, gauge and histogram goes
//! through these functions, so a name or a label cannot drift between two call sites.
//!
//! They are recorded with the `metrics` facade; the `fanqueue` binary installs the recorder
//! (Prometheus text on `/metrics`, and CloudWatch embedded-metric lines when asked). Without a
//! recorder (unit tests) they cost nothing. Names follow Prometheus conventions: counters end
//! in `_total`, durations are `_seconds`.

use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};

use crate::outbound::QueueCounts;

pub const MESSAGES_QUEUED: &str = "fanqueue_messages_queued_total";
pub const MESSAGES_SENT: &str = "fanqueue_messages_sent_total";
pub const MESSAGES_FAILED: &str = "fanqueue_messages_failed_total";
pub const DELIVERY_LATENCY: &str = "fanqueue_delivery_latency_seconds";
pub const PLATFORM_CALL: &str = "fanqueue_platform_call_duration_seconds";
pub const LIMITER_WAITS: &str = "fanqueue_limiter_waits_total";
pub const LIMITER_WAIT: &str = "fanqueue_limiter_wait_seconds";
pub const QUEUE_DEPTH: &str = "fanqueue_outbound_queue_depth";
pub const QUEUE_IN_FLIGHT: &str = "fanqueue_outbound_in_flight";
pub const QUEUE_DLQ: &str = "fanqueue_outbound_dlq_messages";
pub const JOBS: &str = "fanqueue_jobs_total";
pub const JOB_DURATION: &str = "fanqueue_job_duration_seconds";
pub const JOB_FETCHES: &str = "fanqueue_job_fetches_total";
pub const JOB_FETCHED: &str = "fanqueue_job_fetched_tasks_total";
pub const IMPORTED_ROWS: &str = "fanqueue_imported_rows_total";
pub const CAMPAIGNS: &str = "fanqueue_campaigns_total";
pub const CAMPAIGN_RECIPIENTS: &str = "fanqueue_campaign_recipients";

/// Why a message ended `failed` (the `reason` label of [`MESSAGES_FAILED`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailedBecause {
    /// The platform refused it (a 4xx other than 429).
    Rejected,
    /// Every delivery attempt failed (network errors, 5xx); it went to the DLQ.
    AttemptsExhausted,
    /// The outbound queue refused it, or its send job gave up before queueing it.
    NotQueued,
    /// The sweeper failed it: found in the DLQ, or stuck past its timeout.
    Swept,
}

impl FailedBecause {
    fn label(self) -> &'static str {
        match self {
            FailedBecause::Rejected => "rejected",
            FailedBecause::AttemptsExhausted => "attempts_exhausted",
            FailedBecause::NotQueued => "not_queued",
            FailedBecause::Swept => "swept",
        }
    }
}

/// How a platform call ended (the `outcome` label of [`PLATFORM_CALL`]).
pub fn platform_call(outcome: &'static str, took: Duration) {
    metrics::histogram!(PLATFORM_CALL, "outcome" => outcome).record(took.as_secs_f64());
}

/// Describes every metric (units and help texts); called once when the recorder is installed.
pub fn describe() {
    describe_counter!(
        MESSAGES_QUEUED,
        Unit::Count,
        "Messages put on the outbound queue (re-drives included)."
    );
    describe_counter!(
        MESSAGES_SENT,
        Unit::Count,
        "Messages the platform accepted."
    );
    describe_counter!(
        MESSAGES_FAILED,
        Unit::Count,
        "Messages recorded failed, by reason."
    );
    describe_histogram!(
        DELIVERY_LATENCY,
        Unit::Seconds,
        "From a message's acceptance (the 202) to the platform accepting it."
    );
    describe_histogram!(
        PLATFORM_CALL,
        Unit::Seconds,
        "Duration of each delivery call to the platform, by outcome."
    );
    describe_counter!(
        LIMITER_WAITS,
        Unit::Count,
        "Delivery slots the rate limiter made wait."
    );
    describe_histogram!(
        LIMITER_WAIT,
        Unit::Seconds,
        "How long the rate limiter said to wait for the next slot."
    );
    describe_gauge!(
        QUEUE_DEPTH,
        Unit::Count,
        "Messages waiting on the outbound queue."
    );
    describe_gauge!(
        QUEUE_IN_FLIGHT,
        Unit::Count,
        "Messages received from the outbound queue and not yet deleted."
    );
    describe_gauge!(QUEUE_DLQ, Unit::Count, "Messages in the dead-letter queue.");
    describe_counter!(
        JOBS,
        Unit::Count,
        "Job state changes by kind and status (queued also counts re-queues)."
    );
    describe_histogram!(
        JOB_DURATION,
        Unit::Seconds,
        "Duration of each job run, by kind and the status it ended in."
    );
    describe_counter!(
        JOB_FETCHES,
        Unit::Count,
        "Workers' fetches from the PostgreSQL job queue, by queue (paced: at most one per 20 ms while the last was not full)."
    );
    describe_counter!(
        JOB_FETCHED,
        Unit::Count,
        "Tasks those fetches found, by queue."
    );
    describe_counter!(
        IMPORTED_ROWS,
        Unit::Count,
        "CSV rows imported, by outcome (created, updated, unchanged, refused, skipped)."
    );
    describe_counter!(CAMPAIGNS, Unit::Count, "Bulk campaigns created.");
    describe_histogram!(
        CAMPAIGN_RECIPIENTS,
        Unit::Count,
        "Recipients per bulk campaign."
    );
}

pub fn messages_queued(n: u64) {
    counter!(MESSAGES_QUEUED).increment(n);
}

/// A message the platform accepted, `latency` after it was accepted by the API.
pub fn message_sent(latency: Duration) {
    counter!(MESSAGES_SENT).increment(1);
    metrics::histogram!(DELIVERY_LATENCY).record(latency.as_secs_f64());
}

pub fn messages_failed(because: FailedBecause, n: u64) {
    if n > 0 {
        counter!(MESSAGES_FAILED, "reason" => because.label()).increment(n);
    }
}

/// The limiter made a delivery wait `wait` for its slot.
pub fn limiter_waited(wait: Duration) {
    counter!(LIMITER_WAITS).increment(1);
    metrics::histogram!(LIMITER_WAIT).record(wait.as_secs_f64());
}

/// The outbound queue's counts as last read.
pub fn queue_counts(counts: &QueueCounts) {
    gauge!(QUEUE_DEPTH).set(counts.depth as f64);
    gauge!(QUEUE_IN_FLIGHT).set(counts.in_flight as f64);
    gauge!(QUEUE_DLQ).set(counts.dlq as f64);
}

/// A job of `kind` entered `status` (`queued`, `running`, `succeeded`, `failed`, `cancelled`).
pub fn job(kind: &'static str, status: &'static str) {
    counter!(JOBS, "kind" => kind, "status" => status).increment(1);
}

/// A worker of `queue` fetched from PostgreSQL and found `tasks` tasks (apalis tasks: a task
/// carries one job or several stored together).
pub fn fetched(queue: &str, tasks: usize) {
    counter!(JOB_FETCHES, "queue" => queue.to_owned()).increment(1);
    counter!(JOB_FETCHED, "queue" => queue.to_owned()).increment(tasks as u64);
}

/// A run of a `kind` job ended in `status` after `took`.
pub fn job_run(kind: &'static str, status: &'static str, took: Duration) {
    job(kind, status);
    metrics::histogram!(JOB_DURATION, "kind" => kind, "status" => status)
        .record(took.as_secs_f64());
}

/// Rows of an import by outcome: `created`, `updated`, `unchanged`, `refused`, `skipped`.
pub fn rows_imported(outcome: &'static str, n: u64) {
    if n > 0 {
        counter!(IMPORTED_ROWS, "outcome" => outcome).increment(n);
    }
}

pub fn campaign_created(recipients: usize) {
    counter!(CAMPAIGNS).increment(1);
    metrics::histogram!(CAMPAIGN_RECIPIENTS).record(recipients as f64);
}

//! `GET /api/monitoring/onlyfans` (operators): the state of every dependency and of the
//! delivery backlog; `/metrics` (operators; or without a token on `METRICS_ADDR`); and
//! `/readyz` (readiness: the database and the queue answer). `/healthz` (liveness) is in
//! [`health`](super::health) and touches nothing.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fanqueue_jobs::{
    crm::messages,
    db::Db,
    engine::processes,
    outbound::{Outbound, OutboundQueue},
};
use poem::{EndpointExt, handler, http::StatusCode, web::Data};
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi,
    payload::{Json, PlainText},
};

use super::{
    error::ApiError,
    state::{ApiTags, BearerAuth, State},
};
use crate::{quotas::Limiter, telemetry::Metrics};

/// How long a dependency gets to answer before it counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Above this many messages in the DLQ the system is degraded.
const DLQ_DEGRADED: u64 = 10;
/// Slack over a backlog's expected drain before its oldest message counts as late.
const DRAIN_SLACK: Duration = Duration::from_secs(60);

pub struct MonitoringApi {
    state: State,
}

impl MonitoringApi {
    pub fn new(state: State) -> Self {
        MonitoringApi { state }
    }
}

/// How a component, or the whole system, is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum HealthStatus {
    Healthy,
    /// Working, but something needs an operator's eye.
    Degraded,
    /// Down.
    Unhealthy,
}

/// The database fanqueue runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum DatabaseBackend {
    Postgres,
    Sqlite,
}

/// Where outbound messages wait for the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum QueueKind {
    Sqs,
    Embedded,
}

/// Where quotas and the delivery rate are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum LimiterBackend {
    Redis,
    #[oai(rename = "in-process")]
    InProcess,
}

/// What a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum ProcessRole {
    Serve,
    Worker,
    Dispatch,
    Sweep,
}

impl ProcessRole {
    fn of(role: &str) -> Option<Self> {
        match role {
            "serve" => Some(ProcessRole::Serve),
            "worker" => Some(ProcessRole::Worker),
            "dispatch" => Some(ProcessRole::Dispatch),
            "sweep" => Some(ProcessRole::Sweep),
            _ => None,
        }
    }
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct DatabaseHealth {
    /// `healthy` or `unhealthy`.
    pub status: HealthStatus,
    /// How long `SELECT 1` took (null when it failed).
    #[oai(nullable)]
    pub latency_ms: Option<f64>,
    pub backend: DatabaseBackend,
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<String>,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct QueueHealth {
    /// `healthy`, `degraded` (DLQ above 10) or `unhealthy` (unreachable).
    pub status: HealthStatus,
    pub kind: QueueKind,
    #[oai(nullable)]
    pub queue_depth: Option<u64>,
    #[oai(nullable)]
    pub messages_in_flight: Option<u64>,
    #[oai(nullable)]
    pub dlq_count: Option<u64>,
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<String>,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct LimiterHealth {
    /// `healthy`, or `degraded` when Redis does not answer (quotas then let writes through,
    /// and deliveries pause).
    pub status: HealthStatus,
    pub enabled: bool,
    pub backend: LimiterBackend,
    pub reachable: bool,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct BacklogHealth {
    /// `healthy`, or `degraded` when the oldest waiting message is older than the largest
    /// creator backlog should take to drain at the platform's rate.
    pub status: HealthStatus,
    #[oai(nullable)]
    pub oldest_queued_age_secs: Option<f64>,
    pub largest_creator_backlog: i64,
    pub expected_drain_secs: f64,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ProcessOut {
    pub role: ProcessRole,
    pub host: String,
    pub pid: i64,
    pub started_at: DateTime<Utc>,
    pub seen_at: DateTime<Utc>,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct Components {
    pub database: DatabaseHealth,
    pub sqs: QueueHealth,
    pub rate_limiter: LimiterHealth,
    pub backlog: BacklogHealth,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct HealthOut {
    /// `healthy`, `degraded` or `unhealthy` (the database is down: 503).
    pub status: HealthStatus,
    pub timestamp: DateTime<Utc>,
    pub components: Components,
    /// Dispatchers, workers, sweepers and API processes seen alive (heartbeats).
    pub processes: Vec<ProcessOut>,
    pub dispatchers_alive: i64,
    pub workers_alive: i64,
}

#[derive(ApiResponse)]
enum HealthResponse {
    /// Healthy or degraded.
    #[oai(status = 200)]
    Ok(Json<HealthOut>),
    /// The database is down.
    #[oai(status = 503)]
    Unavailable(Json<HealthOut>),
}

async fn probe<T, E: std::fmt::Display>(
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(PROBE_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    }
}

#[OpenApi(tag = "ApiTags::Monitoring")]
impl MonitoringApi {
    /// System health (operators)
    ///
    /// The database's latency, the outbound queue's depth, in-flight and DLQ counts, the
    /// rate limiter, the oldest waiting message and the processes seen alive. `degraded` when
    /// the DLQ holds more than 10, the oldest waiting message is later than its expected
    /// drain, or Redis does not answer; `unhealthy` (503) when the database is down.
    #[oai(
        path = "/api/monitoring/onlyfans",
        method = "get",
        operation_id = "monitoring"
    )]
    async fn monitoring(&self, auth: BearerAuth) -> Result<HealthResponse, ApiError> {
        auth.operator()?;
        let s = &self.state;
        let started = Instant::now();
        let db = probe(s.db.ping()).await;
        let database = DatabaseHealth {
            status: if db.is_ok() {
                HealthStatus::Healthy
            } else {
                HealthStatus::Unhealthy
            },
            latency_ms: db.is_ok().then(|| started.elapsed().as_secs_f64() * 1000.0),
            backend: match s.db {
                Db::Postgres(_) => DatabaseBackend::Postgres,
                Db::Sqlite(_) => DatabaseBackend::Sqlite,
            },
            error: db.clone().err(),
        };
        let counts = probe(s.outbound.counts()).await;
        let kind = match s.outbound {
            Outbound::Sqs(_) => QueueKind::Sqs,
            Outbound::Embedded(_) => QueueKind::Embedded,
        };
        let sqs = match &counts {
            Ok(c) => QueueHealth {
                status: if c.dlq > DLQ_DEGRADED {
                    HealthStatus::Degraded
                } else {
                    HealthStatus::Healthy
                },
                kind,
                queue_depth: Some(c.depth),
                messages_in_flight: Some(c.in_flight),
                dlq_count: Some(c.dlq),
                error: None,
            },
            Err(e) => QueueHealth {
                status: HealthStatus::Unhealthy,
                kind,
                queue_depth: None,
                messages_in_flight: None,
                dlq_count: None,
                error: Some(e.clone()),
            },
        };
        let reachable = probe(s.quotas.limiter.ping()).await.is_ok();
        let rate_limiter = LimiterHealth {
            status: if reachable {
                HealthStatus::Healthy
            } else {
                HealthStatus::Degraded
            },
            enabled: s.rate_limiter_enabled,
            backend: match s.quotas.limiter {
                Limiter::Local(_) => LimiterBackend::InProcess,
                Limiter::Redis { .. } => LimiterBackend::Redis,
            },
            reachable,
        };
        let (oldest, largest) = if db.is_ok() {
            probe(messages::oldest_waiting(&s.db))
                .await
                .unwrap_or((None, 0))
        } else {
            (None, 0)
        };
        let expected = s.pace.spacing().as_secs_f64() * largest as f64 + DRAIN_SLACK.as_secs_f64();
        let age = oldest.map(|o| (Utc::now() - o).as_seconds_f64().max(0.0));
        let backlog = BacklogHealth {
            status: if age.is_some_and(|a| a > expected) {
                HealthStatus::Degraded
            } else {
                HealthStatus::Healthy
            },
            oldest_queued_age_secs: age,
            largest_creator_backlog: largest,
            expected_drain_secs: expected,
        };
        let alive = if db.is_ok() {
            probe(processes::alive(&s.db)).await.unwrap_or_default()
        } else {
            vec![]
        };
        let count = |role: &str| alive.iter().filter(|p| p.role == role).count() as i64;
        let degraded = [sqs.status, rate_limiter.status, backlog.status]
            .iter()
            .any(|s| *s != HealthStatus::Healthy);
        let status = match (db.is_ok(), degraded) {
            (false, _) => HealthStatus::Unhealthy,
            (true, true) => HealthStatus::Degraded,
            (true, false) => HealthStatus::Healthy,
        };
        let out = HealthOut {
            status,
            timestamp: Utc::now(),
            dispatchers_alive: count("dispatch"),
            workers_alive: count("worker"),
            processes: alive
                .into_iter()
                // Every role beats under one of these names; a row of another (a newer
                // release's) is left out rather than shown under a wrong one.
                .filter_map(|p| {
                    Some(ProcessOut {
                        role: ProcessRole::of(&p.role)?,
                        host: p.host,
                        pid: p.pid,
                        started_at: p.started_at,
                        seen_at: p.seen_at,
                    })
                })
                .collect(),
            components: Components {
                database,
                sqs,
                rate_limiter,
                backlog,
            },
        };
        Ok(if db.is_ok() {
            HealthResponse::Ok(Json(out))
        } else {
            HealthResponse::Unavailable(Json(out))
        })
    }

    /// This process's metrics in Prometheus text format (operators). Counters count what this
    /// process did since it started; the queue gauges are read at each scrape. `METRICS_ADDR`
    /// serves the same without a token on a listener of its own.
    #[oai(
        path = "/metrics",
        method = "get",
        tag = "ApiTags::Monitoring",
        operation_id = "metrics"
    )]
    async fn metrics(&self, auth: BearerAuth) -> Result<PlainText<String>, ApiError> {
        auth.operator()?;
        let s = &self.state;
        Ok(PlainText(s.metrics.render(&s.outbound).await))
    }
}

/// The `METRICS_ADDR` listener's app: `GET /metrics`, no token (it is meant for a private
/// network), and nothing else.
pub fn metrics_app(metrics: Metrics, outbound: Outbound) -> impl poem::Endpoint {
    #[handler]
    async fn scrape(Data(m): Data<&(Metrics, Outbound)>) -> poem::Response {
        poem::Response::builder()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(m.0.render(&m.1).await)
    }
    poem::Route::new()
        .at("/metrics", poem::get(scrape))
        .data((metrics, outbound))
}

/// `/readyz`: 200 when the database and the outbound queue answer, else 503 with what does
/// not (a load balancer stops sending requests here until both do).
#[handler]
pub async fn readyz(Data(state): Data<&State>) -> poem::Response {
    let db = probe(state.db.ping()).await.err();
    let queue = probe(state.outbound.counts()).await.err();
    let ready = db.is_none() && queue.is_none();
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not ready" },
        "database": db.map_or("ok".to_owned(), |e| e),
        "queue": queue.map_or("ok".to_owned(), |e| e),
    });
    poem::Response::builder()
        .status(if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        })
        .content_type("application/json")
        .body(body.to_string())
}

//! Building and running the process roles from [`Settings`].

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use fanqueue_jobs::{
    blobs::BlobStore,
    db::{Db, redact},
    delivery::{
        limiter::{DeliveryLimiter, Pace},
        platform::Platform,
    },
    engine::{JobBackend, processes::Heartbeat, relay::OutboxRelay},
    kinds::{Backpressure, Deps, SweepConfig, send_message::Sends},
    outbound::{EmbeddedQueue, Outbound, SqsQueue},
    runtime::{AutomationClock, CampaignClock, DispatchConfig, Dispatcher, Kind, Sweeper, Workers},
};
use poem::{Server, listener::TcpAcceptor};

use crate::{
    api::{self, AllowedOrigins, AppState, Gate, Quotas, State},
    auth::JwtKeys,
    platform_sim::PlatformSim,
    quotas::{Limiter, Quota},
    settings::Settings,
    supervisor::Supervisor,
    telemetry::{self, CloudWatchEmf, Metrics},
};

/// Opens the database and applies our migrations.
pub async fn open_db(settings: &Settings) -> anyhow::Result<Db> {
    let url = settings.database_url();
    let db = Db::connect(&url).await?;
    db.migrate().await?;
    tracing::info!(database = %redact(&url), backend = db.backend_name(), "database ready");
    Ok(db)
}

/// What every role shares: the database, the job backend (its migrations applied beside
/// ours), the store of uploaded files and the outbound queue.
#[derive(Clone)]
pub struct Services {
    pub db: Db,
    pub jobs: JobBackend,
    pub blobs: BlobStore,
    pub outbound: Outbound,
}

impl Services {
    pub async fn open(settings: &Settings) -> anyhow::Result<Self> {
        let db = open_db(settings).await?;
        let jobs = open_job_backend(settings, &db).await?;
        let aws_endpoint = settings.aws_endpoint_url.as_deref();
        let blobs = match &settings.imports.s3_bucket {
            Some(bucket) => BlobStore::s3(bucket, aws_endpoint).await?,
            None => BlobStore::local(settings.database.data_dir.join("blobs")).await?,
        };
        tracing::info!(blobs = %blobs.describe(), "blob store ready");
        let outbound = match &settings.outbound.sqs_queue_url {
            Some(url) => {
                let sqs =
                    SqsQueue::new(url, settings.outbound.sqs_dlq_url.as_deref(), aws_endpoint)
                        .await?;
                // Unreachable now is logged loudly, not fatal: requests are still accepted (their
                // jobs are stored) and send jobs retry until the queue answers.
                if let Err(e) = sqs.check().await {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "the SQS queue does not answer; send jobs will retry"
                    );
                }
                Outbound::Sqs(sqs)
            }
            None => Outbound::Embedded(EmbeddedQueue::new(
                db.clone(),
                settings.outbound.outbound_max_receives,
            )),
        };
        tracing::info!(outbound = outbound.name(), "outbound queue ready");
        Ok(Services {
            db,
            jobs,
            blobs,
            outbound,
        })
    }
}

/// Connects the job backend and applies its migrations.
pub async fn open_job_backend(settings: &Settings, db: &Db) -> anyhow::Result<JobBackend> {
    let jobs = JobBackend::connect(
        settings.jobs.job_backend.as_deref(),
        db,
        settings.database.redis_url.as_deref(),
        &settings.database.redis_prefix,
    )
    .await?;
    jobs.migrate().await?;
    tracing::info!(backend = jobs.name(), "job backend ready");
    Ok(jobs)
}

/// The API role, bound and ready to serve.
pub struct Application {
    port: u16,
    acceptor: TcpAcceptor,
    state: State,
    cors: AllowedOrigins,
}

impl Application {
    pub async fn build(settings: &Settings, services: &Services) -> anyhow::Result<Self> {
        let keys = JwtKeys::new(&settings.jwt_secret()?);
        let limiter = match &settings.database.redis_url {
            Some(url) => Limiter::redis(url, &settings.database.redis_prefix)?,
            None => Limiter::local(),
        };
        tracing::info!(quotas = limiter.backend_name(), "request quotas ready");
        let listen = settings.api.listen_addr;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let port = listener.local_addr()?.port();
        let acceptor = TcpAcceptor::from_tokio(listener)?;
        let backpressure = Backpressure {
            max_backlog: settings.api.max_backlog_per_creator.max(1),
            per_minute: settings.delivery.delivery_rate_per_minute.max(1),
        };
        let state = Arc::new(AppState {
            db: services.db.clone(),
            fan_pages: services.db.generic_plans(8),
            jobs: services.jobs.clone(),
            blobs: services.blobs.clone(),
            outbound: services.outbound.clone(),
            keys,
            quotas: Quotas {
                limiter,
                writes: Quota {
                    name: "writes",
                    limit: settings.api.write_limit_per_minute,
                    window: Duration::from_secs(60),
                },
                imports: Quota {
                    name: "imports",
                    limit: settings.api.imports_per_hour,
                    window: Duration::from_secs(3600),
                },
                campaigns: Quota {
                    name: "campaigns",
                    limit: settings.api.campaigns_per_hour,
                    window: Duration::from_secs(3600),
                },
            },
            import_max_bytes: settings.imports.import_max_bytes,
            pace: pace(settings),
            rate_limiter_enabled: settings.delivery.rate_limiter_enabled,
            metrics: process_metrics(settings),
            gate: Gate::new(
                settings.api.max_in_flight_requests,
                Duration::from_millis(settings.api.request_queue_ms),
            ),
            sends: Sends::start(services.db.clone(), services.jobs.clone(), backpressure),
            backpressure,
            idempotency_lease: Duration::from_secs(settings.api.idempotency_lease_secs.max(1)),
        });
        Ok(Application {
            port,
            acceptor,
            state,
            cors: settings.api.cors_allowed_origins.clone(),
        })
    }

    /// The bound port (tests bind port 0 and read it back).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        tracing::info!(port = self.port, "API listening; docs at /docs");
        Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(
                api::app(self.state, &self.cors),
                shutdown,
                Some(api::DRAIN_TIMEOUT),
            )
            .await
            .context("serving HTTP")
    }
}

/// The job kinds' dependencies, from the settings and the shared services.
pub fn deps(settings: &Settings, services: &Services) -> Deps {
    let sweep = &settings.sweep;
    Deps {
        db: services.db.clone(),
        jobs: services.jobs.clone(),
        blobs: services.blobs.clone(),
        import_batch_rows: settings.imports.import_batch_rows.max(1),
        outbound: services.outbound.clone(),
        rate_limiter_enabled: settings.delivery.rate_limiter_enabled,
        campaign_ahead: settings.delivery.campaign_ahead(),
        daily_cap_per_fan: settings.automations.max_automated_per_fan_per_day,
        sweep: SweepConfig {
            max_redrives: i64::from(sweep.sweep_max_redrives),
            stuck_after: Duration::from_secs(sweep.sweep_stuck_after_secs.max(1)),
            retention: Duration::from_secs(sweep.retention_hours.max(1) * 3600),
        },
    }
}

/// Starts workers of `kinds`, and the outbox relay when jobs pass through one (Redis).
pub fn start_workers(
    sup: &mut Supervisor,
    settings: &Settings,
    services: &Services,
    kinds: &[Kind],
) {
    let workers = Workers::new(services.jobs.clone(), deps(settings, services), kinds);
    sup.start("workers", |cancel| workers.run(cancel));
    if services.jobs.uses_outbox() {
        let relay = OutboxRelay::new(services.jobs.clone(), services.db.clone());
        sup.start("outbox relay", |cancel| relay.run(cancel));
    }
}

/// The sweeper the settings describe.
pub fn build_sweeper(settings: &Settings, services: &Services) -> anyhow::Result<Sweeper> {
    Ok(Sweeper::new(
        services.db.clone(),
        services.jobs.clone(),
        &deps(settings, services),
        fanqueue_jobs::runtime::schedule(&settings.sweep.sweep_cron)?,
    ))
}

/// Starts the API role's service.
pub fn start_api(sup: &mut Supervisor, app: Application) {
    sup.start("api", |cancel| {
        app.run_until_stopped(cancel.cancelled_owned())
    });
}

/// How long a delivery may take to reach the platform: the request timeout plus a margin
/// for the time before the request leaves and after the answer arrives.
const FLIGHT_MARGIN: Duration = Duration::from_secs(5);

/// The delivery pace the settings ask for.
pub fn pace(settings: &Settings) -> Pace {
    Pace {
        per_minute: settings.delivery.delivery_rate_per_minute.max(1),
        max_flight: Duration::from_millis(settings.delivery.platform_timeout_ms) + FLIGHT_MARGIN,
    }
}

/// The delivery limiter: in Redis when `REDIS_URL` is set (every dispatcher shares it), else
/// in this process.
pub fn delivery_limiter(settings: &Settings) -> anyhow::Result<DeliveryLimiter> {
    let pace = pace(settings);
    Ok(match &settings.database.redis_url {
        Some(url) => DeliveryLimiter::redis(url, &settings.database.redis_prefix, pace)?,
        None => DeliveryLimiter::local(pace),
    })
}

/// The dispatcher the settings describe; it needs `PLATFORM_API_URL`.
pub async fn build_dispatcher(
    settings: &Settings,
    services: &Services,
) -> anyhow::Result<Dispatcher> {
    let url = settings
        .delivery
        .platform_api_url
        .as_deref()
        .context("the dispatcher needs PLATFORM_API_URL (where it delivers messages)")?;
    let platform = Platform::new(
        url,
        Duration::from_millis(settings.delivery.platform_timeout_ms),
    )?;
    Ok(Dispatcher::new(
        services.db.clone(),
        services.jobs.clone(),
        services.outbound.clone(),
        delivery_limiter(settings)?,
        platform,
        DispatchConfig {
            max_attempts: settings.delivery.delivery_max_attempts.max(1),
            concurrency: settings.delivery.dispatch_concurrency.max(1),
            campaign_ahead: settings.delivery.campaign_ahead(),
            ..DispatchConfig::default()
        },
    ))
}

/// Starts the dispatcher service.
///
/// The in-process limiter holds the rate only while its dispatcher is the only one delivering
/// from the database. On PostgreSQL any number of dispatcher processes may share the database,
/// so one without Redis is refused. On an SQLite file, a lock file beside it lets one
/// dispatcher deliver while any other (a second `fanqueue all` on the same data) stands by and
/// takes over when the first ends, even by `kill -9` (the system drops its lock).
pub async fn start_dispatcher(
    sup: &mut Supervisor,
    settings: &Settings,
    services: &Services,
) -> anyhow::Result<()> {
    let sole = match (&settings.database.redis_url, services.db.sqlite_file()) {
        (Some(_), _) => None,
        (None, Some(file)) => Some(file.with_extension("dispatcher.lock")),
        (None, None) => anyhow::bail!(
            "a dispatcher on PostgreSQL needs REDIS_URL: other dispatchers may share the \
             database, and the per-creator limit must be shared with them"
        ),
    };
    let dispatcher = build_dispatcher(settings, services).await?;
    sup.start("dispatcher", |cancel| async move {
        let _lock = match sole {
            Some(path) => match sole_dispatcher(&path, &cancel).await? {
                Some(lock) => Some(lock),
                None => return Ok(()),
            },
            None => None,
        };
        dispatcher.run(cancel).await
    });
    Ok(())
}

/// Waits until this process holds the lock at `path` (kept while the file is open), or
/// `None` if cancelled first.
async fn sole_dispatcher(
    path: &std::path::Path,
    cancel: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Option<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening the dispatcher lock {}", path.display()))?;
    let mut said = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => {
                if !said {
                    tracing::warn!(
                        lock = %path.display(),
                        "another dispatcher is delivering from this database; standing by"
                    );
                    said = true;
                }
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Which roles a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Serve,
    Worker,
    Dispatch,
    Sweep,
    All,
}

/// Runs `role` until `shutdown` (SIGTERM, Ctrl-C) or until one of its services fails; with
/// `platform_sim`, that stand-in is served beside them.
pub async fn run(
    role: Role,
    settings: &Settings,
    platform_sim: Option<PlatformSim>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = process_metrics(settings);
    let services = Services::open(settings).await?;
    let mut sup = Supervisor::default();
    start_metrics(&mut sup, settings, &services, &metrics).await?;
    if let Some(sim) = platform_sim {
        sup.start("platform-sim", |cancel| sim.run(cancel));
    }
    let mut roles = vec![];
    if matches!(role, Role::Serve | Role::All) {
        start_api(&mut sup, Application::build(settings, &services).await?);
        roles.push("serve");
    }
    match role {
        Role::Worker => start_workers(&mut sup, settings, &services, &Kind::for_clients()),
        Role::Sweep => start_workers(&mut sup, settings, &services, &Kind::scheduled()),
        Role::All => start_workers(&mut sup, settings, &services, Kind::ALL),
        Role::Serve | Role::Dispatch => {}
    }
    if matches!(role, Role::Worker | Role::All) {
        roles.push("worker");
    }
    if matches!(role, Role::Sweep | Role::All) {
        let sweeper = build_sweeper(settings, &services)?;
        sup.start("sweeper", |cancel| sweeper.run(cancel));
        let clock = CampaignClock::new(services.db.clone(), services.jobs.clone());
        sup.start("campaign clock", |cancel| clock.run(cancel));
        let automations = AutomationClock::new(
            services.db.clone(),
            services.jobs.clone(),
            settings.automations.daily_cap()?,
        );
        sup.start("automation clock", |cancel| automations.run(cancel));
        roles.push("sweep");
    }
    let deliver = role == Role::Dispatch
        || (role == Role::All && settings.delivery.platform_api_url.is_some());
    if deliver && settings.delivery.rate_limiter_enabled {
        start_dispatcher(&mut sup, settings, &services).await?;
        roles.push("dispatch");
    } else if role == Role::All && settings.delivery.rate_limiter_enabled {
        tracing::warn!(
            "PLATFORM_API_URL is not set: no dispatcher runs, and messages wait on the outbound \
             queue (`fanqueue all --platform-sim` delivers to a local stand-in)"
        );
    }
    let heartbeat = Heartbeat::new(services.db.clone(), roles);
    sup.start("heartbeat", |cancel| heartbeat.run(cancel));
    sup.run(shutdown).await
}

/// The process's metrics recorder (installed on first use).
pub fn process_metrics(settings: &Settings) -> Metrics {
    telemetry::metrics(settings.telemetry.cloudwatch_namespace.as_deref())
}

/// Starts what publishes the metrics beyond the API's `/metrics`: the `METRICS_ADDR` listener
/// and the CloudWatch lines, when the settings ask for them.
async fn start_metrics(
    sup: &mut Supervisor,
    settings: &Settings,
    services: &Services,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    if let Some(addr) = settings.telemetry.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding METRICS_ADDR {addr}"))?;
        let port = listener.local_addr()?.port();
        let acceptor = TcpAcceptor::from_tokio(listener)?;
        let app = api::metrics_app(metrics.clone(), services.outbound.clone());
        tracing::info!(port, "metrics listening on /metrics");
        sup.start("metrics", |cancel| async move {
            Server::new_with_acceptor(acceptor)
                .run_with_graceful_shutdown(
                    app,
                    cancel.cancelled_owned(),
                    Some(Duration::from_secs(2)),
                )
                .await
                .context("serving /metrics")
        });
    }
    if let Some(recorder) = metrics.cloudwatch() {
        let emf = CloudWatchEmf::new(recorder, services.outbound.clone());
        sup.start("cloudwatch metrics", |cancel| emf.run(cancel));
    }
    Ok(())
}

/// Resolves on SIGTERM (what containers send) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

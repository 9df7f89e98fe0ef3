//! Building and running the process roles from [`Settings`].

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use fanqueue_jobs::{
    blobs::BlobStore,
    db::{Db, redact},
    jobs::{JobQueue, Workers},
    limits::{Limiter, Quota},
    outbound::{EmbeddedQueue, Outbound, SqsQueue},
    worker::Deps,
};
use poem::{Server, listener::TcpAcceptor};
use tokio_util::sync::CancellationToken;

use crate::{
    api::{self, AppState, State},
    auth::JwtKeys,
    settings::Settings,
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
    pub queue: JobQueue,
    pub blobs: BlobStore,
    pub outbound: Outbound,
}

impl Services {
    pub async fn open(settings: &Settings) -> anyhow::Result<Self> {
        let db = open_db(settings).await?;
        let queue = open_queue(settings, &db).await?;
        let blobs = match &settings.s3_bucket {
            Some(bucket) => BlobStore::s3(bucket, settings.aws_endpoint_url.as_deref()).await?,
            None => BlobStore::local(settings.data_dir.join("blobs")).await?,
        };
        tracing::info!(blobs = %blobs.describe(), "blob store ready");
        let outbound = match &settings.sqs_queue_url {
            Some(url) => {
                let sqs = SqsQueue::new(
                    url,
                    settings.sqs_dlq_url.as_deref(),
                    settings.aws_endpoint_url.as_deref(),
                )
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
                settings.outbound_max_receives,
            )),
        };
        tracing::info!(outbound = outbound.name(), "outbound queue ready");
        Ok(Services {
            db,
            queue,
            blobs,
            outbound,
        })
    }
}

/// Connects the job backend and applies its migrations.
pub async fn open_queue(settings: &Settings, db: &Db) -> anyhow::Result<JobQueue> {
    let queue = JobQueue::connect(
        settings.job_backend.as_deref(),
        db,
        settings.redis_url.as_deref(),
        &settings.redis_prefix,
    )
    .await?;
    queue.migrate().await?;
    tracing::info!(backend = queue.name(), "job backend ready");
    Ok(queue)
}

/// The API role, bound and ready to serve.
pub struct Application {
    port: u16,
    acceptor: TcpAcceptor,
    state: State,
}

impl Application {
    pub async fn build(settings: &Settings, services: &Services) -> anyhow::Result<Self> {
        let keys = JwtKeys::new(&settings.jwt_secret()?);
        let limiter = match &settings.redis_url {
            Some(url) => Limiter::redis(url, &settings.redis_prefix).await?,
            None => Limiter::local(),
        };
        tracing::info!(quotas = limiter.backend_name(), "request quotas ready");
        let listener = tokio::net::TcpListener::bind(settings.listen_addr)
            .await
            .with_context(|| format!("binding {}", settings.listen_addr))?;
        let port = listener.local_addr()?.port();
        let acceptor = TcpAcceptor::from_tokio(listener)?;
        let state = Arc::new(AppState {
            db: services.db.clone(),
            queue: services.queue.clone(),
            blobs: services.blobs.clone(),
            outbound: services.outbound.clone(),
            keys,
            limiter,
            write_quota: Quota {
                name: "writes",
                limit: settings.write_limit_per_minute,
                window: Duration::from_secs(60),
            },
            import_quota: Quota {
                name: "imports",
                limit: settings.imports_per_hour,
                window: Duration::from_secs(3600),
            },
            import_max_bytes: settings.import_max_bytes,
            campaign_quota: Quota {
                name: "campaigns",
                limit: 5,
                window: Duration::from_secs(3600),
            },
            delivery_rate_per_minute: settings.delivery_rate_per_minute,
        });
        Ok(Application {
            port,
            acceptor,
            state,
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
            .run_with_graceful_shutdown(api::app(self.state), shutdown, Some(api::DRAIN_TIMEOUT))
            .await
            .context("serving HTTP")
    }
}

/// The worker role: runs jobs until `shutdown`.
pub async fn run_workers(
    settings: &Settings,
    services: &Services,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let deps = Deps {
        db: services.db.clone(),
        blobs: services.blobs.clone(),
        import_batch_rows: settings.import_batch_rows.max(1),
        outbound: services.outbound.clone(),
        rate_limiter_enabled: settings.rate_limiter_enabled,
    };
    Workers::run(services.queue.clone(), deps, shutdown).await
}

/// Every role in one process; SIGTERM (or `shutdown`) stops them together.
pub async fn run_all(
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let services = Services::open(settings).await?;
    let app = Application::build(settings, &services).await?;
    let stop = CancellationToken::new();
    let trigger = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });
    let api = app.run_until_stopped(stop.clone().cancelled_owned());
    let workers = run_workers(settings, &services, stop.clone().cancelled_owned());
    // One role failing stops the other rather than leaving half a system running.
    let (api, workers) = tokio::join!(
        async {
            let r = api.await;
            stop.cancel();
            r
        },
        async {
            let r = workers.await;
            stop.cancel();
            r
        }
    );
    api.and(workers)
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
    tracing::info!("shutdown requested; draining");
}

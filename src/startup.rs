//! Building and running the process roles from [`Settings`].

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use fanqueue_jobs::{
    db::{Db, redact},
    limits::{Limiter, Quota},
};
use poem::{Server, listener::TcpAcceptor};

use crate::{
    api::{self, AppState, State},
    auth::JwtKeys,
    settings::Settings,
};

/// Opens the database and applies migrations (ours, and later the job backend's).
pub async fn open_db(settings: &Settings) -> anyhow::Result<Db> {
    let url = settings.database_url();
    let db = Db::connect(&url).await?;
    db.migrate().await?;
    tracing::info!(database = %redact(&url), backend = db.backend_name(), "database ready");
    Ok(db)
}

/// The API role, bound and ready to serve.
pub struct Application {
    port: u16,
    acceptor: TcpAcceptor,
    state: State,
}

impl Application {
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let db = open_db(settings).await?;
        let keys = JwtKeys::new(&settings.jwt_secret()?);
        let limiter = match &settings.redis_url {
            Some(url) => Limiter::redis(url, &settings.redis_prefix).await?,
            None => Limiter::local(),
        };
        tracing::info!(quotas = limiter.backend_name(), "write quotas ready");
        let listener = tokio::net::TcpListener::bind(settings.listen_addr)
            .await
            .with_context(|| format!("binding {}", settings.listen_addr))?;
        let port = listener.local_addr()?.port();
        let acceptor = TcpAcceptor::from_tokio(listener)?;
        let state = Arc::new(AppState {
            db,
            keys,
            limiter,
            write_quota: Quota {
                name: "writes",
                limit: settings.write_limit_per_minute,
                window: Duration::from_secs(60),
            },
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
        let db = self.state.db.clone();
        Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(api::app(self.state), shutdown, Some(api::DRAIN_TIMEOUT))
            .await
            .context("serving HTTP")?;
        db.close().await;
        Ok(())
    }
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

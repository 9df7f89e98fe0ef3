//! Runs a process's services together. Each service is a future taking a cancellation token:
//! it runs until cancelled and then finishes its in-flight work. A service that ends on its
//! own (an error, a panic, or returning when nobody asked) stops all the others and the
//! process exits non-zero with a log line naming it, so that a process supervisor restarts
//! it; a shutdown request cancels all of them and waits for them within a bound.

use std::{future::Future, panic::AssertUnwindSafe, time::Duration};

use futures::FutureExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long a shutdown waits for services to finish their in-flight work. Jobs stop at their
/// next committed batch well within it; one that does not resumes from its checkpoint on the
/// next worker.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Supervisor {
    cancel: CancellationToken,
    services: JoinSet<(&'static str, anyhow::Result<()>)>,
    drain: Duration,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new(DRAIN_TIMEOUT)
    }
}

impl Supervisor {
    pub fn new(drain: Duration) -> Self {
        Supervisor {
            cancel: CancellationToken::new(),
            services: JoinSet::new(),
            drain,
        }
    }

    /// Starts `service` under `name`, handing it the token that asks it to stop.
    pub fn start<F, Fut>(&mut self, name: &'static str, service: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let run = AssertUnwindSafe(service(self.cancel.child_token())).catch_unwind();
        self.services.spawn(async move {
            let result = match run.await {
                Ok(result) => result,
                Err(panic) => Err(anyhow::anyhow!("panicked: {}", panic_text(&*panic))),
            };
            (name, result)
        });
    }

    /// Runs until `shutdown` resolves or a service ends, then stops every service and waits
    /// for them (at most the drain bound). `Ok` after a requested shutdown; the failure of the
    /// first service that ended otherwise.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let failure = tokio::select! {
            _ = shutdown => None,
            Some(ended) = self.services.join_next() => Some(match ended {
                Ok((name, Ok(()))) => anyhow::anyhow!("service {name} stopped on its own"),
                Ok((name, Err(e))) => e.context(format!("service {name} failed")),
                Err(e) => anyhow::anyhow!("a service task was lost: {e}"),
            }),
        };
        match &failure {
            None => tracing::info!("shutdown requested; draining"),
            Some(e) => tracing::error!(
                error = format!("{e:#}"),
                "a service ended; stopping the others"
            ),
        }
        self.cancel.cancel();
        let mut drain_failure = None;
        let drained = tokio::time::timeout(self.drain, async {
            while let Some(ended) = self.services.join_next().await {
                match ended {
                    Ok((name, Ok(()))) => tracing::info!(service = name, "service stopped"),
                    Ok((name, Err(e))) => {
                        tracing::error!(
                            service = name,
                            error = format!("{e:#}"),
                            "service failed while stopping"
                        );
                        drain_failure.get_or_insert(
                            e.context(format!("service {name} failed while stopping")),
                        );
                    }
                    Err(e) => tracing::error!(error = %e, "a service task was lost"),
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                bound = ?self.drain,
                "services still busy after the drain bound; exiting anyway (unfinished jobs resume from their checkpoints)"
            );
            self.services.abort_all();
        }
        match failure.or(drain_failure) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn until_cancelled(cancel: CancellationToken) -> anyhow::Result<()> {
        cancel.cancelled().await;
        Ok(())
    }

    #[tokio::test]
    async fn a_shutdown_stops_every_service_and_is_a_success() {
        let mut sup = Supervisor::new(Duration::from_secs(5));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for name in ["a", "b"] {
            let tx = tx.clone();
            sup.start(name, move |cancel| async move {
                cancel.cancelled().await;
                tx.send(name).unwrap();
                Ok(())
            });
        }
        sup.run(async {})
            .await
            .expect("a requested shutdown is a success");
        let mut stopped = vec![rx.recv().await.unwrap(), rx.recv().await.unwrap()];
        stopped.sort();
        assert_eq!(stopped, ["a", "b"], "both drained before run returned");
    }

    #[tokio::test]
    async fn a_failing_service_stops_the_others_and_is_named_in_the_error() {
        let mut sup = Supervisor::new(Duration::from_secs(5));
        sup.start("steady", until_cancelled);
        sup.start("broken", |_| async { anyhow::bail!("disk on fire") });
        let err = sup
            .run(std::future::pending())
            .await
            .expect_err("a failed service fails the process");
        assert_eq!(format!("{err:#}"), "service broken failed: disk on fire");
    }

    #[tokio::test]
    async fn a_service_that_returns_unasked_or_panics_is_a_failure() {
        let mut sup = Supervisor::new(Duration::from_secs(5));
        sup.start("quitter", |_| async { Ok(()) });
        let err = sup.run(std::future::pending()).await.unwrap_err();
        assert_eq!(err.to_string(), "service quitter stopped on its own");

        let mut sup = Supervisor::new(Duration::from_secs(5));
        sup.start("steady", until_cancelled);
        sup.start("panicky", |_| async { panic!("boom") });
        let err = sup.run(std::future::pending()).await.unwrap_err();
        assert_eq!(format!("{err:#}"), "service panicky failed: panicked: boom");
    }

    #[tokio::test]
    async fn draining_is_bounded() {
        let mut sup = Supervisor::new(Duration::from_millis(100));
        sup.start("stuck", |_| std::future::pending());
        let started = std::time::Instant::now();
        sup.run(async {})
            .await
            .expect("a drain cut short still exits cleanly");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "did not wait forever"
        );
    }
}

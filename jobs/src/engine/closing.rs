//! A job backend that settles what it has under way as soon as its worker is asked to stop.
//!
//! apalis 1.0 stops polling a worker's backend once the worker is stopping, until the tasks
//! in flight have finished. A fetch, heartbeat or acknowledgement that was under way then
//! stays suspended, holding its transaction open. On SQLite that transaction holds the
//! database's one write lock, so a running job that still has to commit (an import's last
//! batch, its release for the next worker) waited for the busy timeout: 30 s, the whole drain
//! bound, measured as one `fanqueue all` shutdown in three. [`Closing`] puts the backend's
//! state in a place its [`Closer`] reaches too: the closer runs apalis's own close (which
//! drops a fetch under way, so its transaction rolls back, and finishes a heartbeat or an
//! acknowledgement) before the worker is told to stop, and the worker's later close flushes
//! the acknowledgements of the tasks that ended meanwhile.

use std::{
    future::poll_fn,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Duration,
};

use apalis::prelude::{Backend, WorkerContext};
use apalis_core::backend::{BackendConfig, WireFormatBackend};

/// How long the closer waits for what was under way; past it the worker stops anyway.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// `B`, whose state its [`Closer`] shares.
pub struct Closing<B: BackendConfig + WireFormatBackend> {
    shared: Arc<Mutex<Shared<B>>>,
    // `BackendConfig` and `WireFormatBackend` hand out references; these are copies taken
    // before `B` went behind the lock.
    config: B::Config,
    codec: B::Codec,
}

struct Shared<B> {
    backend: B,
    /// The worker polling `backend`, known from its first poll (nothing is under way before).
    worker: Option<WorkerContext>,
    /// Set by the closer: no new fetch or heartbeat starts from then on.
    closed: bool,
}

/// Settles what the backend of a [`Closing`] has under way.
pub struct Closer<B> {
    shared: Arc<Mutex<Shared<B>>>,
}

impl<B> Closing<B>
where
    B: BackendConfig + WireFormatBackend,
    B::Config: Clone,
    B::Codec: Clone,
{
    pub fn new(backend: B) -> Self {
        Closing {
            config: backend.config().clone(),
            codec: backend.codec().clone(),
            shared: Arc::new(Mutex::new(Shared {
                backend,
                worker: None,
                closed: false,
            })),
        }
    }

    pub fn closer(&self) -> Closer<B> {
        Closer {
            shared: self.shared.clone(),
        }
    }
}

impl<B: BackendConfig + WireFormatBackend> Closing<B> {
    /// The backend, for a poll that may start work (a fetch, a heartbeat), noting the worker
    /// that polls it; `None` once the closer ran: the worker is told to stop right after and
    /// does not poll this again until then.
    fn open(&self, worker: &WorkerContext) -> Option<MutexGuard<'_, Shared<B>>> {
        let mut shared = lock(&self.shared);
        if shared.closed {
            return None;
        }
        shared.worker.get_or_insert_with(|| worker.clone());
        Some(shared)
    }
}

fn lock<B>(shared: &Mutex<Shared<B>>) -> MutexGuard<'_, Shared<B>> {
    // A panic while polling the backend leaves nothing half-written behind the lock.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<B: Backend> Closer<B> {
    /// Runs the backend's close: a fetch under way is dropped (its tasks stay where they
    /// were), a heartbeat or acknowledgement under way finishes, fetched tasks not yet handed
    /// out are queued again. Call it once the worker's jobs have been asked to stop and before
    /// the worker is.
    pub async fn close(self) {
        let close = poll_fn(|cx: &mut Context<'_>| {
            let mut shared = lock(&self.shared);
            shared.closed = true;
            let Shared {
                backend, worker, ..
            } = &mut *shared;
            match worker {
                Some(worker) => backend.poll_close(cx, worker),
                None => Poll::Ready(Ok(())),
            }
        });
        match tokio::time::timeout(CLOSE_WITHIN, close).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "closing the job backend failed"),
            Err(_) => tracing::warn!(
                bound = ?CLOSE_WITHIN,
                "the job backend's work under way did not settle; stopping the worker anyway"
            ),
        }
    }
}

impl<B: Backend + BackendConfig + WireFormatBackend> Backend for Closing<B> {
    type Task = B::Task;
    type Error = B::Error;

    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        match self.open(worker) {
            Some(mut shared) => shared.backend.poll_ready(cx, worker),
            None => Poll::Pending,
        }
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        match self.open(worker) {
            Some(mut shared) => shared.backend.poll_next(cx, worker),
            None => Poll::Pending,
        }
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        lock(&self.shared).backend.poll_close(cx, worker)
    }
}

impl<B: BackendConfig + WireFormatBackend> BackendConfig for Closing<B> {
    type Args = B::Args;
    type Id = B::Id;
    type Kind = B::Kind;
    type Config = B::Config;
    type Layer = B::Layer;

    fn config(&self) -> &Self::Config {
        &self.config
    }

    fn middleware(&mut self, worker: &mut WorkerContext) -> Self::Layer {
        lock(&self.shared).backend.middleware(worker)
    }
}

impl<B: BackendConfig + WireFormatBackend> WireFormatBackend for Closing<B> {
    type Compact = B::Compact;
    type Codec = B::Codec;

    fn codec(&self) -> &Self::Codec {
        &self.codec
    }
}

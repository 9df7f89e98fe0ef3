//! What a worker takes from its job backend, and when: [`Intake`] wraps the apalis storage a
//! worker is built on, for two things apalis 1.0 does not do by itself.
//!
//! **Looks are paced.** apalis's storage starts a fetch whenever its worker polls it while it
//! has nothing buffered, and the worker polls it whenever anything wakes the worker: a task
//! ending as well as a poke. Its `PollWith` ignores the poll strategy's answer. At 1,000 sends/s
//! on PostgreSQL a worker fetched about 250 times a second, about one task each time, and
//! its fetches and acknowledgements took 45 % of a core of PostgreSQL. After a look that
//! ended waiting, an `Intake` looks again only once something the storage waits on woke it
//! (the fetch under way, a poke, the fallback interval), and not sooner than
//! [`GATHER`] after that look. A fetch right after one that returned tasks is not held back,
//! so a backlog drains at full speed.
//!
//! **Stopping settles what is under way.** Once a worker is stopping, apalis stops polling
//! its storage until the tasks in flight have ended. A fetch, heartbeat or acknowledgement
//! that was under way then stays suspended, holding its transaction open. On SQLite that
//! transaction holds the database's one write lock, so a running job that still had to
//! commit (an import's last batch, its release for the next worker) waited for the busy
//! timeout: 30 s, the whole drain bound, in one `fanqueue all` shutdown of three. The
//! [`Closer`] runs the storage's own close before the worker is told to stop. That close
//! drops a fetch under way, so its transaction rolls back, and finishes a heartbeat or an
//! acknowledgement. The worker's own close at the end flushes the acknowledgements of the
//! tasks that ended meanwhile.

use std::{
    future::{Future, poll_fn},
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
    time::Duration,
};

use apalis::prelude::{Backend, WorkerContext};
use apalis_core::backend::{BackendConfig, WireFormatBackend};
use futures::task::AtomicWaker;
use tokio::time::{Instant, Sleep};

use super::wake::GATHER;

/// How long the closer waits for what was under way; past it the worker stops anyway.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// The storage `B` of one worker, paced and closable.
pub struct Intake<B: BackendConfig + WireFormatBackend> {
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
    /// When the storage's last look ended waiting, if it did.
    waiting_since: Option<Instant>,
    /// What the storage waits on wakes this, not the worker directly.
    woken: Arc<Woken>,
    /// Holds the next look back until [`GATHER`] after the previous one.
    pace: Option<Pin<Box<Sleep>>>,
}

/// The waker handed to the storage: it notes that the storage was woken, then wakes the
/// worker.
#[derive(Default)]
struct Woken {
    flag: AtomicBool,
    worker: AtomicWaker,
}

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.flag.store(true, Ordering::Release);
        self.worker.wake();
    }
}

/// Settles what the storage of an [`Intake`] has under way.
pub struct Closer<B> {
    shared: Arc<Mutex<Shared<B>>>,
}

impl<B> Intake<B>
where
    B: BackendConfig + WireFormatBackend,
    B::Config: Clone,
    B::Codec: Clone,
{
    pub fn new(backend: B) -> Self {
        Intake {
            config: backend.config().clone(),
            codec: backend.codec().clone(),
            shared: Arc::new(Mutex::new(Shared {
                backend,
                worker: None,
                closed: false,
                waiting_since: None,
                woken: Arc::default(),
                pace: None,
            })),
        }
    }

    pub fn closer(&self) -> Closer<B> {
        Closer {
            shared: self.shared.clone(),
        }
    }
}

fn lock<B>(shared: &Mutex<Shared<B>>) -> MutexGuard<'_, Shared<B>> {
    // A panic while polling the storage leaves nothing half-written behind the lock.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<B: Backend> Closer<B> {
    /// Runs the storage's close: a fetch under way is dropped (its tasks stay where they
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

impl<B> Shared<B> {
    /// Whether the storage may be looked at now. While it waits, only a wake of its own opens
    /// it, and then not before [`GATHER`] after the look that began the wait.
    fn may_look(&mut self, waker: &Waker) -> bool {
        let Some(since) = self.waiting_since else {
            return true;
        };
        if !self.woken.flag.load(Ordering::Acquire) {
            return false;
        }
        let due = since + GATHER;
        if due <= Instant::now() {
            return true;
        }
        let pace = self
            .pace
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        pace.as_mut()
            .poll(&mut Context::from_waker(waker))
            .is_ready()
    }
}

impl<B: Backend + BackendConfig + WireFormatBackend> Backend for Intake<B> {
    type Task = B::Task;
    type Error = B::Error;

    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        let mut shared = lock(&self.shared);
        if shared.closed {
            // The worker is told to stop right after; it does not poll this again until then.
            return Poll::Pending;
        }
        shared.worker.get_or_insert_with(|| worker.clone());
        shared.backend.poll_ready(cx, worker)
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        let mut shared = lock(&self.shared);
        if shared.closed {
            return Poll::Pending;
        }
        shared.worker.get_or_insert_with(|| worker.clone());
        shared.woken.worker.register(cx.waker());
        let waker = Waker::from(shared.woken.clone());
        if !shared.may_look(&waker) {
            return Poll::Pending;
        }
        shared.pace = None;
        shared.woken.flag.store(false, Ordering::Release);
        let answer = shared
            .backend
            .poll_next(&mut Context::from_waker(&waker), worker);
        shared.waiting_since = answer.is_pending().then(Instant::now);
        answer
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        lock(&self.shared).backend.poll_close(cx, worker)
    }
}

impl<B: BackendConfig + WireFormatBackend> BackendConfig for Intake<B> {
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

impl<B: BackendConfig + WireFormatBackend> WireFormatBackend for Intake<B> {
    type Compact = B::Compact;
    type Codec = B::Codec;

    fn codec(&self) -> &Self::Codec {
        &self.codec
    }
}

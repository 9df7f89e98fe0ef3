//! Waking an idle worker the moment a job of its kind is stored, instead of at its next poll.
//!
//! Within a process (the API and the workers of `fanqueue all`) the enqueue wakes the kind's
//! worker directly. Across processes on PostgreSQL, the process that stored tasks announces
//! them on apalis's channel `apalis::job::insert` ([`Wakeups::announce`]), at most once per
//! queue every `WAKE_SPACING`, and its transactions keep apalis's trigger, which notifies once per
//! task, quiet (`ANNOUNCED`); [`Wakeups::listen`] turns each notification into the same
//! wake-up. A wake-up only makes the worker fetch now; the poll every [`FALLBACK`] stays, so a
//! notification lost (a reconnect, another backend) costs latency, never a job.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::Instant;

use apalis::prelude::{PollSnapshot, PollStrategy, Strategy};
use futures::task::AtomicWaker;
use serde::Deserialize;
use sqlx::{PgPool, postgres::PgListener};
use tokio_util::sync::CancellationToken;

/// How often an idle worker fetches tasks even when nothing woke it: backed-off retries,
/// the tasks of dead workers handed back, and any notification that was lost. Once a second,
/// as River polls: an idle worker's queues cost a statement a second each (`benches/idle.sh`).
pub const FALLBACK: Duration = Duration::from_secs(1);
/// A wake-up that lands while the worker is already fetching may come too late for that fetch
/// (its snapshot was taken before the job committed): the worker fetches once more this soon
/// after every wake-up.
const RECHECK: Duration = Duration::from_millis(20);
/// A worker is woken by stored jobs at most once this often, and a wake-up within this long of the
/// worker's previous fetch waits for the rest of it: the tasks of a burst are fetched together.
/// The later wake-ups of a burst only leave their flag, which the fetch the first one caused, or
/// that fetch's [`RECHECK`] (no shorter than this), finds. Waking is what costs: apalis 1.0's
/// storage fetches whenever its worker is polled, whatever the strategy answers, and under a
/// stream of sends every insert notification woke the worker for a fetch finding about one
/// task (BENCHMARKS.md, the load bench). This bounds the wake-ups of a parked
/// worker on every backend; a busy worker is never parked, and on PostgreSQL its fetches are
/// paced by its storage ([`paced`](crate::engine::paced)) with this same span.
pub(crate) const WAKE_SPACING: Duration = Duration::from_millis(20);
const _: () = assert!(RECHECK.as_millis() >= WAKE_SPACING.as_millis());
/// The channel apalis-postgres notifies on for every task inserted.
const CHANNEL: &str = "apalis::job::insert";
/// The setting a transaction turns on, for itself only, when its process announces the tasks
/// it stores: apalis's trigger, as `notify_new_jobs.sql` installs it, then stays quiet.
pub(crate) const ANNOUNCED: &str = "fanqueue.announced";

/// The process's wake-up signals, one per queue.
#[derive(Debug, Default)]
pub struct Wakeups {
    queues: Mutex<HashMap<String, Arc<Signal>>>,
}

#[derive(Debug, Default)]
struct Signal {
    stored: AtomicBool,
    waker: AtomicWaker,
    /// When a wake-up last woke the worker.
    woke: Mutex<Option<Instant>>,
    /// Announcements to other processes' workers.
    announced: Mutex<Announced>,
}

#[derive(Debug, Default)]
struct Announced {
    /// When the last one went out.
    last: Option<Instant>,
    /// One is due at the end of the current span: later tasks need no other.
    due: bool,
}

impl Signal {
    /// When to announce a task stored `now`: at once, at the end of the span the last
    /// announcement opened, or not at all when one is already due then.
    fn announcement(&self, now: Instant) -> Option<Instant> {
        let mut a = self
            .announced
            .lock()
            .expect("the announcements are never poisoned");
        if a.due {
            return None;
        }
        match a.last {
            Some(last) if now < last + WAKE_SPACING => {
                a.due = true;
                Some(last + WAKE_SPACING)
            }
            _ => {
                a.last = Some(now);
                Some(now)
            }
        }
    }

    /// The announcement due at `at` goes out now: tasks stored from here on need another.
    fn announcing(&self, at: Instant) {
        let mut a = self
            .announced
            .lock()
            .expect("the announcements are never poisoned");
        a.due = false;
        a.last = Some(at);
    }
}

impl Wakeups {
    fn signal(&self, queue: &str) -> Arc<Signal> {
        let mut queues = self
            .queues
            .lock()
            .expect("the wake-up map is never poisoned");
        queues.entry(queue.to_owned()).or_default().clone()
    }

    /// A job of `queue` was stored: its worker in this process (if any) fetches now, or within
    /// `WAKE_SPACING` when a stored job woke it less than that ago.
    pub fn job_stored(&self, queue: &str) {
        let signal = self.signal(queue);
        signal.stored.store(true, Ordering::Release);
        let now = Instant::now();
        {
            let mut woke = signal
                .woke
                .lock()
                .expect("the wake-up time is never poisoned");
            if woke.is_some_and(|w| now < w + WAKE_SPACING) {
                return;
            }
            *woke = Some(now);
        }
        signal.waker.wake();
    }

    /// Tasks of `queue` were stored by a transaction that set `ANNOUNCED` and committed:
    /// tells the workers of every process, through the channel apalis's trigger uses, at
    /// most once every `WAKE_SPACING` (20 ms). The first announcement of a span goes at once and the
    /// tasks stored later in it share one at its end. Their workers fetch at most that often
    /// anyway, where apalis's trigger notified once a task: a wake-up of the listening backend
    /// and of the worker per task stored (BENCHMARKS.md, the load bench).
    /// A lost announcement costs latency, never a job ([`FALLBACK`]).
    pub fn announce(&self, pool: &PgPool, queue: &str) {
        let signal = self.signal(queue);
        let now = Instant::now();
        let Some(at) = signal.announcement(now) else {
            return;
        };
        let pool = pool.clone();
        let payload = serde_json::json!({ "job_type": queue }).to_string();
        tokio::spawn(async move {
            if at > now {
                tokio::time::sleep_until(at).await;
                signal.announcing(at);
            }
            let sent = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(&payload)
                .execute(&pool)
                .await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "could not announce stored jobs; the workers' next poll finds them");
            }
        });
    }

    fn wake_all(&self) {
        let queues: Vec<Arc<Signal>> = self
            .queues
            .lock()
            .expect("the wake-up map is never poisoned")
            .values()
            .cloned()
            .collect();
        for signal in queues {
            signal.stored.store(true, Ordering::Release);
            signal.waker.wake();
        }
    }

    /// When the worker of `queue` polls: on a wake-up, and every [`FALLBACK`] otherwise.
    pub fn strategy(&self, queue: &str) -> Strategy {
        Strategy::new()
            .apply(OnStored::new(self.signal(queue)))
            .interval(FALLBACK)
    }

    /// Turns PostgreSQL's task notifications into wake-ups until `cancel`. A lost connection is
    /// made again after a backoff, and every queue is woken once it is back (what was stored
    /// meanwhile was not announced).
    pub async fn listen(self: Arc<Self>, pool: PgPool, cancel: CancellationToken) {
        #[derive(Deserialize)]
        struct Inserted {
            job_type: String,
        }
        let mut wait = Duration::from_millis(500);
        loop {
            let listening = async {
                let mut listener = PgListener::connect_with(&pool).await?;
                listener.listen(CHANNEL).await?;
                Ok::<_, sqlx::Error>(listener)
            };
            let mut listener = tokio::select! {
                _ = cancel.cancelled() => return,
                l = listening => match l {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?wait, "cannot listen for new jobs; polling meanwhile");
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(wait) => {}
                        }
                        wait = (wait * 2).min(Duration::from_secs(30));
                        continue;
                    }
                },
            };
            wait = Duration::from_millis(500);
            self.wake_all();
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    n = listener.try_recv() => match n {
                        Ok(Some(n)) => {
                            if let Ok(ev) = serde_json::from_str::<Inserted>(n.payload()) {
                                self.job_stored(&ev.job_type);
                            }
                        }
                        // The connection was lost: notifications sent meanwhile are gone.
                        Ok(None) => self.wake_all(),
                        Err(e) => {
                            tracing::warn!(error = %e, "lost the job notifications; listening again");
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// Ready when the queue was woken (at most once every [`WAKE_SPACING`]), and once more
/// [`RECHECK`] after each fetch a wake-up caused. A second fetch causes no third: an idle worker
/// is then woken by its [`FALLBACK`] interval alone.
struct OnStored {
    signal: Arc<Signal>,
    again: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When it was last ready.
    fetched: Option<Instant>,
    /// A wake-up came too soon after the last fetch and waits for `again`.
    deferred: bool,
}

impl OnStored {
    fn new(signal: Arc<Signal>) -> Self {
        OnStored {
            signal,
            again: None,
            fetched: None,
            deferred: false,
        }
    }

    /// Ready now; when a wake-up caused this fetch, once more [`RECHECK`] later.
    fn fetch_now(&mut self, stored: bool) -> Poll<Option<()>> {
        let now = Instant::now();
        self.fetched = Some(now);
        self.deferred = false;
        self.again = stored.then(|| Box::pin(tokio::time::sleep_until(now + RECHECK)));
        Poll::Ready(Some(()))
    }
}

impl PollStrategy for OnStored {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _: &PollSnapshot) -> Poll<Option<()>> {
        self.signal.waker.register(cx.waker());
        if self.signal.stored.swap(false, Ordering::AcqRel) {
            match self.fetched.map(|l| l + WAKE_SPACING) {
                Some(due) if due > Instant::now() => {
                    // The next fetch is at `due`, or sooner if one was due sooner.
                    self.deferred = true;
                    let sooner = self.again.as_ref().is_some_and(|a| a.deadline() <= due);
                    if !sooner {
                        self.again = Some(Box::pin(tokio::time::sleep_until(due)));
                    }
                }
                _ => return self.fetch_now(true),
            }
        }
        if let Some(again) = &mut self.again
            && again.as_mut().poll(cx).is_ready()
        {
            self.again = None;
            return self.fetch_now(self.deferred);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;

    /// Polls `strategy` once, as a worker does when it looks for work.
    async fn ready(strategy: &mut OnStored) -> bool {
        poll_fn(|cx| Poll::Ready(strategy.poll_drive(cx, &PollSnapshot::new()).is_ready())).await
    }

    #[tokio::test]
    async fn a_stored_job_wakes_its_queues_worker_and_no_other() {
        let wakeups = Wakeups::default();
        let mut sends = OnStored::new(wakeups.signal("send_message"));
        let mut imports = OnStored::new(wakeups.signal("import_csv"));
        assert!(!ready(&mut sends).await, "nothing stored yet");
        wakeups.job_stored("send_message");
        assert!(ready(&mut sends).await);
        assert!(!ready(&mut imports).await);
        assert!(!ready(&mut sends).await, "one wake-up, one fetch");
    }

    #[tokio::test]
    async fn a_wake_up_is_followed_by_a_second_fetch() {
        let wakeups = Wakeups::default();
        let mut sends = OnStored::new(wakeups.signal("send_message"));
        wakeups.job_stored("send_message");
        assert!(ready(&mut sends).await);
        // The second fetch is due once RECHECK has passed; the timer wakes the worker then.
        let woken = tokio::time::timeout(
            Duration::from_secs(5),
            poll_fn(|cx| sends.poll_drive(cx, &PollSnapshot::new())),
        )
        .await;
        assert_eq!(woken, Ok(Some(())));
    }

    #[tokio::test]
    async fn wake_ups_in_a_burst_are_gathered_into_one_fetch() {
        let wakeups = Wakeups::default();
        let mut sends = OnStored::new(wakeups.signal("send_message"));
        wakeups.job_stored("send_message");
        assert!(ready(&mut sends).await);
        let fetched = Instant::now();
        wakeups.job_stored("send_message");
        assert!(!ready(&mut sends).await, "too soon after the last fetch");
        wakeups.job_stored("send_message");
        let woken = tokio::time::timeout(
            Duration::from_secs(5),
            poll_fn(|cx| sends.poll_drive(cx, &PollSnapshot::new())),
        )
        .await;
        assert_eq!(woken, Ok(Some(())));
        assert!(fetched.elapsed() >= WAKE_SPACING);
        assert!(
            !ready(&mut sends).await,
            "the burst's wake-ups made one fetch"
        );
    }

    /// Counts its wake-ups.
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The `send_message` worker's strategy, polled by hand with a waker that counts how often
    /// the worker was woken.
    struct Driven {
        wakeups: Wakeups,
        sends: OnStored,
        woken: Arc<Count>,
    }

    impl Driven {
        fn new() -> Self {
            let wakeups = Wakeups::default();
            let sends = OnStored::new(wakeups.signal("send_message"));
            Driven {
                wakeups,
                sends,
                woken: Arc::new(Count(Default::default())),
            }
        }

        fn store(&self) {
            self.wakeups.job_stored("send_message");
        }

        /// Polls the strategy once: whether the worker fetches now.
        fn fetches(&mut self) -> bool {
            let waker = std::task::Waker::from(self.woken.clone());
            let mut cx = Context::from_waker(&waker);
            self.sends
                .poll_drive(&mut cx, &PollSnapshot::new())
                .is_ready()
        }

        fn wakes(&self) -> usize {
            self.woken.0.load(Ordering::SeqCst)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn wake_ups_wake_the_worker_once_a_spacing_and_the_others_are_fetched_all_the_same() {
        let mut w = Driven::new();
        assert!(!w.fetches(), "nothing stored yet");

        w.store();
        assert_eq!(w.wakes(), 1, "the first wake-up wakes the worker");
        assert!(w.fetches(), "and it fetches");
        let fetched = Instant::now();
        w.store();
        w.store();
        assert_eq!(w.wakes(), 1, "wake-ups right after a wake wake nobody");
        assert!(!w.fetches());

        // The fetch's timer wakes the worker, and that fetch finds the wake-ups.
        tokio::time::sleep(RECHECK).await;
        assert_eq!(w.wakes(), 2, "the second fetch's timer");
        assert!(w.fetches());
        assert!(fetched.elapsed() >= WAKE_SPACING);

        // Once WAKE_SPACING has passed, a wake-up wakes the worker at once again.
        w.store();
        assert_eq!(w.wakes(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_up_causes_two_fetches_and_then_the_worker_is_left_alone() {
        let mut w = Driven::new();
        assert!(!w.fetches());

        w.store();
        assert!(w.fetches(), "the wake-up's fetch");
        assert!(!w.fetches());
        tokio::time::sleep(RECHECK).await;
        assert_eq!(w.wakes(), 2, "the wake-up, then the second fetch's timer");
        assert!(w.fetches(), "the second fetch");

        // Nothing more happens: no timer wakes the worker again (the apalis interval, not this
        // strategy, fetches once a FALLBACK).
        assert!(!w.fetches());
        tokio::time::sleep(FALLBACK * 10).await;
        assert_eq!(
            w.wakes(),
            2,
            "an idle worker is not woken by wake-ups it did not get"
        );
        assert!(!w.fetches());
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_up_deferred_into_the_second_fetch_gets_a_third() {
        let mut w = Driven::new();
        w.store();
        assert!(w.fetches());
        // A wake-up while that fetch runs: deferred to the second fetch...
        w.store();
        assert!(!w.fetches());
        tokio::time::sleep(RECHECK).await;
        assert!(w.fetches());
        // ...which the wake-up's job may have missed too: one more fetch follows it.
        tokio::time::sleep(RECHECK).await;
        assert!(w.fetches());
        tokio::time::sleep(FALLBACK).await;
        assert!(!w.fetches());
    }

    #[tokio::test(start_paused = true)]
    async fn tasks_stored_in_a_span_share_one_announcement_at_its_end() {
        let signal = Signal::default();
        let first = Instant::now();
        assert_eq!(
            signal.announcement(first),
            Some(first),
            "the first goes at once"
        );
        tokio::time::advance(WAKE_SPACING / 4).await;
        assert_eq!(
            signal.announcement(Instant::now()),
            Some(first + WAKE_SPACING),
            "a later one waits for the span's end"
        );
        tokio::time::advance(WAKE_SPACING / 4).await;
        assert_eq!(
            signal.announcement(Instant::now()),
            None,
            "and covers every task stored before it goes"
        );

        tokio::time::advance(WAKE_SPACING / 2).await;
        signal.announcing(first + WAKE_SPACING);
        tokio::time::advance(WAKE_SPACING / 4).await;
        assert_eq!(
            signal.announcement(Instant::now()),
            Some(first + 2 * WAKE_SPACING),
            "once it went, the next waits a span from it"
        );

        signal.announcing(first + 2 * WAKE_SPACING);
        tokio::time::advance(5 * WAKE_SPACING).await;
        let quiet = Instant::now();
        assert_eq!(
            signal.announcement(quiet),
            Some(quiet),
            "after a quiet span one goes at once again"
        );
    }
}

//! Waking an idle worker the moment a job of its kind is stored, instead of at its next poll.
//!
//! Within a process (the API and the workers of `fanqueue all`) the enqueue pokes the kind's
//! worker directly. Across processes on PostgreSQL, the process that stored tasks announces
//! them on apalis's channel `apalis::job::insert` ([`Wakeups::announce`]), at most once per
//! queue every `GATHER`, and its transactions keep apalis's trigger, which notifies once per
//! task, quiet (`ANNOUNCED`); [`Wakeups::listen`] turns each notification into the same
//! poke. A poke only makes the worker look now; the poll every [`FALLBACK`] stays, so a
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

/// How often an idle worker looks for tasks even when nothing woke it: backed-off retries,
/// the tasks of dead workers handed back, and any notification that was lost. Once a second,
/// as River polls: an idle worker's queues cost a statement a second each.
pub const FALLBACK: Duration = Duration::from_secs(1);
/// A poke that lands while the worker is already fetching may come too late for that fetch
/// (its snapshot was taken before the job committed): the worker looks once more this soon
/// after every poke.
const RECHECK: Duration = Duration::from_millis(20);
/// A worker is woken by pokes at most once this often, and a poke within this long of the
/// worker's previous look waits for the rest of it: the tasks of a burst are fetched together.
/// The later pokes of a burst only leave their flag, which the look the first one caused, or
/// that look's [`RECHECK`] (no shorter than this), finds. Waking is what costs: apalis 1.0's
/// storage fetches whenever its worker is polled, whatever the strategy answers. At 1,000
/// sends/s on PostgreSQL every insert notification woke the worker: 300 to 440 fetches a
/// second, finding about one task each (BENCHMARKS.md). This bounds the wake-ups of a parked
/// worker on every backend; a busy worker is never parked, and on PostgreSQL its fetches are
/// paced by its storage ([`paced`](crate::engine::paced)) with this same span.
pub(crate) const GATHER: Duration = Duration::from_millis(20);
const _: () = assert!(RECHECK.as_millis() >= GATHER.as_millis());
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
    poked: AtomicBool,
    waker: AtomicWaker,
    /// When a poke last woke the worker.
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
            Some(last) if now < last + GATHER => {
                a.due = true;
                Some(last + GATHER)
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

    /// A job of `queue` was stored: its worker in this process (if any) looks now, or within
    /// `GATHER` when a poke woke it less than that ago.
    pub fn poke(&self, queue: &str) {
        let signal = self.signal(queue);
        signal.poked.store(true, Ordering::Release);
        let now = Instant::now();
        {
            let mut woke = signal
                .woke
                .lock()
                .expect("the wake-up time is never poisoned");
            if woke.is_some_and(|w| now < w + GATHER) {
                return;
            }
            *woke = Some(now);
        }
        signal.waker.wake();
    }

    /// Tasks of `queue` were stored by a transaction that set `ANNOUNCED` and committed:
    /// tells the workers of every process, through the channel apalis's trigger uses, at
    /// most once every `GATHER` (20 ms). The first announcement of a span goes at once and the
    /// tasks stored later in it share one at its end. Their workers look at most that often
    /// anyway, where apalis's trigger notified once a task: at 1,000 sends a second, a
    /// thousand wake-ups a second of the listening backend and of the worker (BENCHMARKS.md).
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

    fn poke_all(&self) {
        let queues: Vec<Arc<Signal>> = self
            .queues
            .lock()
            .expect("the wake-up map is never poisoned")
            .values()
            .cloned()
            .collect();
        for signal in queues {
            signal.poked.store(true, Ordering::Release);
            signal.waker.wake();
        }
    }

    /// When the worker of `queue` polls: on a poke, and every [`FALLBACK`] otherwise.
    pub fn strategy(&self, queue: &str) -> Strategy {
        Strategy::new()
            .apply(OnPoke::new(self.signal(queue)))
            .interval(FALLBACK)
    }

    /// Turns PostgreSQL's task notifications into pokes until `cancel`. A lost connection is
    /// made again after a backoff, and every queue is poked once it is back (what was stored
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
            self.poke_all();
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    n = listener.try_recv() => match n {
                        Ok(Some(n)) => {
                            if let Ok(ev) = serde_json::from_str::<Inserted>(n.payload()) {
                                self.poke(&ev.job_type);
                            }
                        }
                        // The connection was lost: notifications sent meanwhile are gone.
                        Ok(None) => self.poke_all(),
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

/// Ready when the queue was poked (at most once every [`GATHER`]), and once more
/// [`RECHECK`] after each look a poke caused. A second look causes no third: an idle worker
/// is then woken by its [`FALLBACK`] interval alone.
struct OnPoke {
    signal: Arc<Signal>,
    again: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When it was last ready.
    looked: Option<Instant>,
    /// A poke came too soon after the last look and waits for `again`.
    deferred: bool,
}

impl OnPoke {
    fn new(signal: Arc<Signal>) -> Self {
        OnPoke {
            signal,
            again: None,
            looked: None,
            deferred: false,
        }
    }

    /// Ready now; when a poke caused this look, once more [`RECHECK`] later.
    fn look(&mut self, poked: bool) -> Poll<Option<()>> {
        let now = Instant::now();
        self.looked = Some(now);
        self.deferred = false;
        self.again = poked.then(|| Box::pin(tokio::time::sleep_until(now + RECHECK)));
        Poll::Ready(Some(()))
    }
}

impl PollStrategy for OnPoke {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _: &PollSnapshot) -> Poll<Option<()>> {
        self.signal.waker.register(cx.waker());
        if self.signal.poked.swap(false, Ordering::AcqRel) {
            match self.looked.map(|l| l + GATHER) {
                Some(due) if due > Instant::now() => {
                    // The next look is at `due`, or sooner if one was due sooner.
                    self.deferred = true;
                    let sooner = self.again.as_ref().is_some_and(|a| a.deadline() <= due);
                    if !sooner {
                        self.again = Some(Box::pin(tokio::time::sleep_until(due)));
                    }
                }
                _ => return self.look(true),
            }
        }
        if let Some(again) = &mut self.again
            && again.as_mut().poll(cx).is_ready()
        {
            self.again = None;
            return self.look(self.deferred);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;

    /// Polls `strategy` once, as a worker does when it looks for work.
    async fn ready(strategy: &mut OnPoke) -> bool {
        poll_fn(|cx| Poll::Ready(strategy.poll_drive(cx, &PollSnapshot::new()).is_ready())).await
    }

    #[tokio::test]
    async fn a_poke_wakes_the_queues_worker_and_no_other() {
        let wakeups = Wakeups::default();
        let mut sends = OnPoke::new(wakeups.signal("send_message"));
        let mut imports = OnPoke::new(wakeups.signal("import_csv"));
        assert!(!ready(&mut sends).await, "nothing stored yet");
        wakeups.poke("send_message");
        assert!(ready(&mut sends).await);
        assert!(!ready(&mut imports).await);
        assert!(!ready(&mut sends).await, "one poke, one look");
    }

    #[tokio::test]
    async fn a_poke_is_followed_by_a_second_look() {
        let wakeups = Wakeups::default();
        let mut sends = OnPoke::new(wakeups.signal("send_message"));
        wakeups.poke("send_message");
        assert!(ready(&mut sends).await);
        // The second look is due once RECHECK has passed; the timer wakes the worker then.
        let woken = tokio::time::timeout(
            Duration::from_secs(5),
            poll_fn(|cx| sends.poll_drive(cx, &PollSnapshot::new())),
        )
        .await;
        assert_eq!(woken, Ok(Some(())));
    }

    #[tokio::test]
    async fn pokes_in_a_burst_are_gathered_into_one_look() {
        let wakeups = Wakeups::default();
        let mut sends = OnPoke::new(wakeups.signal("send_message"));
        wakeups.poke("send_message");
        assert!(ready(&mut sends).await);
        let looked = Instant::now();
        wakeups.poke("send_message");
        assert!(!ready(&mut sends).await, "too soon after the last look");
        wakeups.poke("send_message");
        let woken = tokio::time::timeout(
            Duration::from_secs(5),
            poll_fn(|cx| sends.poll_drive(cx, &PollSnapshot::new())),
        )
        .await;
        assert_eq!(woken, Ok(Some(())));
        assert!(looked.elapsed() >= GATHER);
        assert!(!ready(&mut sends).await, "the burst's pokes made one look");
    }

    /// Counts its wake-ups.
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pokes_wake_the_worker_once_a_gather_and_the_others_are_looked_at_all_the_same() {
        let wakeups = Wakeups::default();
        let mut sends = OnPoke::new(wakeups.signal("send_message"));
        let count = Arc::new(Count(Default::default()));
        let waker = std::task::Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let snapshot = PollSnapshot::new();
        let wakes = || count.0.load(Ordering::SeqCst);
        assert!(
            sends.poll_drive(&mut cx, &snapshot).is_pending(),
            "nothing stored yet"
        );

        wakeups.poke("send_message");
        assert_eq!(wakes(), 1, "the first poke wakes the worker");
        assert!(
            sends.poll_drive(&mut cx, &snapshot).is_ready(),
            "and it looks"
        );
        let looked = Instant::now();
        wakeups.poke("send_message");
        wakeups.poke("send_message");
        assert_eq!(wakes(), 1, "pokes right after a wake wake nobody");
        assert!(sends.poll_drive(&mut cx, &snapshot).is_pending());

        // The look's timer wakes the worker, and that look finds the pokes.
        tokio::time::sleep(RECHECK).await;
        assert_eq!(wakes(), 2, "the second look's timer");
        assert!(sends.poll_drive(&mut cx, &snapshot).is_ready());
        assert!(looked.elapsed() >= GATHER);

        // Once GATHER has passed, a poke wakes the worker at once again.
        wakeups.poke("send_message");
        assert_eq!(wakes(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_poke_causes_two_looks_and_then_the_worker_is_left_alone() {
        let wakeups = Wakeups::default();
        let mut sends = OnPoke::new(wakeups.signal("send_message"));
        let count = Arc::new(Count(Default::default()));
        let waker = std::task::Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let snapshot = PollSnapshot::new();
        let wakes = || count.0.load(Ordering::SeqCst);
        assert!(sends.poll_drive(&mut cx, &snapshot).is_pending());

        wakeups.poke("send_message");
        assert!(
            sends.poll_drive(&mut cx, &snapshot).is_ready(),
            "the poke's look"
        );
        assert!(sends.poll_drive(&mut cx, &snapshot).is_pending());
        tokio::time::sleep(RECHECK).await;
        assert_eq!(wakes(), 2, "the poke, then the second look's timer");
        assert!(
            sends.poll_drive(&mut cx, &snapshot).is_ready(),
            "the second look"
        );

        // Nothing more happens: no timer wakes the worker again (the apalis interval, not this
        // strategy, looks once a FALLBACK).
        assert!(sends.poll_drive(&mut cx, &snapshot).is_pending());
        tokio::time::sleep(FALLBACK * 10).await;
        assert_eq!(
            wakes(),
            2,
            "an idle worker is not woken by pokes it did not get"
        );
        assert!(sends.poll_drive(&mut cx, &snapshot).is_pending());
    }

    #[tokio::test(start_paused = true)]
    async fn a_poke_deferred_into_the_second_look_gets_a_third() {
        let wakeups = Wakeups::default();
        let mut sends = OnPoke::new(wakeups.signal("send_message"));
        let count = Arc::new(Count(Default::default()));
        let waker = std::task::Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let snapshot = PollSnapshot::new();
        wakeups.poke("send_message");
        assert!(sends.poll_drive(&mut cx, &snapshot).is_ready());
        // A poke while that look's fetch runs: deferred to the second look...
        wakeups.poke("send_message");
        assert!(sends.poll_drive(&mut cx, &snapshot).is_pending());
        tokio::time::sleep(RECHECK).await;
        assert!(sends.poll_drive(&mut cx, &snapshot).is_ready());
        // ...which the poke's job may have missed too: one more look follows it.
        tokio::time::sleep(RECHECK).await;
        assert!(sends.poll_drive(&mut cx, &snapshot).is_ready());
        tokio::time::sleep(FALLBACK).await;
        assert!(sends.poll_drive(&mut cx, &snapshot).is_pending());
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
        tokio::time::advance(GATHER / 4).await;
        assert_eq!(
            signal.announcement(Instant::now()),
            Some(first + GATHER),
            "a later one waits for the span's end"
        );
        tokio::time::advance(GATHER / 4).await;
        assert_eq!(
            signal.announcement(Instant::now()),
            None,
            "and covers every task stored before it goes"
        );

        tokio::time::advance(GATHER / 2).await;
        signal.announcing(first + GATHER);
        tokio::time::advance(GATHER / 4).await;
        assert_eq!(
            signal.announcement(Instant::now()),
            Some(first + 2 * GATHER),
            "once it went, the next waits a span from it"
        );

        signal.announcing(first + 2 * GATHER);
        tokio::time::advance(5 * GATHER).await;
        let quiet = Instant::now();
        assert_eq!(
            signal.announcement(quiet),
            Some(quiet),
            "after a quiet span one goes at once again"
        );
    }
}

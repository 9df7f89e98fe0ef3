//! Many callers, few round trips: items handed in by concurrent callers run together in
//! groups, and each caller waits for its own answer. Nothing waits for a group to fill: the
//! first item starts one at once, and the items that arrive while groups run make the next
//! ones, so groups grow with the load and a lone item waits for nobody. With a
//! [`Limits::spacing`], groups start at most that often: under a steady stream the items of
//! that span make one group instead of one each.
//!
//! The workers run the jobs of a batching kind this way, and the API stores concurrent sends
//! this way (one transaction for many requests, each answered when it committed).

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{
    sync::{Semaphore, mpsc, oneshot},
    task::JoinSet,
};

/// How large groups get and how many run at once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Items in one group at most.
    pub max: usize,
    /// Groups running at once: while one waits on the database, the next is gathered.
    pub parallel: usize,
    /// Items waiting for a group at most; callers past it wait to hand theirs in.
    pub waiting: usize,
    /// A group starts no sooner than this after the previous one started; an item that finds
    /// no group started this recently starts one at once.
    pub spacing: Duration,
}

/// Where callers hand their items in. Clones share the groups; they stop once every clone is
/// gone and the groups running are answered.
pub struct Grouped<I, O> {
    intake: mpsc::Sender<(I, oneshot::Sender<O>)>,
}

impl<I, O> Clone for Grouped<I, O> {
    fn clone(&self) -> Self {
        Grouped {
            intake: self.intake.clone(),
        }
    }
}

/// The groups stopped (a group panicked, or the runtime is shutting down): the item's fate is
/// unknown to the caller.
#[derive(Debug, thiserror::Error)]
#[error("the group runner stopped before answering")]
pub struct Stopped;

impl<I: Send + 'static, O: Send + 'static> Grouped<I, O> {
    /// Starts running groups with `run`, which answers each item of a group, in order.
    pub fn start<F, Fut>(limits: Limits, run: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        let (intake, waiting) = mpsc::channel(limits.waiting.max(1));
        tokio::spawn(gather(limits, waiting, run));
        Grouped { intake }
    }

    /// Hands `item` in and waits for its answer.
    pub async fn call(&self, item: I) -> Result<O, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.intake.send((item, reply)).await.map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }
}

async fn gather<I, O, F, Fut>(
    limits: Limits,
    mut waiting: mpsc::Receiver<(I, oneshot::Sender<O>)>,
    run: F,
) where
    I: Send + 'static,
    O: Send + 'static,
    F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<O>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.parallel.max(1)));
    let mut running = JoinSet::new();
    let mut started: Option<tokio::time::Instant> = None;
    loop {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let Some(first) = waiting.recv().await else {
            break;
        };
        if let Some(last) = started {
            tokio::time::sleep_until(last + limits.spacing).await;
        }
        started = Some(tokio::time::Instant::now());
        let mut group = vec![first];
        while group.len() < limits.max.max(1) {
            match waiting.try_recv() {
                Ok(item) => group.push(item),
                Err(_) => break,
            }
        }
        let (items, replies): (Vec<I>, Vec<oneshot::Sender<O>>) = group.into_iter().unzip();
        let answers = run(items);
        running.spawn(async move {
            let answers = answers.await;
            debug_assert_eq!(answers.len(), replies.len(), "one answer per item");
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
            drop(slot);
        });
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[tokio::test]
    async fn each_caller_gets_its_own_answer_and_items_arriving_together_share_a_group() {
        let sizes = Arc::new(Mutex::new(vec![]));
        let seen = sizes.clone();
        let doubled = Grouped::start(
            Limits {
                max: 64,
                parallel: 1,
                waiting: 1000,
                spacing: Duration::ZERO,
            },
            move |items: Vec<u32>| {
                seen.lock().unwrap().push(items.len());
                async move {
                    // Slow enough that the other callers arrive while this group runs.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    items.into_iter().map(|i| i * 2).collect()
                }
            },
        );
        let answers = futures::future::join_all((0..100u32).map(|i| {
            let d = doubled.clone();
            async move { d.call(i).await.unwrap() }
        }))
        .await;
        assert_eq!(answers, (0..100).map(|i| i * 2).collect::<Vec<_>>());
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 100, "every item once");
        assert!(
            sizes.iter().all(|&n| n <= 64),
            "no group past the limit: {sizes:?}"
        );
        assert!(
            sizes.len() < 100,
            "items that waited shared groups: {sizes:?}"
        );
    }

    #[tokio::test]
    async fn a_lone_item_runs_at_once() {
        let one = Grouped::start(
            Limits {
                max: 64,
                parallel: 2,
                waiting: 10,
                spacing: Duration::ZERO,
            },
            |items: Vec<&'static str>| async move { items },
        );
        assert_eq!(one.call("alone").await.unwrap(), "alone");
    }

    #[tokio::test(start_paused = true)]
    async fn with_a_spacing_groups_start_at_most_that_often_and_carry_what_arrived_meanwhile() {
        use tokio::time::{Instant, sleep, sleep_until};
        let spacing = Duration::from_millis(20);
        let log = Arc::new(Mutex::new(vec![]));
        let seen = log.clone();
        let echo = Grouped::start(
            Limits {
                max: 64,
                parallel: 2,
                waiting: 100,
                spacing,
            },
            move |items: Vec<u32>| {
                seen.lock().unwrap().push((Instant::now(), items.len()));
                async move { items }
            },
        );
        // An item every 2 ms for 100 ms.
        let t0 = Instant::now();
        let mut calls = JoinSet::new();
        for i in 0..50u32 {
            sleep_until(t0 + Duration::from_millis(2 * u64::from(i))).await;
            let echo = echo.clone();
            calls.spawn(async move { echo.call(i).await.unwrap() });
        }
        let mut answers = calls.join_all().await;
        answers.sort_unstable();
        assert_eq!(
            answers,
            (0..50).collect::<Vec<_>>(),
            "every item answered once"
        );
        let starts = log.lock().unwrap().clone();
        assert_eq!(starts[0], (t0, 1), "the first item waited for nobody");
        for pair in starts.windows(2) {
            assert!(
                pair[1].0 - pair[0].0 >= spacing,
                "groups too close: {starts:?}"
            );
        }
        assert_eq!(starts.iter().map(|s| s.1).sum::<usize>(), 50);
        assert_eq!(starts.len(), 6, "one group per 20 ms: {starts:?}");

        // After a quiet spell, an item runs at once.
        sleep(Duration::from_secs(1)).await;
        let now = Instant::now();
        assert_eq!(echo.call(7).await.unwrap(), 7);
        assert_eq!(log.lock().unwrap().last(), Some(&(now, 1)));
    }
}

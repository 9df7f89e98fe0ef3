//! Many callers, few round trips: items handed in by concurrent callers run together in
//! groups, and each caller waits for its own answer. Nothing waits for a group to fill: the
//! first item starts one at once, and the items that arrive while groups run make the next
//! ones, so groups grow with the load and a lone item waits for nobody.
//!
//! The workers run the jobs of a batching kind this way, and the API stores concurrent sends
//! this way (one transaction for many requests, each answered when it committed).

use std::{future::Future, sync::Arc};

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
}

/// The door callers hand items in at. Clones share the groups; they stop once every clone is
/// gone and the groups running are answered.
pub struct Grouped<I, O> {
    door: mpsc::Sender<(I, oneshot::Sender<O>)>,
}

impl<I, O> Clone for Grouped<I, O> {
    fn clone(&self) -> Self {
        Grouped {
            door: self.door.clone(),
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
        let (door, waiting) = mpsc::channel(limits.waiting.max(1));
        tokio::spawn(gather(limits, waiting, run));
        Grouped { door }
    }

    /// Hands `item` in and waits for its answer.
    pub async fn call(&self, item: I) -> Result<O, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.door.send((item, reply)).await.map_err(|_| Stopped)?;
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
    loop {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let Some(first) = waiting.recv().await else {
            break;
        };
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
            },
            |items: Vec<&'static str>| async move { items },
        );
        assert_eq!(one.call("alone").await.unwrap(), "alone");
    }
}

//! Load shedding at the door. Past its capacity a server that queues every request makes all
//! of them slow (each waits behind the others for a database connection) until they time
//! out; one that sheds answers the excess at once and keeps serving the rest at full speed.
//! The gate lets a bounded number of `/api` requests be served at once; a request that finds
//! no slot within a short wait is answered `503` with `Retry-After`, having done nothing.
//! Health, metrics and the docs are not gated: a busy server still says it is alive.

use std::{sync::Arc, time::Duration};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone, Debug)]
pub struct Gate {
    slots: Arc<Semaphore>,
    wait: Duration,
}

impl Gate {
    /// `in_flight` requests served at once; a request waits at most `wait` for a slot.
    pub fn new(in_flight: usize, wait: Duration) -> Self {
        Gate {
            slots: Arc::new(Semaphore::new(in_flight.max(1))),
            wait,
        }
    }

    /// A slot to serve one request, held until dropped; `None` when the server is full.
    pub async fn enter(&self) -> Option<OwnedSemaphorePermit> {
        let slot = self.slots.clone().acquire_owned();
        match tokio::time::timeout(self.wait, slot).await {
            Ok(Ok(permit)) => Some(permit),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_gate_turns_the_next_request_away_and_takes_it_once_a_slot_frees() {
        let gate = Gate::new(2, Duration::from_millis(20));
        let a = gate.enter().await.expect("a first slot");
        let _b = gate.enter().await.expect("a second slot");
        assert!(gate.enter().await.is_none(), "no third slot");
        drop(a);
        assert!(gate.enter().await.is_some(), "a freed slot is taken");
    }
}

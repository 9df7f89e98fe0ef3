//! The one poller of the tests: a user checks again until what they wait for shows, and a
//! wait that never ends fails saying what it last saw.

use std::time::{Duration, Instant};

/// Polls `check` every `every` until it gives a value (at most `timeout`); `what` names the
/// wait in the failure, with the last state `check` reported.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, every: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    match poll_until(timeout, every, check).await {
        Ok(v) => v,
        Err(last) => panic!("{what}: not within {timeout:?}; last seen {last}"),
    }
}

/// [`eventually`] for a wait whose failure says more than the last state (a process's
/// warnings, a queue's depth: what is costly to gather on every try): the last state is
/// the error, for the caller to fail with.
pub async fn poll_until<T, F, Fut>(
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(state) if Instant::now() >= deadline => return Err(state),
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

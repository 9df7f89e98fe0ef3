//! The one poller of the tests: a user checks again until what they wait for shows, and a
//! wait that never ends fails saying what it last saw.

use std::time::{Duration, Instant};

/// Polls `check` every `every` until it gives a value (at most `timeout`); `what` names the
/// wait in the failure, with the last state `check` reported.
pub async fn eventually<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(state) => assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}; last seen {state}"
            ),
        }
        tokio::time::sleep(every).await;
    }
}

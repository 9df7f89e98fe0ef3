//! The limiter's rules, on a paused clock and against Redis.

use super::*;

const S: i64 = 1_000_000;

fn pace(per_minute: u32, flight_secs: u64) -> Pace {
    Pace {
        per_minute,
        max_flight: Duration::from_secs(flight_secs),
    }
}

fn go(slot: Slot) -> Ticket {
    match slot {
        Slot::Go(t) => t,
        other => panic!("expected a slot, got {other:?}"),
    }
}

fn wait(slot: Slot) -> Duration {
    match slot {
        Slot::Wait(d) => d,
        other => panic!("expected a wait, got {other:?}"),
    }
}

/// Delivers `n` times at the first free instant from `t` on, each answered after
/// `latency`; returns the start times.
fn drive(lane: &mut Lane, pace: &Pace, mut t: i64, n: usize, latency: i64) -> Vec<i64> {
    let mut starts = vec![];
    while starts.len() < n {
        match lane.reserve(UserId(1), t, pace) {
            Slot::Go(ticket) => {
                starts.push(t);
                lane.settle(&ticket.entry, Some(t + latency));
            }
            Slot::Wait(d) => t += d.as_micros() as i64,
            Slot::Unknown => unreachable!(),
        }
    }
    starts
}

#[test]
fn estimates_fall_on_the_creators_grid_of_slots_after_the_handoff() {
    let p = pace(10, 15);
    let t = |s: i64| DateTime::<Utc>::from_timestamp(1_000_000 + s, 0).unwrap();
    // Idle creator: the handoff, then one slot per message ahead.
    assert_eq!(p.eta(t(0), None, 0), t(1));
    assert_eq!(p.eta(t(0), None, 2), t(13));
    // A delivery started 2 s ago: its next slot is 4 s away, after the handoff.
    assert_eq!(p.eta(t(0), Some(t(-2)), 0), t(4));
    // Started 5.5 s ago: the next slot (0.5 s away) comes before the message is parked,
    // so the one after.
    let last = t(-6) + chrono::TimeDelta::milliseconds(500);
    assert_eq!(
        p.eta(t(0), Some(last), 0),
        last + chrono::TimeDelta::seconds(12)
    );
    // Long idle: the grid is forgotten.
    assert_eq!(p.eta(t(0), Some(t(-600)), 0), t(1));
}

#[test]
fn slots_are_spaced_evenly_from_the_first_one() {
    let p = pace(10, 15);
    let mut lane = Lane::default();
    let starts = drive(&mut lane, &p, 100 * S, 5, 0);
    assert_eq!(starts, [100 * S, 106 * S, 112 * S, 118 * S, 124 * S]);
}

#[test]
fn no_sixty_second_window_at_the_platform_holds_more_than_the_limit() {
    // Latency of 2 s, answered at once: arrivals anywhere in [start, start + 2 s].
    let p = pace(10, 15);
    let mut lane = Lane::default();
    let latency = 2 * S;
    let starts = drive(&mut lane, &p, 0, 200, latency);
    // The worst case for the platform: each delivery arrives as early as it can after
    // a late predecessor, i.e. the k-th arrives at start (early) and the one N before it
    // at start + latency (late).
    for k in 10..starts.len() {
        let earliest_now = starts[k];
        let latest_before = starts[k - 10] + latency;
        assert!(
            earliest_now - latest_before >= 60 * S,
            "deliveries {} and {k} could reach the platform within 60 s",
            k - 10
        );
    }
    // And the pace stays close to the rate: 200 deliveries take about 20 minutes.
    let span = (starts[199] - starts[0]) as f64 / S as f64;
    let utilisation = 199.0 * 6.0 / span;
    assert!(utilisation > 0.95, "utilisation {utilisation}");
}

#[test]
fn a_delivery_still_in_flight_counts_as_arriving_as_late_as_possible() {
    let p = pace(2, 15);
    let mut lane = Lane::default();
    go(lane.reserve(UserId(1), 0, &p));
    go(lane.reserve(UserId(1), 30 * S, &p));
    // Neither answered: the first may arrive as late as 15 s, so the third waits until
    // 15 + 60 s.
    assert_eq!(
        wait(lane.reserve(UserId(1), 60 * S, &p)),
        Duration::from_secs(15)
    );
}

#[test]
fn a_cancelled_slot_frees_its_place_in_the_window() {
    let p = pace(1, 15);
    let mut lane = Lane::default();
    let ticket = go(lane.reserve(UserId(1), 0, &p));
    lane.settle(&ticket.entry, None);
    go(lane.reserve(UserId(1), 60 * S, &p));
}

#[test]
fn a_confirmed_slot_counts_from_when_its_request_leaves() {
    // One a minute, 15 s of flight. A slot taken at 0 whose request leaves at 10 s (its
    // dispatcher stalled) may arrive as late as 25 s: the next slot waits until 85 s, not
    // the 75 s its start alone would give.
    let p = pace(1, 15);
    let mut lane = Lane::default();
    let ticket = go(lane.reserve(UserId(1), 0, &p));
    assert!(lane.confirm(&ticket.entry, 10 * S, &p));
    assert_eq!(
        wait(lane.reserve(UserId(1), 76 * S, &p)),
        Duration::from_secs(9)
    );
}

#[test]
fn a_slot_the_window_no_longer_counts_is_refused_and_frees_nothing_twice() {
    // Taken at 0, may arrive until 15 s, so counted until 75 s: a request leaving at 90 s
    // (a 90-second stall) must not go out with it.
    let p = pace(1, 15);
    let mut lane = Lane::default();
    let stalled = go(lane.reserve(UserId(1), 0, &p));
    assert!(!lane.confirm(&stalled.entry, 75 * S, &p));
    assert!(
        !lane.confirm(&stalled.entry, 90 * S, &p),
        "dropped for good"
    );
    // Another replica's slot, taken once the window forgot the first, is unaffected.
    let other = go(lane.reserve(UserId(1), 90 * S, &p));
    assert!(lane.confirm(&other.entry, 90 * S, &p));
    assert!(matches!(lane.reserve(UserId(1), 91 * S, &p), Slot::Wait(_)));
}

#[tokio::test]
async fn in_process_a_cancelled_or_unknown_slot_is_not_confirmed() {
    let limiter = DeliveryLimiter::local(pace(60, 15));
    limiter.seed(UserId(1), &[]).await.unwrap();
    let ticket = go(limiter.reserve(UserId(1)).await.unwrap());
    assert!(limiter.confirm(&ticket).await.unwrap());
    limiter.cancel(&ticket).await.unwrap();
    assert!(!limiter.confirm(&ticket).await.unwrap());
    let stranger = Ticket {
        creator: UserId(2),
        entry: "1".into(),
    };
    assert!(!limiter.confirm(&stranger).await.unwrap());
}

#[tokio::test]
async fn an_unknown_creator_is_seeded_from_the_log_and_keeps_the_window() {
    let limiter = DeliveryLimiter::local(pace(1, 15));
    assert_eq!(limiter.reserve(UserId(7)).await.unwrap(), Slot::Unknown);
    // Started 10 s ago, answered after 1 s: the next slot is 60 s after that start, and
    // the window frees 60 s after the answer (51 s from now).
    let started = Utc::now() - chrono::TimeDelta::seconds(10);
    let past = [PastDelivery {
        started,
        finished: Some(started + chrono::TimeDelta::seconds(1)),
    }];
    limiter.seed(UserId(7), &past).await.unwrap();
    let d = wait(limiter.reserve(UserId(7)).await.unwrap());
    assert!(
        d > Duration::from_secs(50) && d <= Duration::from_secs(51),
        "{d:?}"
    );
    // A second seed (another replica's) changes nothing.
    limiter.seed(UserId(7), &[]).await.unwrap();
    assert!(matches!(
        limiter.reserve(UserId(7)).await.unwrap(),
        Slot::Wait(_)
    ));
}

#[tokio::test]
async fn a_pause_holds_every_slot_of_the_creator_and_no_other() {
    let limiter = DeliveryLimiter::local(pace(60, 15));
    for creator in [UserId(1), UserId(2)] {
        limiter.seed(creator, &[]).await.unwrap();
    }
    limiter
        .pause(UserId(1), Duration::from_secs(5))
        .await
        .unwrap();
    let d = wait(limiter.reserve(UserId(1)).await.unwrap());
    assert!(
        d > Duration::from_secs(4) && d <= Duration::from_secs(5),
        "{d:?}"
    );
    go(limiter.reserve(UserId(2)).await.unwrap());
}

/// A limiter on the test run's Redis (`TEST_REDIS_URL`, which the test command sets),
/// under a prefix of its own. Fails, never skips, when Redis is not there.
async fn redis_limiter(pace: Pace) -> DeliveryLimiter {
    let url = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("fqtest-{}", uuid::Uuid::new_v4().simple());
    let limiter = DeliveryLimiter::redis(&url, &prefix, pace).unwrap();
    if let Err(e) = limiter.reserve(UserId(0)).await {
        panic!("Redis must be reachable at {url} (scripts/test starts it): {e:#}");
    }
    limiter
}

#[tokio::test]
async fn on_redis_an_unreachable_server_is_an_error_never_a_slot() {
    // A port nothing listens on: every operation is an error, never a slot.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let limiter =
        DeliveryLimiter::redis(&format!("redis://127.0.0.1:{port}"), "fqtest", pace(60, 15))
            .expect("built without connecting");
    assert!(limiter.reserve(UserId(1)).await.is_err());
    assert!(limiter.seed(UserId(1), &[]).await.is_err());
    assert!(
        limiter
            .pause(UserId(1), Duration::from_secs(1))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn on_redis_concurrent_replicas_get_one_slot_per_spacing() {
    // 600 a minute: a slot every 100 ms. Fifty replicas ask at once: one gets it.
    let limiter = redis_limiter(pace(600, 15)).await;
    assert_eq!(limiter.reserve(UserId(1)).await.unwrap(), Slot::Unknown);
    limiter.seed(UserId(1), &[]).await.unwrap();
    let asks = (0..50).map(|_| {
        let limiter = limiter.clone();
        async move { limiter.reserve(UserId(1)).await.unwrap() }
    });
    let slots = futures::future::join_all(asks).await;
    let granted = slots.iter().filter(|s| matches!(s, Slot::Go(_))).count();
    assert_eq!(granted, 1, "{slots:?}");
    for s in &slots {
        if let Slot::Wait(d) = s {
            assert!(*d <= Duration::from_millis(100), "{d:?}");
        }
    }
}

#[tokio::test]
async fn on_redis_the_window_counts_deliveries_in_flight_until_they_end() {
    // Two a minute, so spacing (30 s) and the window (60 s) can be told apart.
    let limiter = redis_limiter(pace(2, 15)).await;
    let started = Utc::now() - chrono::TimeDelta::seconds(40);
    // One delivery started 40 s ago and never answered (counts until 40 - 15 = 35 s
    // from now), one finished 10 s ago.
    let past = [
        PastDelivery {
            started,
            finished: None,
        },
        PastDelivery {
            started: Utc::now() - chrono::TimeDelta::seconds(11),
            finished: Some(Utc::now() - chrono::TimeDelta::seconds(10)),
        },
    ];
    limiter.seed(UserId(2), &past).await.unwrap();
    // Spacing: 30 s after the latest start, 19 s from now; the window: the older
    // delivery may arrive 15 s after its start, so it leaves 35 s from now.
    let d = wait(limiter.reserve(UserId(2)).await.unwrap());
    assert!(
        d > Duration::from_secs(34) && d <= Duration::from_secs(35),
        "{d:?}"
    );
}

#[tokio::test]
async fn on_redis_a_slot_is_confirmed_while_counted_and_refused_once_forgotten() {
    let limiter = redis_limiter(pace(60, 15)).await;
    let DeliveryLimiter::Redis { conn, prefix, .. } = &limiter else {
        unreachable!("a Redis limiter")
    };
    let mut conn = conn.clone();
    let [log, ..] = keys(prefix, UserId(5));
    async fn score(conn: &mut ConnectionManager, log: &str, entry: &str) -> Option<f64> {
        redis::cmd("ZSCORE")
            .arg(log)
            .arg(entry)
            .query_async(conn)
            .await
            .unwrap()
    }
    limiter.seed(UserId(5), &[]).await.unwrap();
    // Counted: confirmed, and from now on it may arrive up to 15 s from now.
    let ticket = go(limiter.reserve(UserId(5)).await.unwrap());
    assert!(limiter.confirm(&ticket).await.unwrap());
    let latest = score(&mut conn, &log, &ticket.entry).await.unwrap() as i64;
    let now = now_micros();
    assert!(
        latest > now + 14 * S && latest <= now + 16 * S,
        "latest arrival {latest}, now {now}"
    );
    // A slot whose latest arrival left the window (taken 80 s ago with 15 s of flight,
    // its dispatcher stalled since): refused, and no longer counted.
    let stalled = Ticket {
        creator: UserId(5),
        entry: "stalled".into(),
    };
    let _: i64 = redis::cmd("ZADD")
        .arg(&log)
        .arg(now - 65 * S)
        .arg("stalled")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!limiter.confirm(&stalled).await.unwrap());
    assert_eq!(score(&mut conn, &log, "stalled").await, None);
    // A slot given back, or lost with the creator's state, is refused too.
    limiter.cancel(&ticket).await.unwrap();
    assert!(!limiter.confirm(&ticket).await.unwrap());
}

#[tokio::test]
async fn on_redis_a_pause_and_a_cancel_behave_as_in_process() {
    let limiter = redis_limiter(pace(60, 15)).await;
    for creator in [UserId(3), UserId(4)] {
        limiter.seed(creator, &[]).await.unwrap();
    }
    let ticket = go(limiter.reserve(UserId(3)).await.unwrap());
    limiter.finished(&ticket).await.unwrap();
    limiter
        .pause(UserId(3), Duration::from_secs(5))
        .await
        .unwrap();
    let d = wait(limiter.reserve(UserId(3)).await.unwrap());
    assert!(
        d > Duration::from_secs(4) && d <= Duration::from_secs(5),
        "{d:?}"
    );
    let ticket = go(limiter.reserve(UserId(4)).await.unwrap());
    limiter.cancel(&ticket).await.unwrap();
    // Seeding again (another replica) changes nothing for a known creator.
    limiter.seed(UserId(3), &[]).await.unwrap();
    assert!(matches!(
        limiter.reserve(UserId(3)).await.unwrap(),
        Slot::Wait(_)
    ));
}

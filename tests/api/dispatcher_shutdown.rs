//! SIGTERM to a `fanqueue dispatch` process (PostgreSQL, Redis, SQS) while its deliveries are
//! out at a slow platform and more creators wait for a permit: the deliveries in flight are
//! answered and recorded, none is started after the signal, the process exits 0 within its
//! drain bound, and the next dispatcher delivers the rest, each message once.

use std::{collections::HashSet, time::Duration};

use fanqueue::supervisor::DRAIN_TIMEOUT;
use serde_json::{Value, json};

use crate::helpers::{Deployment, Queue, Sim, eventually, instant, redis_url};

/// Each request takes this long at the platform: the signal lands while several are out.
const LATENCY_MS: u64 = 1_500;
/// One lane per creator, one delivery at a time each, and fewer permits than lanes: at the
/// signal, `CONCURRENCY` deliveries are out and the other creators' lanes wait for a permit.
const CREATORS: i64 = 5;
const CONCURRENCY: &str = "3";
const PER_CREATOR: usize = 8;

/// Requests the stand-in has received and not yet answered.
fn unanswered(stats: &Value) -> u64 {
    let n = |v: &Value| v.as_u64().unwrap();
    let r = &stats["rejected"];
    n(&stats["requests"])
        - n(&stats["deliveries"])
        - n(&stats["duplicatesReplayed"])
        - n(&r["500"])
        - n(&r["429"])
        - n(&r["400"])
        - n(&r["timeouts"])
}

/// The messages whose delivery attempt started after `at`, from the attempt log.
async fn attempts_started_after(url: &str, at: chrono::DateTime<chrono::Utc>) -> Vec<i64> {
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
        .await
        .unwrap();
    sqlx::query_scalar("SELECT message_id FROM delivery_attempts WHERE started_at > $1")
        .bind(at)
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

fn message_ids<'a>(deliveries: impl IntoIterator<Item = &'a Value>) -> Vec<i64> {
    deliveries
        .into_iter()
        .map(|d| d["messageId"].as_str().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_delivery_finishes_what_is_in_flight_starts_nothing_more_and_the_next_dispatcher_delivers_the_rest_once()
 {
    let sim = Sim::start(100_000).await;
    sim.faults(json!({ "latencyMs": LATENCY_MS })).await;
    // Attempts time out well after the platform's latency.
    let d = Deployment::with(
        &sim.messages_url(),
        600,
        &redis_url(),
        Queue::Sqs,
        &[
            ("PLATFORM_TIMEOUT_MS", "5000"),
            ("DISPATCH_CONCURRENCY", CONCURRENCY),
        ],
    )
    .await;
    let mut n = 0;
    for user in 1..=CREATORS {
        n += d.campaign(user, PER_CREATOR).await;
    }

    let mut first = d.dispatcher();
    // Mid-run: the first round answered, and every permit's delivery out.
    let (within, every) = (Duration::from_secs(60), Duration::from_millis(20));
    let in_flight = "several deliveries in flight";
    let (before, out_at_signal) = eventually(in_flight, within, every, || async {
        let delivered = sim.deliveries().await;
        let stats = sim.stats().await;
        let out = unanswered(&stats);
        if delivered.len() >= CREATORS as usize && out >= 3 {
            Ok((message_ids(&delivered), out))
        } else {
            Err(stats.to_string())
        }
    })
    .await;
    let (exit, took) = first.terminate(DRAIN_TIMEOUT * 2).await;
    assert!(
        exit.success(),
        "SIGTERM ends the dispatcher with 0, got {exit}"
    );
    assert!(
        took <= DRAIN_TIMEOUT,
        "it exited within the drain bound ({took:?} > {DRAIN_TIMEOUT:?})"
    );
    // It waited for the deliveries out, not for an attempt's timeout or another round.
    assert!(
        took < Duration::from_millis(LATENCY_MS) + Duration::from_secs(3),
        "it exited once the deliveries out were answered ({took:?})"
    );

    // Nothing was abandoned at the platform: every request it made has been answered.
    let stats = sim.stats().await;
    assert_eq!(unanswered(&stats), 0, "requests left out at exit: {stats}");
    // The deliveries out when the process took the signal: arrived before it, answered after
    // the last look.
    let signalled = instant(&first.logged("shutdown requested; draining")[0]["timestamp"]);
    let delivered = sim.deliveries().await;
    let before: HashSet<i64> = before.into_iter().collect();
    let (earlier, later): (Vec<&Value>, Vec<&Value>) = delivered
        .iter()
        .partition(|d| instant(&d["arrivedAt"]) < signalled);
    let in_flight: Vec<i64> = message_ids(earlier)
        .into_iter()
        .filter(|id| !before.contains(id))
        .collect();
    println!(
        "SIGTERM with {out_at_signal} deliveries out, {} answered: {} in flight at the signal, \
         {} arrived after it; exited {exit} after {took:?}",
        before.len(),
        in_flight.len(),
        later.len()
    );
    // Nothing new was started once it had the signal: the lanes waiting for a permit gave
    // their turn up (the attempt log has every claim's time, on the dispatcher's clock).
    let started_late = attempts_started_after(&d.url, signalled).await;
    assert!(
        started_late.is_empty(),
        "delivery attempts started after the signal: {started_late:?}"
    );
    assert!(
        in_flight.len() as u64 >= out_at_signal,
        "each of the {out_at_signal} deliveries out at the signal was accepted; got {in_flight:?}"
    );
    assert!(
        delivered.len() < n,
        "work was left for the next dispatcher ({} of {n} delivered)",
        delivered.len()
    );
    // The dispatcher recorded every answer it got, and says so on its way out.
    let stopped = first
        .wait_for_log("dispatcher stopped", Duration::from_secs(1))
        .await;
    let totals = &stopped["fields"];
    assert_eq!(totals["attempts"], stats["requests"], "{stopped}");
    assert_eq!(totals["delivered"].as_u64(), Some(delivered.len() as u64));

    // In the API: each of them is sent, and none is left `sending` under a lease.
    let mut seen = std::collections::HashMap::new();
    for user in 1..=CREATORS {
        for m in d.user(user).outbound_messages().await {
            seen.insert(m["id"].as_i64().unwrap(), m);
        }
    }
    assert_eq!(seen.len(), n);
    for id in message_ids(&delivered) {
        let m = &seen[&id];
        assert_eq!(m["status"], "sent", "delivered before the exit: {m}");
        assert!(m["sentAt"].is_string(), "{m}");
        assert_eq!(m["attempts"], 1, "{m}");
    }
    let sending: Vec<&Value> = seen.values().filter(|m| m["status"] == "sending").collect();
    assert!(sending.is_empty(), "left sending: {sending:?}");

    // The next dispatcher delivers the rest, each message once.
    let _second = d.dispatcher();
    d.all_sent(n, Duration::from_secs(120)).await;
    let delivered = sim.deliveries().await;
    let mut ids = message_ids(&delivered);
    ids.sort_unstable();
    let mut all: Vec<i64> = seen.keys().copied().collect();
    all.sort_unstable();
    assert_eq!(ids, all, "every message delivered once, no other");
    let stats = sim.stats().await;
    assert_eq!(stats["duplicatesReplayed"], 0, "{stats}");
    assert_eq!(stats["totalViolations"], 0, "{stats}");
    for user in 1..=CREATORS {
        let client = d.user(user);
        for m in client.outbound_messages().await {
            assert_eq!(m["status"], "sent", "{m}");
        }
        let campaigns = client.get_json("/api/crm/campaigns").await;
        let c = &campaigns["items"][0];
        assert_eq!(c["status"], "completed", "{c}");
        assert_eq!(c["metrics"]["sent"], PER_CREATOR, "{c}");
        assert_eq!(c["metrics"]["failed"], 0, "{c}");
    }
}

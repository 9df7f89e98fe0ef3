//! The load generator: requests on a fixed schedule whatever the server does, each latency
//! measured from its scheduled time.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use fanqueue::auth::JwtKeys;
use fanqueue_jobs::domain::UserId;
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    deployment::{Deployment, LISTED, LISTED_FANS, SENDER_FANS, SENDERS, Target, ms},
    helpers::JWT_SECRET,
    quantile::pick,
};

/// A request that has not answered after this long counts as an error.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

/// What the generator asks.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Route {
    /// `GET /api/crm/fans?offset=N` as the listed creator.
    Fans(i64),
    /// `POST /api/onlyfans/messages/send` to one fan of one of the sending creators.
    Send,
}

/// The outcome of one request: its status (none: no answer in time, or a transport error),
/// and for an accepted send its message id and when the 202 arrived.
pub(crate) struct Outcome {
    pub(crate) status: Option<u16>,
    pub(crate) note: Option<(i64, DateTime<Utc>)>,
}

#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) sent: usize,
    /// Milliseconds from each request's scheduled time to its answer (or its failure).
    pub(crate) lat: Vec<f64>,
    pub(crate) statuses: BTreeMap<String, usize>,
    /// The latencies of each answer's status, sorted.
    pub(crate) by_status: BTreeMap<String, Vec<f64>>,
    pub(crate) notes: Vec<(i64, DateTime<Utc>)>,
    pub(crate) expected: u16,
}

impl Stats {
    pub(crate) fn pct(&self, q: f64) -> f64 {
        pick(&self.lat, q)
    }

    pub(crate) fn errors(&self) -> String {
        let bad: Vec<String> = self
            .statuses
            .iter()
            .filter(|(k, _)| **k != self.expected.to_string())
            .map(|(k, n)| format!("{n} × {k}"))
            .collect();
        if bad.is_empty() {
            "0".into()
        } else {
            bad.join(", ")
        }
    }
}

/// The load generator: one HTTP client, every sending creator's token.
#[derive(Clone)]
pub(crate) struct Gen {
    pub(crate) client: reqwest::Client,
    pub(crate) tokens: Arc<HashMap<i64, String>>,
}

impl Gen {
    pub(crate) fn new() -> Self {
        let keys = JwtKeys::new(&SecretString::from(JWT_SECRET));
        let tokens = (LISTED..=1 + SENDERS)
            .map(|u| (u, keys.issue(UserId(u), Duration::from_secs(24 * 3600))))
            .collect();
        Gen {
            client: reqwest::Client::builder()
                .timeout(TIMEOUT)
                .pool_max_idle_per_host(4096)
                .tcp_nodelay(true)
                .build()
                .unwrap(),
            tokens: Arc::new(tokens),
        }
    }

    /// Checks the seeded data reads back as the bench expects.
    pub(crate) async fn check(&self, d: &impl Target) {
        let page: Value = self
            .client
            .get(format!("{}/api/crm/fans?offset=99950", d.api()))
            .bearer_auth(&self.tokens[&LISTED])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(page["total"], LISTED_FANS, "{page}");
        assert_eq!(
            page["items"].as_array().unwrap().len(),
            50,
            "the deep page is full"
        );
    }

    /// The `i`-th request of `route`.
    pub(crate) fn request(&self, d: &impl Target, route: Route, i: u64) -> reqwest::RequestBuilder {
        match route {
            Route::Fans(offset) => self
                .client
                .get(format!("{}/api/crm/fans?offset={offset}", d.api()))
                .bearer_auth(&self.tokens[&LISTED]),
            Route::Send => {
                let i = i as i64;
                let creator = 2 + i % SENDERS;
                let fan = d.first_fan(creator) + (i / SENDERS) % SENDER_FANS;
                self.client
                    .post(format!("{}/api/onlyfans/messages/send", d.api()))
                    .bearer_auth(&self.tokens[&creator])
                    .json(&json!({ "recipientId": fan, "content": format!("hello {i}") }))
            }
        }
    }

    pub(crate) async fn call(req: reqwest::RequestBuilder, send: bool) -> Outcome {
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let at = Utc::now();
                let body = resp.bytes().await;
                let note = match (send, status, &body) {
                    (true, 202, Ok(bytes)) => serde_json::from_slice::<Value>(bytes)
                        .ok()
                        .and_then(|v| v["messageId"].as_i64())
                        .map(|id| (id, at)),
                    _ => None,
                };
                Outcome {
                    status: body.is_ok().then_some(status),
                    note,
                }
            }
            Err(_) => Outcome {
                status: None,
                note: None,
            },
        }
    }

    /// Requests of `route` at `rate` a second for `length` (or until `stop`), each sent at its
    /// scheduled time whether or not earlier ones have answered.
    pub(crate) async fn open_loop(
        &self,
        d: &impl Target,
        route: Route,
        rate: f64,
        length: Duration,
        stop: Option<CancellationToken>,
    ) -> Stats {
        let send = matches!(route, Route::Send);
        let mut stats = Stats {
            expected: if send { 202 } else { 200 },
            ..Stats::default()
        };
        let mut set: JoinSet<(Outcome, f64)> = JoinSet::new();
        let start = tokio::time::Instant::now();
        let record = |stats: &mut Stats, (o, lat): (Outcome, f64)| {
            stats.lat.push(lat);
            let key = o.status.map_or("no answer".into(), |s| s.to_string());
            *stats.statuses.entry(key.clone()).or_default() += 1;
            stats.by_status.entry(key).or_default().push(lat);
            if let Some(n) = o.note {
                stats.notes.push(n);
            }
        };
        for i in 0u64.. {
            let at = start + Duration::from_secs_f64(i as f64 / rate);
            if at - start >= length || stop.as_ref().is_some_and(|s| s.is_cancelled()) {
                break;
            }
            tokio::time::sleep_until(at).await;
            let req = self.request(d, route, i);
            set.spawn(async move {
                let o = Gen::call(req, send).await;
                (o, at.elapsed().as_secs_f64() * 1e3)
            });
            stats.sent += 1;
            while let Some(done) = set.try_join_next() {
                record(&mut stats, done.unwrap());
            }
        }
        while let Some(done) = set.join_next().await {
            record(&mut stats, done.unwrap());
        }
        stats.lat.sort_by(f64::total_cmp);
        for lat in stats.by_status.values_mut() {
            lat.sort_by(f64::total_cmp);
        }
        stats
    }

    /// Stores `n` sends as fast as the API takes them (32 at a time).
    pub(crate) async fn prefill(&self, d: &impl Target, n: usize, clients: usize) {
        use futures::StreamExt;
        let started = Instant::now();
        let failed = futures::stream::iter(0..n as u64)
            .map(|i| Gen::call(self.request(d, Route::Send, i), true))
            .buffer_unordered(clients)
            .filter(|o| std::future::ready(o.status != Some(202)))
            .count()
            .await;
        assert_eq!(failed, 0, "every send of the backlog is accepted");
        eprintln!(
            "stored a backlog of {n} sends from {clients} clients in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }

    /// Posts `n` campaigns of 100 at once (creators 2…): per campaign, milliseconds from its
    /// 202 to its first and to its last message on the queue (each sorted).
    pub(crate) async fn bulks(&self, d: &Deployment, n: i64) -> (Vec<f64>, Vec<f64>) {
        let posted = futures::future::join_all((0..n).map(|k| {
            let creator = 2 + k;
            let first = d.first_fan(creator);
            let req = self
                .client
                .post(format!("{}/api/messages/bulk", d.api()))
                .bearer_auth(&self.tokens[&creator])
                .json(&json!({
                    "recipientIds": (first..first + SENDER_FANS).collect::<Vec<_>>(),
                    "content": "offer",
                    "campaignName": format!("bench {k}"),
                }));
            async move {
                let resp = req.send().await.unwrap();
                let at = Utc::now();
                assert_eq!(resp.status(), StatusCode::ACCEPTED);
                let body: Value = resp.json().await.unwrap();
                (body["campaignId"].as_i64().unwrap(), at)
            }
        }))
        .await;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let rows = d.campaigns_on_queue().await;
            let done = posted
                .iter()
                .all(|(c, _)| rows.get(c).is_some_and(|r| r.2 >= SENDER_FANS));
            if done || Instant::now() > deadline {
                let mut first: Vec<f64> = vec![];
                let mut last: Vec<f64> = vec![];
                for (c, at) in &posted {
                    if let Some((f, l, count)) = rows.get(c) {
                        first.push(ms(*f - *at));
                        if *count >= SENDER_FANS {
                            last.push(ms(*l - *at));
                        }
                    }
                }
                first.sort_by(f64::total_cmp);
                last.sort_by(f64::total_cmp);
                return (first, last);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

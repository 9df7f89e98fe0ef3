//! `fanqueue platform-sim`: a stand-in for the subscription platform's messaging API, which
//! has no public sandbox. Tests, benchmarks and the README point the dispatcher at it.
//!
//! It behaves the way the dispatcher must cope with: an `Idempotency-Key` replays the first
//! answer, each creator has a sliding-window limit (429 with `Retry-After`), and faults can be
//! injected (500s, 429s, 400s, latency, hangs). It keeps what a test needs to judge the
//! dispatcher: every accepted delivery with its arrival time, and a count of everything else.
//! Every `POST /messages` ends as exactly one of: a delivery, a replay, or one `rejected`
//! bucket, so once nothing is in flight
//! `requests = deliveries + duplicatesReplayed + rejected.{500,429,400,timeouts}`.
//!
//! All state is in memory behind one mutex, never held across an await.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use poem::{
    Body, EndpointExt, IntoResponse, Request, Response, Route, Server, handler,
    http::StatusCode,
    listener::TcpAcceptor,
    web::{Data, Query},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The limit's window, in microseconds (arrival times are kept to the microsecond).
const WINDOW_MICROS: i64 = 60_000_000;
/// How long an injected timeout hangs before answering 504: longer than any sane client waits.
const HANG: Duration = Duration::from_secs(120);
/// Messages are small; anything bigger is a client bug.
const MAX_BODY: usize = 1 << 20;

/// The simulator, bound and ready to serve.
pub struct PlatformSim {
    listener: TcpListener,
    port: u16,
    sim: Arc<Sim>,
}

impl PlatformSim {
    /// Binds `addr` (port 0 allowed); `rate_per_minute` is the platform's own per-creator limit.
    pub async fn bind(addr: SocketAddr, rate_per_minute: u32) -> anyhow::Result<Self> {
        anyhow::ensure!(
            rate_per_minute > 0,
            "the rate per minute must be at least 1"
        );
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let port = listener.local_addr()?.port();
        let sim = Arc::new(Sim {
            limit: rate_per_minute as usize,
            state: Mutex::default(),
        });
        Ok(PlatformSim {
            listener,
            port,
            sim,
        })
    }

    /// The bound port (tests bind port 0 and read it back).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `cancel` is cancelled. Requests held up by injected latency or timeouts
    /// give up then too, so shutdown is prompt.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let app = Route::new()
            .at("/messages", poem::post(post_message))
            .at("/deliveries", poem::get(list_deliveries))
            .at("/stats", poem::get(stats))
            .at("/faults", poem::post(set_faults).delete(clear_faults))
            .at("/reset", poem::post(reset))
            .at("/healthz", poem::get(healthz))
            .data(self.sim)
            .data(cancel.clone())
            // Extractor errors, unknown routes and wrong methods answer in our JSON shape too.
            .catch_all_error(|err: poem::Error| async move {
                Answer::error(err.status(), &err.to_string()).into_response()
            });
        let acceptor = TcpAcceptor::from_tokio(self.listener)?;
        tracing::info!(port = self.port, "platform-sim listening");
        Server::new_with_acceptor(acceptor)
            .run_with_graceful_shutdown(app, cancel.cancelled_owned(), Some(Duration::from_secs(5)))
            .await
            .context("serving the platform sim")
    }
}

struct Sim {
    limit: usize,
    state: Mutex<State>,
}

impl Sim {
    /// A panic elsewhere must not take the simulator down with it: the state stays usable.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
struct State {
    deliveries: Vec<Delivery>,
    /// Stored answers by idempotency key.
    answers: HashMap<String, Answer>,
    /// Each creator's accepted arrivals (µs since the epoch), sorted. Kept whole like the
    /// deliveries: a request held up by latency is judged at its arrival, which can be older
    /// than the last minute.
    windows: HashMap<String, Vec<i64>>,
    stats: Stats,
    faults: Faults,
    creator_faults: HashMap<String, Faults>,
    /// Delivery ids stay unique across resets, as the platform's would.
    last_id: u64,
}

#[derive(Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct Stats {
    duplicates_replayed: u64,
    requests: u64,
    violations: BTreeMap<String, u64>,
    total_violations: u64,
    rejected: Rejected,
}

#[derive(Default, Serialize)]
struct Rejected {
    #[serde(rename = "500")]
    server_error: u64,
    #[serde(rename = "429")]
    too_many: u64,
    #[serde(rename = "400")]
    bad_request: u64,
    timeouts: u64,
}

/// Injected faults of one scope (one creator, or any creator). Counts are "the next n".
#[derive(Default)]
struct Faults {
    error_rate: Option<f64>,
    fail500: u32,
    fail429: u32,
    retry_after_secs: Option<u64>,
    fail400: u32,
    latency_ms: Option<u64>,
    timeouts: u32,
}

#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Delivery {
    message_id: String,
    user_id: String,
    recipient_id: String,
    campaign_id: Option<String>,
    arrived_at: String,
    key: String,
}

/// What the dispatcher sends. `content`, `mediaUrls` and `priority` are required as the
/// platform requires them, but nothing here reads them.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Message {
    message_id: String,
    user_id: String,
    recipient_id: String,
    #[serde(rename = "content")]
    _content: String,
    #[serde(rename = "mediaUrls")]
    _media_urls: Vec<String>,
    #[serde(rename = "priority")]
    _priority: Value,
    #[serde(default)]
    campaign_id: Option<String>,
}

/// An answer kept as JSON text, so a replay is byte for byte the first answer.
#[derive(Clone)]
struct Answer {
    status: StatusCode,
    body: String,
    retry_after: Option<u64>,
}

impl Answer {
    fn new(status: StatusCode, body: Value) -> Self {
        Answer {
            status,
            body: body.to_string(),
            retry_after: None,
        }
    }

    fn error(status: StatusCode, message: &str) -> Self {
        Self::new(status, json!({ "error": message }))
    }

    fn too_many(message: &str, retry_after: u64) -> Self {
        Answer {
            retry_after: Some(retry_after),
            ..Self::error(StatusCode::TOO_MANY_REQUESTS, message)
        }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut resp = Response::builder()
            .status(self.status)
            .content_type("application/json");
        if let Some(secs) = self.retry_after {
            resp = resp.header("Retry-After", secs);
        }
        resp.body(self.body)
    }
}

/// What a valid, fresh request does before the rest of its handling.
enum Next {
    Hang,
    Delay(Duration),
    Go,
}

#[handler]
async fn post_message(
    req: &Request,
    body: Body,
    Data(sim): Data<&Arc<Sim>>,
    Data(cancel): Data<&CancellationToken>,
) -> Answer {
    let arrived = Utc::now().trunc_subsecs(6);
    let key = req.header("Idempotency-Key").unwrap_or("").to_owned();
    let msg = match body.into_bytes_limit(MAX_BODY).await {
        Ok(bytes) => parse_message(&bytes),
        Err(e) => Err(format!("invalid body: {e}")),
    };
    let arrival = sim.lock().arrive(&key, msg);
    let (msg, next) = match arrival {
        Ok(fresh) => fresh,
        Err(answer) => return answer,
    };
    match next {
        Next::Hang => {
            if sleep_unless_cancelled(HANG, cancel).await {
                return Answer::error(StatusCode::GATEWAY_TIMEOUT, "injected timeout");
            }
            return Answer::error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
        }
        Next::Delay(latency) => {
            if !sleep_unless_cancelled(latency, cancel).await {
                return Answer::error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
            }
        }
        Next::Go => {}
    }
    sim.lock().settle(&key, msg, arrived, sim.limit)
}

/// False when cancelled first.
async fn sleep_unless_cancelled(time: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(time) => true,
        _ = cancel.cancelled() => false,
    }
}

fn parse_message(bytes: &[u8]) -> Result<Message, String> {
    let msg: Message = serde_json::from_slice(bytes).map_err(|e| format!("invalid body: {e}"))?;
    for (name, id) in [
        ("messageId", Some(&msg.message_id)),
        ("userId", Some(&msg.user_id)),
        ("recipientId", Some(&msg.recipient_id)),
        ("campaignId", msg.campaign_id.as_ref()),
    ] {
        if let Some(id) = id
            && (id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(format!("{name} must be a string of digits"));
        }
    }
    Ok(msg)
}

impl State {
    /// Counts the request; answers invalid ones and replays (`Err`); takes the faults that act
    /// before the rest (a hang, added latency).
    fn arrive(
        &mut self,
        key: &str,
        msg: Result<Message, String>,
    ) -> Result<(Message, Next), Answer> {
        self.stats.requests += 1;
        let valid = match key.trim().is_empty() {
            true => Err("missing Idempotency-Key".to_owned()),
            false => msg,
        };
        let msg = match valid {
            Ok(msg) => msg,
            Err(e) => {
                self.stats.rejected.bad_request += 1;
                return Err(Answer::error(StatusCode::BAD_REQUEST, &e));
            }
        };
        if let Some(answer) = self.replay(key) {
            return Err(answer);
        }
        if self.take(&msg.user_id, |f| &mut f.timeouts) {
            self.stats.rejected.timeouts += 1;
            return Ok((msg, Next::Hang));
        }
        let next = match self.setting(&msg.user_id, |f| f.latency_ms) {
            Some(ms) if ms > 0 => Next::Delay(Duration::from_millis(ms)),
            _ => Next::Go,
        };
        Ok((msg, next))
    }

    /// The rest, after any added latency: the key again (a request with the same key may have
    /// been answered meanwhile), the other faults, the limit, and the delivery.
    fn settle(&mut self, key: &str, msg: Message, arrived: DateTime<Utc>, limit: usize) -> Answer {
        if let Some(answer) = self.replay(key) {
            return answer;
        }
        let user = msg.user_id.as_str();
        if self.take(user, |f| &mut f.fail500) {
            self.stats.rejected.server_error += 1;
            return Answer::error(StatusCode::INTERNAL_SERVER_ERROR, "injected failure");
        }
        if self.take(user, |f| &mut f.fail429) {
            self.stats.rejected.too_many += 1;
            let secs = self.setting(user, |f| f.retry_after_secs).unwrap_or(5);
            return Answer::too_many("injected rate limit", secs);
        }
        if self.take(user, |f| &mut f.fail400) {
            self.stats.rejected.bad_request += 1;
            let answer =
                Answer::error(StatusCode::BAD_REQUEST, "recipient cannot receive messages");
            self.answers.insert(key.to_owned(), answer.clone());
            return answer;
        }
        if let Some(rate) = self.setting(user, |f| f.error_rate)
            && rand::random::<f64>() < rate
        {
            self.stats.rejected.server_error += 1;
            return Answer::error(StatusCode::INTERNAL_SERVER_ERROR, "injected failure");
        }

        let at = arrived.timestamp_micros();
        let window = self.windows.entry(msg.user_id.clone()).or_default();
        if would_exceed(window, at, limit) {
            // Any later arrival fits once the limit-th newest accepted one is 60 s old.
            let frees_at = window[window.len() - limit] + WINDOW_MICROS;
            let wait = frees_at - Utc::now().timestamp_micros();
            let secs = if wait <= 0 {
                1
            } else {
                (wait + 999_999) / 1_000_000
            };
            *self.stats.violations.entry(msg.user_id).or_default() += 1;
            self.stats.total_violations += 1;
            self.stats.rejected.too_many += 1;
            return Answer::too_many("rate limit exceeded", secs as u64);
        }
        window.insert(window.partition_point(|&p| p <= at), at);

        self.last_id += 1;
        let answer = Answer::new(
            StatusCode::OK,
            json!({ "id": format!("sim-{}", self.last_id), "status": "delivered" }),
        );
        self.answers.insert(key.to_owned(), answer.clone());
        self.deliveries.push(Delivery {
            message_id: msg.message_id,
            user_id: msg.user_id,
            recipient_id: msg.recipient_id,
            campaign_id: msg.campaign_id,
            arrived_at: arrived.to_rfc3339_opts(SecondsFormat::Micros, true),
            key: key.to_owned(),
        });
        answer
    }

    fn replay(&mut self, key: &str) -> Option<Answer> {
        let answer = self.answers.get(key)?.clone();
        self.stats.duplicates_replayed += 1;
        Some(answer)
    }

    /// Takes one of a "next n" count: the creator's own first, else the one for any creator.
    fn take(&mut self, user: &str, count: fn(&mut Faults) -> &mut u32) -> bool {
        let scopes = [self.creator_faults.get_mut(user), Some(&mut self.faults)];
        for faults in scopes.into_iter().flatten() {
            let n = count(faults);
            if *n > 0 {
                *n -= 1;
                return true;
            }
        }
        false
    }

    /// A setting: the creator's own if given, else the one for any creator.
    fn setting<T>(&self, user: &str, get: fn(&Faults) -> Option<T>) -> Option<T> {
        self.creator_faults
            .get(user)
            .and_then(get)
            .or_else(|| get(&self.faults))
    }
}

/// Whether one more arrival at `at` would put more than `limit` arrivals within 60 s of each
/// other. `arrivals` is sorted; `at` is usually the newest, but a request held up by latency
/// can land between others, so every run of `limit + 1` neighbours around it is checked.
fn would_exceed(arrivals: &[i64], at: i64, limit: usize) -> bool {
    let n = arrivals.len();
    if n < limit {
        return false;
    }
    let i = arrivals.partition_point(|&p| p <= at);
    // The sorted sequence with `at` inserted at index i.
    let point = |k: usize| match k.cmp(&i) {
        std::cmp::Ordering::Less => arrivals[k],
        std::cmp::Ordering::Equal => at,
        std::cmp::Ordering::Greater => arrivals[k - 1],
    };
    (i.saturating_sub(limit)..=i.min(n - limit))
        .any(|j| point(j + limit) - point(j) < WINDOW_MICROS)
}

#[derive(Deserialize)]
struct DeliveriesQuery {
    #[serde(rename = "userId")]
    user_id: Option<String>,
}

#[handler]
fn list_deliveries(
    Query(query): Query<DeliveriesQuery>,
    Data(sim): Data<&Arc<Sim>>,
) -> poem::web::Json<Value> {
    let state = sim.lock();
    let items: Vec<&Delivery> = state
        .deliveries
        .iter()
        .filter(|d| query.user_id.as_ref().is_none_or(|u| *u == d.user_id))
        .collect();
    poem::web::Json(json!({ "total": items.len(), "items": items }))
}

#[handler]
fn stats(Data(sim): Data<&Arc<Sim>>) -> poem::web::Json<Value> {
    let state = sim.lock();
    let mut body = json!(state.stats);
    body["deliveries"] = json!(state.deliveries.len());
    poem::web::Json(body)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FaultsBody {
    user_id: Option<String>,
    error_rate: Option<f64>,
    fail500: Option<u32>,
    fail429: Option<u32>,
    retry_after_secs: Option<u64>,
    fail400: Option<u32>,
    latency_ms: Option<u64>,
    timeouts: Option<u32>,
}

/// Unknown fields are refused rather than ignored: a misspelt fault would otherwise make a
/// test pass for the wrong reason.
#[handler]
async fn set_faults(body: Body, Data(sim): Data<&Arc<Sim>>) -> Response {
    let bytes = match body.into_bytes_limit(MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(e) => return bad_request(&format!("invalid body: {e}")),
    };
    let new: FaultsBody = match serde_json::from_slice(&bytes) {
        Ok(new) => new,
        Err(e) => return bad_request(&format!("invalid body: {e}")),
    };
    if let Some(rate) = new.error_rate
        && !(0.0..=1.0).contains(&rate)
    {
        return bad_request("errorRate must be within 0..=1");
    }
    let mut state = sim.lock();
    let faults = match new.user_id {
        Some(user) => state.creator_faults.entry(user).or_default(),
        None => &mut state.faults,
    };
    faults.error_rate = new.error_rate.or(faults.error_rate);
    faults.fail500 = new.fail500.unwrap_or(faults.fail500);
    faults.fail429 = new.fail429.unwrap_or(faults.fail429);
    faults.retry_after_secs = new.retry_after_secs.or(faults.retry_after_secs);
    faults.fail400 = new.fail400.unwrap_or(faults.fail400);
    faults.latency_ms = new.latency_ms.or(faults.latency_ms);
    faults.timeouts = new.timeouts.unwrap_or(faults.timeouts);
    StatusCode::NO_CONTENT.into_response()
}

fn bad_request(message: &str) -> Response {
    Answer::error(StatusCode::BAD_REQUEST, message).into_response()
}

#[handler]
fn clear_faults(Data(sim): Data<&Arc<Sim>>) -> StatusCode {
    let mut state = sim.lock();
    state.faults = Faults::default();
    state.creator_faults.clear();
    StatusCode::NO_CONTENT
}

#[handler]
fn reset(Data(sim): Data<&Arc<Sim>>) -> StatusCode {
    let mut state = sim.lock();
    let last_id = state.last_id;
    *state = State {
        last_id,
        ..State::default()
    };
    StatusCode::NO_CONTENT
}

#[handler]
fn healthz() -> poem::web::Json<Value> {
    poem::web::Json(json!({ "status": "ok" }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn the_window_counts_arrivals_less_than_60_s_apart() {
        assert!(!would_exceed(&[0, S], 2 * S, 3));
        assert!(would_exceed(&[0, S, 2 * S], 3 * S, 3));
        // Exactly 60 s after the oldest, that one has left the window.
        assert!(!would_exceed(&[0, S, 2 * S], 60 * S, 3));
        assert!(would_exceed(&[0, S, 2 * S], 60 * S - 1, 3));
    }

    #[test]
    fn a_late_accepted_earlier_arrival_is_checked_against_later_ones() {
        // Accepted at 10 s and 11 s; a delayed request that arrived at 5 s makes three.
        assert!(would_exceed(&[10 * S, 11 * S], 5 * S, 2));
        assert!(!would_exceed(&[70 * S, 71 * S], 5 * S, 2));
        assert!(would_exceed(&[0, 70 * S], 65 * S, 1));
    }
}

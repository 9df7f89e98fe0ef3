//! The platform stand-in over real HTTP: deliveries, idempotency keys, the per-creator limit,
//! injected faults, and the `fanqueue platform-sim` process.

use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use fanqueue::platform_sim::PlatformSim;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::helpers::AppProcess;

/// A simulator served in-process on a free port, stopped when dropped.
struct Sim {
    base: String,
    http: reqwest::Client,
    cancel: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn start(rate_per_minute: u32) -> Sim {
    let sim = PlatformSim::bind("127.0.0.1:0".parse().unwrap(), rate_per_minute)
        .await
        .expect("binding the sim");
    let base = format!("http://127.0.0.1:{}", sim.port());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(sim.run(cancel.clone()));
    Sim {
        base,
        http: reqwest::Client::new(),
        cancel,
        task: Some(task),
    }
}

fn message(user: &str, message_id: &str) -> Value {
    json!({
        "messageId": message_id,
        "userId": user,
        "recipientId": "900",
        "content": "Thanks for subscribing!",
        "mediaUrls": [],
        "priority": "normal",
        "campaignId": "55",
        "someFutureField": true,
    })
}

impl Sim {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs a message of creator `user` under idempotency key `key`.
    async fn send(&self, user: &str, key: &str) -> Response {
        self.send_with(&self.http, user, key).await.unwrap()
    }

    async fn send_with(
        &self,
        client: &reqwest::Client,
        user: &str,
        key: &str,
    ) -> reqwest::Result<Response> {
        client
            .post(self.url("/messages"))
            .header("Idempotency-Key", key)
            .json(&message(user, "1000"))
            .send()
            .await
    }

    async fn get(&self, path: &str) -> Value {
        let resp = self.http.get(self.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "GET {path}");
        resp.json().await.unwrap()
    }

    async fn stats(&self) -> Value {
        self.get("/stats").await
    }

    async fn faults(&self, faults: Value) {
        let resp = self
            .http
            .post(self.url("/faults"))
            .json(&faults)
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::NO_CONTENT,
            "POST /faults {faults}"
        );
    }
}

/// The status, the `Retry-After` header if any, and the JSON body.
async fn answer(resp: Response) -> (StatusCode, Option<u64>, Value) {
    let status = resp.status();
    let retry_after = resp.headers().get("retry-after").map(|v| {
        v.to_str()
            .unwrap()
            .parse()
            .expect("Retry-After in whole seconds")
    });
    (status, retry_after, resp.json().await.unwrap())
}

fn error(message: &str) -> Value {
    json!({ "error": message })
}

#[tokio::test]
async fn an_accepted_delivery_is_listed_with_its_arrival_time() {
    let sim = start(3).await;
    let before = Utc::now().trunc_subsecs(6);
    let (status, _, body) = answer(sim.send("7", "key-1").await).await;
    let after = Utc::now();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "id": "sim-1", "status": "delivered" }));

    let listed = sim.get("/deliveries").await;
    assert_eq!(listed["total"], 1);
    let item = &listed["items"][0];
    assert_eq!(item["messageId"], "1000");
    assert_eq!(item["userId"], "7");
    assert_eq!(item["recipientId"], "900");
    assert_eq!(item["campaignId"], "55");
    assert_eq!(item["key"], "key-1");
    let arrived_at = item["arrivedAt"].as_str().unwrap();
    assert!(
        arrived_at.ends_with('Z') && arrived_at.split('.').nth(1).unwrap().len() == 7,
        "RFC 3339 UTC with microseconds: {arrived_at}"
    );
    let arrived: DateTime<Utc> = arrived_at.parse().unwrap();
    assert!(before <= arrived && arrived <= after, "{arrived_at}");

    assert_eq!(sim.get("/deliveries?userId=7").await["total"], 1);
    assert_eq!(
        sim.get("/deliveries?userId=8").await,
        json!({ "items": [], "total": 0 })
    );
    let stats = sim.stats().await;
    assert_eq!(stats["deliveries"], 1);
    assert_eq!(stats["requests"], 1);
}

#[tokio::test]
async fn a_repeated_key_replays_the_first_answer_and_counts_once() {
    let sim = start(3).await;
    let first = sim.send("7", "same").await;
    assert_eq!(first.status(), StatusCode::OK);
    let first = first.text().await.unwrap();
    for _ in 0..4 {
        let again = sim.send("7", "same").await;
        assert_eq!(again.status(), StatusCode::OK);
        assert_eq!(again.text().await.unwrap(), first, "replayed byte for byte");
    }
    // Replays took none of the creator's 3 a minute.
    for key in ["other-1", "other-2"] {
        assert_eq!(sim.send("7", key).await.status(), StatusCode::OK);
    }

    let stats = sim.stats().await;
    assert_eq!(stats["deliveries"], 3);
    assert_eq!(stats["duplicatesReplayed"], 4);
    assert_eq!(stats["requests"], 7);
    assert_eq!(stats["totalViolations"], 0);
    assert_eq!(sim.get("/deliveries").await["total"], 3);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_deliver_once() {
    let sim = start(3).await;
    // Latency keeps them all in flight together.
    sim.faults(json!({ "latencyMs": 200 })).await;
    let sends = (0..20).map(|_| async {
        let resp = sim.send("7", "racing").await;
        assert_eq!(resp.status(), StatusCode::OK);
        resp.text().await.unwrap()
    });
    let bodies = futures::future::join_all(sends).await;
    assert!(bodies.iter().all(|b| *b == bodies[0]), "{bodies:?}");
    let stats = sim.stats().await;
    assert_eq!(stats["deliveries"], 1);
    assert_eq!(stats["duplicatesReplayed"], 19);
}

#[tokio::test]
async fn the_fourth_delivery_of_a_creator_in_a_minute_is_a_429_and_another_creator_is_unaffected() {
    let sim = start(3).await;
    for key in ["a", "b", "c"] {
        assert_eq!(sim.send("7", key).await.status(), StatusCode::OK);
    }
    let (status, retry_after, body) = answer(sim.send("7", "d").await).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body, error("rate limit exceeded"));
    let retry_after = retry_after.expect("a 429 carries Retry-After");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");

    assert_eq!(sim.send("8", "e").await.status(), StatusCode::OK);

    let stats = sim.stats().await;
    assert_eq!(stats["violations"], json!({ "7": 1 }));
    assert_eq!(stats["totalViolations"], 1);
    assert_eq!(stats["rejected"]["429"], 1);
    assert_eq!(stats["deliveries"], 4);
    // The refused one was neither delivered nor kept for its key: it is refused afresh.
    assert_eq!(sim.get("/deliveries?userId=7").await["total"], 3);
    assert_eq!(
        sim.send("7", "d").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(sim.stats().await["violations"], json!({ "7": 2 }));
}

#[tokio::test]
async fn injected_500s_run_out_and_then_the_same_key_is_delivered() {
    let sim = start(3).await;
    sim.faults(json!({ "fail500": 2 })).await;
    for _ in 0..2 {
        let (status, _, body) = answer(sim.send("7", "k").await).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body, error("injected failure"));
    }
    assert_eq!(sim.send("7", "k").await.status(), StatusCode::OK);
    let stats = sim.stats().await;
    assert_eq!(stats["deliveries"], 1);
    assert_eq!(stats["rejected"]["500"], 2);
    assert_eq!(stats["duplicatesReplayed"], 0);
}

#[tokio::test]
async fn an_injected_429_carries_its_retry_after_and_is_not_kept_for_the_key() {
    let sim = start(3).await;
    sim.faults(json!({ "fail429": 1, "retryAfterSecs": 7 }))
        .await;
    let (status, retry_after, body) = answer(sim.send("7", "k").await).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after, Some(7));
    assert_eq!(body, error("injected rate limit"));

    assert_eq!(sim.send("7", "k").await.status(), StatusCode::OK);
    let stats = sim.stats().await;
    assert_eq!(stats["rejected"]["429"], 1);
    assert_eq!(
        stats["totalViolations"], 0,
        "an injected 429 is not a violation"
    );
    assert_eq!(stats["deliveries"], 1);
}

#[tokio::test]
async fn an_injected_400_is_kept_for_its_key() {
    let sim = start(3).await;
    sim.faults(json!({ "fail400": 1 })).await;
    for _ in 0..2 {
        let (status, _, body) = answer(sim.send("7", "k").await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body, error("recipient cannot receive messages"));
    }
    assert_eq!(sim.send("7", "other").await.status(), StatusCode::OK);
    let stats = sim.stats().await;
    assert_eq!(stats["rejected"]["400"], 1);
    assert_eq!(stats["duplicatesReplayed"], 1);
    assert_eq!(stats["deliveries"], 1);
}

#[tokio::test]
async fn added_latency_delays_the_answer_but_not_the_arrival_time() {
    let sim = start(3).await;
    sim.faults(json!({ "latencyMs": 400 })).await;
    let sent = Utc::now();
    let started = Instant::now();
    assert_eq!(sim.send("7", "k").await.status(), StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    let arrived: DateTime<Utc> = sim.get("/deliveries").await["items"][0]["arrivedAt"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        arrived - sent < chrono::Duration::milliseconds(400),
        "the arrival is when the request came in"
    );
}

#[tokio::test]
async fn an_injected_timeout_hangs_past_the_client_and_records_nothing() {
    let sim = start(3).await;
    sim.faults(json!({ "timeouts": 1 })).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let err = sim
        .send_with(&impatient, "7", "k")
        .await
        .expect_err("the sim does not answer within 1 s");
    assert!(err.is_timeout(), "{err}");

    let stats = sim.stats().await;
    assert_eq!(stats["rejected"]["timeouts"], 1);
    assert_eq!(stats["deliveries"], 0);
    // Not kept for the key: the retry is delivered.
    assert_eq!(sim.send("7", "k").await.status(), StatusCode::OK);
    assert_eq!(sim.stats().await["duplicatesReplayed"], 0);
}

#[tokio::test]
async fn an_error_rate_of_one_fails_every_request_until_faults_are_cleared() {
    let sim = start(3).await;
    sim.faults(json!({ "errorRate": 1.0 })).await;
    for i in 0..5 {
        let (status, _, body) = answer(sim.send("7", &format!("k{i}")).await).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body, error("injected failure"));
    }
    let resp = sim.http.delete(sim.url("/faults")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(sim.send("7", "k0").await.status(), StatusCode::OK);
    assert_eq!(sim.stats().await["rejected"]["500"], 5);
}

#[tokio::test]
async fn faults_for_one_creator_leave_the_others_alone() {
    let sim = start(3).await;
    sim.faults(json!({ "userId": "7", "fail500": 1 })).await;
    // A later setting for the same creator leaves the count as it is.
    sim.faults(json!({ "userId": "7", "retryAfterSecs": 9 }))
        .await;
    assert_eq!(sim.send("8", "a").await.status(), StatusCode::OK);
    assert_eq!(
        sim.send("7", "b").await.status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(sim.send("7", "b").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_missing_or_empty_idempotency_key_is_a_400() {
    let sim = start(3).await;
    let resp = sim
        .http
        .post(sim.url("/messages"))
        .json(&message("7", "1"))
        .send()
        .await
        .unwrap();
    let (status, _, body) = answer(resp).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, error("missing Idempotency-Key"));
    let (status, _, body) = answer(sim.send("7", "").await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, error("missing Idempotency-Key"));
    let stats = sim.stats().await;
    assert_eq!(stats["deliveries"], 0);
    assert_eq!(stats["rejected"]["400"], 2);
}

#[tokio::test]
async fn bad_input_gets_json_errors_and_every_request_is_accounted_for() {
    let sim = start(3).await;
    let post = |path: &str, body: &str| {
        sim.http
            .post(sim.url(path))
            .header("Idempotency-Key", "bad")
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
    };
    let mut not_digits = message("7", "1");
    not_digits["userId"] = json!("seven");
    let mut missing = message("7", "1");
    missing.as_object_mut().unwrap().remove("content");
    for body in [
        "not json".to_owned(),
        "[]".to_owned(),
        not_digits.to_string(),
        missing.to_string(),
    ] {
        let (status, _, err) = answer(post("/messages", &body).await.unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(err["error"].is_string(), "{err}");
    }
    for body in [r#"{"errorRate": 2}"#, r#"{"fail_500": 1}"#, "{"] {
        let (status, _, err) = answer(post("/faults", body).await.unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(err["error"].is_string(), "{err}");
    }
    let (status, _, err) = answer(post("/nowhere", "{}").await.unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(err["error"].is_string(), "{err}");
    let resp = sim.http.get(sim.url("/messages")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let health = sim.http.get(sim.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    // A mix of every outcome adds up.
    sim.faults(json!({ "fail500": 1, "fail429": 1, "fail400": 1 }))
        .await;
    for key in ["a", "b", "c", "c", "d", "e", "f", "g"] {
        sim.send("7", key).await;
    }
    let stats = sim.stats().await;
    let rejected = &stats["rejected"];
    let sum = ["500", "429", "400", "timeouts"]
        .iter()
        .map(|k| rejected[k].as_u64().unwrap())
        .sum::<u64>()
        + stats["deliveries"].as_u64().unwrap()
        + stats["duplicatesReplayed"].as_u64().unwrap();
    assert_eq!(stats["requests"], 12);
    assert_eq!(sum, 12, "{stats}");
    assert_eq!(stats["deliveries"], 3);
    assert_eq!(stats["totalViolations"], 1);
}

#[tokio::test]
async fn reset_clears_deliveries_keys_stats_faults_and_windows() {
    let sim = start(1).await;
    assert_eq!(sim.send("7", "k").await.status(), StatusCode::OK);
    assert_eq!(
        sim.send("7", "k2").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    sim.faults(json!({ "fail500": 5 })).await;

    let resp = sim.http.post(sim.url("/reset")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        sim.stats().await,
        json!({
            "deliveries": 0, "duplicatesReplayed": 0, "requests": 0, "violations": {},
            "totalViolations": 0,
            "rejected": { "500": 0, "429": 0, "400": 0, "timeouts": 0 },
        })
    );
    assert_eq!(sim.get("/deliveries").await["total"], 0);

    // No fault, no window, no stored key: the same key is delivered afresh.
    let (status, _, body) = answer(sim.send("7", "k").await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["id"], "sim-2", "ids are not reused");
    let stats = sim.stats().await;
    assert_eq!(stats["deliveries"], 1);
    assert_eq!(stats["duplicatesReplayed"], 0);
}

#[tokio::test]
async fn cancelling_stops_the_sim_even_with_a_request_hanging() {
    let mut sim = start(3).await;
    sim.faults(json!({ "timeouts": 1 })).await;
    let client = sim.http.clone();
    let url = sim.url("/messages");
    let hanging = tokio::spawn(async move {
        client
            .post(url)
            .header("Idempotency-Key", "k")
            .json(&message("7", "1"))
            .send()
            .await
    });
    // Wait until the sim has taken the request in.
    while sim.stats().await["rejected"]["timeouts"] != 1 {
        tokio::task::yield_now().await;
    }
    sim.cancel.cancel();
    let task = sim.task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("run returns soon after cancel")
        .unwrap()
        .expect("run ends without error");
    let hung = hanging.await.unwrap();
    assert!(
        hung.is_err() || hung.unwrap().status() == StatusCode::SERVICE_UNAVAILABLE,
        "the hanging request is let go"
    );
}

#[tokio::test]
async fn the_platform_sim_command_serves_and_exits_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut process = AppProcess::spawn_until(
        &[
            "platform-sim",
            "--listen",
            "127.0.0.1:0",
            "--rate-per-minute",
            "2",
        ],
        &[],
        dir.path(),
        "platform-sim listening",
    );
    let http = reqwest::Client::new();
    let health = http
        .get(format!("{}/healthz", process.address))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let mut statuses = Vec::new();
    for key in ["a", "b", "c"] {
        let resp = http
            .post(format!("{}/messages", process.address))
            .header("Idempotency-Key", key)
            .json(&message("7", "1"))
            .send()
            .await
            .unwrap();
        statuses.push(resp.status());
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ],
        "--rate-per-minute 2"
    );
    let (exit, _) = process.terminate(Duration::from_secs(10)).await;
    assert!(exit.success(), "SIGTERM ends it with 0, got {exit}");
}

//! The HTTP client of the tests, and what they read from its answers.

#[allow(unused_imports)]
use super::*;

/// The tests' one HTTP client: a running server (a [`TestApp`] or an [`AppProcess`]) seen by
/// one user. The verbs return the response, for tests that check statuses and errors; the
/// `_json` forms and the helpers below them assert the status a client expects.
pub struct ApiClient {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl ApiClient {
    /// User `user` of the server at `base` (tokens signed with [`JWT_SECRET`]).
    pub fn new(base: &str, user: i64) -> Self {
        let keys = JwtKeys::new(&SecretString::from(JWT_SECRET));
        Self::with_token(
            reqwest::Client::new(),
            base,
            keys.issue(UserId(user), Duration::from_secs(3600)),
        )
    }

    /// An operator (user `user`) of the server at `base`.
    pub fn operator(base: &str, user: i64) -> Self {
        let keys = JwtKeys::new(&SecretString::from(JWT_SECRET));
        let token = keys.issue_as(
            UserId(user),
            fanqueue::auth::Role::Operator,
            Duration::from_secs(3600),
        );
        Self::with_token(reqwest::Client::new(), base, token)
    }

    /// The bearer of `token` on the server at `base`, through `http` (its connections).
    pub fn with_token(http: reqwest::Client, base: &str, token: String) -> Self {
        ApiClient {
            http,
            base: base.to_owned(),
            token,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request to `path` with this user's token, to add headers or a body to.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    async fn send(request: reqwest::RequestBuilder) -> Response {
        request.send().await.expect("request sent")
    }

    pub async fn get(&self, path: &str) -> Response {
        Self::send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Response {
        Self::send(self.request(reqwest::Method::POST, path).json(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Response {
        Self::send(self.request(reqwest::Method::PUT, path).json(body)).await
    }

    pub async fn delete(&self, path: &str) -> Response {
        Self::send(self.request(reqwest::Method::DELETE, path)).await
    }

    /// Uploads `bytes` as the multipart field `file` named `name`; `query` starts with `?`
    /// or is empty.
    pub async fn upload_csv(&self, name: &str, bytes: Vec<u8>, query: &str) -> Response {
        let part = reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned());
        let path = format!("/api/onlyfans/import/csv{query}");
        let form = reqwest::multipart::Form::new().part("file", part);
        Self::send(self.request(reqwest::Method::POST, &path).multipart(form)).await
    }

    /// `GET path`, asserting 200; the JSON body.
    pub async fn get_json(&self, path: &str) -> Value {
        json_of(self.get(path).await, StatusCode::OK).await
    }

    /// `POST path` with a JSON body, asserting the `expected` status; the JSON body.
    pub async fn post_json(&self, path: &str, body: &Value, expected: StatusCode) -> Value {
        json_of(self.post(path, body).await, expected).await
    }

    /// Uploads a CSV, asserting 202 and the status URL; the job id.
    pub async fn import(&self, name: &str, bytes: Vec<u8>) -> String {
        let accepted = json_of(self.upload_csv(name, bytes, "").await, StatusCode::ACCEPTED).await;
        let id = accepted["jobId"].as_str().expect("a jobId").to_owned();
        assert_eq!(accepted["statusUrl"], format!("/api/jobs/{id}"));
        id
    }

    /// Creates a fan (asserting 201) and returns it.
    pub async fn create_fan(&self, body: Value) -> Value {
        self.post_json("/api/crm/fans", &body, StatusCode::CREATED)
            .await
    }

    /// Opens the conversation of `fan_id` (asserting a 2xx) and returns it.
    pub async fn open_conversation(&self, fan_id: i64) -> Value {
        let resp = self
            .post("/api/crm/conversations", &json!({ "fanId": fan_id }))
            .await;
        assert!(
            resp.status().is_success(),
            "opening a conversation: {}",
            resp.status()
        );
        resp.json().await.expect("a JSON conversation")
    }

    /// A fan with a conversation; returns (fan id, conversation id).
    pub async fn fan_with_conversation(&self, handle: &str) -> (i64, i64) {
        let fan = self
            .create_fan(json!({ "handle": handle, "name": handle }))
            .await;
        let fan_id = fan["id"].as_i64().unwrap();
        let conv = self.open_conversation(fan_id).await;
        (fan_id, conv["id"].as_i64().unwrap())
    }

    /// How many fans the user has.
    pub async fn fan_total(&self) -> i64 {
        self.get_json("/api/crm/fans?limit=1").await["total"]
            .as_i64()
            .unwrap()
    }

    /// Every outbound message of the user as the API shows it, read conversation by
    /// conversation (up to 200 conversations of up to 200 messages).
    pub async fn outbound_messages(&self) -> Vec<Value> {
        let conversations = self.get_json("/api/crm/conversations?limit=200").await;
        let mut out = vec![];
        for c in conversations["items"].as_array().unwrap() {
            let page = self
                .get_json(&format!(
                    "/api/crm/conversations/{}/messages?limit=200",
                    c["id"]
                ))
                .await;
            out.extend(
                page["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|m| m["direction"] == "out")
                    .cloned(),
            );
        }
        out
    }

    /// The message of conversation `conv` that `pick` chooses (among its newest 200); fails
    /// naming `what` when there is none.
    pub async fn message_where(
        &self,
        conv: i64,
        what: &str,
        pick: impl Fn(&Value) -> bool,
    ) -> Value {
        let page = self
            .get_json(&format!("/api/crm/conversations/{conv}/messages?limit=200"))
            .await;
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| pick(m))
            .cloned()
            .unwrap_or_else(|| panic!("{what} in conversation {conv}: {page}"))
    }

    pub async fn job(&self, id: &str) -> Value {
        self.get_json(&format!("/api/jobs/{id}")).await
    }

    /// Polls the job until it is final (60 s at most) and returns it.
    pub async fn wait_job(&self, id: &str) -> Value {
        self.wait_job_within(id, Duration::from_secs(60)).await
    }

    /// Polls the job until it is final; panics after `timeout`.
    pub async fn wait_job_within(&self, id: &str, timeout: Duration) -> Value {
        let every = Duration::from_millis(100);
        eventually(&format!("job {id} final"), timeout, every, || async {
            let job = self.job(id).await;
            if ["succeeded", "failed", "cancelled"].contains(&job["status"].as_str().unwrap()) {
                Ok(job)
            } else {
                Err(job.to_string())
            }
        })
        .await
    }

    /// Polls the campaign until it is `completed` (at most `timeout`); returns it.
    pub async fn wait_campaign(&self, id: i64, timeout: Duration) -> Value {
        let every = Duration::from_millis(200);
        eventually(
            &format!("campaign {id} completed"),
            timeout,
            every,
            || async {
                let c = self.get_json(&format!("/api/crm/campaigns/{id}")).await;
                if c["status"] == "completed" {
                    Ok(c)
                } else {
                    Err(c.to_string())
                }
            },
        )
        .await
    }

    /// Polls until the job's `progress.done` reaches `at_least` (60 s at most) and returns
    /// it; fails if the job finishes first.
    pub async fn wait_progress(&self, id: &str, at_least: u64) -> u64 {
        let (within, every) = (Duration::from_secs(60), Duration::from_millis(5));
        eventually("the job's progress", within, every, || async {
            let job = self.job(id).await;
            let done = job["progress"]["done"].as_u64().unwrap();
            assert!(
                job["status"] != "succeeded",
                "the job finished before it could be interrupted: {job}"
            );
            if done >= at_least {
                Ok(done)
            } else {
                Err(job.to_string())
            }
        })
        .await
    }
}

/// The instant a JSON timestamp stands for (the API writes RFC 3339 with an offset).
pub fn instant(v: &Value) -> chrono::DateTime<chrono::Utc> {
    v.as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .unwrap_or_else(|| panic!("not an RFC 3339 timestamp: {v}"))
        .to_utc()
}

pub fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
    s.parse().expect("a test timestamp")
}

/// The summary of a succeeded import job.
pub fn summary(job: &Value) -> Value {
    assert_eq!(job["status"], "succeeded", "the import succeeded: {job}");
    job["result"]["summary"].clone()
}

/// A CSV of `n` distinct fans with the SPEC's header.
pub fn generated_csv(n: usize) -> Vec<u8> {
    let mut out =
        String::from("Username,Display Name,Email,Subscription Tier,Total Spent,Last Seen\n");
    for i in 0..n {
        out.push_str(&format!(
            "fan{i},Fan {i},fan{i}@example.com,Tier{},${}.{:02},2025-01-{:02}\n",
            i % 3,
            i % 5000,
            i % 100,
            1 + i % 28
        ));
    }
    out.into_bytes()
}

pub const SAMPLE_CSV: &str = include_str!("../../fixtures/onlyfans_export.csv");

/// The handles of a page of fans, in order.
pub fn handles_of(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["handle"].as_str().unwrap().to_owned())
        .collect()
}

/// Asserts the status, then returns the JSON body.
pub async fn json_of(resp: Response, expected: StatusCode) -> Value {
    let status = resp.status();
    let text = resp.text().await.expect("a body");
    assert_eq!(status, expected, "unexpected status; body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("body is not JSON ({e}): {text}"))
}

/// Asserts a JSON error envelope with this status and code; returns the error object.
pub async fn error_of(resp: Response, expected: StatusCode, code: &str) -> Value {
    let body = json_of(resp, expected).await;
    assert_eq!(body["error"]["code"], code, "error code; body: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error message; body: {body}"
    );
    body["error"].clone()
}

//! `spawn_app`: the app on a random port with a database of its own, driven over HTTP.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use fanqueue::{
    auth::JwtKeys,
    settings::Settings,
    startup::{self, Application, Services},
    supervisor::Supervisor,
};
use fanqueue_jobs::{domain::UserId, runtime::Kind};
use reqwest::{Response, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

pub const JWT_SECRET: &str = "integration-test-secret-0123456789";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each named `async fn(TestApp)` once on SQLite and once on PostgreSQL, as
/// `<module>::sqlite::<name>` and `<module>::postgres::<name>`. With `tweak = |s| ...;` first,
/// every app of the module gets its settings adjusted.
#[macro_export]
macro_rules! on_both_backends {
    (tweak = $tweak:expr; $($name:ident),* $(,)?) => {
        $crate::on_both_backends!(@module sqlite, Sqlite, $tweak; $($name),*);
        $crate::on_both_backends!(@module postgres, Postgres, $tweak; $($name),*);
    };
    (@module $module:ident, $backend:ident, $tweak:expr; $($name:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let app = $crate::helpers::spawn_app_with($crate::helpers::Backend::$backend, $tweak).await;
                    super::$name(app).await
                }
            )*
        }
    };
    ($($name:ident),* $(,)?) => {
        $crate::on_both_backends!(tweak = |_| {}; $($name),*);
    };
}

/// A database made for one test and dropped after it.
pub enum TestDb {
    /// Held so the directory (and the SQLite file in it) lives as long as the test.
    Sqlite {
        _dir: tempfile::TempDir,
    },
    Postgres {
        admin_url: String,
        name: String,
    },
}

impl TestDb {
    pub async fn create(backend: Backend) -> (TestDb, String) {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("creating a temp dir");
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                (TestDb::Sqlite { _dir: dir }, url)
            }
            Backend::Postgres => {
                let admin_url = postgres_admin_url();
                let name = format!("fq_test_{}", uuid::Uuid::new_v4().simple());
                let mut conn = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL must be reachable at {admin_url} for the tests \
                         (scripts/test starts it): {e}"
                    )
                });
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("creating the test database");
                let url = database_url_for(&admin_url, &name);
                (TestDb::Postgres { admin_url, name }, url)
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let TestDb::Postgres { admin_url, name } = self {
            let (admin_url, name) = (admin_url.clone(), name.clone());
            // Drop runs inside the test's runtime: use a thread with a runtime of its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for cleanup");
                rt.block_on(async {
                    if let Ok(mut conn) = PgConnection::connect(&admin_url).await {
                        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                        let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
                            .execute(&mut conn)
                            .await;
                    }
                });
            })
            .join();
        }
    }
}

/// Takes the database `name` away: refuses new connections and ends the open ones (the
/// pools' idle connections too), as a failover or a network cut would.
pub async fn cut(admin: &mut PgConnection, name: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false"
    )))
    .execute(&mut *admin)
    .await
    .unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .execute(&mut *admin)
    .await
    .unwrap();
}

pub async fn restore(admin: &mut PgConnection, name: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true"
    )))
    .execute(&mut *admin)
    .await
    .unwrap();
}

pub fn postgres_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

/// The fan rows of `user` in the PostgreSQL database at `url`, and how many distinct handles
/// they hold: equal counts mean no fan was written twice.
pub async fn pg_fan_rows(url: &str, user: i64) -> (i64, i64) {
    let mut conn = PgConnection::connect(url).await.unwrap();
    sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT handle) FROM fans WHERE user_id = $1")
        .bind(user)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// A port free on loopback right now (the OS picks it; bound and released at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Samples of a Prometheus text exposition: `name{labels}` → value.
pub fn samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample line");
            (series.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn database_url_for(admin_url: &str, name: &str) -> String {
    let (base, _) = admin_url
        .rsplit_once('/')
        .expect("a database URL has a path");
    format!("{base}/{name}")
}

pub fn aws_endpoint() -> String {
    std::env::var("TEST_AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:5055".into())
}

/// Settings of a test app: random port, its own data dir, a fixed secret, no Redis, local
/// blobs, and a Redis key prefix of its own (for tests that turn Redis on).
pub fn test_settings(database_url: &str, data_dir: &std::path::Path) -> Settings {
    let mut s = Settings::load(None).expect("default settings load");
    s.api.listen_addr = "127.0.0.1:0".parse().unwrap();
    s.database.database_url = Some(database_url.to_owned());
    s.database.data_dir = data_dir.to_owned();
    s.api.jwt_secret = Some(SecretString::from(JWT_SECRET));
    s.database.redis_url = None;
    s.database.redis_prefix = format!("fqtest-{}", uuid::Uuid::new_v4().simple());
    s.jobs.job_backend = None;
    s.imports.s3_bucket = None;
    s
}

/// Tweak: uploaded files go to a fresh bucket on the S3 emulator.
pub fn with_s3(s: &mut Settings) {
    assert!(
        std::env::var("AWS_ACCESS_KEY_ID").is_ok(),
        "S3 tests need AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_REGION for the emulator (scripts/test sets them)"
    );
    s.imports.s3_bucket = Some(format!("fq-test-{}", uuid::Uuid::new_v4().simple()));
    s.aws_endpoint_url = Some(aws_endpoint());
}

/// Tweak: jobs run on Redis (queues under the app's own prefix).
pub fn with_redis_jobs(s: &mut Settings) {
    s.database.redis_url = Some(redis_url());
    s.jobs.job_backend = Some("redis".into());
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub keys: JwtKeys,
    pub database_url: String,
    pub settings: Settings,
    _db: TestDb,
    _data_dir: tempfile::TempDir,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// Spawns the app after `tweak` adjusted its settings.
pub async fn spawn_app_with(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    spawn(backend, tweak, true).await
}

/// The API alone: jobs are stored but nobody runs them.
pub async fn spawn_api_only(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    spawn(backend, tweak, false).await
}

async fn spawn(backend: Backend, tweak: impl FnOnce(&mut Settings), workers: bool) -> TestApp {
    let (db, url) = TestDb::create(backend).await;
    let data_dir = tempfile::tempdir().expect("a temp data dir");
    let mut settings = test_settings(&url, data_dir.path());
    tweak(&mut settings);
    let services = Services::open(&settings).await.expect("the services open");
    let app = Application::build(&settings, &services)
        .await
        .expect("the app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    if workers {
        start_workers(&settings, services);
    }
    TestApp {
        address,
        client: reqwest::Client::new(),
        keys: JwtKeys::new(&SecretString::from(JWT_SECRET)),
        database_url: url,
        settings,
        _db: db,
        _data_dir: data_dir,
    }
}

/// Runs the worker role's services for this deployment in the background, until the test
/// ends. A service that stops on its own fails the test loudly.
fn start_workers(settings: &Settings, services: Services) {
    let mut sup = Supervisor::default();
    startup::start_workers(&mut sup, settings, &services, &Kind::for_clients());
    tokio::spawn(async move {
        if let Err(e) = sup.run(std::future::pending()).await {
            panic!("the worker role stopped: {e:#}");
        }
    });
}

impl TestApp {
    /// The deployment's services (database, job backend, blobs, queue), opened anew.
    pub async fn services(&self) -> Services {
        Services::open(&self.settings)
            .await
            .expect("the services open")
    }

    /// Starts workers on this app's database (for apps spawned without them).
    pub async fn start_workers(&self) {
        start_workers(&self.settings, self.services().await);
    }

    /// A dispatcher of this deployment, not running: tests drive it with `run_once`.
    pub async fn dispatcher(&self) -> fanqueue_jobs::runtime::Dispatcher {
        startup::build_dispatcher(&self.settings, &self.services().await)
            .await
            .expect("the dispatcher builds")
    }

    /// A sweeper of this deployment, not running: tests fire its ticks.
    pub async fn sweeper(&self) -> fanqueue_jobs::runtime::Sweeper {
        startup::build_sweeper(&self.settings, &self.services().await).expect("the sweeper builds")
    }

    pub fn token(&self, user: i64) -> String {
        self.keys.issue(UserId(user), Duration::from_secs(3600))
    }

    /// An operator's token (user `user`).
    pub fn operator_token(&self, user: i64) -> String {
        self.keys.issue_as(
            UserId(user),
            fanqueue::auth::Role::Operator,
            Duration::from_secs(3600),
        )
    }

    /// GET with an operator's token.
    pub async fn operator_get(&self, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(self.operator_token(999))
            .send()
            .await
            .expect("request sent")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn get(&self, user: i64, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(self.token(user))
            .send()
            .await
            .expect("request sent")
    }

    pub async fn post(&self, user: i64, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(self.token(user))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn put(&self, user: i64, path: &str, body: &Value) -> Response {
        self.client
            .put(self.url(path))
            .bearer_auth(self.token(user))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn delete(&self, user: i64, path: &str) -> Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(self.token(user))
            .send()
            .await
            .expect("request sent")
    }

    /// Creates a fan for `user` and returns it (asserting 201).
    pub async fn create_fan(&self, user: i64, body: Value) -> Value {
        let resp = self.post(user, "/api/crm/fans", &body).await;
        json_of(resp, StatusCode::CREATED).await
    }

    /// Opens the conversation of `fan_id` for `user` and returns it.
    pub async fn open_conversation(&self, user: i64, fan_id: i64) -> Value {
        let resp = self
            .post(user, "/api/crm/conversations", &json!({ "fanId": fan_id }))
            .await;
        assert!(
            resp.status().is_success(),
            "opening a conversation: {}",
            resp.status()
        );
        resp.json().await.expect("a JSON conversation")
    }

    /// Uploads `bytes` as the multipart field `file` named `name`.
    pub async fn upload_csv(&self, user: i64, name: &str, bytes: Vec<u8>, query: &str) -> Response {
        let part = reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned());
        self.client
            .post(self.url(&format!("/api/onlyfans/import/csv{query}")))
            .bearer_auth(self.token(user))
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
            .await
            .expect("upload sent")
    }

    /// Uploads a CSV, expects 202, and returns the job id.
    pub async fn import(&self, user: i64, name: &str, bytes: Vec<u8>) -> String {
        let accepted = json_of(
            self.upload_csv(user, name, bytes, "").await,
            StatusCode::ACCEPTED,
        )
        .await;
        let id = accepted["jobId"].as_str().expect("a jobId").to_owned();
        assert_eq!(accepted["statusUrl"], format!("/api/jobs/{id}"));
        id
    }

    /// Polls a job until it is final (60 s at most) and returns it.
    pub async fn wait_job(&self, user: i64, id: &str) -> Value {
        wait_job_at(
            &self.client,
            &self.address,
            &self.token(user),
            id,
            Duration::from_secs(60),
        )
        .await
    }

    /// Polls until the fan list of `user` has `total` fans.
    pub async fn fan_total(&self, user: i64) -> i64 {
        json_of(
            self.get(user, "/api/crm/fans?limit=1").await,
            StatusCode::OK,
        )
        .await["total"]
            .as_i64()
            .unwrap()
    }

    /// A fan with a conversation, for `user`; returns (fan id, conversation id).
    pub async fn fan_with_conversation(&self, user: i64, handle: &str) -> (i64, i64) {
        let fan = self
            .create_fan(user, json!({ "handle": handle, "name": handle }))
            .await;
        let fan_id = fan["id"].as_i64().unwrap();
        let conv = self.open_conversation(user, fan_id).await;
        (fan_id, conv["id"].as_i64().unwrap())
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

/// Polls `GET /api/jobs/{id}` on `base` until the job is final; panics after `timeout`.
pub async fn wait_job_at(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    id: &str,
    timeout: Duration,
) -> Value {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let resp = client
            .get(format!("{base}/api/jobs/{id}"))
            .bearer_auth(token)
            .send()
            .await
            .expect("job poll sent");
        let job = json_of(resp, StatusCode::OK).await;
        if ["succeeded", "failed", "cancelled"].contains(&job["status"].as_str().unwrap()) {
            return job;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job {id} not final after {timeout:?}: {job}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

pub const SAMPLE_CSV: &str = include_str!("../fixtures/onlyfans_export.csv");

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

/// The `fanqueue` binary running as its own process, with only `env` set (plus PATH/HOME).
/// Runs `fanqueue args…` to its end in `dir`, with nothing in its environment but `env`.
pub fn run_fanqueue(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fanqueue"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("running the fanqueue binary")
}

/// Its JSON log lines are kept for the test to read.
pub struct AppProcess {
    pub child: Child,
    pub address: String,
    logs: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl AppProcess {
    /// Spawns `fanqueue args…` and waits until it logs that the API listens.
    pub fn spawn(args: &[&str], env: &[(&str, &str)], cwd: &std::path::Path) -> AppProcess {
        Self::spawn_until(args, env, cwd, "API listening; docs at /docs")
    }

    /// Spawns `fanqueue args…` and waits until it logs `ready` (a JSON log line's message).
    pub fn spawn_until(
        args: &[&str],
        env: &[(&str, &str)],
        cwd: &std::path::Path,
        ready: &str,
    ) -> AppProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fanqueue"));
        cmd.args(args)
            .current_dir(cwd)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawning the fanqueue binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = logs.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let wanted = ready.to_owned();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("TEST_CHILD_LOGS").is_some() {
                    eprintln!("{line}");
                }
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if !sent && v["fields"]["message"] == wanted.as_str() {
                    let _ = tx.send(v["fields"]["port"].as_u64());
                    sent = true;
                }
                kept.lock().unwrap().push(v);
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the fanqueue process did not log {ready:?} within 60 s"));
        let address = port
            .map(|p| format!("http://127.0.0.1:{p}"))
            .unwrap_or_default();
        AppProcess {
            child,
            address,
            logs,
        }
    }

    /// The warnings and errors logged so far, for a failing assertion's message.
    pub fn warnings(&self) -> Vec<Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["level"] == "WARN" || v["level"] == "ERROR")
            .cloned()
            .collect()
    }

    /// The log lines so far whose message is `message`.
    pub fn logged(&self, message: &str) -> Vec<Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["fields"]["message"] == message)
            .cloned()
            .collect()
    }

    /// Waits (at most `timeout`) until the process logs `message`; returns that line.
    pub async fn wait_for_log(&self, message: &str, timeout: Duration) -> Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(line) = self.logged(message).into_iter().next() {
                return line;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the process did not log {message:?} within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGTERM and waits (at most `timeout`) for the process to exit; returns its exit
    /// status and how long it took.
    pub async fn terminate(&mut self, timeout: Duration) -> (std::process::ExitStatus, Duration) {
        let sent = self.sigterm();
        self.exit_since(sent, timeout).await
    }

    /// Sends SIGTERM; returns when.
    pub fn sigterm(&self) -> std::time::Instant {
        self.signal("TERM")
    }

    /// Sends the signal named `name` (`TERM`, `STOP`, `CONT`…); returns when.
    pub fn signal(&self, name: &str) -> std::time::Instant {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{name} failed");
        std::time::Instant::now()
    }

    /// Waits (at most `timeout` after `sent`) for the process to exit; returns its exit
    /// status and how long after `sent` it exited.
    pub async fn exit_since(
        &mut self,
        sent: std::time::Instant,
        timeout: Duration,
    ) -> (std::process::ExitStatus, Duration) {
        loop {
            if let Some(exit) = self.child.try_wait().expect("the child's status") {
                return (exit, sent.elapsed());
            }
            assert!(
                sent.elapsed() < timeout,
                "the process did not exit within {timeout:?} of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A client of a running server (an [`AppProcess`]) acting as one user.
pub struct ApiClient {
    pub client: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl ApiClient {
    /// User `user` of the server at `base` (tokens signed with [`JWT_SECRET`]).
    pub fn new(base: &str, user: i64) -> Self {
        let keys = JwtKeys::new(&SecretString::from(JWT_SECRET));
        ApiClient {
            client: reqwest::Client::new(),
            base: base.to_owned(),
            token: keys.issue(UserId(user), Duration::from_secs(3600)),
        }
    }

    /// `GET path`, asserting 200; the JSON body.
    pub async fn get(&self, path: &str) -> Value {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("request sent");
        json_of(resp, StatusCode::OK).await
    }

    /// `POST path` with a JSON body, asserting the `expected` status; the JSON body.
    pub async fn post(&self, path: &str, body: &Value, expected: StatusCode) -> Value {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .expect("request sent");
        json_of(resp, expected).await
    }

    /// Uploads `bytes` as the CSV `name`, asserting 202; the job id.
    pub async fn upload(&self, name: &str, bytes: Vec<u8>) -> String {
        let part = reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned());
        let resp = self
            .client
            .post(format!("{}/api/onlyfans/import/csv", self.base))
            .bearer_auth(&self.token)
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
            .await
            .expect("upload sent");
        json_of(resp, StatusCode::ACCEPTED).await["jobId"]
            .as_str()
            .expect("a jobId")
            .to_owned()
    }

    /// An operator (user `user`) of the server at `base`.
    pub fn operator(base: &str, user: i64) -> Self {
        let keys = JwtKeys::new(&SecretString::from(JWT_SECRET));
        ApiClient {
            token: keys.issue_as(
                UserId(user),
                fanqueue::auth::Role::Operator,
                Duration::from_secs(3600),
            ),
            ..Self::new(base, user)
        }
    }

    /// Every outbound message of the user as the API shows it, read conversation by
    /// conversation (up to 200 conversations of up to 200 messages).
    pub async fn outbound_messages(&self) -> Vec<Value> {
        let conversations = self.get("/api/crm/conversations?limit=200").await;
        let mut out = vec![];
        for c in conversations["items"].as_array().unwrap() {
            let page = self
                .get(&format!(
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

    pub async fn job(&self, id: &str) -> Value {
        self.get(&format!("/api/jobs/{id}")).await
    }

    /// Polls the job until it is final; panics after `timeout`.
    pub async fn wait_job(&self, id: &str, timeout: Duration) -> Value {
        wait_job_at(&self.client, &self.base, &self.token, id, timeout).await
    }

    /// Polls the campaign until it is `completed` (at most `timeout`); returns it.
    pub async fn wait_campaign(&self, id: i64, timeout: Duration) -> Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let c = self.get(&format!("/api/crm/campaigns/{id}")).await;
            if c["status"] == "completed" {
                return c;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "campaign {id} not completed within {timeout:?}: {c}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Polls until the job's `progress.done` reaches `at_least` (60 s at most) and returns
    /// it; fails if the job finishes first.
    pub async fn wait_progress(&self, id: &str, at_least: u64) -> u64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let job = self.job(id).await;
            let done = job["progress"]["done"].as_u64().unwrap();
            assert!(
                job["status"] != "succeeded",
                "the job finished before it could be interrupted: {job}"
            );
            if done >= at_least {
                return done;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the job never progressed: {job}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for AppProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh SQS queue pair on the emulator: the main queue redrives to its DLQ after
/// `max_receives` receives. Returns (queue URL, DLQ URL).
pub async fn sqs_queues(fifo: bool, max_receives: u32) -> (String, String) {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let client = sqs_client().await;
    let base = format!("fq-test-{}", uuid::Uuid::new_v4().simple());
    let suffix = if fifo { ".fifo" } else { "" };
    let mut dlq = client
        .create_queue()
        .queue_name(format!("{base}-dlq{suffix}"));
    if fifo {
        dlq = dlq.attributes(A::FifoQueue, "true");
    }
    let dlq_url = dlq
        .send()
        .await
        .expect("the S3/SQS emulator creates a DLQ")
        .queue_url()
        .unwrap()
        .to_owned();
    let arn = client
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(A::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&A::QueueArn]
        .clone();
    let redrive =
        json!({ "deadLetterTargetArn": arn, "maxReceiveCount": max_receives.to_string() })
            .to_string();
    let mut main = client
        .create_queue()
        .queue_name(format!("{base}{suffix}"))
        .attributes(A::RedrivePolicy, redrive)
        .attributes(A::VisibilityTimeout, "30");
    if fifo {
        main = main.attributes(A::FifoQueue, "true");
    }
    let url = main
        .send()
        .await
        .expect("the emulator creates a queue")
        .queue_url()
        .unwrap()
        .to_owned();
    (url, dlq_url)
}

pub async fn sqs_client() -> aws_sdk_sqs::Client {
    assert!(
        std::env::var("AWS_ACCESS_KEY_ID").is_ok(),
        "SQS tests need AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_REGION for the emulator (scripts/test sets them)"
    );
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(aws_endpoint())
        .load()
        .await;
    aws_sdk_sqs::Client::new(&config)
}

/// The platform stand-in, in this process on a random port, until dropped.
pub struct Sim {
    pub base: String,
    client: reqwest::Client,
    stop: tokio_util::sync::CancellationToken,
}

impl Sim {
    /// A stand-in enforcing `per_minute` deliveries per creator.
    pub async fn start(per_minute: u32) -> Sim {
        let sim =
            fanqueue::platform_sim::PlatformSim::bind("127.0.0.1:0".parse().unwrap(), per_minute)
                .await
                .expect("the platform stand-in binds");
        let base = format!("http://127.0.0.1:{}", sim.port());
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(sim.run(stop.clone()));
        Sim {
            base,
            client: reqwest::Client::new(),
            stop,
        }
    }

    /// Where the dispatcher posts messages.
    pub fn messages_url(&self) -> String {
        format!("{}/messages", self.base)
    }

    /// Every accepted delivery, in arrival order.
    pub async fn deliveries(&self) -> Vec<Value> {
        let resp = self
            .client
            .get(format!("{}/deliveries", self.base))
            .send()
            .await
            .expect("the stand-in answers");
        json_of(resp, StatusCode::OK).await["items"]
            .as_array()
            .expect("a list of deliveries")
            .clone()
    }

    pub async fn stats(&self) -> Value {
        let resp = self
            .client
            .get(format!("{}/stats", self.base))
            .send()
            .await
            .expect("the stand-in answers");
        json_of(resp, StatusCode::OK).await
    }

    /// Injects faults (see `POST /faults`).
    pub async fn faults(&self, faults: Value) {
        let resp = self
            .client
            .post(format!("{}/faults", self.base))
            .json(&faults)
            .send()
            .await
            .expect("the stand-in answers");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "faults set");
    }

    /// Clears every injected fault (`DELETE /faults`).
    pub async fn clear_faults(&self) {
        let resp = self
            .client
            .delete(format!("{}/faults", self.base))
            .send()
            .await
            .expect("the stand-in answers");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "faults cleared");
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Tweak: the dispatcher delivers to `url` at `per_minute` per creator, each attempt timing
/// out after a second.
pub fn with_platform(url: &str, per_minute: u32) -> impl FnOnce(&mut Settings) + use<> {
    let url = url.to_owned();
    move |s: &mut Settings| {
        s.delivery.platform_api_url = Some(url);
        s.delivery.delivery_rate_per_minute = per_minute;
        s.delivery.platform_timeout_ms = 1_000;
    }
}

/// Tweak: outbound messages go to this SQS queue on the emulator.
pub fn with_sqs(url: &str, dlq: &str) -> impl FnOnce(&mut Settings) + use<> {
    let (url, dlq) = (url.to_owned(), dlq.to_owned());
    move |s: &mut Settings| {
        s.outbound.sqs_queue_url = Some(url);
        s.outbound.sqs_dlq_url = Some(dlq);
        s.aws_endpoint_url = Some(aws_endpoint());
    }
}

/// Reads every message off `queue` with a boto3 consumer (the emulator's Python client),
/// deleting as it goes; returns the bodies as JSON.
pub fn boto3_drain(queue: &str) -> Vec<Value> {
    let python = std::env::var("TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = r#"
import json, os, sys, boto3
sqs = boto3.client("sqs", endpoint_url=sys.argv[1], region_name=os.environ.get("AWS_REGION", "us-east-1"))
empty = 0
while empty < 3:
    got = sqs.receive_message(QueueUrl=sys.argv[2], MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
    if not got:
        empty += 1
        continue
    empty = 0
    for m in got:
        print(m["Body"])
        sqs.delete_message(QueueUrl=sys.argv[2], ReceiptHandle=m["ReceiptHandle"])
"#;
    let out = Command::new(&python)
        .args(["-c", script, &aws_endpoint(), queue])
        .output()
        .unwrap_or_else(|e| panic!("running the boto3 consumer with {python}: {e}"));
    assert!(
        out.status.success(),
        "boto3 consumer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON body"))
        .collect()
}

/// Where a [`Deployment`]'s outbound queue is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// A fresh standard queue and its DLQ on the SQS emulator.
    Sqs,
    /// The embedded queue, in the deployment's PostgreSQL database.
    Embedded,
}

/// A distributed deployment as operators run it: a PostgreSQL database of its own, Redis (the
/// test run's or one of the caller's) under a prefix of its own, the outbound queue, an API and
/// a worker process; dispatchers are started by the caller.
pub struct Deployment {
    pub env: Vec<(String, String)>,
    pub dir: tempfile::TempDir,
    /// The database's URL and name.
    pub url: String,
    pub db_name: String,
    /// The SQS DLQ's URL (empty on the embedded queue).
    pub dlq: String,
    /// The API's base URL.
    pub api: String,
    _db: TestDb,
    _api: AppProcess,
    _worker: AppProcess,
}

impl Deployment {
    /// The worker process's warnings and errors so far, for a failing assertion's message.
    pub fn worker_warnings(&self) -> Vec<Value> {
        self._worker.warnings()
    }

    /// On SQS, delivering to `platform` at `per_minute` per creator.
    pub async fn start(platform: &str, per_minute: u32, redis_url: &str) -> Deployment {
        Self::with(platform, per_minute, redis_url, Queue::Sqs, &[]).await
    }

    /// Like [`Deployment::start`], with the queue chosen and `extra` settings for every process.
    pub async fn with(
        platform: &str,
        per_minute: u32,
        redis_url: &str,
        queue: Queue,
        extra: &[(&str, &str)],
    ) -> Deployment {
        let (db, url) = TestDb::create(Backend::Postgres).await;
        let TestDb::Postgres { name: db_name, .. } = &db else {
            unreachable!("a PostgreSQL database")
        };
        let db_name = db_name.clone();
        let mut env: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), url.clone()),
            ("JWT_SECRET".into(), JWT_SECRET.into()),
            ("REDIS_URL".into(), redis_url.into()),
            (
                "REDIS_PREFIX".into(),
                format!("fqtest-{}", uuid::Uuid::new_v4().simple()),
            ),
            ("PLATFORM_API_URL".into(), platform.into()),
            ("DELIVERY_RATE_PER_MINUTE".into(), per_minute.to_string()),
            // Short attempts, so that a dead dispatcher's lease (timeout + 5 s) runs out soon.
            ("PLATFORM_TIMEOUT_MS".into(), "1000".into()),
            ("WRITE_LIMIT_PER_MINUTE".into(), "1000000".into()),
            ("CAMPAIGNS_PER_HOUR".into(), "100000".into()),
            // Tests queue a day's backlog for one creator.
            ("MAX_BACKLOG_PER_CREATOR".into(), "1000000".into()),
            // The delivery bench creates its fans and campaigns all at once: they wait for a
            // slot at the door instead of being shed (503) while the backlog is set up.
            ("REQUEST_QUEUE_MS".into(), "60000".into()),
        ];
        let mut dlq = String::new();
        if queue == Queue::Sqs {
            let (queue, dead) = sqs_queues(false, 5).await;
            dlq = dead;
            env.push(("SQS_QUEUE_URL".into(), queue));
            env.push(("SQS_DLQ_URL".into(), dlq.clone()));
            env.push(("AWS_ENDPOINT_URL".into(), aws_endpoint()));
            for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"] {
                let value = std::env::var(key)
                    .unwrap_or_else(|_| panic!("{key} must be set (scripts/test sets it)"));
                env.push((key.into(), value));
            }
        }
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push(((*k).into(), (*v).into()));
        }
        let dir = tempfile::tempdir().unwrap();
        let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let api = AppProcess::spawn(&["serve"], &refs, dir.path());
        let worker = AppProcess::spawn_until(&["worker"], &refs, dir.path(), "workers running");
        Deployment {
            api: api.address.clone(),
            env,
            dir,
            url,
            db_name,
            dlq,
            _db: db,
            _api: api,
            _worker: worker,
        }
    }

    /// Starts a `fanqueue dispatch` process with `extra` settings (over the deployment's).
    pub fn dispatcher_with(&self, extra: &[(&str, &str)]) -> AppProcess {
        let mut refs: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
            .collect();
        refs.extend_from_slice(extra);
        AppProcess::spawn_until(&["dispatch"], &refs, self.dir.path(), "dispatcher running")
    }

    pub fn dispatcher(&self) -> AppProcess {
        self.dispatcher_with(&[])
    }

    /// The SQS queue's URL (empty on the embedded queue).
    pub fn queue_url(&self) -> &str {
        self.env
            .iter()
            .find(|(k, _)| k == "SQS_QUEUE_URL")
            .map_or("", |(_, v)| v.as_str())
    }

    /// `n` fans of `user` and one campaign to all of them, its job done (the messages are on
    /// the outbound queue); returns `n`.
    pub async fn campaign(&self, user: i64, n: usize) -> usize {
        self.campaign_accepted_at(user, n).await;
        n
    }

    /// [`Deployment::campaign`]; returns when its first bulk send was accepted.
    pub async fn campaign_accepted_at(&self, user: i64, n: usize) -> chrono::DateTime<chrono::Utc> {
        let client = ApiClient::new(&self.api, user);
        let fans: Vec<Value> = futures::future::join_all((0..n).map(|i| {
            let client = &client;
            async move {
                let fan = json!({ "handle": format!("u{user}f{i}") });
                client
                    .post("/api/crm/fans", &fan, StatusCode::CREATED)
                    .await["id"]
                    .clone()
            }
        }))
        .await;
        let mut jobs = vec![];
        let mut accepted = None;
        for chunk in fans.chunks(100) {
            let bulk = json!({ "recipientIds": chunk, "content": "hello", "campaignName": "c" });
            client
                .post("/api/messages/bulk", &bulk, StatusCode::ACCEPTED)
                .await;
            accepted.get_or_insert_with(chrono::Utc::now);
        }
        let listed = client.get("/api/jobs?kind=bulk_send&limit=200").await;
        for job in listed["items"].as_array().unwrap() {
            jobs.push(job["id"].as_str().unwrap().to_owned());
        }
        for id in jobs {
            let job = client.wait_job(&id, Duration::from_secs(120)).await;
            assert_eq!(job["status"], "succeeded", "{job}");
        }
        accepted.expect("at least one fan")
    }

    /// Outbound message counts by status, from the database.
    pub async fn statuses(&self) -> std::collections::BTreeMap<String, i64> {
        let mut conn = PgConnection::connect(&self.url).await.unwrap();
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, COUNT(*) FROM messages WHERE direction = 'out' GROUP BY status",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        rows.into_iter().collect()
    }

    /// Waits until all `n` outbound messages are sent (at most `timeout`).
    pub async fn all_sent(&self, n: usize, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let s = self.statuses().await;
            if s.get("sent").copied() == Some(n as i64) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not all {n} sent within {timeout:?}: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A TCP forwarder to `target` on a port of its own, which a test can cut (new connections
/// are refused and open ones ended, as a network partition would) and restore.
pub struct Proxy {
    pub port: u16,
    cut: std::sync::Arc<std::sync::Mutex<Option<tokio_util::sync::CancellationToken>>>,
    stop: tokio_util::sync::CancellationToken,
}

impl Proxy {
    pub async fn start(target: std::net::SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let live = tokio_util::sync::CancellationToken::new();
        let cut = std::sync::Arc::new(std::sync::Mutex::new(Some(live)));
        let stop = tokio_util::sync::CancellationToken::new();
        let (state, stopped) = (cut.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    _ = stopped.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                };
                let Some(live) = state.lock().unwrap().clone() else {
                    continue; // cut: the connection is dropped at once
                };
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = live.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Proxy { port, cut, stop }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn cut(&self) {
        if let Some(live) = self.cut.lock().unwrap().take() {
            live.cancel();
        }
    }

    pub fn restore(&self) {
        self.cut
            .lock()
            .unwrap()
            .get_or_insert_with(tokio_util::sync::CancellationToken::new);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}

//! fanqueue as processes: `fanqueue` commands, a server process, a deployment of roles, and a
//! TCP proxy to cut them off from their services.

#[allow(unused_imports)]
use super::*;

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

    /// The process's API seen by user `user`.
    pub fn user(&self, user: i64) -> ApiClient {
        ApiClient::new(&self.address, user)
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
        let every = Duration::from_millis(100);
        eventually(&format!("{message:?} logged"), timeout, every, || async {
            (self.logged(message).into_iter().next()).ok_or_else(|| "not logged".to_owned())
        })
        .await
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

impl Drop for AppProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    api_process: AppProcess,
    worker: AppProcess,
}

impl Deployment {
    /// The deployment's API seen by user `user`.
    pub fn user(&self, user: i64) -> ApiClient {
        ApiClient::new(&self.api, user)
    }

    /// The worker process's warnings and errors so far, for a failing assertion's message.
    pub fn worker_warnings(&self) -> Vec<Value> {
        self.worker.warnings()
    }

    /// SIGKILLs the worker process and starts another in its place.
    pub fn kill_worker(&mut self) {
        self.worker.child.kill().expect("SIGKILL the worker");
        self.worker.child.wait().unwrap();
        self.worker = AppProcess::spawn_until(
            &["worker"],
            &self.env_refs(),
            self.dir.path(),
            "workers running",
        );
    }

    /// SIGKILLs the API process and starts another in its place (`api` is its new address).
    pub fn kill_api(&mut self) {
        self.api_process.child.kill().expect("SIGKILL the API");
        self.api_process.child.wait().unwrap();
        self.api_process = AppProcess::spawn(&["serve"], &self.env_refs(), self.dir.path());
        self.api = self.api_process.address.clone();
    }

    /// The deployment's settings, as a process's environment.
    pub fn env_refs(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
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
            api_process: api,
            worker,
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
                    .post_json("/api/crm/fans", &fan, StatusCode::CREATED)
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
                .post_json("/api/messages/bulk", &bulk, StatusCode::ACCEPTED)
                .await;
            accepted.get_or_insert_with(chrono::Utc::now);
        }
        let listed = client.get_json("/api/jobs?kind=bulk_send&limit=200").await;
        for job in listed["items"].as_array().unwrap() {
            jobs.push(job["id"].as_str().unwrap().to_owned());
        }
        for id in jobs {
            let job = client.wait_job_within(&id, Duration::from_secs(120)).await;
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
        let every = Duration::from_millis(200);
        eventually(&format!("all {n} sent"), timeout, every, || async {
            let s = self.statuses().await;
            if s.get("sent").copied() == Some(n as i64) {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        })
        .await
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

//! `spawn_app`: the app on a random port with a database of its own, driven over HTTP.

#[allow(unused_imports)]
use super::*;

pub const JWT_SECRET: &str = "integration-test-secret-0123456789";

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

    /// The campaign clock of this deployment, not running: tests call its `run_once`.
    pub async fn campaign_clock(&self) -> fanqueue_jobs::runtime::CampaignClock {
        let services = self.services().await;
        fanqueue_jobs::runtime::CampaignClock::new(services.db, services.jobs)
    }

    /// The automation clock of this deployment, not running: tests call its `run_at`.
    pub async fn automation_clock(&self) -> fanqueue_jobs::runtime::AutomationClock {
        let services = self.services().await;
        let cap = self
            .settings
            .automations
            .daily_cap()
            .expect("the daily cap");
        fanqueue_jobs::runtime::AutomationClock::new(services.db, services.jobs, cap)
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

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// The app seen by user `user`.
    pub fn user(&self, user: i64) -> ApiClient {
        ApiClient::with_token(self.client.clone(), &self.address, self.token(user))
    }

    /// The app seen by an operator (user `user`).
    pub fn operator(&self, user: i64) -> ApiClient {
        ApiClient::with_token(
            self.client.clone(),
            &self.address,
            self.operator_token(user),
        )
    }
}

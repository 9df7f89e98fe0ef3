//! Settings in layers: the defaults in `config/default.toml` (compiled in, so the binary runs
//! from anywhere), an optional file of the operator's, then environment variables.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::Context;
use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use fanqueue_jobs::crm::automations::{CapAction, DailyCap};

use crate::origins::AllowedOrigins;

const DEFAULTS: &str = include_str!("../config/default.toml");

/// The environment variables fanqueue reads, each overriding the setting of the same name.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("LISTEN_ADDR", "where the API listens [127.0.0.1:8080]"),
    (
        "DATA_DIR",
        "the embedded default's SQLite file, secret and blobs [data]",
    ),
    (
        "DATABASE_URL",
        "postgres://… or sqlite:…  [sqlite://<DATA_DIR>/fanqueue.db]",
    ),
    (
        "JWT_SECRET",
        "HS256 secret of bearer tokens [generated once into <DATA_DIR>/jwt_secret]",
    ),
    (
        "REDIS_URL",
        "Redis for quotas shared across API processes [unset: in-process]",
    ),
    (
        "REDIS_PREFIX",
        "prefix of fanqueue's Redis keys and queues [fanqueue]",
    ),
    (
        "WRITE_LIMIT_PER_MINUTE",
        "writes per user per minute before 429 [60]",
    ),
    (
        "MAX_IN_FLIGHT_REQUESTS",
        "/api requests one API process serves at once [128]",
    ),
    (
        "REQUEST_QUEUE_MS",
        "how long a request waits for a slot before 503 + Retry-After [250]",
    ),
    (
        "MAX_BACKLOG_PER_CREATOR",
        "undelivered messages per creator before sends get 429 backlog_full [1000]",
    ),
    (
        "IDEMPOTENCY_LEASE_SECS",
        "how long a keyed request holds its Idempotency-Key before a repeat may run it again, when it committed nothing [30]",
    ),
    (
        "CORS_ALLOWED_ORIGINS",
        "origins whose web pages may call the API, comma-separated [unset: none]",
    ),
    (
        "LOG_FORMAT",
        "json or pretty [json]; RUST_LOG sets the level [info]",
    ),
    (
        "JOB_BACKEND",
        "sqlite, postgres or redis (needs REDIS_URL) [follows DATABASE_URL]",
    ),
    ("IMPORT_MAX_BYTES", "largest CSV upload accepted [10485760]"),
    (
        "IMPORTS_PER_HOUR",
        "CSV imports per user per hour before 429 [10]",
    ),
    (
        "CAMPAIGNS_PER_HOUR",
        "bulk campaigns per user per hour before 429 [5]",
    ),
    ("IMPORT_BATCH_ROWS", "rows per import transaction [5000]"),
    (
        "S3_BUCKET",
        "bucket for uploaded CSV files [unset: <DATA_DIR>/blobs]",
    ),
    (
        "AWS_ENDPOINT_URL",
        "SQS/S3 endpoint, e.g. an emulator [AWS]",
    ),
    (
        "SQS_QUEUE_URL",
        "outbound SQS queue [unset: embedded queue]",
    ),
    ("SQS_DLQ_URL", "its dead-letter queue (for the DLQ count)"),
    (
        "OUTBOUND_MAX_RECEIVES",
        "embedded queue: receives before the DLQ [5]",
    ),
    ("PLATFORM_API_URL", "where the dispatcher delivers messages"),
    (
        "RATE_LIMITER_ENABLED",
        "false: messages skip the queue and are logged [true]",
    ),
    (
        "DELIVERY_RATE_PER_MINUTE",
        "platform deliveries per creator per minute [10]",
    ),
    (
        "PLATFORM_TIMEOUT_MS",
        "how long one delivery attempt may take [10000]",
    ),
    (
        "DELIVERY_MAX_ATTEMPTS",
        "delivery attempts before a message fails to the DLQ [5]",
    ),
    (
        "DISPATCH_CONCURRENCY",
        "deliveries in flight at once per dispatcher [64]",
    ),
    (
        "CAMPAIGN_AHEAD",
        "a running campaign's messages kept queued ahead of delivery [0: 20 s of the rate, 20 to 2000]",
    ),
    (
        "MAX_AUTOMATED_PER_FAN_PER_DAY",
        "automated and campaign messages to one fan a day, at most [2; 0: no cap]",
    ),
    (
        "DAILY_CAP_ACTION",
        "a send over that cap: `skip` it (counted) or `wait` for the next day [skip]",
    ),
    (
        "SWEEP_CRON",
        "when the sweeper runs, seconds first [0 */5 * * * *]",
    ),
    (
        "SWEEP_MAX_REDRIVES",
        "times a message goes back on the queue before it fails [3]",
    ),
    (
        "SWEEP_STUCK_AFTER_SECS",
        "a message on the queue (or a lost lease) this old is stuck [900]",
    ),
    (
        "RETENTION_HOURS",
        "final jobs and delivery attempts kept this long [168]",
    ),
    (
        "METRICS_ADDR",
        "serve /metrics (no token) here too, any role [unset: on the API, operators]",
    ),
    (
        "CLOUDWATCH_NAMESPACE",
        "also write the seeds' metrics as CloudWatch EMF lines on stdout [unset: off]",
    ),
    (
        "FANQUEUE_URL",
        "server the `import` command talks to [http://127.0.0.1:8080]",
    ),
    ("FANQUEUE_TOKEN", "bearer token the `import` command sends"),
];

/// Every setting, grouped by concern. The groups are flattened: a setting's name (and its
/// variable) is the same as if it stood alone, e.g. `IMPORT_BATCH_ROWS` → `imports.import_batch_rows`.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub database: DatabaseSettings,
    #[serde(flatten)]
    pub api: ApiSettings,
    #[serde(flatten)]
    pub jobs: JobSettings,
    #[serde(flatten)]
    pub imports: ImportSettings,
    #[serde(flatten)]
    pub outbound: OutboundSettings,
    #[serde(flatten)]
    pub delivery: DeliverySettings,
    #[serde(flatten)]
    pub automations: AutomationSettings,
    #[serde(flatten)]
    pub sweep: SweepSettings,
    #[serde(flatten)]
    pub telemetry: TelemetrySettings,
    /// SQS and S3 endpoint (an emulator); unset: AWS.
    pub aws_endpoint_url: Option<String>,
}

/// Where state lives: the SQL database (or the embedded file) and Redis.
#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    /// The embedded default's SQLite file, generated secret and blobs.
    pub data_dir: PathBuf,
    /// `postgres://…` or `sqlite:…`; unset: the SQLite file in `data_dir`.
    pub database_url: Option<String>,
    /// Shared quotas across API processes, and the `redis` job backend.
    pub redis_url: Option<String>,
    pub redis_prefix: String,
}

/// The HTTP API: where it listens, who may call, and how often.
#[derive(Debug, Clone, Deserialize)]
pub struct ApiSettings {
    pub listen_addr: SocketAddr,
    pub jwt_secret: Option<SecretString>,
    pub write_limit_per_minute: u32,
    pub imports_per_hour: u32,
    pub campaigns_per_hour: u32,
    /// `/api` requests served at once by one API process; past it requests wait up to
    /// `request_queue_ms` for a slot, then get 503 with Retry-After.
    pub max_in_flight_requests: usize,
    pub request_queue_ms: u64,
    /// A creator's undelivered messages past which a send or a campaign gets 429 `backlog_full`.
    pub max_backlog_per_creator: i64,
    /// Seconds a request made with an `Idempotency-Key` holds it before a repeat may take it
    /// over (only when the first attempt committed nothing: its process died, or it stalls).
    pub idempotency_lease_secs: u64,
    /// Browser apps on these origins may call the API (CORS); empty: none, as browsers default to.
    #[serde(default)]
    pub cors_allowed_origins: AllowedOrigins,
}

/// The job backend.
#[derive(Debug, Clone, Deserialize)]
pub struct JobSettings {
    /// `sqlite`, `postgres` or `redis`; unset: the database's own kind.
    pub job_backend: Option<String>,
}

/// CSV imports.
#[derive(Debug, Clone, Deserialize)]
pub struct ImportSettings {
    pub import_max_bytes: u64,
    pub import_batch_rows: usize,
    /// Uploaded files go to this bucket; unset: `<data_dir>/blobs`.
    pub s3_bucket: Option<String>,
}

/// The outbound queue between the send jobs and the dispatcher.
#[derive(Debug, Clone, Deserialize)]
pub struct OutboundSettings {
    /// SQS; unset: the embedded queue.
    pub sqs_queue_url: Option<String>,
    pub sqs_dlq_url: Option<String>,
    /// Embedded queue: receives before a message moves to the DLQ.
    pub outbound_max_receives: u32,
}

/// Delivery to the platform.
#[derive(Debug, Clone, Deserialize)]
pub struct DeliverySettings {
    pub platform_api_url: Option<String>,
    pub rate_limiter_enabled: bool,
    pub delivery_rate_per_minute: u32,
    pub platform_timeout_ms: u64,
    pub delivery_max_attempts: u32,
    pub dispatch_concurrency: usize,
    /// A running campaign's messages kept queued ahead of delivery; 0: twenty seconds of the
    /// delivery rate, at least 20 and at most 2,000.
    pub campaign_ahead: u32,
}

impl DeliverySettings {
    /// How many of a running campaign's messages are kept queued ahead of delivery.
    pub fn campaign_ahead(&self) -> i64 {
        match self.campaign_ahead {
            0 => (i64::from(self.delivery_rate_per_minute.max(1)) / 3).clamp(20, 2_000),
            n => i64::from(n),
        }
    }
}

/// Automations' creator-wide rules.
#[derive(Debug, Clone, Deserialize)]
pub struct AutomationSettings {
    /// Automated and campaign messages to one fan a (UTC) day, at most; 0: no cap.
    pub max_automated_per_fan_per_day: u32,
    /// `skip` or `wait`: what a send over the cap does.
    pub daily_cap_action: String,
}

impl AutomationSettings {
    /// The cap, its action parsed (an unknown one is refused when settings load).
    pub fn daily_cap(&self) -> anyhow::Result<DailyCap> {
        let action = CapAction::parse(&self.daily_cap_action)
            .map_err(|e| anyhow::anyhow!("DAILY_CAP_ACTION: {e}"))?;
        Ok(DailyCap {
            per_fan: self.max_automated_per_fan_per_day,
            action,
        })
    }
}

/// The sweeper.
#[derive(Debug, Clone, Deserialize)]
pub struct SweepSettings {
    pub sweep_cron: String,
    pub sweep_max_redrives: u32,
    pub sweep_stuck_after_secs: u64,
    pub retention_hours: u64,
}

/// Logs and metrics.
#[derive(Debug, Clone, Deserialize)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    /// A listener of its own for `/metrics`, without a token (for scrapers on a private
    /// network, and for roles without an API); unset: only the API's, for operators.
    pub metrics_addr: Option<SocketAddr>,
    /// CloudWatch embedded-metric-format lines on stdout, in this namespace.
    pub cloudwatch_namespace: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON lines, one per event, with the span fields (what log pipelines parse).
    Json,
    /// Human-readable lines (`text` is accepted too).
    #[serde(alias = "text")]
    Pretty,
}

impl Settings {
    /// Reads the layers. `file`, when given, must exist.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Settings> {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        if let Some(file) = file {
            anyhow::ensure!(file.exists(), "config file {} not found", file.display());
            figment = figment.merge(Toml::file(file));
        }
        // FANQUEUE_* are the `import` command's own flags (clap reads them), not settings.
        let keys: Vec<String> = ENV_VARS
            .iter()
            .filter(|(k, _)| !k.starts_with("FANQUEUE_"))
            .map(|(k, _)| k.to_lowercase())
            .collect();
        // An empty variable (`REDIS_URL=`) means "unset", as shells and compose files use it.
        let env = Env::raw()
            .filter(move |k| keys.iter().any(|key| k.as_str().eq_ignore_ascii_case(key)))
            .filter_map(|k| {
                std::env::var(k.as_str())
                    .ok()
                    .filter(|v| !v.trim().is_empty())
                    .map(|_| k.into())
            });
        let settings: Settings = figment
            .merge(env)
            .extract()
            .context("reading settings (config/default.toml, --config file, environment)")?;
        settings.automations.daily_cap()?;
        Ok(settings)
    }

    /// The database to use: `DATABASE_URL`, or the embedded SQLite file.
    pub fn database_url(&self) -> String {
        self.database
            .database_url
            .clone()
            .unwrap_or_else(|| fanqueue_jobs::db::Db::embedded_url(&self.database.data_dir))
    }

    /// `JWT_SECRET`, or the secret generated once and kept in the data directory.
    pub fn jwt_secret(&self) -> anyhow::Result<SecretString> {
        if let Some(secret) = &self.api.jwt_secret {
            anyhow::ensure!(
                secret.expose_secret().len() >= 16,
                "JWT_SECRET must be at least 16 characters"
            );
            return Ok(secret.clone());
        }
        let data_dir = &self.database.data_dir;
        let path = data_dir.join("jwt_secret");
        if let Ok(existing) = std::fs::read_to_string(&path) {
            tracing::warn!(path = %path.display(), "JWT_SECRET is not set: using the secret kept in the data directory");
            return Ok(SecretString::from(existing.trim().to_owned()));
        }
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
        let secret: String = {
            use rand::Rng;
            let bytes: [u8; 32] = rand::rng().random();
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        };
        write_private(&path, &secret)?;
        tracing::warn!(path = %path.display(), "JWT_SECRET is not set: generated a secret and kept it in the data directory (set JWT_SECRET when API replicas must share it)");
        Ok(SecretString::from(secret))
    }
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
// figment's `Jail::expect_with` fixes its closure's error type (figment::Error, large).
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    // Tests that read settings run in a figment `Jail`: it serializes them, so one test's
    // environment variables never leak into another's.
    #[test]
    fn defaults_load_without_any_setting() {
        figment::Jail::expect_with(|_| {
            let s = Settings::load(None).unwrap();
            assert_eq!(s.api.listen_addr.to_string(), "127.0.0.1:8080");
            assert_eq!(s.api.write_limit_per_minute, 60);
            assert_eq!(
                (s.imports.import_max_bytes, s.api.imports_per_hour),
                (10 * 1024 * 1024, 10)
            );
            assert_eq!(s.api.campaigns_per_hour, 5);
            assert_eq!(s.delivery.delivery_rate_per_minute, 10);
            assert_eq!(
                s.delivery.campaign_ahead(),
                20,
                "twenty seconds of 10 a minute, at least 20"
            );
            assert!(s.delivery.rate_limiter_enabled);
            assert!(s.database_url().starts_with("sqlite://"));
            assert_eq!(s.telemetry.log_format, LogFormat::Json);
            assert_eq!(s.telemetry.metrics_addr, None);
            assert!(s.api.cors_allowed_origins.is_empty());
            Ok(())
        });
    }

    #[test]
    fn an_unknown_daily_cap_action_is_refused_naming_it() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("DAILY_CAP_ACTION", "sometimes");
            let err = Settings::load(None).expect_err("an unknown action");
            assert!(format!("{err:#}").contains("DAILY_CAP_ACTION"), "{err:#}");
            Ok(())
        });
    }

    /// Every listed variable reaches its setting: a name missing from the list (or
    /// misspelt) would be silently ignored, as IMPORT_MAX_BYTES once was.
    #[test]
    fn every_listed_variable_overrides_its_setting() {
        figment::Jail::expect_with(|jail| {
            let values = [
                ("LISTEN_ADDR", "0.0.0.0:9999"),
                ("DATA_DIR", "/tmp/elsewhere"),
                ("DATABASE_URL", "postgres://u@h/db"),
                ("JWT_SECRET", "a-secret-from-the-environment"),
                ("REDIS_URL", "redis://r:6379"),
                ("REDIS_PREFIX", "p"),
                ("WRITE_LIMIT_PER_MINUTE", "7"),
                ("MAX_IN_FLIGHT_REQUESTS", "33"),
                ("REQUEST_QUEUE_MS", "44"),
                ("MAX_BACKLOG_PER_CREATOR", "55"),
                ("IDEMPOTENCY_LEASE_SECS", "12"),
                (
                    "CORS_ALLOWED_ORIGINS",
                    "https://app.example.com,http://127.0.0.1:3000",
                ),
                ("LOG_FORMAT", "pretty"),
                ("JOB_BACKEND", "redis"),
                ("IMPORT_MAX_BYTES", "123"),
                ("IMPORTS_PER_HOUR", "4"),
                ("CAMPAIGNS_PER_HOUR", "2"),
                ("IMPORT_BATCH_ROWS", "50"),
                ("S3_BUCKET", "b"),
                ("AWS_ENDPOINT_URL", "http://e"),
                ("SQS_QUEUE_URL", "http://q"),
                ("SQS_DLQ_URL", "http://d"),
                ("OUTBOUND_MAX_RECEIVES", "9"),
                ("PLATFORM_API_URL", "http://p"),
                ("RATE_LIMITER_ENABLED", "false"),
                ("DELIVERY_RATE_PER_MINUTE", "3"),
                ("PLATFORM_TIMEOUT_MS", "2500"),
                ("DELIVERY_MAX_ATTEMPTS", "7"),
                ("DISPATCH_CONCURRENCY", "8"),
                ("CAMPAIGN_AHEAD", "40"),
                ("MAX_AUTOMATED_PER_FAN_PER_DAY", "3"),
                ("DAILY_CAP_ACTION", "wait"),
                ("SWEEP_CRON", "*/10 * * * * *"),
                ("SWEEP_MAX_REDRIVES", "2"),
                ("SWEEP_STUCK_AFTER_SECS", "60"),
                ("RETENTION_HOURS", "24"),
                ("METRICS_ADDR", "127.0.0.1:9464"),
                ("CLOUDWATCH_NAMESPACE", "Huntaze/OnlyFans"),
            ];
            let listed: Vec<&str> = ENV_VARS
                .iter()
                .map(|(k, _)| *k)
                .filter(|k| !k.starts_with("FANQUEUE_"))
                .collect();
            assert_eq!(
                listed,
                values.map(|(k, _)| k),
                "the test covers every listed variable"
            );
            for (k, v) in values {
                jail.set_env(k, v);
            }
            let s = Settings::load(None).expect("settings load");
            assert_eq!(s.api.listen_addr.to_string(), "0.0.0.0:9999");
            assert_eq!(s.database.data_dir, PathBuf::from("/tmp/elsewhere"));
            assert_eq!(
                s.database.database_url.as_deref(),
                Some("postgres://u@h/db")
            );
            assert_eq!(
                s.api
                    .jwt_secret
                    .as_ref()
                    .map(|x| x.expose_secret().to_owned())
                    .as_deref(),
                Some("a-secret-from-the-environment")
            );
            assert_eq!(s.database.redis_url.as_deref(), Some("redis://r:6379"));
            assert_eq!(s.database.redis_prefix, "p");
            assert_eq!(s.api.write_limit_per_minute, 7);
            assert_eq!(
                (
                    s.api.max_in_flight_requests,
                    s.api.request_queue_ms,
                    s.api.max_backlog_per_creator
                ),
                (33, 44, 55)
            );
            assert_eq!(s.api.idempotency_lease_secs, 12);
            assert_eq!(
                s.api.cors_allowed_origins.to_string(),
                "https://app.example.com,http://127.0.0.1:3000"
            );
            assert_eq!(s.telemetry.log_format, LogFormat::Pretty);
            assert_eq!(
                s.telemetry.metrics_addr.map(|a| a.to_string()).as_deref(),
                Some("127.0.0.1:9464")
            );
            assert_eq!(
                s.telemetry.cloudwatch_namespace.as_deref(),
                Some("Huntaze/OnlyFans")
            );
            assert_eq!(s.jobs.job_backend.as_deref(), Some("redis"));
            assert_eq!(
                (
                    s.imports.import_max_bytes,
                    s.api.imports_per_hour,
                    s.imports.import_batch_rows
                ),
                (123, 4, 50)
            );
            assert_eq!(s.api.campaigns_per_hour, 2);
            let cap = s.automations.daily_cap().unwrap();
            assert_eq!(
                (cap.per_fan, cap.action),
                (3, fanqueue_jobs::crm::automations::CapAction::Wait)
            );
            assert_eq!(s.imports.s3_bucket.as_deref(), Some("b"));
            assert_eq!(s.aws_endpoint_url.as_deref(), Some("http://e"));
            assert_eq!(
                (
                    s.outbound.sqs_queue_url.as_deref(),
                    s.outbound.sqs_dlq_url.as_deref()
                ),
                (Some("http://q"), Some("http://d"))
            );
            assert_eq!(s.outbound.outbound_max_receives, 9);
            assert_eq!(s.delivery.platform_api_url.as_deref(), Some("http://p"));
            assert!(!s.delivery.rate_limiter_enabled);
            assert_eq!(s.delivery.delivery_rate_per_minute, 3);
            assert_eq!(
                (
                    s.delivery.platform_timeout_ms,
                    s.delivery.delivery_max_attempts,
                    s.delivery.dispatch_concurrency
                ),
                (2500, 7, 8)
            );
            assert_eq!(s.delivery.campaign_ahead(), 40);
            assert_eq!(s.sweep.sweep_cron, "*/10 * * * * *");
            assert_eq!(
                (
                    s.sweep.sweep_max_redrives,
                    s.sweep.sweep_stuck_after_secs,
                    s.sweep.retention_hours
                ),
                (2, 60, 24)
            );
            // An empty variable means unset.
            jail.set_env("REDIS_URL", "");
            assert_eq!(Settings::load(None).unwrap().database.redis_url, None);
            Ok(())
        });
    }

    #[test]
    fn generated_secret_is_kept_and_reused() {
        figment::Jail::expect_with(|jail| {
            let mut s = Settings::load(None).unwrap();
            s.database.data_dir = jail.directory().join("data");
            let first = s.jwt_secret().unwrap();
            let second = s.jwt_secret().unwrap();
            assert_eq!(first.expose_secret(), second.expose_secret());
            assert_eq!(first.expose_secret().len(), 64);
            Ok(())
        });
    }

    /// CORS origins come as a comma-separated variable or a config file's array, are kept in
    /// the form browsers send, and a wrong one stops the start with the variable and the entry.
    #[test]
    fn cors_origins_are_parsed_and_a_malformed_one_is_a_startup_error() {
        figment::Jail::expect_with(|jail| {
            let origins = |s: Settings| {
                s.api
                    .cors_allowed_origins
                    .iter()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            };
            jail.set_env(
                "CORS_ALLOWED_ORIGINS",
                "http://127.0.0.1:3000, https://App.example.com/",
            );
            assert_eq!(
                origins(Settings::load(None).unwrap()),
                ["http://127.0.0.1:3000", "https://app.example.com"]
            );
            jail.set_env("CORS_ALLOWED_ORIGINS", "");
            jail.create_file(
                "fanqueue.toml",
                r#"cors_allowed_origins = ["https://a.example.com", "http://localhost:8081"]"#,
            )?;
            let file = jail.directory().join("fanqueue.toml");
            assert_eq!(
                origins(Settings::load(Some(&file)).unwrap()),
                ["https://a.example.com", "http://localhost:8081"]
            );
            jail.set_env(
                "CORS_ALLOWED_ORIGINS",
                "https://app.example.com,app.example.com/x",
            );
            let err = format!("{:#}", Settings::load(None).unwrap_err());
            assert!(
                err.contains("CORS_ALLOWED_ORIGINS: `app.example.com/x` is not an origin"),
                "{err}"
            );
            Ok(())
        });
    }
}

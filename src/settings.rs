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

const DEFAULTS: &str = include_str!("../config/default.toml");

/// The environment variables fanqueue reads, each overriding the setting of the same name.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("LISTEN_ADDR", "where the API listens [127.0.0.1:8080]"),
    (
        "DATA_DIR",
        "directory of the embedded default's SQLite file and generated secret [data]",
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
    ("REDIS_PREFIX", "prefix of fanqueue's Redis keys [fanqueue]"),
    (
        "WRITE_LIMIT_PER_MINUTE",
        "writes per user per minute before 429 [60]",
    ),
    (
        "LOG_FORMAT",
        "text or json [text]; RUST_LOG sets the level [info]",
    ),
    (
        "JOB_BACKEND",
        "sqlite, postgres or redis [follows DATABASE_URL]",
    ),
    (
        "SQS_QUEUE_URL",
        "outbound SQS queue [unset: embedded queue]",
    ),
    ("SQS_DLQ_URL", "its dead-letter queue"),
    (
        "AWS_ENDPOINT_URL",
        "SQS/S3 endpoint, e.g. an emulator [AWS]",
    ),
    (
        "S3_BUCKET",
        "bucket for uploaded CSV files [unset: <DATA_DIR>/blobs]",
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
];

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub listen_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub jwt_secret: Option<SecretString>,
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    pub write_limit_per_minute: u32,
    pub import_max_bytes: u64,
    pub imports_per_hour: u32,
    pub import_batch_rows: usize,
    pub log_format: LogFormat,
    pub job_backend: Option<String>,
    pub sqs_queue_url: Option<String>,
    pub sqs_dlq_url: Option<String>,
    pub aws_endpoint_url: Option<String>,
    pub s3_bucket: Option<String>,
    pub platform_api_url: Option<String>,
    pub rate_limiter_enabled: bool,
    pub delivery_rate_per_minute: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
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
        Ok(settings)
    }

    /// The database to use: `DATABASE_URL`, or the embedded SQLite file.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| fanqueue_jobs::db::Db::embedded_url(&self.data_dir))
    }

    /// `JWT_SECRET`, or the secret generated once and kept in the data directory.
    pub fn jwt_secret(&self) -> anyhow::Result<SecretString> {
        if let Some(secret) = &self.jwt_secret {
            anyhow::ensure!(
                secret.expose_secret().len() >= 16,
                "JWT_SECRET must be at least 16 characters"
            );
            return Ok(secret.clone());
        }
        let path = self.data_dir.join("jwt_secret");
        if let Ok(existing) = std::fs::read_to_string(&path) {
            tracing::warn!(path = %path.display(), "JWT_SECRET is not set: using the secret kept in the data directory");
            return Ok(SecretString::from(existing.trim().to_owned()));
        }
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("creating the data directory {}", self.data_dir.display()))?;
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
mod tests {
    use super::*;

    #[test]
    fn defaults_load_without_any_setting() {
        let s = Settings::load(None).unwrap();
        assert_eq!(s.listen_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(s.write_limit_per_minute, 60);
        assert_eq!(s.delivery_rate_per_minute, 10);
        assert!(s.rate_limiter_enabled);
        assert!(s.database_url().starts_with("sqlite://"));
    }

    #[test]
    fn generated_secret_is_kept_and_reused() {
        let dir = std::env::temp_dir().join(format!("fq-secret-{}", uuid::Uuid::new_v4()));
        let mut s = Settings::load(None).unwrap();
        s.data_dir = dir.clone();
        let first = s.jwt_secret().unwrap();
        let second = s.jwt_secret().unwrap();
        assert_eq!(first.expose_secret(), second.expose_secret());
        assert_eq!(first.expose_secret().len(), 64);
        std::fs::remove_dir_all(dir).unwrap();
    }
}

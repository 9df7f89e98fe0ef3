//! The platform adapter: one HTTP POST of a message to `PLATFORM_API_URL`, carrying the
//! message id as `Idempotency-Key` on every attempt, so that a repeated attempt (after a
//! timeout, or by another dispatcher after a crash) takes effect once on the platform.

use std::time::Duration;

use anyhow::Context;
use reqwest::{StatusCode, header};

/// How one attempt ended, as the dispatcher acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// 2xx: the platform has it, under its own id when its answer gives one (platform events
    /// may name the message by it).
    Delivered {
        status: u16,
        platform_id: Option<String>,
    },
    /// 429: the creator is over the platform's limit; wait this long (`Retry-After`).
    RateLimited { status: u16, retry_after: Duration },
    /// Another 4xx: the platform refuses this message; trying again cannot help.
    Rejected { status: u16, reason: String },
    /// 5xx, a timeout or a connection error: worth another attempt.
    Failed { status: Option<u16>, reason: String },
}

impl Attempt {
    /// One word for how it ended (a metric label).
    pub fn label(&self) -> &'static str {
        match self {
            Attempt::Delivered { .. } => "delivered",
            Attempt::RateLimited { .. } => "rate_limited",
            Attempt::Rejected { .. } => "rejected",
            Attempt::Failed { .. } => "failed",
        }
    }
}

/// The platform's id of a delivered message: the `id` of its JSON answer (a string or a
/// number), when there is one.
fn platform_id(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        id: Option<serde_json::Value>,
    }
    let id = serde_json::from_slice::<Answer>(body).ok()?.id?;
    let id = match id {
        serde_json::Value::String(s) => s,
        serde_json::Value::Number(n) => n.to_string(),
        _ => return None,
    };
    (!id.is_empty() && id.len() <= PLATFORM_ID_MAX).then_some(id)
}

/// Longer ids are not the platform's message id as we know it: not kept.
const PLATFORM_ID_MAX: usize = 200;

/// The wait a 429 without a usable `Retry-After` gets: a whole window.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);
/// How much of a refusal's body is kept as the reason.
const REASON_MAX: usize = 500;

#[derive(Clone, Debug)]
pub struct Platform {
    client: reqwest::Client,
    url: String,
    timeout: Duration,
}

impl Platform {
    /// A client for `url`; each attempt gives up after `timeout`.
    pub fn new(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        reqwest::Url::parse(url).with_context(|| format!("PLATFORM_API_URL {url:?}"))?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()
            .context("building the platform's HTTP client")?;
        Ok(Platform {
            client,
            url: url.to_owned(),
            timeout,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The longest one attempt's request can be out.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Posts `body` (JSON) under `key`.
    pub async fn deliver(&self, key: &str, body: &str) -> Attempt {
        let sent = self
            .client
            .post(&self.url)
            .header(header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", key)
            .body(body.to_owned())
            .send()
            .await;
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) => {
                let what = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "could not connect"
                } else {
                    "request failed"
                };
                return Attempt::Failed {
                    status: None,
                    reason: format!("platform {what}: {}", error_chain(&e)),
                };
            }
        };
        let status = resp.status();
        if status.is_success() {
            let body = resp.bytes().await.unwrap_or_default();
            return Attempt::Delivered {
                status: status.as_u16(),
                platform_id: platform_id(&body),
            };
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Attempt::RateLimited {
                status: status.as_u16(),
                retry_after: retry_after(resp.headers()).unwrap_or(DEFAULT_RETRY_AFTER),
            };
        }
        let text = resp.text().await.unwrap_or_default();
        let mut reason = format!("platform answered {status}");
        let text = text.trim();
        if !text.is_empty() {
            reason.push_str(": ");
            reason.extend(text.chars().take(REASON_MAX));
        }
        if status.is_client_error() {
            Attempt::Rejected {
                status: status.as_u16(),
                reason,
            }
        } else {
            Attempt::Failed {
                status: Some(status.as_u16()),
                reason,
            }
        }
    }
}

/// `Retry-After` as seconds or as an HTTP date.
fn retry_after(headers: &header::HeaderMap) -> Option<Duration> {
    let raw = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = raw.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(raw).ok()?;
    (at.to_utc() - chrono::Utc::now()).to_std().ok()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(&format!(": {s}"));
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = header::HeaderMap::new();
        h.insert(header::RETRY_AFTER, "5".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(5)));
        let later = (chrono::Utc::now() + chrono::TimeDelta::seconds(30)).to_rfc2822();
        h.insert(header::RETRY_AFTER, later.parse().unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(28) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        h.insert(header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[tokio::test]
    async fn an_unreachable_platform_is_a_failure_worth_retrying() {
        let platform =
            Platform::new("http://127.0.0.1:9/messages", Duration::from_secs(1)).unwrap();
        match platform.deliver("1", "{}").await {
            Attempt::Failed {
                status: None,
                reason,
            } => {
                assert!(reason.starts_with("platform could not connect"), "{reason}")
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }
}

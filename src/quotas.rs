//! Per-user request quotas ("60 writes a minute", "10 imports an hour"), enforced by the API.
//!
//! A sliding-window log rather than a token bucket: "the 61st write inside any minute is
//! refused" is what the contract says, and a refill-as-you-go bucket would let a steady
//! client through 60 + 59 writes in its first minute. Two implementations with the same
//! semantics: in-process for a single API, Redis (one Lua script, Redis's own clock) when
//! several API processes must share one budget. An admitted call is a [`Charge`] that can be
//! refunded, so that a request that fails does not use up the caller's budget.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use redis::aio::ConnectionManager;

use fanqueue_jobs::domain::UserId;

/// A budget: at most `limit` calls per `window`, counted per user under `name`.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub name: &'static str,
    pub limit: u32,
    pub window: Duration,
}

/// The answer to "may this user make one more call?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Admitted, and counted: refund the charge if the call fails.
    Allowed(Charge),
    /// Refused; a slot frees up after this long.
    Limited { retry_after: Duration },
}

/// One admitted call in a user's window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    quota: &'static str,
    user: UserId,
    entry: Entry,
}

/// Which entry of the window is a call's.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// Its sequence number in the local log.
    Local(u64),
    /// Its member of the Redis sorted set.
    Redis(String),
}

/// Per (quota, user): the calls still inside the window, oldest first, each with its entry
/// number. A plain mutex: each check holds it for a few pointer moves, never across an await.
type CallLog = Arc<Mutex<Windows>>;

#[derive(Default)]
pub struct Windows {
    calls: HashMap<(&'static str, UserId), VecDeque<(Instant, u64)>>,
    next_entry: u64,
}

#[derive(Clone)]
pub enum Limiter {
    Local(CallLog),
    Redis {
        conn: ConnectionManager,
        prefix: String,
    },
}

/// Trims the window, then admits the call (as member `ARGV[3]`) if there is room; otherwise
/// answers how many microseconds until the oldest call leaves the window. Redis's clock, so
/// every API process agrees on "now".
const SLIDING_WINDOW_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"#;

impl Limiter {
    pub fn local() -> Self {
        Limiter::Local(Arc::default())
    }

    /// Connects to Redis; keys are `{prefix}:quota:{name}:{user}`.
    /// Quotas on Redis. It connects on first use and again after a lost connection, so an
    /// API starts while Redis is unreachable (writes are then let through: see `api::charge`).
    pub fn redis(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let conn = fanqueue_jobs::db::redis_connection(url)?;
        Ok(Limiter::Redis {
            conn,
            prefix: prefix.to_owned(),
        })
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Limiter::Local(_) => "in-process",
            Limiter::Redis { .. } => "redis",
        }
    }

    /// Whether the store answers: always for in-process quotas; a `PING` for Redis.
    pub async fn ping(&self) -> anyhow::Result<()> {
        match self {
            Limiter::Local(_) => Ok(()),
            Limiter::Redis { conn, .. } => {
                let _: String = redis::cmd("PING").query_async(&mut conn.clone()).await?;
                Ok(())
            }
        }
    }

    /// Counts one call against `quota` for `user` if there is room.
    pub async fn check(&self, quota: Quota, user: UserId) -> anyhow::Result<Decision> {
        match self {
            Limiter::Local(windows) => {
                let now = Instant::now();
                let mut w = windows.lock().expect("limiter lock poisoned");
                if w.calls.len() > 100_000 {
                    w.calls.retain(|_, calls| {
                        calls.back().is_some_and(|(t, _)| now - *t < quota.window)
                    });
                }
                w.next_entry += 1;
                let entry = w.next_entry;
                let calls = w.calls.entry((quota.name, user)).or_default();
                while calls.front().is_some_and(|(t, _)| now - *t >= quota.window) {
                    calls.pop_front();
                }
                if calls.len() < quota.limit as usize {
                    calls.push_back((now, entry));
                    Ok(Decision::Allowed(Charge {
                        quota: quota.name,
                        user,
                        entry: Entry::Local(entry),
                    }))
                } else {
                    let (oldest, _) = *calls.front().expect("a full window is not empty");
                    Ok(Decision::Limited {
                        retry_after: quota.window - (now - oldest),
                    })
                }
            }
            Limiter::Redis { conn, prefix } => {
                let member = uuid::Uuid::new_v4().simple().to_string();
                let wait_us: i64 = redis::Script::new(SLIDING_WINDOW_LUA)
                    .key(redis_key(prefix, quota.name, user))
                    .arg(quota.window.as_micros() as i64)
                    .arg(quota.limit)
                    .arg(&member)
                    .invoke_async(&mut conn.clone())
                    .await
                    .context("running the quota script on Redis")?;
                Ok(if wait_us == 0 {
                    Decision::Allowed(Charge {
                        quota: quota.name,
                        user,
                        entry: Entry::Redis(member),
                    })
                } else {
                    Decision::Limited {
                        retry_after: Duration::from_micros(wait_us as u64),
                    }
                })
            }
        }
    }

    /// Gives an admitted call back: its slot is free again at once.
    pub async fn refund(&self, charge: &Charge) -> anyhow::Result<()> {
        match (self, &charge.entry) {
            (Limiter::Local(windows), Entry::Local(entry)) => {
                let mut w = windows.lock().expect("limiter lock poisoned");
                if let Some(calls) = w.calls.get_mut(&(charge.quota, charge.user)) {
                    calls.retain(|(_, e)| e != entry);
                }
                Ok(())
            }
            (Limiter::Redis { conn, prefix }, Entry::Redis(member)) => {
                let _: i64 = redis::cmd("ZREM")
                    .arg(redis_key(prefix, charge.quota, charge.user))
                    .arg(member)
                    .query_async(&mut conn.clone())
                    .await
                    .context("refunding a quota charge on Redis")?;
                Ok(())
            }
            _ => anyhow::bail!("a charge refunded to another limiter than its own"),
        }
    }
}

fn redis_key(prefix: &str, quota: &str, user: UserId) -> String {
    format!("{prefix}:quota:{quota}:{user}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE_PER_MINUTE: Quota = Quota {
        name: "t",
        limit: 3,
        window: Duration::from_secs(60),
    };

    #[tokio::test]
    async fn local_limiter_refuses_the_call_past_the_limit_with_a_wait() {
        let limiter = Limiter::local();
        for _ in 0..3 {
            assert!(matches!(
                limiter.check(THREE_PER_MINUTE, UserId(1)).await.unwrap(),
                Decision::Allowed(_)
            ));
        }
        match limiter.check(THREE_PER_MINUTE, UserId(1)).await.unwrap() {
            Decision::Limited { retry_after } => {
                assert!(
                    retry_after > Duration::from_secs(59) && retry_after <= Duration::from_secs(60)
                )
            }
            Decision::Allowed(_) => panic!("the 4th call in a minute must be refused"),
        }
        // Another user has a budget of their own.
        assert!(matches!(
            limiter.check(THREE_PER_MINUTE, UserId(2)).await.unwrap(),
            Decision::Allowed(_)
        ));
    }

    #[tokio::test]
    async fn local_limiter_frees_slots_as_the_window_slides() {
        let limiter = Limiter::local();
        let quota = Quota {
            name: "t",
            limit: 1,
            window: Duration::from_millis(50),
        };
        assert!(matches!(
            limiter.check(quota, UserId(1)).await.unwrap(),
            Decision::Allowed(_)
        ));
        let Decision::Limited { retry_after } = limiter.check(quota, UserId(1)).await.unwrap()
        else {
            panic!("second call inside the window must be refused");
        };
        tokio::time::sleep(retry_after).await;
        assert!(matches!(
            limiter.check(quota, UserId(1)).await.unwrap(),
            Decision::Allowed(_)
        ));
    }

    #[tokio::test]
    async fn a_refunded_call_frees_its_slot_and_only_its_own() {
        let limiter = Limiter::local();
        let mut charges = vec![];
        for _ in 0..3 {
            match limiter.check(THREE_PER_MINUTE, UserId(1)).await.unwrap() {
                Decision::Allowed(c) => charges.push(c),
                other => panic!("admitted within the limit: {other:?}"),
            }
        }
        limiter.refund(&charges[1]).await.unwrap();
        // Refunding the same charge twice frees one slot, not two.
        limiter.refund(&charges[1]).await.unwrap();
        assert!(matches!(
            limiter.check(THREE_PER_MINUTE, UserId(1)).await.unwrap(),
            Decision::Allowed(_)
        ));
        assert!(matches!(
            limiter.check(THREE_PER_MINUTE, UserId(1)).await.unwrap(),
            Decision::Limited { .. }
        ));
    }
}

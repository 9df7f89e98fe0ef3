//! The per-creator delivery limiter: at most `per_minute` deliveries per creator in any
//! 60-second window *as the platform sees them*, shared by every dispatcher replica.
//!
//! Two rules, checked together and atomically before each delivery:
//! - **Spacing**: one slot every `60 / per_minute` seconds (GCRA's theoretical arrival time),
//!   so a backlog goes out evenly and send-time estimates are simple arithmetic.
//! - **The platform's window**: each delivery is logged with the *latest* time it can reach
//!   the platform: `start + max_flight` while its request is out, the time its answer came back
//!   once it has. A delivery may start only while fewer than `per_minute` logged deliveries
//!   could have arrived within the last 60 seconds. Since a delivery arrives no earlier than it
//!   starts, no 60-second window at the platform ever holds more than `per_minute`, whatever the
//!   network delays, retries or replicas (a late delivery followed by an on-time one cannot
//!   squeeze an extra one in, as plain spacing would allow).
//!
//! A slot is taken before its message is claimed, and the request leaves after both. Right
//! before the request, [`DeliveryLimiter::confirm`] checks that the slot is still one the
//! limiter counts and moves its latest arrival to `now + max_flight`: a dispatcher paused
//! between its slot and its request (SIGSTOP, a stall) for longer than the limiter remembers
//! the slot gets `false` and sends nothing with it, and one paused for less has its delivery
//! counted from when its request really leaves, not from when its slot was taken.
//!
//! The state lives in Redis when replicas share it (one Lua script per operation, on Redis's
//! own clock, keys per creator) or in this process on the embedded default. Either can lose it
//! (a Redis restart, a process restart): a creator without state answers [`Slot::Unknown`], and
//! the dispatcher seeds it from the attempts the database logged before delivering again. Errors
//! reaching Redis are returned, never treated as "allowed": the limiter fails closed.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;

use crate::domain::UserId;

/// The platform's window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// About how long a message takes from its 202 to its creator's schedule (its job runs, puts
/// it on the outbound queue, a dispatcher's intake parks it), for estimates.
pub const HANDOFF: Duration = Duration::from_secs(1);

/// The pace of deliveries per creator.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub per_minute: u32,
    /// The longest a delivery can take to reach the platform: its request timeout plus a
    /// margin. Until its answer is in, a delivery counts as arriving that late.
    pub max_flight: Duration,
}

impl Pace {
    /// The time between two slots.
    pub fn spacing(&self) -> Duration {
        WINDOW / self.per_minute.max(1)
    }

    /// When a message queued at `queued` goes out, with `ahead` waiting messages before it,
    /// if its creator's latest delivery started at `last` and nothing fails: the schedule
    /// behind `estimatedSendTime`. Its first chance is the first slot after it has reached the
    /// creator's schedule ([`HANDOFF`] after its 202), on the creator's grid of slots when a
    /// delivery is recent.
    pub fn eta(
        &self,
        queued: DateTime<Utc>,
        last: Option<DateTime<Utc>>,
        ahead: i64,
    ) -> DateTime<Utc> {
        let ready = queued + HANDOFF;
        let spacing = chrono::TimeDelta::from_std(self.spacing()).unwrap_or_default();
        let first = match last {
            Some(last) if last + spacing >= ready => last + spacing,
            // The grid: the first slot after `ready` counted from `last`, while the
            // creator's window still remembers it.
            Some(last)
                if ready - last < chrono::TimeDelta::from_std(WINDOW).unwrap_or_default() =>
            {
                let behind = (ready - last).num_microseconds().unwrap_or(0);
                let step = spacing.num_microseconds().unwrap_or(1).max(1);
                last + chrono::TimeDelta::microseconds((behind + step - 1) / step * step)
            }
            _ => ready,
        };
        let ahead = u32::try_from(ahead.max(0)).unwrap_or(u32::MAX);
        first + self.spacing().saturating_mul(ahead)
    }

    fn micros(d: Duration) -> i64 {
        i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
    }

    /// How long a creator's state is kept without deliveries (Redis key expiry).
    fn idle_ttl(&self) -> Duration {
        WINDOW + self.max_flight + Duration::from_secs(60)
    }
}

/// The answer to "may this creator have a delivery now?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// Yes: the slot is taken. Report how it ended with [`DeliveryLimiter::finished`], or
    /// give it back with [`DeliveryLimiter::cancel`] if nothing was sent.
    Go(Ticket),
    /// Not before this long.
    Wait(Duration),
    /// The limiter holds nothing about this creator (never seen, idle long enough to be
    /// forgotten, or its state was lost): [`DeliveryLimiter::seed`] it from the attempt log
    /// first.
    Unknown,
}

/// A slot taken for one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub creator: UserId,
    entry: String,
}

/// A delivery the database logged, for seeding: when it started and, if its answer came
/// back, when.
#[derive(Debug, Clone, Copy)]
pub struct PastDelivery {
    pub started: DateTime<Utc>,
    pub finished: Option<DateTime<Utc>>,
}

#[derive(Clone)]
pub enum DeliveryLimiter {
    Local {
        lanes: Arc<Mutex<HashMap<UserId, Lane>>>,
        pace: Pace,
    },
    Redis {
        conn: ConnectionManager,
        prefix: String,
        pace: Pace,
    },
}

/// One creator's state in the local limiter. Times are microseconds since the Unix epoch.
#[derive(Debug, Default)]
pub struct Lane {
    /// (latest arrival at the platform, entry number) of recent deliveries.
    log: Vec<(i64, u64)>,
    /// The earliest start of the next delivery (spacing).
    next_start: i64,
    paused_until: i64,
    next_entry: u64,
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(Pace::micros)
        .unwrap_or(0)
}

fn micros_of(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn wait_of(micros: i64) -> Duration {
    Duration::from_micros(micros.max(1) as u64)
}

/// Keys of a creator; the braces keep them in one Redis Cluster slot.
fn keys(prefix: &str, creator: UserId) -> [String; 4] {
    let base = format!("{prefix}:pace:{{{creator}}}");
    [
        format!("{base}:log"),
        format!("{base}:next"),
        format!("{base}:pause"),
        format!("{base}:seeded"),
    ]
}

/// KEYS: log, next, pause, seeded. ARGV: limit, window, spacing, flight (µs), entry, ttl (ms).
/// Returns {0, now} (go), {1, wait µs} (the longest of the three rules' waits) or {2, 0}
/// (unknown).
const RESERVE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if redis.call('EXISTS', KEYS[4]) == 0 then return {2, 0} end
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local spacing = tonumber(ARGV[3])
local flight = tonumber(ARGV[4])
local wait = 0
local paused = tonumber(redis.call('GET', KEYS[3]) or '0')
if paused - now > wait then wait = paused - now end
local nxt = tonumber(redis.call('GET', KEYS[2]) or '0')
if nxt - now > wait then wait = nxt - now end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count >= limit then
  local e = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
  local leaves = tonumber(e[2]) + window - now
  if leaves > wait then wait = leaves end
end
if wait > 0 then return {1, wait} end
redis.call('ZADD', KEYS[1], string.format('%.0f', now + flight), ARGV[5])
redis.call('SET', KEYS[2], string.format('%.0f', math.max(nxt, now) + spacing), 'PX', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[4], ARGV[6])
return {0, now}
"#;

/// KEYS: log. ARGV: entry. The delivery's answer is in: it arrived by now.
const FINISH_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], 'XX', string.format('%.0f', now), ARGV[1])
end
return 1
"#;

/// KEYS: log, seeded. ARGV: entry, window (µs), flight (µs), ttl (ms). The request leaves
/// now: 1 when the entry still counts (its latest arrival is within the last window), which
/// then counts as arriving at `now + flight` at the latest; 0 (and the entry dropped) when it
/// no longer counts or was lost.
const CONFIRM_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) <= now - tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
local latest = math.max(tonumber(score), now + tonumber(ARGV[3]))
redis.call('ZADD', KEYS[1], 'XX', string.format('%.0f', latest), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"#;

/// KEYS: pause. ARGV: wait (µs). Pauses until now + wait, never shortening a longer pause.
const PAUSE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local untl = now + tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if untl > cur then
  redis.call('SET', KEYS[1], string.format('%.0f', untl), 'PX', math.ceil(tonumber(ARGV[1]) / 1000))
end
return 1
"#;

/// KEYS: log, next, seeded. ARGV: ttl (ms), next start (µs), then (score, entry) pairs.
/// Does nothing when another replica seeded first.
const SEED_LUA: &str = r#"
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
for i = 3, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1])
end
local nxt = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[2]) > nxt then redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[1]) end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
redis.call('SET', KEYS[3], '1', 'PX', ARGV[1])
return 1
"#;

impl DeliveryLimiter {
    pub fn local(pace: Pace) -> Self {
        DeliveryLimiter::Local {
            lanes: Arc::default(),
            pace,
        }
    }

    /// A limiter on Redis; keys are `{prefix}:pace:{creator}:…`. It connects on first use and
    /// again after a lost connection, so a dispatcher starts (and waits, delivering nothing)
    /// while Redis is unreachable instead of failing to start.
    pub fn redis(url: &str, prefix: &str, pace: Pace) -> anyhow::Result<Self> {
        let conn = crate::db::redis_connection(url)?;
        Ok(DeliveryLimiter::Redis {
            conn,
            prefix: prefix.to_owned(),
            pace,
        })
    }

    pub fn pace(&self) -> Pace {
        match self {
            DeliveryLimiter::Local { pace, .. } | DeliveryLimiter::Redis { pace, .. } => *pace,
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            DeliveryLimiter::Local { .. } => "in-process",
            DeliveryLimiter::Redis { .. } => "redis",
        }
    }

    /// Takes the creator's next slot if it is free now.
    pub async fn reserve(&self, creator: UserId) -> anyhow::Result<Slot> {
        match self {
            DeliveryLimiter::Local { lanes, pace } => {
                let now = now_micros();
                let mut lanes = lanes.lock().expect("limiter lock poisoned");
                let Some(lane) = lanes.get_mut(&creator) else {
                    return Ok(Slot::Unknown);
                };
                Ok(lane.reserve(creator, now, pace))
            }
            DeliveryLimiter::Redis { conn, prefix, pace } => {
                let entry = uuid::Uuid::new_v4().simple().to_string();
                let (code, value): (i64, i64) = redis::Script::new(RESERVE_LUA)
                    .key(keys(prefix, creator).as_slice())
                    .arg(pace.per_minute.max(1))
                    .arg(Pace::micros(WINDOW))
                    .arg(Pace::micros(pace.spacing()))
                    .arg(Pace::micros(pace.max_flight))
                    .arg(&entry)
                    .arg(pace.idle_ttl().as_millis() as u64)
                    .invoke_async(&mut conn.clone())
                    .await
                    .context("reserving a delivery slot on Redis")?;
                Ok(match code {
                    0 => Slot::Go(Ticket { creator, entry }),
                    1 => Slot::Wait(wait_of(value)),
                    _ => Slot::Unknown,
                })
            }
        }
    }

    /// The delivery's request leaves now: `true` when its slot still counts in the window (it
    /// then counts as arriving up to `max_flight` from now), `false` when the limiter no
    /// longer counts it (the slot was taken longer ago than the limiter remembers, or its
    /// state was lost). On `false` nothing may be sent with this slot.
    pub async fn confirm(&self, ticket: &Ticket) -> anyhow::Result<bool> {
        match self {
            DeliveryLimiter::Local { lanes, pace } => {
                let now = now_micros();
                let mut lanes = lanes.lock().expect("limiter lock poisoned");
                Ok(lanes
                    .get_mut(&ticket.creator)
                    .is_some_and(|lane| lane.confirm(&ticket.entry, now, pace)))
            }
            DeliveryLimiter::Redis { conn, prefix, pace } => {
                let [log, _, _, seeded] = keys(prefix, ticket.creator);
                let counted: i64 = redis::Script::new(CONFIRM_LUA)
                    .key(log)
                    .key(seeded)
                    .arg(&ticket.entry)
                    .arg(Pace::micros(WINDOW))
                    .arg(Pace::micros(pace.max_flight))
                    .arg(pace.idle_ttl().as_millis() as u64)
                    .invoke_async(&mut conn.clone())
                    .await
                    .context("confirming a delivery slot on Redis")?;
                Ok(counted == 1)
            }
        }
    }

    /// The delivery's answer came back: it reached the platform by now, if at all.
    pub async fn finished(&self, ticket: &Ticket) -> anyhow::Result<()> {
        match self {
            DeliveryLimiter::Local { lanes, .. } => {
                let now = now_micros();
                let mut lanes = lanes.lock().expect("limiter lock poisoned");
                if let Some(lane) = lanes.get_mut(&ticket.creator) {
                    lane.settle(&ticket.entry, Some(now));
                }
                Ok(())
            }
            DeliveryLimiter::Redis { conn, prefix, .. } => {
                let [log, ..] = keys(prefix, ticket.creator);
                let _: i64 = redis::Script::new(FINISH_LUA)
                    .key(log)
                    .arg(&ticket.entry)
                    .invoke_async(&mut conn.clone())
                    .await
                    .context("recording a delivery's end on Redis")?;
                Ok(())
            }
        }
    }

    /// Nothing was sent with this slot: it no longer counts in the window (the spacing it
    /// took stays, which only errs on the slow side).
    pub async fn cancel(&self, ticket: &Ticket) -> anyhow::Result<()> {
        match self {
            DeliveryLimiter::Local { lanes, .. } => {
                let mut lanes = lanes.lock().expect("limiter lock poisoned");
                if let Some(lane) = lanes.get_mut(&ticket.creator) {
                    lane.settle(&ticket.entry, None);
                }
                Ok(())
            }
            DeliveryLimiter::Redis { conn, prefix, .. } => {
                let [log, ..] = keys(prefix, ticket.creator);
                let _: i64 = redis::cmd("ZREM")
                    .arg(log)
                    .arg(&ticket.entry)
                    .query_async(&mut conn.clone())
                    .await
                    .context("giving back a delivery slot on Redis")?;
                Ok(())
            }
        }
    }

    /// The platform asked for a pause (a 429 with Retry-After): no slot for `wait`, on every
    /// replica.
    pub async fn pause(&self, creator: UserId, wait: Duration) -> anyhow::Result<()> {
        match self {
            DeliveryLimiter::Local { lanes, .. } => {
                let until = now_micros() + Pace::micros(wait);
                let mut lanes = lanes.lock().expect("limiter lock poisoned");
                let lane = lanes.entry(creator).or_default();
                lane.paused_until = lane.paused_until.max(until);
                Ok(())
            }
            DeliveryLimiter::Redis { conn, prefix, .. } => {
                let [_, _, pause, _] = keys(prefix, creator);
                let _: i64 = redis::Script::new(PAUSE_LUA)
                    .key(pause)
                    .arg(Pace::micros(wait).max(1))
                    .invoke_async(&mut conn.clone())
                    .await
                    .context("pausing a creator on Redis")?;
                Ok(())
            }
        }
    }

    /// Gives an unknown creator its recent deliveries, as the database logged them. A
    /// creator that is already known (another replica seeded it first) is left as it is.
    pub async fn seed(&self, creator: UserId, past: &[PastDelivery]) -> anyhow::Result<()> {
        let pace = self.pace();
        let flight = Pace::micros(pace.max_flight);
        let spacing = Pace::micros(pace.spacing());
        let arrivals = past
            .iter()
            .map(|p| p.finished.map_or(micros_of(p.started) + flight, micros_of));
        let next_start = past
            .iter()
            .map(|p| micros_of(p.started) + spacing)
            .max()
            .unwrap_or(0);
        match self {
            DeliveryLimiter::Local { lanes, .. } => {
                let mut lanes = lanes.lock().expect("limiter lock poisoned");
                if let std::collections::hash_map::Entry::Vacant(v) = lanes.entry(creator) {
                    let mut lane = Lane {
                        next_start,
                        ..Lane::default()
                    };
                    for arrival in arrivals {
                        lane.next_entry += 1;
                        lane.log.push((arrival, lane.next_entry));
                    }
                    v.insert(lane);
                }
                Ok(())
            }
            DeliveryLimiter::Redis { conn, prefix, .. } => {
                let [log, next, _, seeded] = keys(prefix, creator);
                let seed = redis::Script::new(SEED_LUA);
                let mut script = seed.prepare_invoke();
                script
                    .key(log)
                    .key(next)
                    .key(seeded)
                    .arg(pace.idle_ttl().as_millis() as u64)
                    .arg(next_start);
                for (i, arrival) in arrivals.enumerate() {
                    script.arg(arrival).arg(format!("seed-{i}"));
                }
                let _: i64 = script
                    .invoke_async(&mut conn.clone())
                    .await
                    .context("seeding a creator's delivery window on Redis")?;
                Ok(())
            }
        }
    }
}

impl Lane {
    /// Takes a slot when all three rules allow it; otherwise answers the longest wait.
    fn reserve(&mut self, creator: UserId, now: i64, pace: &Pace) -> Slot {
        let window = Pace::micros(WINDOW);
        self.log.retain(|(arrival, _)| *arrival > now - window);
        let limit = pace.per_minute.max(1) as usize;
        let mut wait = (self.paused_until - now).max(self.next_start - now);
        if self.log.len() >= limit {
            self.log.sort_unstable();
            let (leaves, _) = self.log[self.log.len() - limit];
            wait = wait.max(leaves + window - now);
        }
        if wait > 0 {
            return Slot::Wait(wait_of(wait));
        }
        self.next_entry += 1;
        self.log
            .push((now + Pace::micros(pace.max_flight), self.next_entry));
        self.next_start = self.next_start.max(now) + Pace::micros(pace.spacing());
        Slot::Go(Ticket {
            creator,
            entry: self.next_entry.to_string(),
        })
    }

    /// See [`DeliveryLimiter::confirm`]: whether the entry still counts at `now`; if so it
    /// counts as arriving `max_flight` from now at the latest, if not it is dropped.
    fn confirm(&mut self, entry: &str, now: i64, pace: &Pace) -> bool {
        let window = Pace::micros(WINDOW);
        let Ok(entry) = entry.parse::<u64>() else {
            return false;
        };
        let Some(i) = self.log.iter().position(|(_, e)| *e == entry) else {
            return false;
        };
        let (arrival, _) = &mut self.log[i];
        if *arrival <= now - window {
            self.log.swap_remove(i);
            return false;
        }
        *arrival = (*arrival).max(now + Pace::micros(pace.max_flight));
        true
    }

    /// Sets the entry's arrival to `arrived`, or drops it when `None`.
    fn settle(&mut self, entry: &str, arrived: Option<i64>) {
        let Ok(entry) = entry.parse::<u64>() else {
            return;
        };
        match arrived {
            Some(at) => {
                for (arrival, e) in &mut self.log {
                    if *e == entry {
                        *arrival = at;
                    }
                }
            }
            None => self.log.retain(|(_, e)| *e != entry),
        }
    }
}

#[cfg(test)]
mod tests;

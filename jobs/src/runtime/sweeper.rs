//! The sweeper service: apalis-cron fires on every tick of `SWEEP_CRON`, and each tick
//! submits that tick's [`Sweep`] job, which a worker of the `sweep` kind runs. apalis-cron
//! fires on every replica; the tick's job id is the same on all of them, so one sweep is
//! stored per tick and the others' submissions are refused (see [`sweep`](crate::kinds::sweep)).

use std::str::FromStr;

use anyhow::Context;
use apalis::prelude::*;
use apalis_cron::{CronScheduler, Tick};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::{
    db::Db,
    engine::{JobBackend, JobId, RunContext, execute::execute, record},
    kinds::{
        Deps,
        sweep::{self, Sweep, SweepReport},
    },
};

/// Parses a cron expression (seconds first: `0 */5 * * * *` is every five minutes).
pub fn schedule(expr: &str) -> anyhow::Result<cron::Schedule> {
    cron::Schedule::from_str(expr).with_context(|| {
        format!("SWEEP_CRON {expr:?} is not a cron expression (sec min hour day month weekday)")
    })
}

#[derive(Clone)]
pub struct Sweeper {
    db: Db,
    backend: JobBackend,
    schedule: cron::Schedule,
    sweep: Sweep,
}

/// What the cron worker's handler gets.
#[derive(Clone)]
struct Fire {
    db: Db,
    backend: JobBackend,
}

async fn on_tick(tick: Tick, fire: Data<Fire>) -> Result<(), BoxDynError> {
    let at = DateTime::<Utc>::from_timestamp(tick.get_timestamp() as i64, 0).unwrap_or_default();
    match sweep::submit(&fire.db, &fire.backend, at).await {
        Ok(Some(job)) => tracing::info!(job_id = %job, tick = %at, "sweep submitted"),
        Ok(None) => {
            tracing::debug!(tick = %at, "this tick's sweep was submitted by another sweeper")
        }
        // The next tick tries again; nothing is lost by skipping one.
        Err(e) => {
            tracing::warn!(tick = %at, error = format!("{e:#}"), "could not submit the sweep")
        }
    }
    Ok(())
}

impl Sweeper {
    pub fn new(db: Db, backend: JobBackend, deps: &Deps, schedule: cron::Schedule) -> Self {
        Sweeper {
            db,
            backend,
            schedule,
            sweep: Sweep::new(deps),
        }
    }

    /// Fires ticks until `cancel`. (The sweep jobs run on the `sweep` kind's worker.)
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(schedule = %self.schedule, "sweeper running");
        let fire = Fire {
            db: self.db.clone(),
            backend: self.backend.clone(),
        };
        let worker = WorkerBuilder::new(format!("sweeper-{}", std::process::id()))
            .backend(CronScheduler::new(self.schedule.clone()))
            .data(fire)
            .build(on_tick);
        // Dropped at once on cancel: the cron stream would otherwise hold the shutdown until
        // its next tick, and a submission cut short commits nothing (the tick is skipped).
        tokio::select! {
            _ = cancel.cancelled() => Ok(()),
            ended = worker.run() => ended.context("the sweeper's cron worker"),
        }
    }

    /// Fires the tick `at` and runs its sweep here, to its end; `None` when that tick's sweep
    /// was already submitted (by another sweeper, or an earlier call).
    pub async fn fire(&self, at: DateTime<Utc>) -> anyhow::Result<Option<(JobId, SweepReport)>> {
        let Some(job) = sweep::submit(&self.db, &self.backend, at).await? else {
            return Ok(None);
        };
        let ctx = RunContext {
            shutdown: CancellationToken::new(),
        };
        execute(&self.sweep, &self.db, job.clone(), &ctx)
            .await
            .map_err(|e| anyhow::anyhow!("the sweep failed: {e}"))?;
        let record = record::get(&self.db, crate::domain::UserId::SYSTEM, &job).await?;
        let report = serde_json::from_value(
            record
                .result
                .map(|r| r.0)
                .context("the sweep job has no result")?,
        )?;
        Ok(Some((job, report)))
    }

    /// One sweep now, for tests: the tick is the current millisecond.
    pub async fn run_once(&self) -> anyhow::Result<SweepReport> {
        let (_, report) = self
            .fire(Utc::now())
            .await?
            .context("this millisecond's sweep was already taken")?;
        Ok(report)
    }
}

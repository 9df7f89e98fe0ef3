//! The automation clock: runs each enrollment's steps when they come due, and the daily
//! triggers (`inactive`, `subscription_expiring`) once a day. Every replica of the `sweep`
//! role runs one. A batch of due enrollments is one transaction: their rows are locked
//! (PostgreSQL skips those another clock holds; SQLite writes one transaction at a time), each
//! step's record, its send's message and the enrollment's next step commit together, so a
//! kill anywhere repeats nothing and loses nothing.

use std::{
    collections::{BTreeMap, HashMap, HashSet, hash_map::Entry},
    time::Duration,
};

use chrono::TimeDelta;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    crm::{
        automations::{
            self, Automation, CapAction, DailyCap, Definition, Step, Trigger,
            definition::{next_day, roll},
            enrollments::{self, Candidate, Enrollment, StepDone, entry, exit, held},
        },
        messages::{self, LANE_AUTOMATIONS, NewQueued, Outgoing},
        segments::{self, Condition, Param},
    },
    db::{Db, StoreError},
    domain::{AutomationId, FanId, MessageId, Timestamp, UserId},
    engine::{JobBackend, JobId, NewJob},
    kinds::{SubmitError, bulk_send::BulkSend},
};

/// How often the clock looks: a step runs within this of its due time (when the clock keeps
/// up).
pub const EVERY: Duration = Duration::from_millis(500);
/// Enrollments a transaction advances, at most.
const PER_BATCH: i64 = 500;
/// Batches a look runs, at most (the next look takes the rest).
const BATCHES_PER_LOOK: usize = 40;
/// Daily checks a look runs, at most.
const CHECKS_PER_LOOK: i64 = 20;

/// What one look did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Looked {
    /// Fans the daily triggers enrolled.
    pub enrolled: usize,
    /// Enrollments moved on.
    pub advanced: usize,
    /// Messages queued.
    pub sent: usize,
}

pub struct AutomationClock {
    db: Db,
    backend: JobBackend,
    cap: DailyCap,
}

/// A send planned in a batch, stored with the others once the batch is walked.
struct Planned {
    enrollment: Enrollment,
    step: i32,
    variant: Option<String>,
    out: Outgoing,
    held_by: Option<String>,
}

impl AutomationClock {
    pub fn new(db: Db, backend: JobBackend, cap: DailyCap) -> Self {
        AutomationClock { db, backend, cap }
    }

    /// Looks every [`EVERY`] until `cancel`. A failing look (the database away) is logged and
    /// the next one tries again: a batch is one transaction, so nothing is half done.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(
            every_ms = EVERY.as_millis() as u64,
            "automation clock running"
        );
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(EVERY) => {}
            }
            if let Err(e) = self.run_once().await {
                tracing::warn!(error = %e, "the automation clock could not look; it tries again");
            }
        }
    }

    /// One look now.
    pub async fn run_once(&self) -> Result<Looked, SubmitError> {
        self.run_at(Timestamp::now()).await
    }

    /// One look as if the time were `now` (tests step through waits and days with it).
    pub async fn run_at(&self, now: Timestamp) -> Result<Looked, SubmitError> {
        // A daily check that fails (logged; the next look tries again) holds up no step.
        let enrolled = self.daily_checks(now).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "a daily automation check failed; the next look tries again");
            0
        });
        let mut looked = Looked {
            enrolled,
            ..Looked::default()
        };
        for _ in 0..BATCHES_PER_LOOK {
            let (advanced, sent) = self.advance_due(now).await?;
            looked.advanced += advanced;
            looked.sent += sent;
            // Until nothing is due: an enrollment sends once a batch, so its next step (due
            // now too) is the next batch's.
            if advanced == 0 {
                break;
            }
        }
        Ok(looked)
    }

    /// Runs the daily triggers not yet run today: each automation's check is one transaction
    /// that holds its row, so two schedulers run it once.
    async fn daily_checks(&self, now: Timestamp) -> Result<usize, SubmitError> {
        let today = now.0.date_naive();
        let mut enrolled = 0;
        if !automations::any_check_due(&self.db, today).await? {
            return Ok(0);
        }
        loop {
            let mut tx = self.db.begin().await?;
            let due = automations::due_checks(&mut tx, today, 1).await?;
            let Some(a) = due.into_iter().next() else {
                tx.commit().await?;
                return Ok(enrolled);
            };
            let (only, key) = daily_candidates(&a, now);
            let fans = enrollments::enroll(&mut tx, &a, None, only, key, now).await?;
            automations::checked(&mut tx, a.id, today).await?;
            tx.commit().await?;
            tracing::info!(
                automation_id = a.id.0,
                enrolled = fans.len(),
                "daily trigger checked"
            );
            enrolled += fans.len();
            if enrolled as i64 >= CHECKS_PER_LOOK * PER_BATCH {
                return Ok(enrolled);
            }
        }
    }

    /// Advances one batch of due enrollments: returns how many, and how many messages it
    /// queued.
    async fn advance_due(&self, now: Timestamp) -> Result<(usize, usize), SubmitError> {
        if !enrollments::any_due(&self.db, now).await? {
            return Ok((0, 0));
        }
        let mut tx = self.db.begin().await?;
        let due = enrollments::due(&mut tx, now, PER_BATCH).await?;
        if due.is_empty() {
            tx.commit().await?;
            return Ok((0, 0));
        }
        let fetched = due.len();
        // One enrollment a fan a batch: a batch's messages are stored under one job, matched
        // back to their rows by (job, fan). A fan's other due enrollments go in the next batch.
        let mut fans_seen = HashSet::new();
        let mut due: Vec<Enrollment> = due
            .into_iter()
            .filter(|e| fans_seen.insert(e.fan_id))
            .collect();
        // The cap counts a fan's messages of the day and then sends: only for the fans whose
        // cap lock this batch holds (another scheduler's batch, or a campaign's feed, may be
        // counting them now). The others wait for a later batch.
        let mut blocked = 0;
        let mut sent_today: HashMap<FanId, i64> = HashMap::new();
        if self.cap.per_fan > 0 {
            let fans: Vec<FanId> = due.iter().map(|e| e.fan_id).collect();
            let held = DailyCap::try_hold(&mut tx, &fans).await?;
            let holding: HashSet<FanId> = held.iter().copied().collect();
            due.retain(|e| holding.contains(&e.fan_id));
            blocked = fans.len() - due.len();
            sent_today =
                messages::automated_since(&mut tx, &held, DailyCap::day_start(now)).await?;
        }
        let mut definitions: HashMap<(AutomationId, i32), Definition> = HashMap::new();
        let mut walk = Walk {
            now,
            cap: self.cap,
            sent_today: &mut sent_today,
            done: vec![],
            planned: vec![],
        };
        for e in &due {
            let key = (e.automation_id, e.version);
            if let Entry::Vacant(slot) = definitions.entry(key) {
                match automations::version(&mut tx, e.automation_id, e.version).await? {
                    Some(d) => {
                        slot.insert(d);
                    }
                    // Its version is gone (not something the API does): it ends rather than
                    // stall the clock on it.
                    None => {
                        enrollments::finish(&mut tx, e.id, e.step, Some(exit::FAILED), now).await?;
                        continue;
                    }
                }
            }
            let span = tracing::info_span!(
                "automation_step",
                user_id = e.user_id.0,
                automation_id = e.automation_id.0,
                enrollment_id = e.id.0,
                fan_id = e.fan_id.0,
            );
            walk.enrollment(&mut tx, e, &definitions[&key])
                .instrument(span)
                .await?;
        }
        let Walk {
            mut done, planned, ..
        } = walk;
        // A job per creator: its messages are its own (a creator sees and may cancel it).
        let mut jobs: BTreeMap<UserId, (JobId, Vec<MessageId>)> = BTreeMap::new();
        for p in &planned {
            jobs.entry(p.enrollment.user_id)
                .or_insert_with(|| (JobId::generate(), vec![]));
        }
        let rows: Vec<NewQueued> = planned
            .iter()
            .map(|p| NewQueued {
                user: p.enrollment.user_id,
                fan: p.enrollment.fan_id,
                out: &p.out,
                job: &jobs[&p.enrollment.user_id].0,
                campaign: None,
                run: None,
                turn: 0,
                lane: LANE_AUTOMATIONS,
            })
            .collect();
        let stored = messages::insert_queued(&mut tx, &rows, now).await?;
        for (p, m) in planned.iter().zip(&stored) {
            if let Some(m) = m {
                let job = jobs
                    .get_mut(&p.enrollment.user_id)
                    .expect("the creator's job");
                job.1.push(m.id);
            }
            done.push(StepDone {
                enrollment: p.enrollment.id,
                step: p.step,
                kind: "send",
                outcome: if m.is_some() { "sent" } else { "skipped" }.to_owned(),
                held_by: p.held_by.clone(),
                message: m.as_ref().map(|m| m.id),
                variant: p.variant.clone(),
            });
        }
        enrollments::record(&mut tx, &done, now).await?;
        let mut queued = vec![];
        for (user, (id, ids)) in jobs {
            if ids.is_empty() {
                continue;
            }
            let new_job = NewJob::of::<BulkSend>(
                id,
                user,
                json!({ "automationSends": ids.len(), "messageIds": ids }),
            )
            .with_total(ids.len() as i64);
            self.backend.enqueue(&mut tx, &new_job).await?;
            queued.push(new_job);
        }
        tx.commit().await?;
        let mut sent = 0;
        for job in queued {
            self.backend.after_commit(&self.db, &job).await;
            let n = job.total.unwrap_or(0) as usize;
            sent += n;
            tracing::debug!(user_id = job.user.0, job_id = %job.id, messages = n, "automated messages queued");
        }
        Ok((fetched - blocked, sent))
    }
}

/// The fans a daily trigger looks for today, and the key that makes each enrollment once per
/// subscription period or inactivity spell.
fn daily_candidates(a: &Automation, now: Timestamp) -> (Condition, fn(&Candidate) -> String) {
    let mut only = Condition::everyone();
    match a.definition.0.trigger {
        Trigger::Inactive { days } => {
            let since = only.bind(Param::At(Timestamp(now.0 - TimeDelta::days(days.into()))));
            only.and(&format!("COALESCE(f.last_seen_at, f.created_at) < {since}"));
            let key = |c: &Candidate| {
                let spell = c.last_seen_at.unwrap_or(c.created_at);
                format!("inactive:{}", spell.to_rfc3339())
            };
            (only, key)
        }
        Trigger::SubscriptionExpiring { days_before } => {
            let from = only.bind(Param::At(now));
            let to = only.bind(Param::At(Timestamp(
                now.0 + TimeDelta::days(days_before.into()),
            )));
            only.and(&format!(
                "f.subscription = 'renewal_off' AND f.subscription_ends_at > {from}
                 AND f.subscription_ends_at <= {to}"
            ));
            let key = |c: &Candidate| {
                let ends = c.subscription_ends_at.map(|t| t.to_rfc3339());
                format!("expiring:{}", ends.unwrap_or_default())
            };
            (only, key)
        }
        // Not a daily trigger: nobody.
        _ => {
            only.and("FALSE");
            (only, |_: &Candidate| String::new())
        }
    }
}

/// One batch's walk through its enrollments' steps.
struct Walk<'a> {
    now: Timestamp,
    cap: DailyCap,
    sent_today: &'a mut HashMap<FanId, i64>,
    done: Vec<StepDone>,
    planned: Vec<Planned>,
}

impl Walk<'_> {
    /// Runs `e`'s steps from its current one until one waits (a wait, quiet hours, the daily
    /// cap) or the enrollment ends.
    async fn enrollment(
        &mut self,
        tx: &mut crate::db::Tx,
        e: &Enrollment,
        def: &Definition,
    ) -> Result<(), StoreError> {
        let now = self.now;
        let mut step = e.step as usize;
        let mut held_by = e.held_by.clone();
        loop {
            let Some(current) = def.steps.get(step) else {
                enrollments::finish(tx, e.id, step as i32, None, now).await?;
                return Ok(());
            };
            let mut record = |outcome: &str, held: Option<String>| {
                self.done.push(StepDone {
                    enrollment: e.id,
                    step: step as i32,
                    kind: current.kind(),
                    outcome: outcome.to_owned(),
                    held_by: held,
                    message: None,
                    variant: None,
                })
            };
            let next = match current {
                Step::Wait(_) => {
                    record("waited", None);
                    step + 1
                }
                Step::Exit {} => {
                    record("exited", None);
                    enrollments::finish(tx, e.id, step as i32, Some(exit::EXIT_STEP), now).await?;
                    return Ok(());
                }
                Step::Condition(c) => {
                    let holds = segments::matches(tx, e.user_id, e.fan_id, &c.filter, now).await?;
                    record(if holds { "passed" } else { "failed" }, None);
                    match (holds, c.otherwise) {
                        (true, _) => step + 1,
                        (false, automations::definition::Otherwise::Continue) => step + 2,
                        (false, automations::definition::Otherwise::Exit) => {
                            enrollments::finish(tx, e.id, step as i32, Some(exit::CONDITION), now)
                                .await?;
                            return Ok(());
                        }
                    }
                }
                Step::Send(s) => {
                    if let Some(q) = &def.quiet_hours {
                        let release = q.release(now.0);
                        if release > now.0 {
                            let release = Timestamp(release);
                            enrollments::move_to(
                                tx,
                                e.id,
                                step as i32,
                                release,
                                Some(held::QUIET_HOURS),
                            )
                            .await?;
                            return Ok(());
                        }
                    }
                    let capped = self.cap.per_fan > 0
                        && *self.sent_today.get(&e.fan_id).unwrap_or(&0)
                            >= i64::from(self.cap.per_fan);
                    match (capped, self.cap.action) {
                        (true, CapAction::Wait) => {
                            let tomorrow = Timestamp(next_day(now.0));
                            enrollments::move_to(
                                tx,
                                e.id,
                                step as i32,
                                tomorrow,
                                Some(held::DAILY_CAP),
                            )
                            .await?;
                            return Ok(());
                        }
                        (true, CapAction::Skip) => {
                            record("capped", Some(held::DAILY_CAP.to_owned()));
                        }
                        (false, _) => {
                            let (variant, template) = s.pick(roll(e.id.0, step as u64));
                            let Ok(out) = Outgoing::from_template(template) else {
                                // Stored by this version of the API, so unreadable only if
                                // damaged: the enrollment ends rather than stall the clock.
                                record("failed", None);
                                enrollments::finish(tx, e.id, step as i32, Some(exit::FAILED), now)
                                    .await?;
                                return Ok(());
                            };
                            *self.sent_today.entry(e.fan_id).or_default() += 1;
                            self.planned.push(Planned {
                                enrollment: e.clone(),
                                step: step as i32,
                                variant: variant.map(str::to_owned),
                                out,
                                held_by: held_by.take(),
                            });
                            // One send an enrollment a batch (its message is matched back to
                            // its step by fan): the next step waits for the next batch.
                            let next = step + 1;
                            match entry(def, next, e.id.0, now) {
                                None => {
                                    enrollments::finish(tx, e.id, next as i32, None, now).await?
                                }
                                Some(due) => {
                                    enrollments::move_to(tx, e.id, next as i32, due, None).await?
                                }
                            }
                            return Ok(());
                        }
                    }
                    step + 1
                }
            };
            held_by = None;
            match entry(def, next, e.id.0, now) {
                None => {
                    enrollments::finish(tx, e.id, next as i32, None, now).await?;
                    return Ok(());
                }
                Some(due) if due.0 > now.0 => {
                    enrollments::move_to(tx, e.id, next as i32, due, None).await?;
                    return Ok(());
                }
                Some(_) => step = next,
            }
        }
    }
}

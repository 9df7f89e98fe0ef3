//! What an automation did: its funnel (enrollments by status and exit reason; per step and
//! variant what went through, was sent, delivered, opened and bought, and the revenue), its
//! enrollments and a fan's timeline. Read from the enrollments and the steps' messages.

use std::collections::BTreeMap;

use super::{
    Automation, Definition, Trigger,
    definition::Audience,
    enrollments::{self, Enrollment, EnrollmentStatus, FanEnrollment, StepRow},
};
use crate::{
    crm::{campaigns, messages, segments},
    db::{Db, Listed, Page, StoreResult},
    domain::{AutomationId, FanId, UserId},
};

/// What a set of sends' messages did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Figures {
    /// Messages queued.
    pub messages: i64,
    /// Handed to the platform.
    pub sent: i64,
    pub delivered: i64,
    pub opened: i64,
    pub purchases: i64,
    pub revenue_cents: i64,
}

impl Figures {
    fn add(&mut self, t: &enrollments::StepTally) {
        if t.outcome == "sent" {
            self.messages += t.n;
        }
        self.sent += t.sent;
        self.delivered += t.delivered;
        self.opened += t.opened;
        self.purchases += t.purchases;
        self.revenue_cents += t.revenue_cents;
    }
}

#[derive(Debug, Clone, Default)]
pub struct StepFunnel {
    /// Enrollments that went through the step.
    pub entered: i64,
    /// Enrollments waiting at it now.
    pub waiting: i64,
    pub outcomes: BTreeMap<String, i64>,
    pub figures: Figures,
    /// Per variant (by name), for a send with variants.
    pub variants: BTreeMap<String, Figures>,
}

#[derive(Debug, Clone, Default)]
pub struct Funnel {
    pub enrolled: i64,
    pub active: i64,
    pub completed: i64,
    pub exited_by: BTreeMap<String, i64>,
    pub figures: Figures,
    /// One per step of the current version (steps of older versions fold into their place).
    pub steps: Vec<StepFunnel>,
}

pub async fn funnel(db: &Db, a: &Automation) -> StoreResult<Funnel> {
    let mut f = Funnel {
        steps: vec![StepFunnel::default(); a.definition.0.steps.len()],
        ..Funnel::default()
    };
    for (status, reason, n) in enrollments::counts(db, a.id).await? {
        f.enrolled += n;
        match status {
            EnrollmentStatus::Active => f.active += n,
            EnrollmentStatus::Completed => f.completed += n,
            EnrollmentStatus::Exited => {
                *f.exited_by.entry(reason.unwrap_or_default()).or_default() += n
            }
        }
    }
    let grow = |steps: &mut Vec<StepFunnel>, i: usize| {
        if steps.len() <= i {
            steps.resize(i + 1, StepFunnel::default());
        }
    };
    for t in enrollments::tally(db, a.id).await? {
        let i = t.step.max(0) as usize;
        grow(&mut f.steps, i);
        let s = &mut f.steps[i];
        s.entered += t.n;
        *s.outcomes.entry(t.outcome.clone()).or_default() += t.n;
        s.figures.add(&t);
        f.figures.add(&t);
        if let Some(v) = &t.variant {
            s.variants.entry(v.clone()).or_default().add(&t);
        }
    }
    for (step, n) in enrollments::waiting(db, a.id).await? {
        let i = step.max(0) as usize;
        grow(&mut f.steps, i);
        f.steps[i].waiting += n;
    }
    Ok(f)
}

/// One page of the caller's automation's enrollments and the steps they went through.
pub async fn enrollments(
    db: &Db,
    user: UserId,
    id: AutomationId,
    status: Option<EnrollmentStatus>,
    page: Page,
) -> StoreResult<(Listed<Enrollment>, Vec<StepRow>)> {
    super::get(db, user, id).await?;
    let listed = enrollments::list(db, id, status, page).await?;
    let ids: Vec<_> = listed.items.iter().map(|e| e.id).collect();
    let steps = enrollments::steps_of(db, &ids).await?;
    Ok((listed, steps))
}

/// One page of what automations did to the caller's fan.
pub async fn timeline(
    db: &Db,
    user: UserId,
    fan: FanId,
    page: Page,
) -> StoreResult<(Listed<FanEnrollment>, Vec<StepRow>)> {
    crate::crm::fans::get(db, user, fan).await?;
    let listed = enrollments::of_fan(db, user, fan, page).await?;
    let ids: Vec<_> = listed.items.iter().map(|e| e.enrollment.id).collect();
    let steps = enrollments::steps_of(db, &ids).await?;
    Ok((listed, steps))
}

/// A definition names only `user`'s own segment, message and campaign (another creator's is
/// not found).
pub async fn check_owned(db: &Db, user: UserId, d: &Definition) -> StoreResult<()> {
    if let Some(Audience::SegmentId(id)) = &d.audience {
        segments::get(db, user, *id).await?;
    }
    if let Trigger::Purchased {
        message_id,
        campaign_id,
    } = &d.trigger
    {
        if let Some(m) = message_id {
            messages::get(db, user, *m).await?;
        }
        if let Some(c) = campaign_id {
            campaigns::get(db, user, *c).await?;
        }
    }
    Ok(())
}

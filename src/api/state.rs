//! What every handler is given: the app's state, the authenticated caller (which charges the
//! write quota) and the request's ledger of quota charges, refunded when the request fails.

use std::{cell::RefCell, sync::Arc, time::Duration};

use fanqueue_jobs::{
    blobs::BlobStore,
    db::Db,
    delivery::limiter::Pace,
    domain::UserId,
    engine::JobBackend,
    kinds::{Backpressure, send_message::Sends},
    outbound::Outbound,
};
use poem::{Request, http::Method};
use poem_openapi::{SecurityScheme, Tags, auth::Bearer};

use super::{error::ApiError, gate::Gate};
use crate::{
    auth::{Caller, JwtKeys, Role},
    quotas::{Charge, Decision, Limiter, Quota},
    telemetry::Metrics,
};

/// What every handler may need. Held by each API struct, so a missing piece fails to compile
/// rather than answering 500.
pub struct AppState {
    pub db: Db,
    /// Where fan pages are read (see `fans::list`).
    pub fan_pages: Db,
    pub jobs: JobBackend,
    pub blobs: BlobStore,
    pub outbound: Outbound,
    pub keys: JwtKeys,
    pub quotas: Quotas,
    pub import_max_bytes: u64,
    /// The dispatcher's pace per creator, for send-time estimates.
    pub pace: Pace,
    /// `RATE_LIMITER_ENABLED`.
    pub rate_limiter_enabled: bool,
    pub metrics: Metrics,
    /// Sheds `/api` requests past the process's capacity (503 + Retry-After).
    pub gate: Gate,
    /// Where sends are stored, concurrent ones together.
    pub sends: Sends,
    /// The backlog a creator may have before sends and campaigns are refused.
    pub backpressure: Backpressure,
    /// How long a keyed request's claim holds before a repeat may take the key over (when
    /// nothing was committed under it).
    pub idempotency_lease: Duration,
}

/// The per-user quotas and where they are counted.
pub struct Quotas {
    pub limiter: Limiter,
    /// Every write (POST, PUT, DELETE under /api).
    pub writes: Quota,
    pub imports: Quota,
    /// Bulk campaigns (SPEC section 5: 5 an hour).
    pub campaigns: Quota,
}

pub type State = Arc<AppState>;

#[derive(Tags)]
pub enum ApiTags {
    /// The creator's fans.
    Fans,
    /// Saved audiences: filters over the creator's fans, previewed live.
    Segments,
    /// Conversations with fans and their messages.
    Conversations,
    /// CSV fan imports.
    Imports,
    /// Outbound messages: single sends, bulk campaigns, the outbound queue.
    Messages,
    /// Bulk campaigns and their metrics.
    Campaigns,
    /// Lifecycle automations: triggers, waits, sends and conditions per fan; their funnels and
    /// each fan's timeline.
    Automations,
    /// Background jobs: status, progress, results, cancellation.
    Jobs,
    /// Health of the system and its dependencies (operators).
    Monitoring,
    /// What a platform sync reports: deliveries, opens, paid unlocks, tips, subscriptions.
    Events,
    /// The creator's figures: fans, lifetime value, revenue, messages, campaigns.
    Analytics,
}

/// The authenticated caller. Extracting it verifies the bearer token and, for writes
/// (anything but GET/HEAD/OPTIONS), counts one call against the caller's write quota.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "authenticate")]
pub struct BearerAuth(pub Caller);

impl BearerAuth {
    pub fn user(&self) -> UserId {
        self.0.user
    }

    pub fn is_operator(&self) -> bool {
        self.0.role == Role::Operator
    }

    /// 403 unless the caller is an operator.
    pub fn operator(&self) -> Result<(), ApiError> {
        if self.is_operator() {
            Ok(())
        } else {
            Err(ApiError::forbidden("this needs an operator's token"))
        }
    }

    /// The creators whose rows the caller may read across: an operator all (or the one asked
    /// for), a creator only themselves.
    pub fn scope(&self, asked: Option<i64>) -> Result<Option<UserId>, ApiError> {
        match (self.is_operator(), asked) {
            (true, None) => Ok(None),
            (true, Some(id)) if id > 0 => Ok(Some(UserId(id))),
            (true, Some(_)) => Err(ApiError::invalid("userId", "must be a positive user id")),
            (false, None) => Ok(Some(self.user())),
            (false, Some(id)) if id == self.user().0 => Ok(Some(self.user())),
            (false, Some(_)) => Err(ApiError::forbidden(
                "another creator's figures need an operator's token",
            )),
        }
    }
}

/// Routes that only read but take their question as a body (a filter to preview): not
/// charged as writes, so a live count can follow what a creator types.
const READ_BY_POST: [&str; 1] = ["/api/crm/segments/preview"];

async fn authenticate(req: &Request, bearer: Bearer) -> poem::Result<Caller> {
    let state = req
        .data::<State>()
        .expect("the app registers its state on every request");
    let caller = state.keys.verify(&bearer.token).map_err(|e| {
        tracing::info!(reason = %e, "bearer token refused");
        ApiError::unauthorized()
    })?;
    tracing::Span::current().record("user_id", caller.user.0);
    if !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        && !READ_BY_POST.contains(&req.uri().path())
    {
        charge(state, state.quotas.writes, caller.user).await?;
    }
    Ok(caller)
}

tokio::task_local! {
    /// The quota charges of the request being served (see [`charge`]).
    pub(super) static LEDGER: RefCell<Vec<Charge>>;
}

/// Counts one call of `user` against `quota`: 429 with Retry-After past it. The charge goes
/// into the request's ledger, refunded if the request fails. If the quota store (Redis) is
/// unreachable the call is allowed and the failure logged: availability over strictness, so a
/// Redis outage does not take writes down with it.
pub async fn charge(state: &AppState, quota: Quota, user: UserId) -> Result<(), ApiError> {
    match state.quotas.limiter.check(quota, user).await {
        Ok(Decision::Allowed(charge)) => {
            let kept = LEDGER.try_with(|ledger| ledger.borrow_mut().push(charge));
            debug_assert!(kept.is_ok(), "every request runs inside its ledger");
            Ok(())
        }
        Ok(Decision::Limited { retry_after }) => {
            Err(ApiError::rate_limited(quota.name, retry_after))
        }
        Err(e) => {
            tracing::error!(
                error = format!("{e:#}"),
                quota = quota.name,
                "quota unavailable; allowing the call"
            );
            Ok(())
        }
    }
}

/// Gives back what a failed request charged: only requests that succeeded use up quotas.
pub(super) async fn refund(limiter: &Limiter, charges: &[Charge]) {
    for charge in charges {
        if let Err(e) = limiter.refund(charge).await {
            tracing::warn!(error = format!("{e:#}"), "could not refund a quota charge");
        }
    }
}

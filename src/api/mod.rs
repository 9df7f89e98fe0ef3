//! The HTTP front door: parses, authorizes and hands work to `fanqueue_jobs`. No SQL here.
//!
//! One file per resource, each an `#[OpenApi]` impl whose operations have their own response
//! enum; failures are [`ApiError`]. [`BearerAuth`] is the only way a handler learns who calls,
//! so no route can forget authentication, and it charges the caller's write quota. Every
//! quota charge of a request is kept in the request's ledger and refunded when the request
//! fails (any 4xx or 5xx), so that only what succeeded counts.

mod analytics;
mod body;
mod campaigns;
mod contract;
mod conversations;
mod cors;
mod error;
mod events;
mod fans;
mod formats;
mod gate;
mod health;
mod idempotency;
mod ids;
mod imports;
mod jobs;
mod messages;
mod monitoring;
mod rules;
mod words;

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
use poem::{
    Endpoint, EndpointExt, IntoResponse, PathPattern, Request, Route, endpoint::make_sync,
    http::Method, middleware::CatchPanic, web::Html,
};
use poem_openapi::{OpenApiService, SecurityScheme, Tags, auth::Bearer};

pub use crate::origins::AllowedOrigins;
use crate::{
    auth::{Caller, JwtKeys, Role},
    quotas::{Charge, Decision, Limiter, Quota},
    telemetry::{HTTP_DURATION, HTTP_REQUESTS, HTTP_SHED, Metrics},
};
pub use error::ApiError;
pub use gate::Gate;
pub use monitoring::metrics_app;

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
    /// Conversations with fans and their messages.
    Conversations,
    /// CSV fan imports.
    Imports,
    /// Outbound messages: single sends, bulk campaigns, the outbound queue.
    Messages,
    /// Bulk campaigns and their metrics.
    Campaigns,
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

async fn authenticate(req: &Request, bearer: Bearer) -> poem::Result<Caller> {
    let state = req
        .data::<State>()
        .expect("the app registers its state on every request");
    let caller = state.keys.verify(&bearer.token).map_err(|e| {
        tracing::info!(reason = %e, "bearer token refused");
        ApiError::unauthorized()
    })?;
    tracing::Span::current().record("user_id", caller.user.0);
    if !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        charge(state, state.quotas.writes, caller.user).await?;
    }
    Ok(caller)
}

tokio::task_local! {
    /// The quota charges of the request being served (see [`charge`]).
    static LEDGER: RefCell<Vec<Charge>>;
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

type Apis = (
    fans::FansApi,
    conversations::ConversationsApi,
    imports::ImportsApi,
    jobs::JobsApi,
    messages::MessagesApi,
    campaigns::CampaignsApi,
    monitoring::MonitoringApi,
    events::EventsApi,
    analytics::AnalyticsApi,
);

pub fn openapi(state: &State) -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            fans::FansApi::new(state.clone()),
            conversations::ConversationsApi::new(state.clone()),
            imports::ImportsApi::new(state.clone()),
            jobs::JobsApi::new(state.clone()),
            messages::MessagesApi::new(state.clone()),
            campaigns::CampaignsApi::new(state.clone()),
            monitoring::MonitoringApi::new(state.clone()),
            events::EventsApi::new(state.clone()),
            analytics::AnalyticsApi::new(state.clone()),
        ),
        "fanqueue",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Durable job system for creator CRMs. Every route under /api needs \
         `Authorization: Bearer <JWT>` (HS256, `sub` = user id); writes are limited per user.",
    )
}

/// The whole HTTP app: API, OpenAPI document, Swagger UI, health, the web app; open to the
/// browser apps of `cors` origins.
pub fn app(state: State, cors: &AllowedOrigins) -> impl Endpoint + use<> {
    let api = openapi(&state);
    let raw = api.spec();
    let document = contract::exact_document(&raw);
    // Swagger UI embeds the document: the exact one, as served at /openapi.json.
    let docs_html = api.swagger_ui_html().replacen(&raw, &document, 1);
    let limiter = state.quotas.limiter.clone();
    let gate = state.gate.clone();
    let keys_state = state.clone();
    let routes = Arc::new(RouteTemplates::of(&raw));
    let methods = Arc::new(contract::Methods::of(&raw));
    let app = Route::new()
        .nest("/", api)
        .at(
            "/openapi.json",
            make_sync(move |_| {
                poem::Response::builder()
                    .content_type("application/json")
                    .body(document.clone())
            }),
        )
        .nest(
            "/docs",
            Route::new().at("/", make_sync(move |_| Html(docs_html.clone()))),
        )
        .nest("/app", crate::web::routes())
        .at("/healthz", health::healthz)
        .at("/readyz", monitoring::readyz)
        .data(state)
        .with(CatchPanic::new().with_handler(panic_response))
        .catch_all_error(|err| async move {
            // The matched route's template stays on the response for the HTTP metrics.
            let pattern = err.data::<PathPattern>().cloned();
            let mut resp = error::render(err);
            if let Some(pattern) = pattern {
                resp.set_data(pattern);
            }
            resp
        })
        .around(move |ep, req| contract::allow(ep, req, methods.clone()))
        .around(move |ep, req| idempotency::idempotent(ep, req, keys_state.clone()))
        .around(move |ep, req| track(ep, req, gate.clone(), limiter.clone(), routes.clone()));
    // Outermost: a preflight is answered before anything else, and every answer (a shed 503,
    // a quota's 429) carries the headers a page on another origin needs to read it.
    cors::layer(app, cors)
}

/// Serves one request inside a span and a quota ledger: sheds it when the server is full,
/// logs its outcome, and refunds its quota charges when it failed.
async fn track<E: Endpoint>(
    ep: Arc<E>,
    req: Request,
    gate: Gate,
    limiter: Limiter,
    routes: Arc<RouteTemplates>,
) -> poem::Result<poem::Response> {
    use tracing::Instrument;
    let method = req.method().clone();
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        user_id = tracing::field::Empty,
    );
    async move {
        let started = std::time::Instant::now();
        let slot = match req.uri().path().starts_with("/api/") {
            true => match gate.enter().await {
                Some(slot) => Some(slot),
                None => {
                    metrics::counter!(HTTP_SHED).increment(1);
                    tracing::warn!("server full; request shed with 503");
                    return Ok(ApiError::overloaded().into_response());
                }
            },
            false => None,
        };
        let (resp, charges) = LEDGER
            .scope(RefCell::default(), async {
                let resp = ep.call(req).await.map(IntoResponse::into_response);
                (resp, LEDGER.with(|ledger| ledger.take()))
            })
            .await;
        drop(slot);
        let resp = resp?;
        if resp.status().is_client_error() || resp.status().is_server_error() {
            refund(&limiter, &charges).await;
        }
        let route = resp
            .data::<PathPattern>()
            .map_or_else(|| "unmatched".to_owned(), |p| routes.template(&p.0));
        let labels = [
            ("method", method.to_string()),
            ("route", route),
            ("status", resp.status().as_u16().to_string()),
        ];
        metrics::counter!(HTTP_REQUESTS, &labels).increment(1);
        metrics::histogram!(HTTP_DURATION, &labels[..2]).record(started.elapsed().as_secs_f64());
        tracing::info!(
            status = resp.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "served"
        );
        Ok(resp)
    }
    .instrument(span)
    .await
}

/// The OpenAPI document's path templates (`/api/crm/fans/{id}`) by the shape poem matches
/// (`/api/crm/fans/:param0`): the metrics' route label, bounded however many ids are asked for.
struct RouteTemplates(std::collections::HashMap<String, String>);

impl RouteTemplates {
    fn of(spec: &str) -> Self {
        let doc: serde_json::Value = serde_json::from_str(spec).unwrap_or_default();
        let paths = doc["paths"].as_object().cloned().unwrap_or_default();
        RouteTemplates(
            paths
                .keys()
                .map(|t| (Self::shape(t, |s| s.starts_with('{')), t.clone()))
                .collect(),
        )
    }

    /// The path with each parameter segment replaced by `*`.
    fn shape(path: &str, is_param: impl Fn(&str) -> bool) -> String {
        path.split('/')
            .map(|seg| if is_param(seg) { "*" } else { seg })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// The template of a matched pattern; routes outside the document keep their pattern.
    fn template(&self, pattern: &str) -> String {
        let shape = Self::shape(pattern, |s| s.starts_with(':'));
        self.0.get(&shape).cloned().unwrap_or(shape)
    }
}

/// Gives back what a failed request charged: only requests that succeeded use up quotas.
async fn refund(limiter: &Limiter, charges: &[Charge]) {
    for charge in charges {
        if let Err(e) = limiter.refund(charge).await {
            tracing::warn!(error = format!("{e:#}"), "could not refund a quota charge");
        }
    }
}

/// A panicking handler answers a 500 with an error id, like any other internal failure.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> ApiError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    ApiError::internal(anyhow::anyhow!("handler panicked: {what}"))
}

/// How long shutdown waits for in-flight requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

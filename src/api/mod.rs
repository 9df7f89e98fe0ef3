//! The HTTP front door: parses, authorizes and hands work to `fanqueue_jobs`. No SQL here.
//!
//! One file per resource, each an `#[OpenApi]` impl whose operations have their own response
//! enum; failures are [`ApiError`]. What every handler is given lives in [`state`]: its
//! [`BearerAuth`](state::BearerAuth) is the only way a handler learns who calls, so no route
//! can forget authentication, and it charges the caller's write quota. Every quota charge of a
//! request is kept in the request's ledger and refunded when the request fails (any 4xx or
//! 5xx), so that only what succeeded counts. This file assembles the routes; they import
//! what they share from the files below them, never from here.

mod analytics;
mod automations;
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
mod segments;
mod state;
mod words;

use std::{cell::RefCell, sync::Arc, time::Duration};

use poem::{
    Endpoint, EndpointExt, IntoResponse, PathPattern, Request, Route, endpoint::make_sync,
    middleware::CatchPanic, web::Html,
};
use poem_openapi::OpenApiService;

pub use crate::origins::AllowedOrigins;
use crate::{
    quotas::Limiter,
    telemetry::{HTTP_DURATION, HTTP_REQUESTS, HTTP_SHED},
};
pub use error::ApiError;
pub use gate::Gate;
pub use monitoring::metrics_app;
pub use state::{AppState, Quotas, State};
use state::{LEDGER, refund};

type Apis = (
    fans::FansApi,
    segments::SegmentsApi,
    conversations::ConversationsApi,
    imports::ImportsApi,
    jobs::JobsApi,
    messages::MessagesApi,
    campaigns::CampaignsApi,
    automations::AutomationsApi,
    monitoring::MonitoringApi,
    events::EventsApi,
    analytics::AnalyticsApi,
);

pub fn openapi(state: &State) -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            fans::FansApi::new(state.clone()),
            segments::SegmentsApi::new(state.clone()),
            conversations::ConversationsApi::new(state.clone()),
            imports::ImportsApi::new(state.clone()),
            jobs::JobsApi::new(state.clone()),
            messages::MessagesApi::new(state.clone()),
            campaigns::CampaignsApi::new(state.clone()),
            automations::AutomationsApi::new(state.clone()),
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

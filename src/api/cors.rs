//! CORS, for browser apps served from other origins (`CORS_ALLOWED_ORIGINS`). Unset, the server
//! sends no CORS header at all, so browsers keep other origins out. Set, poem's [`Cors`]
//! answers every preflight before anything else runs (no load shedding, token, quota or
//! idempotency key applies to it): a listed origin's with what it may send, any other's with a
//! 403 that allows nothing. It also marks the answers to the listed origins' requests. Other
//! requests (from an origin not listed, from the web app's own, from clients that send no
//! `Origin`) are served as if CORS were off: the browser, not the server, keeps an answer from
//! a page that may not read it.

use std::{collections::HashSet, sync::Arc};

use super::error::ApiError;
pub use crate::origins::AllowedOrigins;
use poem::{
    Endpoint, EndpointExt, IntoResponse, Middleware, Request, Response,
    error::CorsError,
    http::{HeaderName, HeaderValue, Method, header},
    middleware::{Cors, CorsEndpoint},
};

/// The request headers a browser app may send: the bearer token, the JSON body's type and the
/// key of a safe retry.
const ALLOWED_HEADERS: [HeaderName; 3] = [
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    HeaderName::from_static("idempotency-key"),
];
/// The answer headers a browser app may read besides the safelisted ones: when to retry a 429
/// or 503, where a created resource is, and whether an answer is a replay.
const EXPOSED_HEADERS: [HeaderName; 3] = [
    header::RETRY_AFTER,
    header::LOCATION,
    HeaderName::from_static("idempotent-replayed"),
];
/// How long a browser may reuse a preflight's answer: a removed origin loses access within
/// ten minutes, and an app still sends one preflight per route every ten minutes at most.
const MAX_AGE_SECS: i32 = 600;

/// Wraps the whole app (outside the gate, auth, quotas and idempotency); with no origin
/// listed, the app is left as it is.
pub fn layer<E>(app: E, origins: &AllowedOrigins) -> poem::endpoint::BoxEndpoint<'static>
where
    E: Endpoint + 'static,
{
    let app = app.map_to_response();
    if origins.is_empty() {
        return app.boxed();
    }
    let listed: HashSet<HeaderValue> = origins
        .iter()
        .map(|o| HeaderValue::from_str(o).expect("a parsed origin is ASCII"))
        .collect();
    let app = Arc::new(app);
    let cors = Cors::new()
        .allow_origins(listed.iter().cloned())
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers(ALLOWED_HEADERS)
        .expose_headers(EXPOSED_HEADERS)
        // Bearer tokens, not cookies: a page never needs the browser's credentials sent.
        .allow_credentials(false)
        .max_age(MAX_AGE_SECS)
        .transform(app.clone());
    CorsLayer { app, cors, listed }.boxed()
}

struct CorsLayer<E> {
    app: Arc<E>,
    cors: CorsEndpoint<Arc<E>>,
    listed: HashSet<HeaderValue>,
}

impl<E: Endpoint<Output = Response>> Endpoint for CorsLayer<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let origin = req.headers().get(header::ORIGIN);
        let preflight = req.method() == Method::OPTIONS
            && origin.is_some()
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        let listed = origin.is_some_and(|o| self.listed.contains(o));
        let mut resp = if preflight || listed {
            match self.cors.call(req).await {
                Ok(resp) => resp,
                Err(e) => match e.downcast_ref::<CorsError>() {
                    Some(refused) => refusal(refused).into_response(),
                    None => return Err(e),
                },
            }
        } else {
            self.app.call(req).await?
        };
        // The answer depends on the request's origin: caches must keep one per origin.
        let varies = resp.headers().get_all(header::VARY).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains("origin"))
        });
        if !varies {
            resp.headers_mut()
                .append(header::VARY, HeaderValue::from_static("Origin"));
        }
        Ok(resp)
    }
}

/// A preflight refused, as a JSON 403 without any `Access-Control-Allow-*` header.
fn refusal(refused: &CorsError) -> ApiError {
    ApiError::forbidden(match refused {
        CorsError::OriginNotAllowed => {
            "this origin may not call the API from a browser (it is not in CORS_ALLOWED_ORIGINS)"
                .to_owned()
        }
        CorsError::MethodNotAllowed => {
            "cross-origin requests may use GET, POST, PUT and DELETE".to_owned()
        }
        CorsError::HeadersNotAllowed => format!(
            "cross-origin requests may send these headers: {}",
            ALLOWED_HEADERS.map(|h| h.as_str().to_owned()).join(", ")
        ),
    })
}

//! The web app under `/app`: plain HTML, CSS and JavaScript modules from `web/`, built into
//! the binary (no Node.js, no CDN, no build step) and talking to the JSON API with the bearer
//! token kept in the browser. Every `/app/...` path that is not an asset answers the app's
//! HTML, so deep links and reloads work; the app routes on the client.

use poem::{
    Endpoint, EndpointExt, IntoResponse, Response, Route, get, handler,
    http::{StatusCode, header},
    web::{Path, Redirect},
};

/// One embedded file of `web/`.
struct Asset {
    path: &'static str,
    mime: &'static str,
    body: &'static str,
}

macro_rules! assets {
    ($($path:literal => $mime:expr),* $(,)?) => {
        &[$(Asset { path: $path, mime: $mime, body: include_str!(concat!("../web/", $path)) }),*]
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file the app is made of (`web/index.html` is served for the app's pages).
static ASSETS: &[Asset] = assets![
    "app.css" => "text/css; charset=utf-8",
    "js/app.js" => JS,
    "js/api.js" => JS,
    "js/ui.js" => JS,
    "js/csv.js" => JS,
    "js/pages/conversations.js" => JS,
    "js/pages/fans.js" => JS,
    "js/pages/imports.js" => JS,
    "js/pages/campaigns.js" => JS,
    "js/pages/analytics.js" => JS,
    "js/pages/operator.js" => JS,
];

static INDEX: &str = include_str!("../web/index.html");

/// Only our own scripts, styles and API; avatars may come from any https host.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                   img-src 'self' https: data:; connect-src 'self'; object-src 'none'; \
                   base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// The routes to nest under `/app`.
pub fn routes() -> impl Endpoint {
    Route::new()
        .at("/", get(index))
        .at("/assets/*path", get(asset))
        .at("/*path", get(index))
        .around(|ep, req| async move {
            // `/app` itself: the app's links are absolute, but its router wants `/app/`.
            if req.original_uri().path() == "/app" {
                return Ok(Redirect::permanent("/app/").into_response());
            }
            Ok(ep.call(req).await?.into_response())
        })
}

fn respond(mime: &'static str, body: &'static str) -> Response {
    Response::builder()
        .content_type(mime)
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::CONTENT_SECURITY_POLICY, CSP)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::REFERRER_POLICY, "no-referrer")
        .body(body)
}

#[handler]
fn index() -> Response {
    respond("text/html; charset=utf-8", INDEX)
}

#[handler]
fn asset(Path(path): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.path == path) {
        Some(a) => respond(a.mime, a.body),
        None => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .content_type("text/plain; charset=utf-8")
            .body("no such asset"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_reference_no_outside_urls() {
        for a in ASSETS {
            assert!(
                !a.body.contains("http://") && !a.body.contains("https://cdn"),
                "{} refers to an outside URL",
                a.path
            );
        }
    }
}

//! The web app under `/app`: plain HTML, CSS and JavaScript modules from `web/`, built into
//! the binary (no Node.js, no CDN, no build step) and talking to the JSON API with the bearer
//! token kept in the browser. Every `/app/...` path that is not an asset answers the app's
//! HTML, so deep links and reloads work; the app routes on the client.

use std::sync::OnceLock;

use poem::{
    Endpoint, EndpointExt, IntoResponse, Request, Response, Route, get, handler,
    http::{StatusCode, header},
    web::{Path, Redirect},
};
use sha2::{Digest, Sha256};

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
    "js/nav.js" => JS,
    "js/api.js" => JS,
    "js/ui.js" => JS,
    "js/csv.js" => JS,
    "js/pages/conversations.js" => JS,
    "js/pages/fans.js" => JS,
    "js/pages/imports.js" => JS,
    "js/pages/campaigns.js" => JS,
    "js/pages/segments.js" => JS,
    "js/pages/automations.js" => JS,
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

/// A strong validator of a file's content: the browser revalidates (`no-cache`) and gets a 304
/// while the binary is the same.
fn etag(body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

fn respond(req: &Request, mime: &'static str, body: &'static str, tag: &str) -> Response {
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let builder = Response::builder()
        .header(header::ETAG, tag)
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::CONTENT_SECURITY_POLICY, CSP)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::REFERRER_POLICY, "no-referrer");
    if fresh {
        builder.status(StatusCode::NOT_MODIFIED).finish()
    } else {
        builder.content_type(mime).body(body)
    }
}

#[handler]
fn index(req: &Request) -> Response {
    static TAG: OnceLock<String> = OnceLock::new();
    let tag = TAG.get_or_init(|| etag(INDEX));
    respond(req, "text/html; charset=utf-8", INDEX, tag)
}

#[handler]
fn asset(Path(path): Path<String>, req: &Request) -> Response {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| ASSETS.iter().map(|a| etag(a.body)).collect());
    match ASSETS.iter().position(|a| a.path == path) {
        Some(i) => respond(req, ASSETS[i].mime, ASSETS[i].body, &tags[i]),
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

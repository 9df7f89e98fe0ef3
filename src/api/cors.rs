//! CORS, for browser apps served from other origins (`CORS_ALLOWED_ORIGINS`). Unset, the server
//! sends no CORS header at all, so browsers keep other origins out. Set, poem's [`Cors`]
//! answers every preflight before anything else runs (no load shedding, token, quota or
//! idempotency key applies to it): a listed origin's with what it may send, any other's with a
//! 403 that allows nothing. It also marks the answers to the listed origins' requests. Other
//! requests (from an origin not listed, from the web app's own, from clients that send no
//! `Origin`) are served as if CORS were off: the browser, not the server, keeps an answer from
//! a page that may not read it.

use std::{collections::HashSet, fmt, str::FromStr, sync::Arc};

use poem::{
    Endpoint, EndpointExt, IntoResponse, Middleware, Request, Response,
    error::CorsError,
    http::{HeaderName, HeaderValue, Method, header},
    middleware::{Cors, CorsEndpoint},
};
use serde::{Deserialize, Deserializer, de};

use super::ApiError;

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

/// The origins whose pages may call the API (`scheme://host[:port]`, as browsers send them in
/// `Origin`). Empty: no cross-origin access.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedOrigins(Vec<String>);

/// An entry of `CORS_ALLOWED_ORIGINS` that is not an origin.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{entry}` is not an origin like https://app.example.com: {reason}")]
pub struct BadOrigin {
    entry: String,
    reason: &'static str,
}

impl AllowedOrigins {
    /// Parses each entry into the form browsers send (lower-case host, no default port): so
    /// `https://App.example.com:443/` matches what a page at that address sends.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, BadOrigin> {
        let mut origins = Vec::new();
        for entry in entries.into_iter().map(str::trim).filter(|e| !e.is_empty()) {
            let origin = parse_origin(entry).map_err(|reason| BadOrigin {
                entry: entry.to_owned(),
                reason,
            })?;
            if !origins.contains(&origin) {
                origins.push(origin);
            }
        }
        Ok(AllowedOrigins(origins))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

fn parse_origin(entry: &str) -> Result<String, &'static str> {
    if entry == "*" || entry == "null" {
        return Err("list each origin allowed, one by one");
    }
    let url = url::Url::parse(entry).map_err(|_| "it does not parse as scheme://host[:port]")?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("the scheme must be http or https");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("an origin has no user or password");
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err("an origin has no path, query or fragment");
    }
    Ok(url.origin().ascii_serialization())
}

/// A comma-separated list: `https://app.example.com,http://127.0.0.1:3000`.
impl FromStr for AllowedOrigins {
    type Err = BadOrigin;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AllowedOrigins::parse(s.split(','))
    }
}

impl fmt::Display for AllowedOrigins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// From the environment's comma-separated string, or a config file's string or array.
impl<'de> Deserialize<'de> for AllowedOrigins {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = AllowedOrigins;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a comma-separated list of origins, or an array of them")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<AllowedOrigins, E> {
                v.parse().map_err(named)
            }

            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<AllowedOrigins, A::Error> {
                let mut entries: Vec<String> = Vec::new();
                while let Some(entry) = seq.next_element()? {
                    entries.push(entry);
                }
                AllowedOrigins::parse(entries.iter().map(String::as_str)).map_err(named)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The settings' error names the setting: flattened settings lose figment's key in errors.
fn named<E: de::Error>(e: BadOrigin) -> E {
    E::custom(format!("CORS_ALLOWED_ORIGINS: {e}"))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_parsed_into_the_form_browsers_send() {
        let o: AllowedOrigins =
            " http://127.0.0.1:3000, https://App.Example.com:443/ ,,http://127.0.0.1:3000"
                .parse()
                .unwrap();
        assert_eq!(
            o.iter().collect::<Vec<_>>(),
            ["http://127.0.0.1:3000", "https://app.example.com"]
        );
        assert!("".parse::<AllowedOrigins>().unwrap().is_empty());
    }

    #[test]
    fn what_is_not_an_origin_is_refused_with_the_entry() {
        for bad in [
            "*",
            "null",
            "127.0.0.1:3000",
            "app.example.com",
            "ftp://files.example.com",
            "https://app.example.com/path",
            "https://app.example.com?x=1",
            "https://user@app.example.com",
            "http://",
        ] {
            let err = format!("https://ok.example.com,{bad}")
                .parse::<AllowedOrigins>()
                .expect_err(bad);
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
    }
}

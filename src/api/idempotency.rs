//! Safe retries: every `POST` under `/api` takes an optional `Idempotency-Key` header (1 to 255
//! printable ASCII characters). The first request's answer is kept for 24 hours per user and
//! key; a repeat of the same request (method, path, query and body) gets that answer again,
//! with `Idempotent-Replayed: true`, and does nothing; the same key with another request is a
//! 422; a repeat while the first still runs is a 409. Answers that say nothing was done for
//! good (a server fault, a 503, a quota's or another 429, a 409) are not kept: a repeat runs
//! the request again. The references are the IETF draft "The Idempotency-Key HTTP Header
//! Field" and Stripe's behaviour.
//!
//! Across a crash: a route that writes (a send, a reply, a campaign, an import, a fan, an
//! inbound message) records its write on the key in the write's own transaction (see
//! [`fanqueue_jobs::idempotency`]), from the [`Keyed`] this layer hands it. A repeat that finds
//! such a write without a kept answer (the first attempt's process died in between) runs the
//! route with the write named in [`Keyed::committed`], and the route answers for that write
//! instead of writing again. A repeat that finds nothing committed takes the key over once the
//! first attempt's lease lapsed; the first attempt can then no longer commit.

use std::{fmt::Write as _, sync::Arc};

use fanqueue_jobs::idempotency::{self, Claim, Effect, Guard, Kept};
use poem::{
    Body, Endpoint, IntoResponse, Request, Response,
    http::{HeaderName, HeaderValue, StatusCode},
};
use sha2::{Digest, Sha256};

use super::{
    body::MAX_BODY,
    contract::honoured,
    error::ApiError,
    rules::{IdempotencyKey, In},
    state::State,
};

pub const HEADER: &str = "idempotency-key";
/// Says an answer is a kept one, given again.
const REPLAYED: &str = "idempotent-replayed";

/// What this layer hands the route it runs with a key (a request extension, read with
/// [`keyed`]): the key to record the route's write under, and the write an earlier attempt of
/// the same request already committed, if one did.
#[derive(Debug, Clone)]
pub struct Keyed {
    pub guard: Guard,
    pub committed: Option<Effect>,
}

/// The key of the request being served, when it came with one.
pub fn keyed(req: &Request) -> Option<&Keyed> {
    req.extensions().get::<Keyed>()
}

/// The guard to record the request's write with, unless an earlier attempt already wrote.
pub fn guard(req: &Request) -> Option<Guard> {
    keyed(req).map(|k| k.guard.clone())
}

/// The write an earlier attempt of this request committed, if one did, as the kind of write
/// the route makes (`pick`, e.g. [`Effect::message`]); a key naming another kind of write is a
/// server fault (the key's fingerprint includes the route).
pub fn committed_as<T>(
    req: &Request,
    pick: impl FnOnce(&Effect) -> Option<T>,
) -> Result<Option<T>, ApiError> {
    match keyed(req).and_then(|k| k.committed.as_ref()) {
        None => Ok(None),
        Some(effect) => pick(effect).map(Some).ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!(
                "an Idempotency-Key names {effect}, which this route does not write"
            ))
        }),
    }
}
/// The headers of an answer kept with it.
const KEPT_HEADERS: [&str; 3] = ["content-type", "retry-after", "location"];

/// The key of a request, when it has a well-formed one; `Err` with the 400 when it is not.
fn key_of(req: &Request) -> Result<Option<String>, ApiError> {
    let Some(raw) = req.headers().get(HEADER) else {
        return Ok(None);
    };
    let key = raw
        .to_str()
        .map_err(|_| ApiError::invalid("Idempotency-Key", "must be printable ASCII characters"))?;
    In::<IdempotencyKey>::parse(key)
        .map(|k| Some(k.into_inner()))
        .map_err(|reason| ApiError::invalid("Idempotency-Key", reason))
}

/// What makes two requests the same: method, path and query, and body. A multipart body's
/// boundary is chosen anew by each attempt of a client, so it is left out.
fn fingerprint(req: &Request, body: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(req.method().as_str());
    hash.update(b" ");
    hash.update(req.uri().path_and_query().map_or("", |p| p.as_str()));
    hash.update(b"\n");
    let boundary = req
        .content_type()
        .and_then(|ct| ct.parse::<mime::Mime>().ok())
        .and_then(|m| m.get_param("boundary").map(|b| b.as_str().to_owned()));
    match boundary {
        Some(b) if !b.is_empty() => {
            let mut rest = body;
            while let Some(at) = find(rest, b.as_bytes()) {
                hash.update(&rest[..at]);
                rest = &rest[at + b.len()..];
            }
            hash.update(rest);
        }
        _ => hash.update(body),
    }
    hash.finalize().iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Whether an answer is the request's outcome for good (kept and given again), rather than a
/// "not now" a repeat should not be stuck with.
fn kept(status: StatusCode) -> bool {
    !(status.is_server_error()
        || matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS
                | StatusCode::CONFLICT
                | StatusCode::UNAUTHORIZED
                | StatusCode::REQUEST_TIMEOUT
        ))
}

/// Runs `req` with its `Idempotency-Key` honoured (see the module documentation).
pub async fn idempotent<E: Endpoint>(
    ep: Arc<E>,
    mut req: Request,
    state: State,
) -> poem::Result<Response> {
    let pass = !honoured(req.method(), req.uri().path());
    let key = match key_of(&req) {
        _ if pass => None,
        Ok(key) => key,
        Err(e) => return Ok(e.into_response()),
    };
    // Whose key it is; without a valid token the route answers 401 itself and nothing is kept.
    let user = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|token| state.keys.verify(token).ok())
        .map(|caller| caller.user);
    let (Some(key), Some(user)) = (key, user) else {
        return ep.call(req).await.map(IntoResponse::into_response);
    };
    let limit = MAX_BODY.max(state.import_max_bytes as usize) + (1 << 20);
    let body = match req.take_body().into_bytes_limit(limit).await {
        Ok(body) => body,
        Err(_) => return Ok(ApiError::too_large(state.import_max_bytes).into_response()),
    };
    let fingerprint = fingerprint(&req, &body);
    let claim =
        idempotency::claim(&state.db, user, &key, &fingerprint, state.idempotency_lease).await;
    let (guard, committed) = match claim.map_err(ApiError::from) {
        Err(e) => return Ok(e.into_response()),
        Ok(Claim::OtherRequest) => return Ok(ApiError::key_reused().into_response()),
        Ok(Claim::Running) => return Ok(ApiError::key_in_use().into_response()),
        Ok(Claim::Answered(answer)) => return Ok(replay(answer)),
        Ok(Claim::Run(guard)) => (guard, None),
        Ok(Claim::Committed(guard, effect)) => (guard, Some(effect)),
    };
    req.set_body(Body::from(body));
    req.extensions_mut().insert(Keyed {
        guard: guard.clone(),
        committed,
    });
    let resp = match ep.call(req).await {
        Ok(resp) => resp.into_response(),
        Err(e) => {
            release(&state, &guard).await;
            return Err(e);
        }
    };
    if !kept(resp.status()) {
        release(&state, &guard).await;
        return Ok(resp);
    }
    let (parts, body) = resp.into_parts();
    let bytes = body.into_vec().await.unwrap_or_default();
    let headers: serde_json::Map<String, serde_json::Value> = KEPT_HEADERS
        .iter()
        .filter_map(|name| {
            let value = parts.headers.get(*name)?.to_str().ok()?;
            Some(((*name).to_owned(), value.into()))
        })
        .collect();
    let answer = Kept {
        status: parts.status.as_u16(),
        headers: serde_json::Value::Object(headers).to_string(),
        body: bytes,
    };
    if let Err(e) = idempotency::answer(&state.db, &guard, &answer).await {
        // The write (if any) is recorded on the key: a repeat answers for it.
        tracing::error!(error = %e, "could not keep the answer of an idempotent request");
    }
    Ok(Response::from_parts(parts, Body::from(answer.body)))
}

async fn release(state: &State, guard: &Guard) {
    if let Err(e) = idempotency::release(&state.db, guard).await {
        tracing::warn!(error = %e, "could not release an idempotency key; it lapses by itself");
    }
}

/// The kept answer, given again.
fn replay(answer: Kept) -> Response {
    let mut resp = Response::builder()
        .status(StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK))
        .header(REPLAYED, "true");
    if let Ok(serde_json::Value::Object(headers)) =
        serde_json::from_str::<serde_json::Value>(&answer.headers)
    {
        for (name, value) in headers {
            if let (Ok(name), Some(Ok(value))) = (
                HeaderName::try_from(name.as_str()),
                value.as_str().map(HeaderValue::from_str),
            ) {
                resp = resp.header(name, value);
            }
        }
    }
    resp.body(answer.body)
}

#[cfg(test)]
mod tests {
    use poem::http::Method;

    use super::*;

    fn request(content_type: &str) -> Request {
        Request::builder()
            .method(Method::POST)
            .uri("/api/onlyfans/import/csv".parse().unwrap())
            .content_type(content_type)
            .finish()
    }

    #[test]
    fn a_multipart_repeat_with_a_new_boundary_is_the_same_request_and_another_file_is_not() {
        let body = |b: &str, file: &str| {
            format!(
                "--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.csv\"\r\n\r\n{file}\r\n--{b}--\r\n"
            )
        };
        let first = fingerprint(
            &request("multipart/form-data; boundary=aaa111"),
            body("aaa111", "Username\nann\n").as_bytes(),
        );
        let repeat = fingerprint(
            &request("multipart/form-data; boundary=bbb222"),
            body("bbb222", "Username\nann\n").as_bytes(),
        );
        let other = fingerprint(
            &request("multipart/form-data; boundary=ccc333"),
            body("ccc333", "Username\nbob\n").as_bytes(),
        );
        assert_eq!(first, repeat);
        assert_ne!(first, other);
    }

    #[test]
    fn only_answers_that_are_the_outcome_for_good_are_kept() {
        for status in [200, 201, 202, 204, 400, 403, 404, 413, 415, 422] {
            assert!(kept(StatusCode::from_u16(status).unwrap()), "{status}");
        }
        for status in [401, 408, 409, 429, 500, 503] {
            assert!(!kept(StatusCode::from_u16(status).unwrap()), "{status}");
        }
    }
}

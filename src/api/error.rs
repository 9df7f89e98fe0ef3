//! The one error type of the API. Every failure a client can see is one of these variants,
//! rendered as `{"error":{"code","message"}}`; a 5xx carries only an error id, and the cause
//! chain goes to the log.

use std::time::Duration;

use fanqueue_jobs::{
    db::{SqlError, StoreError, is_unavailable},
    engine::EnqueueError,
};
use poem::{IntoResponse, Response, http::StatusCode};
use poem_openapi::{ApiResponse, Object, payload::Json};

#[derive(Debug, Object, serde::Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Object, serde::Serialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetail {
    /// Stable machine code, e.g. `invalid_field`, `not_found`, `rate_limited`.
    pub code: String,
    /// What went wrong, for a human.
    pub message: String,
    /// The request field at fault, for `invalid_field`.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For 5xx: quote it to the operator, who finds the cause in the log under this id.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_id: Option<String>,
    /// For `backlog_full`: the creator's messages waiting for delivery now.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog: Option<i64>,
}

#[derive(Debug, ApiResponse)]
pub enum ApiError {
    /// The request is malformed: the body, a parameter or a field is invalid.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// Missing, malformed, expired or wrongly signed bearer token.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// The token is valid but its role may not do this (an operator's is needed).
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// No such resource among the caller's own.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The write collides with an existing row, or the resource is past the requested state.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// The `Idempotency-Key` was used with another request.
    #[oai(status = 422)]
    Unprocessable(Json<ErrorBody>),
    /// The upload is larger than the limit.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// The upload is not of an accepted type.
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// Over a per-user quota; retry after the given number of seconds.
    #[oai(status = 429)]
    TooManyRequests(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
    /// A fault on our side; the body holds only an error id.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// Busy past capacity, or the database is unreachable: nothing was done; retry after the
    /// given number of seconds.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
}

fn body(code: &str, message: impl Into<String>) -> Json<ErrorBody> {
    Json(ErrorBody {
        error: ErrorDetail {
            code: code.to_owned(),
            message: message.into(),
            field: None,
            error_id: None,
            backlog: None,
        },
    })
}

impl ApiError {
    /// A request field (body field, query parameter) failed to parse.
    pub fn invalid(field: &str, reason: impl std::fmt::Display) -> Self {
        let mut b = body("invalid_field", format!("`{field}` {reason}"));
        b.0.error.field = Some(field.to_owned());
        ApiError::BadRequest(b)
    }

    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        ApiError::BadRequest(body(code, message))
    }

    pub fn unauthorized() -> Self {
        ApiError::Unauthorized(body(
            "unauthorized",
            "a valid bearer token is required (Authorization: Bearer <JWT>)",
        ))
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::Forbidden(body("forbidden", message))
    }

    pub fn not_found(what: &str) -> Self {
        ApiError::NotFound(body("not_found", format!("{what} not found")))
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError::Conflict(body("conflict", message))
    }

    pub fn too_large(max_bytes: u64) -> Self {
        ApiError::PayloadTooLarge(body(
            "payload_too_large",
            format!("the file is larger than the limit of {max_bytes} bytes"),
        ))
    }

    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        ApiError::UnsupportedMediaType(body("unsupported_media_type", message))
    }

    pub fn rate_limited(what: &str, retry_after: Duration) -> Self {
        // Round up: a client that waits the advertised seconds must find a free slot.
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        ApiError::TooManyRequests(
            body(
                "rate_limited",
                format!("too many {what}; retry in {secs} s"),
            ),
            secs.max(1),
        )
    }

    /// The creator's undelivered backlog would pass its limit: nothing stored; `retry_after`
    /// is when enough will have drained at the creator's delivery rate.
    pub fn backlog_full(backlog: i64, max: i64, retry_after: Duration) -> Self {
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        let mut b = body(
            "backlog_full",
            format!(
                "{backlog} of your messages are waiting for delivery (at most {max}); nothing was \
                 stored, retry in {secs} s"
            ),
        );
        b.0.error.backlog = Some(backlog);
        ApiError::TooManyRequests(b, secs.max(1))
    }

    /// A field the schema allows whose value cannot be used (a cron expression that does not
    /// parse, a time zone that does not exist): 422 naming it.
    pub fn unusable(field: &str, reason: impl std::fmt::Display) -> Self {
        let mut b = body("unusable_field", format!("`{field}` {reason}"));
        b.0.error.field = Some(field.to_owned());
        ApiError::Unprocessable(b)
    }

    /// The `Idempotency-Key` was first used with another request (method, path or body).
    pub fn key_reused() -> Self {
        ApiError::Unprocessable(body(
            "idempotency_key_reused",
            "this Idempotency-Key was used with another request; use a new key for a new request",
        ))
    }

    /// The first request with this `Idempotency-Key` is still running.
    pub fn key_in_use() -> Self {
        ApiError::Conflict(body(
            "idempotency_key_in_use",
            "a request with this Idempotency-Key is still running; repeat it once it answered",
        ))
    }

    /// More requests than the server takes at once: shed at the door, nothing done.
    pub fn overloaded() -> Self {
        ApiError::Unavailable(
            body(
                "overloaded",
                "the server is busy past its capacity; nothing was done, retry in 1 s",
            ),
            1,
        )
    }

    /// A database failure: the database unreachable or every connection busy past the wait
    /// (503, nothing was done; the request may be retried), anything else an internal error.
    pub fn database(err: SqlError, context: &'static str) -> Self {
        if is_unavailable(&err) {
            tracing::warn!(error = %err, context, "database unavailable; answering 503");
            return ApiError::Unavailable(
                body(
                    "unavailable",
                    "the database is busy or unreachable; nothing was done, retry in 1 s",
                ),
                1,
            );
        }
        ApiError::internal(anyhow::Error::new(err).context(context))
    }

    /// An unexpected failure: logged with its cause chain under a fresh id.
    pub fn internal(err: anyhow::Error) -> Self {
        let id = uuid::Uuid::new_v4().to_string();
        tracing::error!(error_id = %id, error = format!("{err:#}"), "request failed");
        let mut b = body("internal", format!("internal error; quote error id {id}"));
        b.0.error.error_id = Some(id);
        ApiError::Internal(b)
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(what) => ApiError::not_found(what),
            StoreError::Conflict(msg) => ApiError::conflict(msg),
            StoreError::Sql(e) => ApiError::database(e, "database query"),
        }
    }
}

impl From<EnqueueError> for ApiError {
    fn from(err: EnqueueError) -> Self {
        match err {
            EnqueueError::Sql(e) => ApiError::database(e, "storing the job"),
            e @ EnqueueError::Backend(_) => {
                ApiError::internal(anyhow::Error::new(e).context("storing the job"))
            }
        }
    }
}

/// Renders errors raised outside our handlers (poem-openapi's parse and auth errors, unknown
/// routes, oversized bodies, panics) in the same envelope. Our own [`ApiError`]s arrive
/// already rendered and pass through untouched.
pub fn render(err: poem::Error) -> Response {
    if err.is_from_response() {
        return err.into_response();
    }
    let status = err.status();
    if status.is_server_error() {
        return ApiError::internal(anyhow::anyhow!("{err}")).into_response();
    }
    // poem-openapi names path variables `param0…` in its errors; ours are all `{id}`.
    if err.is::<poem_openapi::error::ParsePathError>() {
        return ApiError::invalid("id", "must be an integer id").into_response();
    }
    if let Some(e) = err.downcast_ref::<poem_openapi::error::ParseParamError>() {
        return ApiError::invalid(e.name, &e.reason).into_response();
    }
    let (code, message) = match status {
        StatusCode::UNAUTHORIZED => return ApiError::unauthorized().into_response(),
        StatusCode::NOT_FOUND => ("not_found", "no such route".to_owned()),
        StatusCode::BAD_REQUEST => ("bad_request", err.to_string()),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", err.to_string()),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", err.to_string()),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", err.to_string()),
        _ => ("client_error", err.to_string()),
    };
    (status, poem::web::Json(body(code, message).0)).into_response()
}
